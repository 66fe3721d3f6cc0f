"""Multi-worker training on a real Ray cluster (127.0.0.1) through Ray Train, DDP over gloo on CPU:
the same losses as one process on the same global batch, a worker killed mid-run and the job
resumed bitwise, and a 2-worker checkpoint resumed on 1 worker."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time

import pytest
import torch
from ray_processes import train_worker_pids
from tiny_job import checkpoint_weights, logged_losses, tiny_pretrain, write_tiny_config

from jobs.checkpoint import CheckpointStore
from jobs.runner import run_job
from jobs.spec import parse_spec

ray = pytest.importorskip("ray")

STEPS = 24


@pytest.fixture(scope="module")
def cluster():
    from cluster.local import local_ray

    with local_ray(num_cpus=4):
        yield


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    return write_tiny_config(tmp_path_factory.mktemp("config") / "bert_config.json", dropout=0.0)


def _spec(config_file, shared, output_dir, workers, **training):
    return parse_spec(tiny_pretrain(
        shared, config_file, output_dir, training={"num_train_steps": STEPS, **training},
        output={"save_checkpoints_steps": 8},
        resources={"backend": "ddp" if workers > 1 else "local", "devices_per_host": workers, "max_failures": 2}))


@pytest.fixture(scope="module")
def uninterrupted(cluster, config_file, shared, tmp_path_factory):
    from orchestrator.launch import run_on_ray

    out = tmp_path_factory.mktemp("ddp_full")
    run_on_ray(_spec(config_file, shared, out, 2))
    return out


def test_two_workers_match_one_process_on_the_same_global_batch(uninterrupted, config_file, shared, tmp_path):
    run_job(_spec(config_file, shared, tmp_path, 1))
    single, ddp = dict(logged_losses(tmp_path)), dict(logged_losses(uninterrupted))
    assert sorted(ddp) == list(range(1, STEPS + 1))
    for step, loss in single.items():
        assert abs(loss - ddp[step]) < 1e-5, (step, loss, ddp[step])


def test_a_killed_worker_is_replaced_and_the_run_ends_bitwise_equal(uninterrupted, config_file, shared, tmp_path):
    from orchestrator.launch import run_on_ray

    done: dict = {}
    thread = threading.Thread(target=lambda: done.update(metrics=run_on_ray(_spec(config_file, shared, tmp_path, 2))))
    thread.start()
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and time.monotonic() < deadline and thread.is_alive():
        metrics = tmp_path / "metrics.jsonl"
        steps = dict(logged_losses(tmp_path)) if metrics.exists() else {}
        if steps and max(steps) >= 10:  # past the step-8 checkpoint, before the end
            workers = train_worker_pids()
            killed = workers[-1]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.02)
    thread.join(timeout=300)
    assert killed is not None, "the run finished before a worker could be killed"
    assert not thread.is_alive()
    a, b = checkpoint_weights(uninterrupted), checkpoint_weights(tmp_path)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert CheckpointStore(str(tmp_path)).latest() == STEPS


def test_a_two_worker_checkpoint_resumes_on_one_worker(uninterrupted, config_file, shared, tmp_path):
    # The 2-worker run's committed checkpoint of step 8, as if the job had been stopped there.
    shutil.copytree(uninterrupted, tmp_path, dirs_exist_ok=True)
    for step in (16, 24):
        shutil.rmtree(tmp_path / "checkpoints" / f"step-{step:08d}")
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "metrics.jsonl").write_text("".join(line + "\n" for line in lines if json.loads(line)["step"] <= 8))
    run_job(_spec(config_file, shared, tmp_path, 1))  # the same job, resumed by one process
    full, resumed = dict(logged_losses(uninterrupted)), dict(logged_losses(tmp_path))
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step in range(9, STEPS + 1):  # the same records, so the same losses up to summation order
        assert abs(full[step] - resumed[step]) < 1e-4, (step, full[step], resumed[step])
    a, b = checkpoint_weights(uninterrupted), checkpoint_weights(tmp_path)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-4, rtol=1e-4, msg=name)
