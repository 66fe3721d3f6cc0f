"""BertConfig: the hyperparameters of a BERT, read from and written to Google's `bert_config.json`
and Hugging Face's `config.json`, plus the named sizes of Google's releases.

Field names are exactly `bert_config.json`'s keys, so a Google config loads with no renaming.

GELU is the one key whose *meaning* differs between the two sources: the original TF code's
`"gelu"` is the tanh approximation, Hugging Face's `"gelu"` is the exact erf form. Internally we
store the unambiguous names `"gelu_tanh"` and `"gelu"` (erf) and translate at the file boundary.
"""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from pathlib import Path
from typing import Any

# Activations the model implements. "gelu" is exact (erf); "gelu_tanh" the original BERT's.
ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu", "tanh")

# Hugging Face hidden_act spellings -> ours.
_HF_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
    "tanh": "tanh",
}
# Google's get_activation() knows only these (plus "linear", which BERT never uses).
_GOOGLE_ACTIVATIONS = {"gelu": "gelu_tanh", "relu": "relu", "tanh": "tanh"}


class ConfigError(ValueError):
    """A BERT config that cannot be used; the message names the file or field and the fix."""


@dataclasses.dataclass
class BertConfig:
    """Hyperparameters of a BERT model (keys of Google's bert_config.json).

    Attributes:
        vocab_size: rows of the word-embedding table; must equal the vocab file's line count.
        hidden_size: width H of every layer.
        num_hidden_layers: number L of Transformer layers.
        num_attention_heads: heads A per layer; hidden_size must be divisible by it.
        intermediate_size: width of the feed-forward layer (4H in every Google release).
        hidden_act: one of ACTIVATIONS ("gelu_tanh" is what Google's "gelu" means).
        hidden_dropout_prob: dropout on embeddings, attention output and feed-forward output.
        attention_probs_dropout_prob: dropout on attention probabilities.
        max_position_embeddings: longest sequence the position table supports.
        type_vocab_size: number of segment ids (2 in every Google checkpoint).
        initializer_range: std of the truncated-normal weight initialiser.
        layer_norm_eps: LayerNorm epsilon (the original's tf.contrib layer_norm uses 1e-12).
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu_tanh"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"BertConfig.{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"BertConfig.hidden_size ({self.hidden_size}) is not divisible by num_attention_heads "
                f"({self.num_attention_heads}); choose heads so that hidden_size / heads is an integer "
                f"(Google's releases use heads = hidden_size / 64)")
        if self.hidden_act not in ACTIVATIONS:
            raise ConfigError(
                f"BertConfig.hidden_act {self.hidden_act!r} is unknown; use one of {ACTIVATIONS}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"BertConfig.{name} must be in [0, 1), got {value!r}")
        if self.initializer_range <= 0 or self.layer_norm_eps <= 0:
            raise ConfigError("BertConfig.initializer_range and layer_norm_eps must be positive")

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    # ---- Google bert_config.json ----------------------------------------------------------

    @classmethod
    def from_google_json(cls, path: str | Path) -> BertConfig:
        """Reads a Google `bert_config.json`; its `"gelu"` becomes `"gelu_tanh"` (what TF computed)."""
        raw = _read_json(path)
        act = raw.get("hidden_act", "gelu")
        if act not in _GOOGLE_ACTIVATIONS:
            raise ConfigError(f"{path}: hidden_act {act!r} is not one the original BERT code supports "
                              f"({sorted(_GOOGLE_ACTIVATIONS)})")
        raw["hidden_act"] = _GOOGLE_ACTIVATIONS[act]
        return cls._from_dict(raw, path)

    def to_google_dict(self) -> dict[str, Any]:
        """Returns the `bert_config.json` contents for this config."""
        out = dataclasses.asdict(self)
        out.pop("layer_norm_eps")  # the original hard-codes 1e-12
        act = {"gelu_tanh": "gelu", "relu": "relu", "tanh": "tanh"}.get(self.hidden_act)
        if act is None:
            # Google's code would read "gelu" as the tanh form: say so rather than write a silent lie.
            warnings.warn(f"hidden_act {self.hidden_act!r} has no Google equivalent; writing 'gelu', "
                          "which the original code computes with the tanh approximation", stacklevel=2)
            act = "gelu"
        out["hidden_act"] = act
        return out

    def to_google_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_google_dict(), indent=2) + "\n")

    # ---- Hugging Face config.json ---------------------------------------------------------

    @classmethod
    def from_hf_json(cls, path: str | Path) -> BertConfig:
        """Reads a Hugging Face `config.json` (model_type "bert"); its `"gelu"` is exact erf GELU."""
        raw = _read_json(path)
        if raw.get("model_type", "bert") != "bert":
            raise ConfigError(f"{path}: model_type is {raw.get('model_type')!r}, expected 'bert'")
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise ConfigError(f"{path}: position_embedding_type {raw['position_embedding_type']!r} "
                              "is not supported (only 'absolute', as in BERT)")
        act = raw.get("hidden_act", "gelu")
        if act not in _HF_ACTIVATIONS:
            raise ConfigError(f"{path}: hidden_act {act!r} is unknown; use one of {sorted(_HF_ACTIVATIONS)}")
        raw["hidden_act"] = _HF_ACTIVATIONS[act]
        return cls._from_dict(raw, path)

    def to_hf_dict(self) -> dict[str, Any]:
        """Returns a Hugging Face `config.json` that transformers' BertConfig reads to the same model."""
        out = dataclasses.asdict(self)
        out["hidden_act"] = {"gelu_tanh": "gelu_new"}.get(self.hidden_act, self.hidden_act)
        out.update(model_type="bert", architectures=["BertForPreTraining"], pad_token_id=0,
                   position_embedding_type="absolute", tie_word_embeddings=True)
        return out

    def to_hf_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_hf_dict(), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> BertConfig:
        """Reads either format: a file with `model_type` is Hugging Face's, otherwise Google's."""
        return cls.from_hf_json(path) if "model_type" in _read_json(path) else cls.from_google_json(path)

    @classmethod
    def _from_dict(cls, raw: dict[str, Any], source: str | Path) -> BertConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in raw.items() if k in known})
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None
        except TypeError as err:
            raise ConfigError(f"{source}: {err}") from None

    # ---- named sizes ----------------------------------------------------------------------

    @classmethod
    def named(cls, name: str, **overrides: Any) -> BertConfig:
        """Returns the config of a named Google release size.

        Args:
            name: "L-4_H-256" / "L-4_H-256_A-4" / "uncased_L-4_H-256_A-4" (any of the 24 compact
                models), an alias ("tiny", "mini", "small", "medium", "base", "large", optionally
                prefixed "bert-"), or "L-6_H-384" style for any other L/H (A = H / 64).
            **overrides: fields to change (e.g. vocab_size).

        Raises:
            ConfigError: the name is not recognised.
        """
        key = name.lower().removeprefix("bert-").removeprefix("bert_")
        key = _ALIASES.get(key, key)
        match = re.fullmatch(r"(?:(?:un)?cased_)?l-?(\d+)_h-?(\d+)(?:_a-?(\d+))?", key)
        if not match:
            raise ConfigError(f"unknown model size {name!r}; use one of {sorted(NAMED_SIZES)} or an "
                              f"alias {sorted(_ALIASES)}")
        layers, hidden = int(match.group(1)), int(match.group(2))
        heads = int(match.group(3)) if match.group(3) else max(1, hidden // 64)
        return cls(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                   intermediate_size=4 * hidden, **overrides)


_ALIASES = {"tiny": "l-2_h-128", "mini": "l-4_h-256", "small": "l-4_h-512", "medium": "l-8_h-512",
            "base": "l-12_h-768", "large": "l-24_h-1024"}

# The 24 compact models of Google's March 2020 release, plus base and large.
NAMED_SIZES: tuple[str, ...] = tuple(
    [f"L-{layers}_H-{hidden}_A-{hidden // 64}"
     for layers in (2, 4, 6, 8, 10, 12) for hidden in (128, 256, 512, 768)]
    + ["L-24_H-1024_A-16"])


def _read_json(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass the bert_config.json or config.json "
                          "that came with the checkpoint")
    try:
        raw = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path} is not valid JSON ({err}); re-download or fix the file") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a JSON object of config keys, got {type(raw).__name__}")
    return raw
