"""A preemption notice on one worker of a 2-worker DDP job on a real Ray cluster (127.0.0.1): SIGTERM
to one Ray Train worker process makes every worker commit the same step's checkpoint and the run fail
as "preempted" (what the controller requeues); run again, the job resumes and ends bitwise equal to
an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
import torch
from ray_processes import train_worker_pids
from tiny_job import checkpoint_weights, tiny_pretrain, write_tiny_config

from jobs.checkpoint import CheckpointStore
from jobs.spec import parse_spec

ray = pytest.importorskip("ray")

# The signal goes out once step 6 is logged; the stop comes a step or two later, well before the
# periodic checkpoint of step 10, so the newest checkpoint can only be the emergency one.
STEPS, CHECKPOINT_EVERY, SIGNAL_AFTER = 14, 5, 6


@pytest.fixture(scope="module")
def cluster():
    from cluster.local import local_ray

    with local_ray(num_cpus=4):
        yield


def _spec(tmp_path, shared, output_dir):
    config = write_tiny_config(tmp_path / "bert_config.json", dropout=0.0)
    return parse_spec(tiny_pretrain(
        shared, config, output_dir, training={"num_train_steps": STEPS},
        output={"save_checkpoints_steps": CHECKPOINT_EVERY},
        # max_failures 0, as the controller launches jobs: the preemption reaches the caller at once.
        resources={"backend": "ddp", "devices_per_host": 2, "max_failures": 0}))


def _logged_steps(output_dir) -> list[int]:
    path = output_dir / "metrics.jsonl"
    steps = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line the live run is still writing
            continue
        if "train/loss" in row:
            steps.append(row["step"])
    return steps


def test_a_sigtermed_worker_commits_an_emergency_checkpoint_and_the_run_resumes_bitwise(cluster, shared, tmp_path):
    from orchestrator.launch import run_on_ray

    run_on_ray(_spec(tmp_path, shared, tmp_path / "full"))
    cut = tmp_path / "cut"
    outcome: dict = {}

    def run() -> None:
        try:
            run_on_ray(_spec(tmp_path, shared, cut))
        except Exception as err:  # noqa: BLE001 - the test inspects whatever surfaced
            outcome["error"] = err

    thread = threading.Thread(target=run)
    thread.start()
    signalled = None
    deadline = time.monotonic() + 120
    while signalled is None and time.monotonic() < deadline and thread.is_alive():
        steps = _logged_steps(cut)
        if steps and max(steps) >= SIGNAL_AFTER:  # past the first periodic checkpoint
            workers = train_worker_pids()
            assert len(workers) == 2, workers
            signalled = workers[-1]
            os.kill(signalled, signal.SIGTERM)
        time.sleep(0.01)
    thread.join(timeout=120)
    assert signalled is not None, "the run finished before a worker could be signalled"
    assert not thread.is_alive()

    error = outcome.get("error")
    assert error is not None, "the run was not stopped"
    assert "preempted" in str(error).lower()
    stopped = CheckpointStore(str(cut)).latest()
    # An emergency checkpoint (after the last periodic one) at the last step trained: no step lost.
    assert stopped is not None and CHECKPOINT_EVERY < stopped < STEPS and stopped % CHECKPOINT_EVERY != 0, stopped
    assert max(_logged_steps(cut)) == stopped
    # Every rank stopped at that step; one was told by the signal, the other by the agreement.
    messages = [str(e) for e in getattr(error, "worker_failures", {}).values()]
    assert messages and all(f"checkpoint at step {stopped} committed" in m for m in messages), messages
    if len(messages) == 2:
        assert sum("SIGTERM received" in m for m in messages) == 1, messages

    run_on_ray(_spec(tmp_path, shared, cut))  # the same job again: it resumes from the emergency checkpoint
    assert _logged_steps(cut) == list(range(1, STEPS + 1))
    a, b = checkpoint_weights(tmp_path / "full"), checkpoint_weights(cut)
    for name in a:
        assert torch.equal(a[name], b[name]), name
