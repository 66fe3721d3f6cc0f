"""The operator's commands, run as a user runs them (the `bertfleet` console script in subprocesses):
`up` starts a local cluster with the controller and API in the background, the job commands find it
by themselves, `logs` shows the job's log, `down` stops exactly what `up` started; `serve` joins a
Ray head that is already running and leaves the controller on it."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml
from live_fleet import free_port
from tiny_job import tiny_pretrain, write_tiny_config

pytest.importorskip("ray.train", reason="Ray Train runs the jobs (pip install 'ray[train]')")
pytestmark = pytest.mark.timeout(600)


def bertfleet(*args: str, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(["bertfleet", *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture()
def env(tmp_path: Path) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith(("BERTFLEET_", "RAY_ADDRESS"))}
    out["BERTFLEET_HOME"] = str(tmp_path / "home")
    return out


@pytest.fixture()
def spec_file(tmp_path: Path, shared: Path) -> Path:
    config = write_tiny_config(tmp_path / "bert_config.json")
    spec = tiny_pretrain(shared, config, tmp_path / "out", name="tiny-on-up",
                         training={"num_train_steps": 6, "num_warmup_steps": 1}, output={"save_checkpoints_steps": 3},
                         resources={"accelerator": "gpu", "backend": "ddp", "devices_per_host": 2,
                                    "cpus_per_worker": 1, "max_failures": 0})
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_up_runs_a_job_and_down_stops_only_what_up_started(env, spec_file: Path, tmp_path: Path):
    port = free_port()
    started = bertfleet("up", "--nodes", "1", "--gpus-per-node", "2", "--port", str(port),
                        "--db", str(tmp_path / "jobs.db"), "--json", env=env)
    assert started.returncode == 0, started.stdout + started.stderr
    state = json.loads(started.stdout)
    supervisor = psutil.Process(state["pid"])
    try:
        assert state["api"] == f"http://127.0.0.1:{port}"
        assert oct(Path(state["token_file"]).stat().st_mode & 0o777) == "0o600"
        again = bertfleet("up", env=env)
        assert again.returncode != 0 and "already up" in again.stderr

        submitted = bertfleet("submit", str(spec_file), "--json", env=env)  # finds the API through up.json
        assert submitted.returncode == 0, submitted.stderr
        job_id = json.loads(submitted.stdout)["id"]
        deadline = time.monotonic() + 240
        while (job := json.loads(bertfleet("status", job_id, "--json", env=env).stdout))["state"] not in (
                "SUCCEEDED", "FAILED", "CANCELLED"):
            assert time.monotonic() < deadline, job
            time.sleep(1)
        assert job["state"] == "SUCCEEDED", job
        logs = bertfleet("logs", job_id, env=env)
        assert logs.returncode == 0 and "step 6/6" in logs.stdout, logs.stdout + logs.stderr
        listed = json.loads(bertfleet("list", "--json", env=env).stdout)
        assert [j["id"] for j in listed] == [job_id]
        unauthenticated = urllib.request.Request(f"{state['api']}/jobs")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(unauthenticated, timeout=10)
        assert err.value.code == 401
        ours = [supervisor, *supervisor.children(recursive=True)]  # the Ray nodes, controller, workers
        assert any("raylet" in " ".join(p.cmdline()) for p in ours)
    finally:
        stopped = bertfleet("down", env=env)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stdout + stopped.stderr
    _, alive = psutil.wait_procs(ours, timeout=30)
    assert alive == [], [p.cmdline()[:2] for p in alive]
    assert not (Path(env["BERTFLEET_HOME"]) / "up.json").exists()
    assert "no local cluster" in bertfleet("down", env=env).stdout


def test_serve_joins_a_running_ray_head_and_leaves_the_controller_there(env, tmp_path: Path):
    import ray

    from cluster.local import SimulatedCluster
    from orchestrator.service import find_service, stop_service

    cluster = SimulatedCluster(head_cpus=1)
    try:
        cluster.add_gpu_node(gpus=2, cpus=1)
        port = free_port()
        token = "serve-test-token-0123456789abcdef"
        served = bertfleet("serve", "--address", cluster.address, "--port", str(port), "--db",
                           str(tmp_path / "jobs.db"), "--detach", env=env | {"BERTFLEET_TOKEN": token})
        assert served.returncode == 0, served.stdout + served.stderr
        assert f"http://127.0.0.1:{port}" in served.stdout
        assert token not in served.stdout + served.stderr
        request = urllib.request.Request(f"http://127.0.0.1:{port}/cluster",
                                         headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            view = json.loads(response.read())
        gpus = [a for node in view["nodes"] for a in node["accelerators"] if a["resource"] == "GPU"]
        assert [g["total"] for g in gpus] == [2.0]  # the joined cluster's node, seen by the controller
        cluster.connect()
        assert find_service() is not None  # outlived the `serve` process that started it
        assert stop_service()
        assert find_service() is None
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
