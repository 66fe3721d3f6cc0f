"""Job logs and resume, orchestrator side: GET /jobs/{id}/logs by byte offset (X-Log-Offset),
POST /jobs/{id}/resume (FAILED or CANCELLED -> QUEUED, failures counted afresh; 409 otherwise), and the
`bertfleet logs [-f]` and `bertfleet resume` commands against a live API server and the local store,
ending with a real tiny run interrupted, failed, resumed and followed."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from fleet_fixtures import FakeClock, make_spec, raw_spec
from test_cli import TOKEN, api_server, bertfleet, runner  # noqa: F401 - api_server is a fixture
from tiny_job import tiny_pretrain, write_tiny_config

from jobs.logging import LOG_FILE, job_log
from orchestrator import outputs
from orchestrator.api import create_app
from orchestrator.cli import app
from orchestrator.state import (
    IllegalTransition,
    JobState,
    on_resume,
    on_stopped_for_cancel,
    on_worker_failure,
)
from orchestrator.store import Store

S = JobState
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Woken:
    def __init__(self) -> None:
        self.count = 0

    def wake(self) -> None:
        self.count += 1


def _to(store: Store, job_id: str, *states: JobState) -> None:
    for state in states:
        store.transition(job_id, state, f"to {state.value}")


def _failed_twice(store: Store, clock: FakeClock, checkpoint_step: int | None = 4) -> str:
    """A job with max_failures 1 that failed twice: FAILED, with a checkpoint recorded."""
    job, _ = store.submit(make_spec(max_failures=1))
    for error in ("CUDA error 1", "CUDA error 2"):
        _to(store, job.id, S.SCHEDULED, S.RUNNING)
        if checkpoint_step is not None:
            store.record_progress(job.id, checkpoint_step=checkpoint_step)
        store.apply(job.id, on_worker_failure(store.get(job.id), error, clock.now), expected=S.RUNNING)
        clock.advance(60)
    assert store.get(job.id).state == S.FAILED
    return job.id


# --- the policy and the store -----------------------------------------------------------------------


def test_on_resume_counts_failures_afresh(store: Store, clock: FakeClock):
    job_id = _failed_twice(store, clock)
    failed = store.get(job_id)
    assert (failed.num_failures, failed.last_error, failed.finished_at) == (2, "CUDA error 2",
                                                                             clock.now - timedelta(seconds=60))
    resumed = store.resume(job_id, who="the test")
    assert resumed.state == S.QUEUED
    assert (resumed.num_failures, resumed.next_attempt_after, resumed.finished_at) == (0, None, None)
    assert resumed.checkpoint_step == 4  # the output_dir, and so the checkpoint to resume from, is kept
    assert store.events(job_id)[-1].reason == "resumed by the test from checkpoint step 4 after it was FAILED"
    # max_failures 1 applies afresh: the next failure is retried, not fatal
    _to(store, job_id, S.SCHEDULED, S.RUNNING)
    decision = on_worker_failure(store.get(job_id), "CUDA error 3", clock.now)
    assert decision.to_state == S.QUEUED and "failure 1 of at most 1" in decision.reason


def test_a_cancelled_job_resumes_without_its_old_cancel_request(store: Store):
    job, _ = store.submit(make_spec())
    _to(store, job.id, S.SCHEDULED, S.RUNNING)
    store.request_cancel(job.id)
    store.apply(job.id, on_stopped_for_cancel(store.get(job.id)), expected=S.RUNNING)
    assert store.get(job.id).cancel_requested
    resumed = store.resume(job.id)
    assert resumed.state == S.QUEUED and not resumed.cancel_requested
    assert store.events(job.id)[-1].reason == "resumed by user from the start (no checkpoint) after it was CANCELLED"


@pytest.mark.parametrize("state, advice", [
    (S.QUEUED, "already waiting to run"), (S.SCHEDULED, "cancel it, then resume it"),
    (S.RUNNING, "cancel it (bertfleet cancel), then resume it"), (S.PREEMPTED, "goes back to the queue by itself"),
    (S.SUCCEEDED, "submit a new job")])
def test_only_failed_or_cancelled_jobs_resume(store: Store, state: JobState, advice: str):
    job, _ = store.submit(make_spec())
    path = {S.QUEUED: [], S.SCHEDULED: [S.SCHEDULED], S.RUNNING: [S.SCHEDULED, S.RUNNING],
            S.PREEMPTED: [S.SCHEDULED, S.RUNNING, S.PREEMPTED], S.SUCCEEDED: [S.SCHEDULED, S.RUNNING, S.SUCCEEDED]}
    _to(store, job.id, *path[state])
    with pytest.raises(IllegalTransition, match=f"is {state.value}: only a FAILED or CANCELLED job can be resumed"):
        on_resume(store.get(job.id))
    with pytest.raises(IllegalTransition, match=advice.replace("(", r"\(").replace(")", r"\)")):
        store.resume(job.id)
    assert store.get(job.id).state == state


# --- the API ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token-0123456789"}])
def test_logs_and_resume_need_the_token(store: Store, headers):
    job, _ = store.submit(make_spec())
    store.cancel(job.id)
    api = TestClient(create_app(store, TOKEN))
    for method, path in (("get", f"/jobs/{job.id}/logs"), ("get", f"/jobs/{job.id}/logs?offset=0"),
                         ("post", f"/jobs/{job.id}/resume")):
        response = getattr(api, method)(path, headers=headers)
        assert response.status_code == 401, (method, path)
        assert "x-log-offset" not in response.headers
    assert store.get(job.id).state == S.CANCELLED


def test_resume_over_the_api(store: Store, clock: FakeClock):
    controller = Woken()
    api = TestClient(create_app(store, TOKEN, controller=controller))  # type: ignore[arg-type]
    failed = _failed_twice(store, clock)
    response = api.post(f"/jobs/{failed}/resume", headers=AUTH)
    assert response.status_code == 200, response.text
    assert (response.json()["state"], response.json()["num_failures"]) == ("QUEUED", 0)
    assert controller.count == 1
    events = api.get(f"/jobs/{failed}/events", headers=AUTH).json()["events"]
    assert (events[-1]["from_state"], events[-1]["to_state"]) == ("FAILED", "QUEUED")
    assert events[-1]["reason"] == "resumed by the API from checkpoint step 4 after it was FAILED"

    cancelled, _ = store.submit(make_spec())
    store.cancel(cancelled.id)
    assert api.post(f"/jobs/{cancelled.id}/resume", headers=AUTH).json()["state"] == "QUEUED"
    assert store.events(cancelled.id)[-1].reason == (
        "resumed by the API from the start (no checkpoint) after it was CANCELLED")

    running, _ = store.submit(make_spec())
    _to(store, running.id, S.SCHEDULED, S.RUNNING)
    conflict = api.post(f"/jobs/{running.id}/resume", headers=AUTH)
    assert conflict.status_code == 409
    assert conflict.json()["detail"] == (f"job {running.id} is RUNNING: only a FAILED or CANCELLED job can be resumed; "
                                         "it is running; to restart it, cancel it (bertfleet cancel), then resume it")
    assert store.get(running.id).state == S.RUNNING and controller.count == 2
    assert api.post("/jobs/job-nope/resume", headers=AUTH).status_code == 404


def test_logs_by_offset(store: Store, tmp_path: Path):
    out = tmp_path / "run"
    job, _ = store.submit(make_spec(out))
    api = TestClient(create_app(store, TOKEN))

    def logs(query: str) -> tuple[str, int]:
        response = api.get(f"/jobs/{job.id}/logs?{query}", headers=AUTH)
        assert response.status_code == 200, response.text
        return response.text, int(response.headers["x-log-offset"])

    assert logs("lines=5") == ("", 0) and logs("offset=0") == ("", 0)  # no log yet
    out.mkdir()
    (out / LOG_FILE).write_text("one\ntwo\nthree\nhalf a li")  # the last line is still being written
    assert logs("lines=2") == ("two\nthree\n", 14)
    assert logs("offset=4") == ("two\nthree\n", 14)
    assert logs("offset=14") == ("", 14)  # a partial line waits for its end
    with (out / LOG_FILE).open("a") as f:
        f.write("ne\nfour\n")
    assert logs("offset=14") == ("half a line\nfour\n", 31)
    assert logs("offset=31") == ("", 31)
    assert logs("offset=99999&lines=1") == ("four\n", 31)  # past the end: rewritten shorter, so the tail
    assert api.get(f"/jobs/{job.id}/logs?offset=-1", headers=AUTH).status_code == 422
    assert api.get("/jobs/job-nope/logs?offset=0", headers=AUTH).status_code == 404


def test_read_log_catches_up_in_bounded_reads_and_reads_object_stores():
    bucket = f"memory://logs-{uuid.uuid4().hex}"
    with job_log(bucket) as handler:
        for i in range(5):
            handler.write_line(f"line {i}")
    text, offset, seen = "", 0, []
    while True:
        text, offset = outputs.read_log(bucket, offset=offset, max_bytes=15)  # two 7-byte lines a read
        if not text:
            break
        seen.append(text)
    assert seen == ["line 0\nline 1\n", "line 2\nline 3\n", "line 4\n"] and offset == 35
    assert outputs.read_log(bucket, num_lines=2) == ("line 3\nline 4\n", 35)
    with job_log(bucket) as handler:
        handler.write_line("x" * 40)  # a line longer than a read comes in pieces
    assert outputs.read_log(bucket, offset=35, max_bytes=15) == ("x" * 15, 50)


# --- the CLI ------------------------------------------------------------------------------------------


@pytest.fixture()
def http_env(api_server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # noqa: F811
    url, store = api_server
    monkeypatch.setenv("BERTFLEET_API", url)
    monkeypatch.setenv("BERTFLEET_TOKEN", TOKEN)
    monkeypatch.setenv("BERTFLEET_DB", str(tmp_path / "unused.db"))
    monkeypatch.setenv("COLUMNS", "200")
    return store


def test_logs_and_logs_follow_over_http(http_env: Store, tmp_path: Path):
    store = http_env
    out = tmp_path / "run"
    out.mkdir()
    job, _ = store.submit(make_spec(out))
    _to(store, job.id, S.SCHEDULED, S.RUNNING)
    (out / LOG_FILE).write_text("".join(f"old {i}\n" for i in range(10)))
    assert bertfleet("logs", job.id, "--lines", "2") == "old 8\nold 9\n"
    as_json = json.loads(bertfleet("logs", job.id, "-n", "3", "--json"))
    assert as_json == {"job_id": job.id, "state": "RUNNING", "offset": 60, "lines": ["old 7", "old 8", "old 9"]}

    def the_job_goes_on() -> None:
        for i in range(3):
            time.sleep(0.3)
            with (out / LOG_FILE).open("a") as f:
                f.write(f"new {i}\n")
        with (out / LOG_FILE).open("a") as f:
            f.write("last words\n")
        store.transition(job.id, S.SUCCEEDED, "the run finished")  # after its last line, as a run ends

    writer = threading.Thread(target=the_job_goes_on)
    writer.start()
    result = runner.invoke(app, ["logs", job.id, "-f", "--lines", "1", "--interval", "0.1"])
    writer.join()
    assert result.exit_code == 0, result.output
    assert result.stdout == "old 9\nnew 0\nnew 1\nnew 2\nlast words\n"
    assert f"{job.id} SUCCEEDED" in result.stderr

    # --follow --json: one JSON object a line; the last one says how the job ended
    records = [json.loads(line) for line in bertfleet("logs", job.id, "-f", "--json", "-n", "2").splitlines()]
    assert records == [{"job_id": job.id, "state": "SUCCEEDED", "offset": 89, "lines": ["new 2", "last words"]}]


def test_logs_follow_waits_for_a_queued_job(http_env: Store, tmp_path: Path):
    store = http_env
    out = tmp_path / "run"
    job, _ = store.submit(make_spec(out))

    def the_job_runs() -> None:
        time.sleep(0.3)
        _to(store, job.id, S.SCHEDULED, S.RUNNING)
        out.mkdir()
        (out / LOG_FILE).write_text("started\n")
        time.sleep(0.3)
        store.transition(job.id, S.FAILED, "it broke")

    writer = threading.Thread(target=the_job_runs)
    writer.start()
    result = runner.invoke(app, ["logs", job.id, "--follow", "--json", "--interval", "0.1"])
    writer.join()
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line for r in records for line in r["lines"]] == ["started"]  # no object for polls with nothing new
    assert records[-1]["state"] == "FAILED"


def test_resume_over_http(http_env: Store):
    store = http_env
    job, _ = store.submit(make_spec())
    store.cancel(job.id)
    assert bertfleet("resume", job.id).strip() == f"{job.id} QUEUED: resumes from the start (no checkpoint) when scheduled"
    assert store.events(job.id)[-1].reason == "resumed by the API from the start (no checkpoint) after it was CANCELLED"
    result = runner.invoke(app, ["resume", job.id])  # now QUEUED
    assert result.exit_code == 2
    assert "409" in result.output and "is QUEUED: only a FAILED or CANCELLED job can be resumed" in result.output
    store.cancel(job.id)
    resumed = json.loads(bertfleet("resume", job.id, "--json"))
    assert resumed["id"] == job.id and resumed["state"] == "QUEUED"
    result = runner.invoke(app, ["resume", "job-nope"])
    assert result.exit_code == 2 and "404" in result.output


def test_logs_and_resume_on_the_local_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("BERTFLEET_DB", str(tmp_path / "cli.db"))
    monkeypatch.delenv("BERTFLEET_API", raising=False)
    monkeypatch.delenv("BERTFLEET_TOKEN", raising=False)
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(raw_spec(tmp_path / "out", name="local-job")))
    job_id = bertfleet("submit", str(spec_file)).split()[0]
    assert bertfleet("logs", job_id) == ""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / LOG_FILE).write_text("a\nb\n")
    assert bertfleet("logs", job_id, "-n", "1") == "b\n"
    bertfleet("cancel", job_id)
    assert bertfleet("logs", job_id, "-f") == "a\nb\n"  # the job has ended: -f prints the tail and stops
    assert json.loads(bertfleet("resume", job_id, "--json"))["state"] == "QUEUED"
    events = json.loads(bertfleet("events", job_id, "--json"))
    assert events[-1]["reason"] == "resumed by the CLI from the start (no checkpoint) after it was CANCELLED"


# --- a real run: interrupted, failed, resumed, followed -----------------------------------------------


def test_a_failed_run_resumes_from_its_checkpoint_and_its_log_shows_both_attempts(
        http_env: Store, shared: Path, tmp_path: Path):
    from jobs.runner import run_job
    from jobs.trainer import StopTraining

    store = http_env
    config = write_tiny_config(tmp_path / "bert_config.json")
    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(yaml.safe_dump(tiny_pretrain(
        shared, config, tmp_path / "run", name="tiny",
        training={"num_train_steps": 6, "num_warmup_steps": 1, "log_every_steps": 2},
        resources={"max_failures": 0})))
    job_id = json.loads(bertfleet("submit", str(spec_file), "--json"))["id"]

    def attempt(stop_after: int | None) -> None:
        """What the controller and a worker do for one attempt, in this process."""
        _to(store, job_id, S.SCHEDULED, S.RUNNING)
        calls = []
        spec = store.get(job_id).spec
        try:
            run_job(spec, should_stop=lambda: calls.append(1) or (stop_after is not None and len(calls) >= stop_after))
        except StopTraining:
            # as the controller would see a run that died: a real failure, fatal with max_failures 0
            _, checkpoint = outputs.progress_from_metrics(outputs.read_metrics(spec.output.output_dir), 6)
            store.record_progress(job_id, checkpoint_step=checkpoint)
            store.apply(job_id, on_worker_failure(store.get(job_id), "worker died", store.clock()), expected=S.RUNNING)
            return
        store.transition(job_id, S.SUCCEEDED, "the run finished")

    attempt(stop_after=3)
    assert json.loads(bertfleet("status", job_id, "--json"))["state"] == "FAILED"
    assert bertfleet("resume", job_id).strip() == f"{job_id} QUEUED: resumes from checkpoint step 3 when scheduled"
    attempt(stop_after=None)
    log = bertfleet("logs", job_id, "--lines", "1000")
    first, _, second = log.partition("--- attempt resumed at step 3 (the newest committed checkpoint), ")
    assert "INFO step 2/6" in first and "WARNING stopping at step 3 on request" in first
    assert "INFO resumed from the checkpoint of step 3" in second and "INFO step 6/6" in second
    assert bertfleet("logs", job_id, "-f", "-n", "1000") == log  # SUCCEEDED: -f prints it all and stops
    reasons = [e["reason"] for e in json.loads(bertfleet("events", job_id, "--json"))]
    assert "resumed by the API from checkpoint step 3 after it was FAILED" in reasons
    logging.getLogger("bertfleet").info("after the job: not in its log")
    assert "after the job" not in (tmp_path / "run" / LOG_FILE).read_text()
