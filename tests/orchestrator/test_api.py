"""The HTTP API: token auth on every request, submit/list/get/cancel/events/metrics/logs, specs that
are refused (bad keys, code-running YAML, secrets, paths outside the storage root) leave nothing stored,
and idempotent submits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from fleet_fixtures import raw_spec

from orchestrator.api import create_app
from orchestrator.state import JobState
from orchestrator.store import Store

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Woken:
    def __init__(self) -> None:
        self.count = 0

    def wake(self) -> None:
        self.count += 1


@pytest.fixture()
def api(store: Store) -> TestClient:
    return TestClient(create_app(store, TOKEN))


def submit(api: TestClient, spec, **kwargs):
    headers = AUTH | kwargs.pop("headers", {})
    return api.post("/jobs", json={"spec": spec, **kwargs}, headers=headers)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token-0123456789"},
                                     {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"},
                                     {"Authorization": f"Bearer {TOKEN}x"}])
def test_every_request_needs_the_token(api: TestClient, store: Store, headers):
    for method, path in (("get", "/jobs"), ("get", "/jobs/job-x"), ("post", "/jobs/job-x/cancel"),
                         ("get", "/openapi.json"), ("get", "/no-such-route")):
        response = getattr(api, method)(path, headers=headers)
        assert response.status_code == 401, (method, path)
        assert response.headers["www-authenticate"] == "Bearer"
    response = api.post("/jobs", json={"spec": raw_spec()}, headers=headers)
    assert response.status_code == 401 and TOKEN not in response.text
    assert store.jobs() == []


def test_a_short_token_is_refused(store: Store):
    with pytest.raises(ValueError, match="at least 16 characters"):
        create_app(store, "short")


def test_submit_list_get_cancel_events(store: Store, tmp_path: Path):
    controller = Woken()
    api = TestClient(create_app(store, TOKEN, controller=controller))  # type: ignore[arg-type]
    response = submit(api, raw_spec(tmp_path / "a", name="first"), priority=7)
    assert response.status_code == 201, response.text
    job = response.json()
    assert (job["state"], job["name"], job["priority"], job["created"]) == ("QUEUED", "first", 7, True)
    assert response.headers["location"] == f"/jobs/{job['id']}"
    assert controller.count == 1

    second = submit(api, "kind: classify\nmodel: {size: tiny}\ndata: {task_name: mrpc}\noutput: {output_dir: /tmp/b}\n")
    assert second.status_code == 201, second.text  # YAML text works too

    listed = api.get("/jobs", headers=AUTH).json()["jobs"]
    assert [j["id"] for j in listed] == [job["id"], second.json()["id"]]
    assert [j["id"] for j in api.get("/jobs?state=queued", headers=AUTH).json()["jobs"]] == [j["id"] for j in listed]
    assert api.get("/jobs?state=RUNNING", headers=AUTH).json() == {"jobs": []}
    bad_state = api.get("/jobs?state=DONE", headers=AUTH)
    assert bad_state.status_code == 400 and "one of QUEUED" in bad_state.json()["detail"]

    got = api.get(f"/jobs/{job['id']}", headers=AUTH).json()
    assert got["spec"]["output"]["output_dir"] == str(tmp_path / "a")
    assert got["spec"]["training"]["train_batch_size"] == 32  # stored resolved, defaults filled

    cancelled = api.post(f"/jobs/{job['id']}/cancel", headers=AUTH)
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "CANCELLED"
    assert controller.count == 3  # two submits, one cancel
    events = api.get(f"/jobs/{job['id']}/events", headers=AUTH).json()["events"]
    assert [(e["from_state"], e["to_state"]) for e in events] == [(None, "QUEUED"), ("QUEUED", "CANCELLED")]
    assert events[1]["reason"] == "cancelled by the API while QUEUED"


def test_unknown_jobs_and_finished_jobs(api: TestClient, store: Store):
    assert api.get("/jobs/job-nope", headers=AUTH).status_code == 404
    assert api.post("/jobs/job-nope/cancel", headers=AUTH).status_code == 404
    job = submit(api, raw_spec()).json()
    for state in (JobState.SCHEDULED, JobState.RUNNING, JobState.SUCCEEDED):
        store.transition(job["id"], state, "test")
    response = api.post(f"/jobs/{job['id']}/cancel", headers=AUTH)
    assert response.status_code == 409 and "SUCCEEDED -> CANCELLED is not allowed" in response.json()["detail"]


def test_a_malformed_spec_names_the_key_and_stores_nothing(api: TestClient, store: Store):
    spec = raw_spec()
    spec["training"] = {"learning_rat": 1e-4, "train_batch_size": -1}
    response = submit(api, spec)
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert "training.learning_rat: unknown key" in detail and "training.train_batch_size" in detail
    bad_yaml = submit(api, "kind: pretrain\nmodel: [size\n")
    assert bad_yaml.status_code == 400 and "not valid YAML at line" in bad_yaml.json()["detail"]
    for body in ({"priority": 1}, {"spec": 3}, {"spec": raw_spec(), "priority": "high"},
                 {"spec": raw_spec(), "owner": "me"}):
        assert api.post("/jobs", json=body, headers=AUTH).status_code == 400, body
    assert api.post("/jobs", content=b"not json", headers=AUTH).status_code == 400
    assert store.jobs() == []


def test_yaml_that_would_run_code_is_refused(api: TestClient, store: Store, tmp_path: Path):
    marker = tmp_path / "pwned"
    payloads = [f'!!python/object/apply:os.system ["touch {marker}"]',
                (f"kind: pretrain\nmodel: {{size: tiny}}\noutput:\n  output_dir: !!python/object/apply:os.system "
                 f"['touch {marker}']\n"),
                "kind: !!python/name:os.system pretrain\n",
                "a: &x [1, 2]\nb: *x\n"]  # aliases: the "billion laughs" building block
    for payload in payloads:
        response = submit(api, payload)
        assert response.status_code == 400, payload
        assert "only plain YAML is accepted" in response.json()["detail"]
    assert not marker.exists()
    assert store.jobs() == []


def test_secrets_are_refused_and_never_echoed(api: TestClient, store: Store):
    with_password = raw_spec("s3://AKIAEXAMPLE:hunter2-very-secret@bucket/run")
    response = submit(api, with_password)
    assert response.status_code == 400 and "output.output_dir: looks like a secret" in response.json()["detail"]
    assert "hunter2" not in response.text
    with_key = raw_spec(backend="deepspeed", deepspeed={"config_override": {"wandb_api_key": "k-hunter2"}})
    response = submit(api, with_key)
    assert response.status_code == 400 and "resources.deepspeed.config_override.wandb_api_key" in response.text
    assert "hunter2" not in response.text
    assert store.jobs() == []


def test_output_dir_must_stay_under_the_storage_root(store: Store, tmp_path: Path):
    root = tmp_path / "runs"
    root.mkdir()
    (root / "link-out").symlink_to(tmp_path)
    api = TestClient(create_app(store, TOKEN, storage_root=str(root)))
    for escaping in ("/etc/bertfleet", "../elsewhere", "a/../../elsewhere", "link-out/x", "gs://bucket/run",
                     f"file://{tmp_path}/x"):
        response = submit(api, raw_spec(escaping))
        assert response.status_code == 400, escaping
        assert "outside the storage root" in response.json()["detail"]
    assert store.jobs() == []
    inside = submit(api, raw_spec("team/mrpc")).json()
    assert api.get(f"/jobs/{inside['id']}", headers=AUTH).json()["spec"]["output"]["output_dir"] == str(root / "team/mrpc")
    assert submit(api, raw_spec(str(root / "abs"))).status_code == 201

    bucket = TestClient(create_app(store, TOKEN, storage_root="gs://team-bucket/runs"))
    for escaping in ("gs://other-bucket/runs/x", "gs://team-bucket/runs/../secrets", "s3://team-bucket/runs/x",
                     "/tmp/x", "gs://team-bucket/runs-evil/x"):
        assert submit(bucket, raw_spec(escaping)).status_code == 400, escaping
    ok = submit(bucket, raw_spec("gs://team-bucket/runs/a/b")).json()
    rel = submit(bucket, raw_spec("c")).json()
    assert store.get(ok["id"]).spec.output.output_dir == "gs://team-bucket/runs/a/b"
    assert store.get(rel["id"]).spec.output.output_dir == "gs://team-bucket/runs/c"


def test_idempotency_key(api: TestClient, store: Store):
    first = submit(api, raw_spec(name="once"), headers={"Idempotency-Key": "3f2a-retry"})
    again = submit(api, raw_spec(name="once"), headers={"Idempotency-Key": "3f2a-retry"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"] and again.json()["created"] is False
    other = submit(api, raw_spec(name="another"), headers={"Idempotency-Key": "3f2a-retry"})
    assert other.status_code == 409 and "different spec" in other.json()["detail"]
    assert submit(api, raw_spec(), headers={"Idempotency-Key": "bad key with spaces"}).status_code == 400
    assert len(store.jobs()) == 1


def test_a_body_over_the_limit_is_refused(store: Store):
    api = TestClient(create_app(store, TOKEN, max_body_bytes=1000))
    response = submit(api, raw_spec(name="x" * 2000))
    assert response.status_code == 413
    assert store.jobs() == []


def test_metrics_and_logs(api: TestClient, tmp_path: Path):
    out = tmp_path / "run"
    out.mkdir()
    job = submit(api, raw_spec(out)).json()
    assert api.get(f"/jobs/{job['id']}/metrics", headers=AUTH).json() == {"job_id": job["id"], "metrics": []}
    assert api.get(f"/jobs/{job['id']}/logs", headers=AUTH).text == ""
    with (out / "metrics.jsonl").open("w") as f:
        for step in (10, 20, 30):
            f.write(json.dumps({"step": step, "time": 1.0, "train/loss": 1.0 / step}) + "\n")
        f.write('{"step": 4')
    (out / "job.log").write_text("".join(f"line {i}\n" for i in range(500)))
    metrics = api.get(f"/jobs/{job['id']}/metrics?since_step=10", headers=AUTH).json()["metrics"]
    assert [m["step"] for m in metrics] == [20, 30]
    assert [m["step"] for m in api.get(f"/jobs/{job['id']}/metrics?limit=1", headers=AUTH).json()["metrics"]] == [30]
    logs = api.get(f"/jobs/{job['id']}/logs?lines=3", headers=AUTH)
    assert logs.text == "line 497\nline 498\nline 499\n" and logs.headers["content-type"].startswith("text/plain")
