"""The controller on a simulated multi-node Ray cluster (ray.cluster_utils on 127.0.0.1, fake GPUs,
CPU execution), driven only through its HTTP API, as users do: gang scheduling of competing jobs,
a node killed under a 2-worker pretraining job three times (preempted, requeued, resumed, bitwise
equal to an uninterrupted run), and the controller actor killed mid-run (restarted, re-attached, the
job finishes once)."""

from __future__ import annotations

import os
import signal
from datetime import datetime
from typing import Any

import pytest
import torch
from live_fleet import TERMINAL, running_fleet
from live_fleet import pretrain_spec as _spec
from live_fleet import step_of as _step
from live_fleet import wait_for_job as _wait
from tiny_job import checkpoint_weights, write_tiny_config

from jobs.checkpoint import CheckpointStore

pytest.importorskip("ray.train", reason="Ray Train runs the multi-worker jobs (pip install 'ray[train]')")

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """Head + two simulated GPU nodes (2 fake GPUs, 2 CPUs each), the controller actor and its API."""
    with running_fleet(tmp_path_factory.mktemp("fleet")) as live:
        yield live.cluster, live.client, live.actor


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    return write_tiny_config(tmp_path_factory.mktemp("config") / "bert_config.json")


def _started(events: list[dict[str, Any]]) -> list[datetime]:
    return [datetime.fromisoformat(e["time"]) for e in events if e["to_state"] == "RUNNING"]


def _ended(events: list[dict[str, Any]]) -> datetime:
    return max(datetime.fromisoformat(e["time"]) for e in events if e["to_state"] in TERMINAL)


def _train_worker_nodes() -> set[str]:
    import ray

    return {a["Address"]["NodeID"] for a in ray._private.state.actors().values()
            if a["ActorClassName"].endswith("RayTrainWorker") and a["State"] == "ALIVE"}


def test_competing_jobs_are_gang_scheduled_by_priority_without_deadlock(fleet, config_file, shared, tmp_path):
    """4 fake GPUs on 2 nodes. A (2 GPUs) runs; B (4 GPUs over 2 hosts, higher priority) cannot fit
    until A ends and holds back C (2 GPUs, submitted last), which would fit beside A: B runs on both
    nodes once A is done, C after B. Nothing starts on a partial gang, nothing deadlocks."""
    _, client, _ = fleet
    a = client.submit(_spec(config_file, shared, tmp_path / "a", steps=30, name="a"))["id"]
    _wait(client, a, lambda job: job["state"] == "RUNNING")
    b = client.submit(_spec(config_file, shared, tmp_path / "b", steps=6, gpus=4, num_hosts=2, name="b"),
                      priority=5)["id"]
    c = client.submit(_spec(config_file, shared, tmp_path / "c", steps=6, name="c"))["id"]
    for job_id in (a, b, c):
        assert _wait(client, job_id, lambda job: job["state"] in TERMINAL)["state"] == "SUCCEEDED"
    events = {job_id: client.events(job_id) for job_id in (a, b, c)}
    (a_start,), (b_start,), (c_start,) = (_started(events[j]) for j in (a, b, c))
    assert a_start < b_start < c_start
    assert b_start >= _ended(events[a])  # B's gang needed A's GPUs
    assert c_start >= _ended(events[b])  # C did not slip past the higher-priority B
    placed = next(e["reason"] for e in events[b] if e["to_state"] == "SCHEDULED")
    assert placed.startswith("gang of 4 x") and placed.count("127.0.0.1/") == 2  # both nodes


def test_a_node_killed_three_times_under_a_job_preempts_and_resumes_it_bitwise(fleet, config_file, shared, tmp_path):
    cluster, client, _ = fleet
    steps = 120
    reference = client.submit(_spec(config_file, shared, tmp_path / "reference", steps, save_every=10))["id"]
    assert _wait(client, reference, lambda job: job["state"] in TERMINAL)["state"] == "SUCCEEDED"

    job_id = client.submit(_spec(config_file, shared, tmp_path / "preempted", steps, save_every=10))["id"]
    for kill, at_step in enumerate((15, 50, 85), start=1):
        _wait(client, job_id, lambda job, at_step=at_step: job["state"] == "RUNNING" and _step(job) >= at_step,
              timeout_s=240)
        hosts = _train_worker_nodes()
        victims = [node for node in cluster.nodes if cluster.node_id(node) in hosts]
        assert len(victims) == 1, f"the job's 2 workers should share one node, found {hosts}"
        booked = [e["reason"] for e in client.events(job_id) if e["to_state"] == "SCHEDULED"][-1]
        assert booked.endswith("/" + cluster.node_id(victims[0])[:8]), (booked, hosts)  # where it was booked
        cluster.kill_node(victims[0])
        cluster.add_gpu_node(gpus=2, cpus=2)  # capacity comes back (a new spot VM)
        _wait(client, job_id, lambda job, kill=kill: job["num_preemptions"] >= kill, timeout_s=120)
    done = _wait(client, job_id, lambda job: job["state"] in TERMINAL, timeout_s=300)
    assert done["state"] == "SUCCEEDED", done
    assert (done["num_preemptions"], done["num_failures"], done["num_attempts"]) == (3, 0, 4)
    events = client.events(job_id)
    assert [e["to_state"] for e in events].count("PREEMPTED") == 3
    assert [e["to_state"] for e in events].count("QUEUED") == 4  # submitted + requeued after each preemption
    final, expected = checkpoint_weights(tmp_path / "preempted"), checkpoint_weights(tmp_path / "reference")
    assert CheckpointStore(str(tmp_path / "preempted")).latest() == steps
    assert final.keys() == expected.keys()
    for name in expected:
        assert torch.equal(final[name], expected[name]), name


def test_a_killed_controller_is_restarted_and_reattaches_so_the_job_runs_once(fleet, config_file, shared, tmp_path):
    import ray

    _, client, actor = fleet
    before = ray.get(actor.ping.remote())
    job_id = client.submit(_spec(config_file, shared, tmp_path / "out", steps=80, save_every=10))["id"]
    _wait(client, job_id, lambda job: job["state"] == "RUNNING" and _step(job) >= 5, timeout_s=240)
    os.kill(before["pid"], signal.SIGKILL)  # the controller process dies; Ray restarts the actor

    done = _wait(client, job_id, lambda job: job["state"] in TERMINAL, timeout_s=300)
    after = ray.get(actor.ping.remote(), timeout=60)
    assert after["pid"] != before["pid"]
    assert done["state"] == "SUCCEEDED"
    assert (done["num_attempts"], done["num_preemptions"], done["num_failures"]) == (1, 0, 0)  # re-attached
    states = [e["to_state"] for e in client.events(job_id)]
    assert states == ["QUEUED", "SCHEDULED", "RUNNING", "SUCCEEDED"]
    losses = [line for line in (tmp_path / "out/metrics.jsonl").read_text().splitlines() if '"train/loss"' in line]
    assert len(losses) == 80  # every step trained and logged exactly once
