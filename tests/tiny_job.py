"""The tiny BERT and the tiny pretraining job that many tests run: 2 layers, hidden 32, the real
uncased vocabulary, pretraining on the original's sample TFRecords in ../shared/fixtures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from jobs.checkpoint import CheckpointStore
from models import BertConfig


def write_tiny_config(path: Path, max_position_embeddings: int = 128, dropout: float = 0.1) -> str:
    """Writes the tiny config as Google's bert_config.json; returns its path. dropout=0 for runs that
    must equal each other across process counts (ranks draw different dropout masks)."""
    BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
               max_position_embeddings=max_position_embeddings, hidden_dropout_prob=dropout,
               attention_probs_dropout_prob=dropout).to_google_json(path)
    return str(path)


def tiny_pretrain(shared: Path, config_file: str | Path, output_dir: str | Path, **sections: Any) -> dict[str, Any]:
    """The raw spec of a 10-step pretraining job of the tiny BERT. Each keyword updates its section
    (a dict is merged into the default section, e.g. training={"num_train_steps": 6}; anything else
    replaces it, e.g. name="tiny")."""
    raw: dict[str, Any] = {
        "kind": "pretrain",
        "model": {"bert_config_file": str(config_file), "vocab_file": str(shared / "data/uncased_vocab.txt")},
        "data": {"train_file": str(shared / "fixtures/sample_text_wwm*.tfrecord"), "shuffle_buffer": 16},
        "training": {"train_batch_size": 8, "num_train_steps": 10, "num_warmup_steps": 2, "learning_rate": 1e-3,
                     "log_every_steps": 1, "do_eval": False},
        "output": {"output_dir": str(output_dir), "save_checkpoints_steps": 4, "export_hf": False},
        "logging": {"wandb": False},
    }
    for section, values in sections.items():
        if isinstance(values, dict) and isinstance(raw.get(section), dict):
            raw[section] = raw[section] | values
        else:
            raw[section] = values
    return raw


def logged_losses(output_dir: Path) -> list[tuple[int, float]]:
    """(step, train/loss) of every row of a job's metrics.jsonl, in order: a step logged twice shows
    twice (wrap in dict() where only the values matter)."""
    rows = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return [(row["step"], row["train/loss"]) for row in rows if "train/loss" in row]


def checkpoint_weights(output_dir: Path) -> dict[str, torch.Tensor]:
    """The model state of a job's latest committed checkpoint."""
    return CheckpointStore(str(output_dir)).load()["backend"]["model"]
