"""`bertfleet submit/list/status/cancel/events`, against the local store and against the HTTP API
(a real uvicorn server on 127.0.0.1)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
import yaml
from fleet_fixtures import raw_spec
from typer.testing import CliRunner

from orchestrator.api import create_app
from orchestrator.cli import app
from orchestrator.store import Store

TOKEN = "cli-test-token-0123456789"
runner = CliRunner()


@pytest.fixture()
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw_spec(tmp_path / "out", name="cli-job")))
    return path


@pytest.fixture()
def local_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    db = tmp_path / "cli.db"
    monkeypatch.setenv("BERTFLEET_DB", str(db))
    monkeypatch.delenv("BERTFLEET_API", raising=False)
    monkeypatch.delenv("BERTFLEET_TOKEN", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    return db


def bertfleet(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def test_the_job_commands_on_the_local_store(local_env: Path, spec_file: Path):
    job_id = bertfleet("submit", str(spec_file), "--priority", "4").split()[0]
    assert job_id.startswith("job-")
    as_json = json.loads(bertfleet("submit", str(spec_file), "--json", "--idempotency-key", "k1"))
    assert as_json["state"] == "QUEUED" and as_json["created"]
    again = bertfleet("submit", str(spec_file), "--idempotency-key", "k1")
    assert again.startswith(as_json["id"]) and "already submitted" in again

    table = bertfleet("list")
    assert job_id in table and as_json["id"] in table and "cli-job" in table and "QUEUED" in table
    listed = json.loads(bertfleet("list", "--json", "--state", "queued"))
    assert [j["id"] for j in listed] == [job_id, as_json["id"]] and listed[0]["priority"] == 4
    assert json.loads(bertfleet("list", "--json", "--state", "RUNNING")) == []

    assert "cli-job" in bertfleet("status", job_id)
    status = json.loads(bertfleet("status", job_id, "--json"))
    assert status["spec"]["name"] == "cli-job" and status["state"] == "QUEUED"

    assert bertfleet("cancel", job_id).strip() == f"{job_id} CANCELLED"
    events = json.loads(bertfleet("events", job_id, "--json"))
    assert [(e["from_state"], e["to_state"]) for e in events] == [(None, "QUEUED"), ("QUEUED", "CANCELLED")]
    assert "cancelled by the CLI while QUEUED" in bertfleet("events", job_id)

    # the store is the file BERTFLEET_DB names, and it outlives the commands
    store = Store(local_env)
    assert [j.id for j in store.jobs()] == [job_id, as_json["id"]]
    store.close()


def test_errors_name_the_problem(local_env: Path, tmp_path: Path, spec_file: Path, monkeypatch: pytest.MonkeyPatch):
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: pretrain\nmodel: {size: tiny}\noutput: {output_dir: /tmp/x}\ntraining: {learning_rat: 1}\n")
    result = runner.invoke(app, ["submit", str(bad)])
    assert result.exit_code == 2 and "training.learning_rat: unknown key" in result.output
    result = runner.invoke(app, ["status", "job-nope"])
    assert result.exit_code == 2 and "no job 'job-nope'" in result.output
    result = runner.invoke(app, ["list", "--state", "DONE"])
    assert result.exit_code == 2 and "unknown job state" in result.output
    secret = tmp_path / "secret.yaml"
    secret.write_text(yaml.safe_dump(raw_spec("s3://AKIA:hunter2@bucket/run")))
    result = runner.invoke(app, ["submit", str(secret)])
    assert result.exit_code == 2 and "looks like a secret" in result.output and "hunter2" not in result.output
    monkeypatch.setenv("BERTFLEET_API", "http://127.0.0.1:9")
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 2 and "BERTFLEET_TOKEN is not" in result.output


@pytest.fixture()
def api_server(tmp_path: Path) -> Iterator[tuple[str, Store]]:
    store = Store(tmp_path / "server.db")
    server = uvicorn.Server(uvicorn.Config(create_app(store, TOKEN), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", store
    server.should_exit = True
    thread.join(timeout=10)
    store.close()


def test_the_job_commands_over_http(api_server, spec_file: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    url, store = api_server
    monkeypatch.setenv("BERTFLEET_API", url)
    monkeypatch.setenv("BERTFLEET_TOKEN", TOKEN)
    monkeypatch.setenv("BERTFLEET_DB", str(tmp_path / "unused.db"))
    job = json.loads(bertfleet("submit", str(spec_file), "--json", "--idempotency-key", "once", "--priority", "2"))
    assert bertfleet("submit", str(spec_file), "--idempotency-key", "once", "--priority", "2").startswith(job["id"])
    result = runner.invoke(app, ["submit", str(spec_file), "--idempotency-key", "once"])  # priority 0 this time
    assert result.exit_code == 2 and "409" in result.output and "different spec or priority" in result.output
    assert [j.id for j in store.jobs()] == [job["id"]]  # stored by the server, once
    assert [j["id"] for j in json.loads(bertfleet("list", "--json"))] == [job["id"]]
    assert job["id"] in bertfleet("list", "--state", "QUEUED")
    assert json.loads(bertfleet("status", job["id"], "--json"))["priority"] == 2
    assert bertfleet("cancel", job["id"]).strip() == f"{job['id']} CANCELLED"
    assert [e["to_state"] for e in json.loads(bertfleet("events", job["id"], "--json"))] == ["QUEUED", "CANCELLED"]
    assert not (tmp_path / "unused.db").exists()

    monkeypatch.setenv("BERTFLEET_TOKEN", "wrong-token-0123456789")
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 2 and "401" in result.output and TOKEN not in result.output
