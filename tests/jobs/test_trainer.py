"""The trainer, end to end on real pretraining data: accumulation, exact resume (bitwise), atomic
checkpoints, W&B offline files across a resume."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_job import tiny_pretrain, write_tiny_config
from wandb_records import run_history

from jobs.checkpoint import CheckpointStore
from jobs.runner import run_job
from jobs.spec import parse_spec
from jobs.trainer import StopTraining


@pytest.fixture()
def spec_dict(shared, tmp_path):
    config = write_tiny_config(tmp_path / "bert_config.json")
    return tiny_pretrain(shared, config, tmp_path / "run",
                         data={"eval_file": str(shared / "fixtures/sample_text_wwmTrue.tfrecord")},
                         training={"gradient_accumulation_steps": 2, "num_train_steps": 12, "log_every_steps": 2,
                                   "eval_batch_size": 32, "do_eval": True},
                         output={"keep_checkpoints": 2})


def _final_weights(output_dir) -> dict[str, torch.Tensor]:
    return CheckpointStore(str(output_dir)).load()["backend"]["model"]


def _run(spec_dict, output_dir, stop_at=None, wandb=False):
    raw = json.loads(json.dumps(spec_dict))
    raw["output"]["output_dir"] = str(output_dir)
    raw["logging"]["wandb"] = wandb
    spec = parse_spec(raw)
    steps = []

    def should_stop():
        steps.append(1)
        return stop_at is not None and len(steps) >= stop_at

    return run_job(spec, should_stop=should_stop)


def test_interrupted_and_resumed_run_is_bitwise_equal(spec_dict, tmp_path):
    full = _run(spec_dict, tmp_path / "full")
    with pytest.raises(StopTraining):
        _run(spec_dict, tmp_path / "cut", stop_at=5)  # stops after step 5 (between periodic checkpoints)
    store = CheckpointStore(str(tmp_path / "cut"))
    assert store.latest() == 5
    resumed = _run(spec_dict, tmp_path / "cut")
    a, b = _final_weights(tmp_path / "full"), _final_weights(tmp_path / "cut")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert resumed == full
    assert full["global_step"] == 12 and full["masked_lm_loss"] > 0
    results = (tmp_path / "full" / "eval_results.txt").read_text().splitlines()
    assert [line.split(" = ")[0] for line in results] == sorted(
        ["global_step", "loss", "masked_lm_accuracy", "masked_lm_loss", "next_sentence_accuracy", "next_sentence_loss"])


def test_accumulation_equals_the_large_batch(spec_dict, tmp_path):
    spec_dict["model"]["hidden_dropout_prob"] = 0.0
    spec_dict["model"]["attention_probs_dropout_prob"] = 0.0
    spec_dict["training"].update(num_train_steps=3, do_eval=False)
    _run(spec_dict, tmp_path / "accumulated")
    spec_dict["training"]["gradient_accumulation_steps"] = 1
    _run(spec_dict, tmp_path / "whole")
    a, b = _final_weights(tmp_path / "accumulated"), _final_weights(tmp_path / "whole")
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=2e-6, rtol=1e-5, msg=name)


def test_checkpoints_are_committed_and_pruned(spec_dict, tmp_path):
    _run(spec_dict, tmp_path / "run")
    store = CheckpointStore(str(tmp_path / "run"), keep=2)
    assert store.committed_steps() == [8, 12]
    # A half-written checkpoint (no COMMITTED marker) is never picked.
    half = tmp_path / "run" / "checkpoints" / "step-00000099"
    half.mkdir()
    (half / "state.pt").write_bytes(b"partial")
    assert store.latest() == 12
    with pytest.raises(FileNotFoundError, match="not committed"):
        store.load(99)


def test_wandb_offline_continues_the_same_run_without_duplicate_steps(spec_dict, tmp_path):
    with pytest.raises(StopTraining):
        _run(spec_dict, tmp_path / "run", stop_at=7, wandb=True)
    _run(spec_dict, tmp_path / "run", wandb=True)
    run_id, rows = run_history(tmp_path / "run" / "wandb")
    steps = [row["_step"] for row in rows]
    assert len(steps) == len(set(steps)), f"duplicate steps {steps}"
    loss_steps = sorted(row["_step"] for row in rows if "train/loss" in row)
    assert loss_steps == [2, 4, 6, 8, 10, 12]
    assert any("eval/masked_lm_accuracy" in row for row in rows)
    state = CheckpointStore(str(tmp_path / "run")).load()
    assert state["wandb_run_id"] == run_id


def test_bf16_autocast_and_gradient_checkpointing(spec_dict, tmp_path):
    spec_dict["model"].update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    spec_dict["training"].update(num_train_steps=3, do_eval=False, log_every_steps=1)
    _run(spec_dict, tmp_path / "plain")
    spec_dict["model"]["gradient_checkpointing"] = True
    _run(spec_dict, tmp_path / "checkpointed")
    a, b = _final_weights(tmp_path / "plain"), _final_weights(tmp_path / "checkpointed")
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5, msg=name)
    spec_dict["model"]["gradient_checkpointing"] = False
    spec_dict["training"]["precision"] = "bf16"
    _run(spec_dict, tmp_path / "bf16")
    losses = [json.loads(line)["train/loss"] for line in (tmp_path / "bf16" / "metrics.jsonl").read_text().splitlines()
              if "train/loss" in line]
    plain = [json.loads(line)["train/loss"] for line in (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()
             if "train/loss" in line]
    assert len(losses) == 3 and all(abs(x - y) < 0.05 for x, y in zip(losses, plain)), (losses, plain)
    assert losses != plain  # bf16 really ran


def test_unpadded_inputs_train_and_evaluate_like_padded_ones(spec_dict, tmp_path):
    # The fixture records are padded to 128 with real lengths that vary: packing must change only speed.
    spec_dict["model"].update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    spec_dict["training"].update(num_train_steps=4, log_every_steps=1)
    padded = _run(spec_dict, tmp_path / "padded")
    spec_dict["model"]["unpad_inputs"] = True
    unpadded = _run(spec_dict, tmp_path / "unpadded")
    a, b = _final_weights(tmp_path / "padded"), _final_weights(tmp_path / "unpadded")
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-6, rtol=1e-5, msg=name)
    assert padded.keys() == unpadded.keys()
    for key, value in padded.items():
        assert unpadded[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_lamb_and_adamw_train(spec_dict, tmp_path):
    spec_dict["training"].update(num_train_steps=2, do_eval=False, log_every_steps=1)
    for name in ("lamb", "adamw"):
        spec_dict["training"]["optimizer"] = name
        _run(spec_dict, tmp_path / name)
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows if "train/loss" in r] == [1, 2]
