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

from jobs.spec import JobSpec, parse_spec
from models.config import BertConfig

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
                  interval_s: float = 0.5) -> Iterator[LiveFleet]:
    """A head node (1 CPU) and `num_gpu_nodes` simulated GPU nodes, the controller actor and its API on
    a free port, state under `home`; stopped (service, then cluster) when the block ends."""
    from cluster.local import SimulatedCluster, write_token_file
    from orchestrator.client import HttpClient
    from orchestrator.service import ServiceConfig, start_service, stop_service

    cluster = SimulatedCluster(head_cpus=1, fast_failure_detection=True)
    try:
        for _ in range(num_gpu_nodes):
            cluster.add_gpu_node(gpus=gpus_per_node, cpus=cpus_per_node)
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


def write_tiny_config(path: Path) -> str:
    """A tiny BERT config (the real vocabulary, hidden 32, 2 layers) as Google's bert_config.json."""
    BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
               max_position_embeddings=128, hidden_dropout_prob=0.0,
               attention_probs_dropout_prob=0.0).to_google_json(path)
    return str(path)


def pretrain_spec(config_file: str, shared: Path, output_dir: Path, steps: int, gpus: int = 2, num_hosts: int = 1,
                  save_every: int = 5, name: str | None = None) -> JobSpec:
    """A DDP pretraining job on the shared sample TFRecords, logging every step."""
    return parse_spec({
        "kind": "pretrain", "name": name,
        "model": {"bert_config_file": config_file, "vocab_file": str(shared / "data/uncased_vocab.txt")},
        "data": {"train_file": str(shared / "fixtures/sample_text_wwm*.tfrecord"), "shuffle_buffer": 16},
        "training": {"train_batch_size": 8, "num_train_steps": steps, "num_warmup_steps": 2, "learning_rate": 1e-3,
                     "log_every_steps": 1, "do_eval": False},
        "output": {"output_dir": str(output_dir), "save_checkpoints_steps": save_every, "export_hf": False},
        "resources": {"accelerator": "gpu", "backend": "ddp", "num_hosts": num_hosts,
                      "devices_per_host": gpus // num_hosts, "cpus_per_worker": 1, "max_failures": 1},
        "logging": {"wandb": False},
    })


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
