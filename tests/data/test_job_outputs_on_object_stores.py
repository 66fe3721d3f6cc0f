"""A pretraining job whose output_dir is on real object storage (the GCS emulator through gcsfs, moto's
S3 server through s3fs): checkpoints, metrics.jsonl and job.log land there, and an interrupted run
resumed from its checkpoint leaves every step's metrics exactly once.

gcsfs has no append: its "a" mode overwrites (with a warning), so a metrics file appended to record
by record kept only its last record. Both logs are kept in memory and rewritten (AppendedFile).
"""

from __future__ import annotations

import json
import time

import fsspec
import pytest
from tiny_job import tiny_pretrain, write_tiny_config

from jobs.checkpoint import CheckpointStore
from jobs.runner import run_job
from jobs.spec import parse_spec
from jobs.trainer import StopTraining

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("loopback_only")]

STEPS, STOP_AT = 6, 4


@pytest.fixture(params=["gcs_emulator", "s3_server"])
def output_dir(request: pytest.FixtureRequest) -> str:
    server = request.getfixturevalue(request.param)
    return f"{server.scheme}://{server.bucket}/job-{time.time_ns()}"


def _run(shared, tmp_path, output_dir: str, stop_at: int | None = None):
    spec = parse_spec(tiny_pretrain(shared, write_tiny_config(tmp_path / "bert_config.json"), output_dir,
                                    training={"num_train_steps": STEPS}, output={"save_checkpoints_steps": 2}))
    calls = []
    return run_job(spec, should_stop=lambda: calls.append(1) or (stop_at is not None and len(calls) >= stop_at))


def test_a_resumed_job_on_an_object_store_logs_every_step_once(shared, tmp_path, output_dir):
    with pytest.raises(StopTraining):
        _run(shared, tmp_path, output_dir, stop_at=STOP_AT)
    with fsspec.open(f"{output_dir}/metrics.jsonl", "r") as f:
        first = [json.loads(line) for line in f.read().splitlines()]
    assert [r["step"] for r in first if "train/loss" in r] == list(range(1, STOP_AT + 1))

    _run(shared, tmp_path, output_dir)
    with fsspec.open(f"{output_dir}/metrics.jsonl", "r") as f:
        records = [json.loads(line) for line in f.read().splitlines()]
    assert records[:len(first)] == first  # kept, not overwritten
    assert [r["step"] for r in records if "train/loss" in r] == list(range(1, STEPS + 1))
    assert [r["step"] for r in records if "checkpoint/step" in r] == [2, 4, 6]
    assert CheckpointStore(output_dir).latest() == STEPS
    with fsspec.open(f"{output_dir}/job.log", "r") as f:
        log = f.read()
    assert "resumed from the checkpoint of step 4" in log and f"step {STEPS}/{STEPS}" in log
