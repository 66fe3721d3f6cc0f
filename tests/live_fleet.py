"""A live fleet for tests that need real jobs: a simulated Ray cluster on 127.0.0.1 (head + GPU nodes
with fake GPUs, CPU execution), the controller actor with its HTTP API, and tiny pretraining jobs
submitted through `orchestrator.client.HttpClient`, as users do (the shapes of tests/e2e/test_fleet.py).

Importable as `live_fleet` from every test directory: the test directories have no __init__.py, and
pytest's default (prepend) import mode puts tests/, the directory of tests/conftest.py, on sys.path.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tiny_job import tiny_pretrain

from jobs.spec import JobSpec, parse_spec

TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveFleet:
    """What `running_fleet` started: the cluster, the API (url, token, client) and the controller actor."""

    cluster: Any  # cluster.local.SimulatedCluster
    client: Any  # orchestrator.client.HttpClient
    actor: Any
    url: str
    token: str


@contextmanager
def running_fleet(home: Path, num_gpu_nodes: int = 2, gpus_per_node: int = 2, cpus_per_node: int = 2,
                  interval_s: float = 0.5, tpu_hosts: int = 0, tpu_chips: int = 4) -> Iterator[LiveFleet]:
    """A head node (1 CPU), `num_gpu_nodes` simulated GPU nodes and `tpu_hosts` simulated TPU hosts,
    the controller actor and its API on a free port, state under `home`; stopped (service, then
    cluster) when the block ends."""
    from cluster.local import SimulatedCluster, write_token_file
    from orchestrator.client import HttpClient
    from orchestrator.service import ServiceConfig, start_service, stop_service

    cluster = SimulatedCluster(head_cpus=1, fast_failure_detection=True)
    try:
        for _ in range(num_gpu_nodes):
            cluster.add_gpu_node(gpus=gpus_per_node, cpus=cpus_per_node)
        for _ in range(tpu_hosts):
            cluster.add_tpu_host(chips=tpu_chips, cpus=cpus_per_node)
        cluster.connect()
        write_token_file(home / "token")
        port = free_port()
        actor = start_service(ServiceConfig(db=str(home / "jobs.db"), token_file=str(home / "token"), port=port,
                                            interval_s=interval_s, ray_storage=str(home / "ray")))
        url, token = f"http://127.0.0.1:{port}", (home / "token").read_text()
        try:
            yield LiveFleet(cluster, HttpClient(url, token), actor, url, token)
        finally:
            stop_service()
    finally:
        cluster.shutdown()


def pretrain_spec(config_file: str, shared: Path, output_dir: Path, steps: int, gpus: int = 2, num_hosts: int = 1,
                  save_every: int = 5, name: str | None = None) -> JobSpec:
    """A DDP pretraining job on the shared sample TFRecords, logging every step."""
    return parse_spec(tiny_pretrain(
        shared, config_file, output_dir, name=name, training={"num_train_steps": steps},
        output={"save_checkpoints_steps": save_every},
        resources={"accelerator": "gpu", "backend": "ddp", "num_hosts": num_hosts, "devices_per_host": gpus // num_hosts,
                   "cpus_per_worker": 1, "max_failures": 1}))


def get_job(client: Any, job_id: str, timeout_s: float = 120) -> dict[str, Any]:
    """The job, retrying while the API is away (a controller restart)."""
    from orchestrator.client import ClientError

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return client.get(job_id)
        except ClientError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def wait_for_job(client: Any, job_id: str, until: Callable[[dict[str, Any]], bool],
                 timeout_s: float = 300) -> dict[str, Any]:
    """The job once `until(job)` holds; fails when it ends first or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = get_job(client, job_id)
        if until(job):
            return job
        if job["state"] in TERMINAL:
            raise AssertionError(f"job {job_id} ended {job['state']} ({job.get('last_error')}) before the "
                                 f"awaited condition; events: {client.events(job_id)}")
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} timed out waiting; it is {get_job(client, job_id)}")


def step_of(job: dict[str, Any]) -> int:
    return (job.get("progress") or {}).get("step") or 0
