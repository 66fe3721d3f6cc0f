"""The job log (`job.log` in the output directory): written by a real tiny pretraining run through
`run_job`, locally and on an object store (memory://), appended to by a resumed attempt after a
separator, errors with their tracebacks, other ranks' errors prefixed with the rank, no secrets, a
bounded object, and the process's logging left as it was."""

from __future__ import annotations

import json
import logging
import time
import uuid
import warnings

import fsspec
import pytest
from tiny_job import tiny_pretrain, write_tiny_config

from jobs.logging import LOG_FILE, JobLogHandler, job_log
from jobs.runner import run_job
from jobs.spec import parse_spec
from jobs.trainer import StopTraining

WANDB_KEY = "wandb-key-0123456789abcdef"  # the environment's secret: it must never reach the log


@pytest.fixture()
def spec_dict(shared, tmp_path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WANDB_API_KEY", WANDB_KEY)
    config = write_tiny_config(tmp_path / "bert_config.json")
    return tiny_pretrain(shared, config, tmp_path / "run",
                         training={"num_train_steps": 6, "num_warmup_steps": 1, "log_every_steps": 2})


def _run(spec_dict, output_dir: str, stop_at: int | None = None):
    raw = json.loads(json.dumps(spec_dict))
    raw["output"]["output_dir"] = output_dir
    steps = []

    def should_stop() -> bool:
        steps.append(1)
        return stop_at is not None and len(steps) >= stop_at

    return run_job(parse_spec(raw), should_stop=should_stop)


def _read(url: str) -> str:
    with fsspec.open(url, "rb") as f:
        return f.read().decode()


def _job_handlers() -> list[logging.Handler]:
    return [h for name in ("bertfleet", "jobs", "models") for h in logging.getLogger(name).handlers
            if isinstance(h, JobLogHandler)]


@pytest.mark.parametrize("where", ["local", "memory"])
def test_a_run_writes_its_log_and_a_resumed_attempt_appends_after_a_separator(spec_dict, tmp_path, where):
    output_dir = str(tmp_path / "run") if where == "local" else f"memory://joblog-{uuid.uuid4().hex}/run"
    levels = {name: logging.getLogger(name).level for name in ("bertfleet", "jobs", "models")}
    with pytest.raises(StopTraining):
        _run(spec_dict, output_dir, stop_at=3)  # stops after step 3, with a checkpoint of step 3
    first = _read(f"{output_dir}/{LOG_FILE}")
    assert f"INFO running pretrain job  -> {output_dir}" in first
    assert "INFO step 2/6  loss" in first
    assert "WARNING stopping at step 3 on request (checkpoint committed)" in first
    assert "---" not in first and "ERROR" not in first  # a requested stop is not an error

    _run(spec_dict, output_dir)
    log = _read(f"{output_dir}/{LOG_FILE}")
    assert log.startswith(first)  # appended to, not rewritten
    resumed = log[len(first):].splitlines()
    assert resumed[0].startswith("--- attempt resumed at step 3 (the newest committed checkpoint), ")
    assert resumed[0].endswith(" ---")
    assert any("INFO resumed from the checkpoint of step 3" in line for line in resumed)
    assert any("INFO step 6/6  loss" in line for line in resumed)
    assert not any("step 2/6" in line for line in resumed)
    assert WANDB_KEY not in log
    # the handler is gone and the loggers are as they were
    assert _job_handlers() == []
    assert {name: logging.getLogger(name).level for name in levels} == levels


def test_an_error_that_ends_the_job_is_logged_with_its_traceback(spec_dict, tmp_path):
    spec_dict["data"]["train_file"] = str(tmp_path / "no-such-*.tfrecord")
    with pytest.raises(Exception) as raised:
        _run(spec_dict, str(tmp_path / "run"))
    log = (tmp_path / "run" / LOG_FILE).read_text()
    assert f"ERROR the job failed: {type(raised.value).__name__}: " in log
    assert "Traceback (most recent call last):" in log and "no-such-" in log
    assert _job_handlers() == []


def test_secrets_from_the_environment_and_url_passwords_are_masked(tmp_path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WANDB_API_KEY", WANDB_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-xyz-987654")
    with job_log(str(tmp_path)):
        logging.getLogger("bertfleet").info("key %s, reading s3://AKIA:hunter2@bucket/x with aws-secret-xyz-987654",
                                            WANDB_KEY)
    log = (tmp_path / LOG_FILE).read_text()
    assert "key ***, reading s3://AKIA:***@bucket/x with ***" in log
    assert WANDB_KEY not in log and "hunter2" not in log and "aws-secret" not in log


def test_other_ranks_write_only_their_errors_prefixed_with_the_rank(tmp_path):
    out = tmp_path / "run"
    with job_log(str(out), rank=0):
        logging.getLogger("bertfleet").info("rank zero's progress")
    with job_log(str(out), rank=2) as handler:
        logging.getLogger("bertfleet").info("rank two's progress")
        logging.getLogger("jobs.data.tfrecord").warning("rank two's warning")
        try:
            raise RuntimeError("NCCL timeout on rank two")
        except RuntimeError as err:
            handler.write_exception("the job failed: RuntimeError: NCCL timeout on rank two", err)
    lines = (out / LOG_FILE).read_text().splitlines()
    assert lines[0].endswith("INFO rank zero's progress")
    assert "rank two's" not in "\n".join(lines[:1] + lines[2:3])  # no INFO or WARNING from rank 2
    assert len(lines) > 3 and all(line.startswith("[rank 2] ") for line in lines[1:])  # the traceback too
    assert "ERROR the job failed: RuntimeError: NCCL timeout on rank two" in lines[1]
    assert lines[-1] == "[rank 2] RuntimeError: NCCL timeout on rank two"

    # an object has one writer: on object stores, another rank's errors go beside job.log
    bucket = f"memory://joblog-{uuid.uuid4().hex}"
    with job_log(bucket, rank=1):
        logging.getLogger("bertfleet").error("rank one failed")
    assert _read(f"{bucket}/job.rank-1.log").endswith("ERROR rank one failed\n")
    assert not fsspec.filesystem("memory").exists(f"{bucket}/{LOG_FILE}")


def test_warnings_reach_the_log_and_showwarning_is_put_back(tmp_path):
    before = warnings.showwarning
    with job_log(str(tmp_path)), warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("resources.deepspeed.offload_parameters does nothing at zero_stage 2", UserWarning,
                      stacklevel=1)
    assert warnings.showwarning is before
    assert ("WARNING resources.deepspeed.offload_parameters does nothing at zero_stage 2 (UserWarning at "
            in (tmp_path / LOG_FILE).read_text())


def test_an_object_store_log_is_rewritten_periodically_and_stays_bounded():
    bucket = f"memory://joblog-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    with job_log(bucket, max_bytes=4000, flush_every_s=0.05):
        logging.getLogger("bertfleet").info("early line")
        for _ in range(200):  # the flusher publishes without waiting for close
            if fs.exists(f"{bucket}/{LOG_FILE}"):
                break
            time.sleep(0.01)
        assert "early line" in _read(f"{bucket}/{LOG_FILE}")
        for i in range(500):
            logging.getLogger("bertfleet").info("line %04d %s", i, "x" * 40)
    log = _read(f"{bucket}/{LOG_FILE}")
    assert len(log.encode()) <= 4000
    assert log.endswith(f"line 0499 {'x' * 40}\n") and "early line" not in log
    assert log.splitlines()[0].split(" INFO ")[1].startswith("line ")  # trimmed at a line boundary

    # a later attempt reads the object back and appends to it
    with job_log(bucket, max_bytes=4000) as handler:
        assert handler.had_lines
        handler.write_line("--- attempt resumed ---")
    assert _read(f"{bucket}/{LOG_FILE}") == log + "--- attempt resumed ---\n"
