"""Pretrained weights in and out: Google's TF checkpoints and Hugging Face directories.

Our parameter names are Hugging Face's (see bert.py), so an HF state dict loads nearly as is.
Google's TF variables are renamed by `tf_name_to_ours`; TF dense kernels are stored [in, out] and
torch Linear weights [out, in], so every `kernel` is transposed on the way in and out. The
`output_weights` variables of run_pretraining / run_classifier / run_squad are already [out, in].
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save_file as save_safetensors

from models.bert import (BertForPreTraining, BertForQuestionAnswering, BertForSequenceClassification,
                         BertForTokenClassification, BertModel, BertPreTrainedModel)
from models.config import BertConfig
from models.tf_bundle import CheckpointError, read_tf_checkpoint, resolve_tf_checkpoint_prefix, write_tf_checkpoint

Head = Literal["model", "pretraining", "classification", "question_answering", "token_classification"]

_HEADS: dict[str, tuple[type[BertPreTrainedModel], str]] = {
    "model": (BertModel, "BertModel"),
    "pretraining": (BertForPreTraining, "BertForPreTraining"),
    "classification": (BertForSequenceClassification, "BertForSequenceClassification"),
    "question_answering": (BertForQuestionAnswering, "BertForQuestionAnswering"),
    "token_classification": (BertForTokenClassification, "BertForTokenClassification"),
}

# TF variables that are training state, not weights.
_TF_IGNORED = re.compile(r"(^|/)(adam_[mv]|global_step|bad_steps|good_steps|loss_scale)$|/adam_[mv]$")
# HF keys that are buffers or tied copies of a weight we already have.
_HF_IGNORED = re.compile(r"(position_ids|cls\.predictions\.decoder\.(weight|bias))$")

# Whole-name renames that the generic rules below cannot derive.
_TF_SPECIAL = {
    "cls/predictions/output_bias": "cls.predictions.bias",
    "cls/seq_relationship/output_weights": "cls.seq_relationship.weight",
    "cls/seq_relationship/output_bias": "cls.seq_relationship.bias",
    "output_weights": "classifier.weight",  # run_classifier.py
    "output_bias": "classifier.bias",
    "cls/squad/output_weights": "qa_outputs.weight",  # run_squad.py
    "cls/squad/output_bias": "qa_outputs.bias",
}
_OURS_SPECIAL = {v: k for k, v in _TF_SPECIAL.items()}


def tf_name_to_ours(name: str) -> tuple[str, bool] | None:
    """Maps a Google TF variable name to our parameter name.

    Returns:
        (our name, whether the array must be transposed), or None for a name we do not know.
    """
    if name in _TF_SPECIAL:
        return _TF_SPECIAL[name], False
    if not name.startswith(("bert/", "cls/predictions/transform/")):
        return None
    ours = re.sub(r"layer_(\d+)", r"layer.\1", name).replace("/", ".")
    if ours.endswith("_embeddings"):
        return ours + ".weight", False
    for tf_suffix, our_suffix in ((".kernel", ".weight"), (".gamma", ".weight"), (".beta", ".bias"),
                                  (".bias", ".bias")):
        if ours.endswith(tf_suffix):
            return ours.removesuffix(tf_suffix) + our_suffix, tf_suffix == ".kernel"
    return None


def ours_to_tf_name(name: str) -> tuple[str, bool]:
    """The inverse of tf_name_to_ours: our parameter name -> (TF name, transpose)."""
    if name in _OURS_SPECIAL:
        return _OURS_SPECIAL[name], False
    tf = re.sub(r"layer\.(\d+)", r"layer_\1", name.removesuffix(".weight").removesuffix(".bias")).replace(".", "/")
    if tf.endswith("_embeddings"):
        return tf, False
    if "LayerNorm" in tf:
        return tf + ("/gamma" if name.endswith(".weight") else "/beta"), False
    return tf + ("/kernel" if name.endswith(".weight") else "/bias"), name.endswith(".weight")


def read_google_checkpoint(prefix: str | Path, strict: bool = True) -> dict[str, torch.Tensor]:
    """Reads a Google TF checkpoint into our names (optimizer slots and global_step dropped).

    Raises:
        CheckpointError: unreadable files, or (when strict; else a warning) variables we do not
            know, listed.
    """
    variables = read_tf_checkpoint(prefix)
    state: dict[str, torch.Tensor] = {}
    unknown = []
    for tf_name, array in variables.items():
        if _TF_IGNORED.search(tf_name):
            continue
        mapped = tf_name_to_ours(tf_name)
        if mapped is None:
            unknown.append(tf_name)
            continue
        ours, transpose = mapped
        state[ours] = torch.from_numpy(np.ascontiguousarray(array.T if transpose else array))
    if unknown:
        message = f"{prefix}: variables that are not part of a BERT from the original code: {sorted(unknown)}"
        if strict:
            raise CheckpointError(message + "; pass strict=False to ignore them")
        warnings.warn(message, stacklevel=2)
    return state


def write_google_checkpoint(model: BertPreTrainedModel, prefix: str | Path) -> None:
    """Writes `prefix.index`/`.data-00000-of-00001`, `checkpoint` and `bert_config.json`, the layout
    the original scripts' --init_checkpoint and --bert_config_file read."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, tensor in _full_state_dict(model).items():
        tf_name, transpose = ours_to_tf_name(name)
        array = tensor.detach().float().cpu().numpy()
        tensors[tf_name] = np.ascontiguousarray(array.T if transpose else array)
    write_tf_checkpoint(prefix, tensors)
    (prefix.parent / "checkpoint").write_text(
        f'model_checkpoint_path: "{prefix.name}"\nall_model_checkpoint_paths: "{prefix.name}"\n')
    model.config.to_google_json(prefix.parent / "bert_config.json")


def read_hf_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    """Reads `model.safetensors` (or legacy `pytorch_model.bin`) into our names."""
    directory = Path(directory)
    if (directory / "model.safetensors").is_file():
        raw = load_safetensors(directory / "model.safetensors")
    elif (directory / "pytorch_model.bin").is_file():
        raw = torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise CheckpointError(f"{directory} has neither model.safetensors nor pytorch_model.bin")
    state = {}
    for key, tensor in raw.items():
        if _HF_IGNORED.search(key):
            continue
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        if key.startswith(("embeddings.", "encoder.", "pooler.")):  # saved from a bare BertModel
            key = "bert." + key
        state[key] = tensor
    return state


def write_hf_directory(model: BertPreTrainedModel, directory: str | Path) -> None:
    """Writes `config.json` + `model.safetensors` that transformers' from_pretrained loads."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = model.config.to_hf_dict()
    config["architectures"] = [next(n for cls, n in _HEADS.values() if type(model) is cls)]
    if hasattr(model, "num_labels"):
        config["num_labels"] = model.num_labels
        config["id2label"] = {str(i): f"LABEL_{i}" for i in range(model.num_labels)}
        config["label2id"] = {f"LABEL_{i}": i for i in range(model.num_labels)}
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    # .cpu(): safetensors reads storage pointers, which XLA/CUDA tensors do not have (a no-op on CPU).
    state = {k: v.detach().cpu().contiguous() for k, v in _full_state_dict(model).items()}
    if isinstance(model, BertModel):
        state = {k.removeprefix("bert."): v for k, v in state.items()}
    save_safetensors(state, str(directory / "model.safetensors"), metadata={"format": "pt"})


def detect_format(path: str | Path) -> tuple[Literal["google", "hf"], Path]:
    """Recognises a checkpoint: returns its format and where its config file is.

    Args:
        path: a Google prefix (`.../bert_model.ckpt`), a directory holding a Google checkpoint
            (`bert_config.json` + `*.index`) or a Hugging Face one (`config.json` + weights).
    """
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    if path.is_dir() and (path / "config.json").is_file() and (
            (path / "model.safetensors").is_file() or (path / "pytorch_model.bin").is_file()):
        return "hf", path / "config.json"
    if (directory / "bert_config.json").is_file():
        return "google", directory / "bert_config.json"
    if not path.exists() and not Path(f"{path}.index").exists():
        raise CheckpointError(f"{path} does not exist; pass a Google checkpoint prefix or directory, "
                              "or a Hugging Face model directory")
    raise CheckpointError(f"{path}: cannot tell the checkpoint format: expected bert_config.json beside a "
                          "Google checkpoint, or config.json + model.safetensors / pytorch_model.bin")


def load_pretrained(path: str | Path, head: Head = "pretraining", num_labels: int = 2,
                    vocab_file: str | Path | None = None, strict: bool = True) -> BertPreTrainedModel:
    """Builds a model with a head and loads pretrained weights into it.

    Args:
        path: Google checkpoint prefix or directory, or Hugging Face directory (see detect_format).
        head: which model to build. Weights the checkpoint lacks for that head (a new classifier
            when fine-tuning from a pretraining checkpoint) keep their fresh initialisation, with a
            warning; weights the head does not use are ignored.
        num_labels: output size of the classification / token-classification heads.
        vocab_file: when given (or when `vocab.txt` sits beside the checkpoint), its line count
            must equal the config's vocab_size.
        strict: raise (True) or warn (False) on variables that belong to no BERT.

    Returns:
        The model, in eval mode, with `model.config` set. Google configs' "gelu" is the tanh form.

    Raises:
        CheckpointError: missing or corrupt files, shape mismatches (variable and both shapes),
            vocab/config mismatch, unknown variables.
    """
    if head not in _HEADS:
        raise ValueError(f"head {head!r} is unknown; use one of {sorted(_HEADS)}")
    fmt, config_file = detect_format(path)
    if fmt == "google":
        config = BertConfig.from_google_json(config_file)
        state = read_google_checkpoint(resolve_tf_checkpoint_prefix(path), strict=strict)
    else:
        config = BertConfig.from_hf_json(config_file)
        state = read_hf_weights(path)
    vocab = Path(vocab_file) if vocab_file else config_file.parent / "vocab.txt"
    if vocab_file or vocab.is_file():
        check_vocab_size(vocab, config)
    cls, _ = _HEADS[head]
    model = cls(config, num_labels) if head in ("classification", "token_classification") else cls(config)
    _load_state(model, state, source=str(path), strict=strict)
    return model.eval()


def check_vocab_size(vocab_file: str | Path, config: BertConfig) -> None:
    """Refuses a vocab whose line count differs from vocab_size: ids past the embedding table give
    NaNs on GPU (the original README's warning) instead of an error."""
    vocab_file = Path(vocab_file)
    if not vocab_file.is_file():
        raise CheckpointError(f"vocab file {vocab_file} does not exist")
    with vocab_file.open(encoding="utf-8") as f:
        num_lines = sum(1 for _ in f)
    if num_lines != config.vocab_size:
        raise CheckpointError(f"{vocab_file} has {num_lines} tokens but the config's vocab_size is "
                              f"{config.vocab_size}; use the vocab file that came with the checkpoint")


def _full_state_dict(model: BertPreTrainedModel) -> dict[str, torch.Tensor]:
    """State dict with `bert.` prefixes, whatever the head."""
    state = model.state_dict()
    return {f"bert.{k}": v for k, v in state.items()} if isinstance(model, BertModel) else state


def _load_state(model: BertPreTrainedModel, state: dict[str, torch.Tensor], source: str, strict: bool) -> None:
    own = _full_state_dict(model)
    unknown = sorted(k for k in state if k not in own and not _is_other_head(k))
    if unknown:
        message = f"{source}: weights that belong to no BERT: {unknown}"
        if strict:
            raise CheckpointError(message + "; pass strict=False to ignore them")
        warnings.warn(message, stacklevel=3)
    missing = sorted(k for k in own if k not in state)
    if any(k.startswith("bert.") for k in missing):
        raise CheckpointError(f"{source}: the checkpoint lacks encoder weights {missing[:8]}"
                              f"{'...' if len(missing) > 8 else ''}; is it a BERT checkpoint?")
    if missing:
        warnings.warn(f"{source}: {missing} are not in the checkpoint and keep their fresh "
                      "initialisation (expected for a new task head)", stacklevel=3)
    with torch.no_grad():
        for name, tensor in own.items():
            if name not in state:
                continue
            if tuple(state[name].shape) != tuple(tensor.shape):
                raise CheckpointError(
                    f"{source}: {name} has shape {tuple(state[name].shape)} in the checkpoint but "
                    f"{tuple(tensor.shape)} in the model built from its config; the config and "
                    "checkpoint do not belong together")
            tensor.copy_(state[name].to(tensor.dtype))


def _is_other_head(name: str) -> bool:
    return name.startswith(("cls.", "classifier.", "qa_outputs."))
