"""What every task shares: the model the spec describes, the device, seeding, the run directory
and the original's result files."""

from __future__ import annotations

import dataclasses
import logging
import random
from pathlib import Path

import fsspec
import numpy as np
import torch
from fsspec.implementations.local import LocalFileSystem

from jobs.spec import JobSpec, SpecError
from models.bert import BertPreTrainedModel
from models.checkpoints import (
    CheckpointError,
    check_vocab_size,
    detect_format,
    load_pretrained,
)
from models.config import BertConfig, ConfigError
from models.tokenization import FullTokenizer

log = logging.getLogger("bertfleet")


def device() -> torch.device:
    """The device a single-process job runs on."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True)


def resolve_config(spec: JobSpec) -> BertConfig:
    """The BertConfig from bert_config_file, the init_checkpoint's config, or a named size."""
    model = spec.model
    try:
        if model.bert_config_file:
            config = BertConfig.from_json(model.bert_config_file)
        elif model.init_checkpoint:
            config = BertConfig.from_json(detect_format(model.init_checkpoint)[1])
        else:
            vocab_size = _count_lines(model.vocab_file) if model.vocab_file else 30522
            config = BertConfig.named(model.size or "base", vocab_size=vocab_size)
    except (ConfigError, CheckpointError) as err:
        raise SpecError(f"model: {err}") from None
    overrides = {k: v for k, v in (("hidden_dropout_prob", model.hidden_dropout_prob),
                                   ("attention_probs_dropout_prob", model.attention_probs_dropout_prob)) if v is not None}
    config = dataclasses.replace(config, **overrides)
    if spec.data.max_seq_length > config.max_position_embeddings:
        raise SpecError(f"data.max_seq_length {spec.data.max_seq_length} is above the model's "
                        f"max_position_embeddings {config.max_position_embeddings}; lower it")
    return config


def vocab_file(spec: JobSpec) -> str:
    """The spec's vocab file, or vocab.txt beside init_checkpoint."""
    if spec.model.vocab_file:
        return spec.model.vocab_file
    if spec.model.init_checkpoint:
        path = Path(spec.model.init_checkpoint)
        candidate = (path if path.is_dir() else path.parent) / "vocab.txt"
        if candidate.is_file():
            return str(candidate)
    raise SpecError("model.vocab_file: required (no vocab.txt beside init_checkpoint)")


def build_tokenizer(spec: JobSpec, config: BertConfig) -> FullTokenizer:
    path = vocab_file(spec)
    try:
        check_vocab_size(path, config)
        return FullTokenizer(path, do_lower_case=spec.model.do_lower_case)
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        raise SpecError(f"model.vocab_file: {err}") from None


def build_model(spec: JobSpec, config: BertConfig, head: str, num_labels: int = 2,
                on: torch.device | None = None) -> BertPreTrainedModel:
    """A model of `config` with the task's head: fresh, or holding the init_checkpoint's weights.

    Raises:
        SpecError: an unreadable init_checkpoint, or one whose shapes differ from `config`.
    """
    from models import bert

    classes = {"pretraining": bert.BertForPreTraining, "classification": bert.BertForSequenceClassification,
               "question_answering": bert.BertForQuestionAnswering, "model": bert.BertModel}
    if not spec.model.init_checkpoint:
        cls = classes[head]
        model = cls(config, num_labels) if head == "classification" else cls(config)
    else:
        try:
            model = load_pretrained(spec.model.init_checkpoint, head=head, num_labels=num_labels)  # type: ignore[arg-type]
        except (CheckpointError, ConfigError) as err:
            raise SpecError(f"model.init_checkpoint: {err}") from None
        shape_keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                      "max_position_embeddings", "type_vocab_size", "hidden_act")
        diff = {k: (getattr(model.config, k), getattr(config, k)) for k in shape_keys
                if getattr(model.config, k) != getattr(config, k)}
        if diff:
            raise SpecError(f"model.init_checkpoint {spec.model.init_checkpoint} does not match the model config "
                            f"(checkpoint vs config: {diff}); use the bert_config_file that came with it")
        # The loaded model is used as is (building a second one costs seconds); the spec's
        # dropout overrides are applied to its modules.
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = config.hidden_dropout_prob
            elif isinstance(module, bert.BertSelfAttention):
                module.dropout_prob = config.attention_probs_dropout_prob
        model.config = config
    if spec.model.gradient_checkpointing:
        model.set_gradient_checkpointing(True)
    if spec.model.unpad_inputs and spec.resources.backend != "xla":  # XLA wants static shapes
        model.set_unpadding(True)
    return model.to(on or device())


def export_model(spec: JobSpec, model: BertPreTrainedModel, tokenizer: FullTokenizer | None) -> str | None:
    """Writes the final model as a Hugging Face directory (`output_dir/export`, with vocab.txt), the
    input of `load_pretrained`, a later job's init_checkpoint and transformers' from_pretrained."""
    if not spec.output.export_hf:
        return None
    from models.checkpoints import write_hf_directory

    url = f"{spec.output.output_dir.rstrip('/')}/export"
    fs, path = fsspec.core.url_to_fs(url)
    fs.makedirs(path, exist_ok=True)
    # write_hf_directory writes local files; for remote outputs, write locally and upload.
    if isinstance(fs, LocalFileSystem):
        write_hf_directory(model, path)
    else:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            write_hf_directory(model, tmp)
            fs.put(f"{tmp}/", path, recursive=True)
    if tokenizer is not None:
        with fs.open(f"{path}/vocab.txt", "wb") as f:
            f.write(tokenizer.vocab_file.read_bytes())
    return url


def _count_lines(path: str) -> int:
    with fsspec.open(path, "r", encoding="utf-8") as f:
        return sum(1 for _ in f)


def dynamic_padding_mask(spec: JobSpec) -> str | None:
    """The mask array fine-tuning batches are cut by (ArrayLoader's trim_by), or None: dynamic padding
    is off in the spec, or the backend compiles per shape (XLA wants max_seq_length every step)."""
    return "input_mask" if spec.data.dynamic_padding and spec.resources.backend != "xla" else None
