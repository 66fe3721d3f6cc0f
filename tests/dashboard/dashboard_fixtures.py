"""Helpers for the dashboard tests (imported by conftest.py and the tests): the real API app served by uvicorn on 127.0.0.1 in a thread,
over a store whose jobs were submitted through the API and moved by the controller (stepped by hand
with a fake launcher on a fake cluster) and the store's state machine."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from orchestrator.api import create_app
from orchestrator.controller import Controller, RunStatus
from orchestrator.queue import Node
from orchestrator.state import Job, Progress
from orchestrator.store import Store

TOKEN = "dashboard-test-token-0123456789"


class FakeLauncher:
    """Runs nothing: each launch gets a handle (the job id) whose status the test sets."""

    def __init__(self) -> None:
        self.status: dict[str, RunStatus] = {}

    def launch(self, job: Job, node_names: list[str]) -> str:
        self.status[job.id] = RunStatus("running")
        return job.id

    def poll(self, handle: str) -> RunStatus:
        return self.status[handle]

    def stop(self, handle: str) -> None:
        self.status[handle] = RunStatus("failed", error="stopped")


NODES = [Node("10.0.0.2/gpu-a100-0", {"CPU": 96.0, "GPU": 8.0, "accelerator_type:A100": 1.0}),
         Node("10.0.0.3/gpu-a100-1", {"CPU": 96.0, "GPU": 8.0, "accelerator_type:A100": 1.0}),
         Node("10.0.0.4/tpu-v4-0", {"CPU": 240.0, "TPU": 4.0, "TPU-host": 1.0, "accelerator_type:v4": 1.0})]


def spec(output_dir: str, name: str, **resources: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {"name": name, "kind": "pretrain", "model": {"size": "base"},
                           "training": {"num_train_steps": 1000, "train_batch_size": 256},
                           "output": {"output_dir": output_dir}, "logging": {"wandb": False}}
    if resources:
        raw["resources"] = resources
    return raw


@dataclass
class Fleet:
    """A live API over a seeded store."""

    url: str
    store: Store
    controller: Controller
    launcher: FakeLauncher
    root: Path
    jobs: dict[str, str] = field(default_factory=dict)  # name -> id

    def request(self, method: str, path: str, body: Any = None, token: str | None = TOKEN) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as response:
                text = response.read().decode()
                status = response.status
        except urllib.error.HTTPError as err:
            text, status = err.read().decode(), err.code
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def submit(self, name: str, **resources: Any) -> str:
        status, job = self.request("POST", "/jobs", {"spec": spec(f"runs/{name}", name, **resources)})
        assert status == 201, job
        self.jobs[name] = job["id"]
        return job["id"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_run_outputs(output_dir: Path, num_steps: int = 300, every: int = 10) -> None:
    """A metrics.jsonl as the trainer writes it (loss falling, warmup-then-decay learning rate, a
    checkpoint and evals) and a job.log."""
    output_dir.mkdir(parents=True, exist_ok=True)
    start = time.time() - 600
    with open(output_dir / "metrics.jsonl", "w") as f:
        for step in range(every, num_steps + 1, every):
            lr = 1e-4 * min(1.0, step / 100) * (1 - step / 1000)
            f.write(json.dumps({"step": step, "time": start + step, "train/loss": 7.5 * (0.995 ** step) + 1.2,
                                "train/learning_rate": lr, "train/examples_per_s": 512.0,
                                "train/tokens_per_s": 65536.0}) + "\n")
            if step % 100 == 0:
                f.write(json.dumps({"step": step, "time": start + step, "eval/masked_lm_accuracy": 0.1 + step / 1000,
                                    "eval/loss": 6.0 - step / 100}) + "\n")
                f.write(json.dumps({"step": step, "time": start + step, "checkpoint/step": step}) + "\n")
    (output_dir / "job.log").write_text("".join(f"step {s}: loss {7.5 * 0.995 ** s + 1.2:.4f}\n"
                                                for s in range(every, num_steps + 1, every)))


def serve_fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fleet]:
    import uvicorn

    # One dead node, as ray.nodes() would list it (no Ray is started)
    import orchestrator.dashboard.cluster as cluster_view

    monkeypatch.setattr(cluster_view, "_ray_nodes", lambda: [
        {"NodeID": "deadbeef00112233", "NodeManagerAddress": "10.0.0.9", "Alive": False,
         "Resources": {"CPU": 96.0, "GPU": 8.0, "accelerator_type:A100": 1.0}}])
    store = Store(tmp_path / "jobs.db")
    launcher = FakeLauncher()
    controller = Controller(store, launcher, NODES, read_metrics=False)
    root = tmp_path / "storage"
    app = create_app(store, TOKEN, controller=controller, storage_root=str(root))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    fleet = Fleet(f"http://127.0.0.1:{port}", store, controller, launcher, root)
    try:
        _seed(fleet)
        yield fleet
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        store.close()


def _seed(fleet: Fleet) -> None:
    """Jobs in every interesting state, each reached through the API, the controller or the store."""
    c, launcher, store = fleet.controller, fleet.launcher, fleet.store
    big = fleet.submit("bert-base-pretrain", accelerator="gpu", accelerator_type="A100", num_hosts=1,
                       devices_per_host=4, backend="ddp")
    tpu = fleet.submit("tpu-pretrain", accelerator="tpu", accelerator_type="v4", backend="xla")
    c.step()  # both start
    launcher.status[tpu] = RunStatus("preempted", error="the TPU host was preempted")
    c.step()  # preempted, requeued, started again (attempt 2)
    done = fleet.submit("finished-run", accelerator="gpu", accelerator_type="A100", devices_per_host=2, backend="ddp")
    broken = fleet.submit("broken-run", accelerator="gpu", accelerator_type="A100", devices_per_host=2, backend="ddp",
                          max_failures=0)
    c.step()
    launcher.status[done] = RunStatus("succeeded")
    launcher.status[broken] = RunStatus("failed", error="ValueError: vocab_size 99 does not match the checkpoint")
    c.step()
    fleet.submit("mrpc-queued")  # CPU jobs stay QUEUED: the controller is not stepped again
    fleet.submit("to-cancel")
    output_dir = Path(store.get(big).spec.output.output_dir)
    write_run_outputs(output_dir)
    store.record_progress(big, Progress(step=300, total=1000, loss=1.86, throughput=512.0), checkpoint_step=300)
