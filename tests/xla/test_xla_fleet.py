"""An XLA job on the cluster, as TPU users run one: submitted through the controller's HTTP API,
placed on a whole simulated TPU host, run by a one-worker Ray Train group with resources.xla.spmd
over the host's chips (here XLA's CPU devices: CPU_NUM_DEVICES=2 stands for a 2-chip host). The
host is then killed under a second run of the same job: the controller sees a preemption, requeues
the job, which resumes on a new host from its last committed checkpoint and ends bitwise equal to
the uninterrupted run.

Runs in .venv-xla only (`bash .ci/xla`, which installs Ray there too).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from live_fleet import TERMINAL, running_fleet, step_of, wait_for_job
from tiny_job import checkpoint_weights, logged_losses, tiny_pretrain, write_tiny_config

pytest.importorskip("torch_xla", reason="torch-xla is not installed here; the XLA tests run in their own venv: "
                                        "bash .ci/xla")
pytest.importorskip("ray.train", reason="Ray Train runs the cluster's jobs (bash .ci/xla installs it in .venv-xla)")

from jobs.backends import LocalBackend
from jobs.checkpoint import CheckpointStore
from jobs.runner import run_job
from jobs.spec import parse_spec

pytestmark = pytest.mark.timeout(900)

CHIPS = 2  # per simulated TPU host: the XLA CPU devices each worker sees
STEPS = 40
LOSS_ATOL = 1e-4  # XLA against eager CPU, fp32 (see test_xla_backend.py)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """Head + one simulated TPU host of CHIPS chips, the controller actor and its API. Raylets (and so
    the Ray Train workers) inherit the environment when they start, hosts added later included:
    PJRT's CPU client with CHIPS devices. This process runs eager CPU only; an XLA runtime an earlier
    module started here keeps its own device count (read once, at its start)."""
    saved = {k: os.environ.get(k) for k in ("PJRT_DEVICE", "CPU_NUM_DEVICES")}
    os.environ.update(PJRT_DEVICE="CPU", CPU_NUM_DEVICES=str(CHIPS))
    try:
        with running_fleet(tmp_path_factory.mktemp("fleet"), num_gpu_nodes=0, tpu_hosts=1, tpu_chips=CHIPS,
                           cpus_per_node=2) as live:
            yield live
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def _raw(shared: Path, config: str, output_dir: Path, backend: str = "xla") -> dict:
    resources = {"accelerator": "tpu", "backend": "xla", "devices_per_host": CHIPS, "max_failures": 0,
                 "xla": {"pjrt_device": "CPU", "spmd": True}} if backend == "xla" else {}
    return tiny_pretrain(shared, config, output_dir, name=output_dir.name,
                         training={"gradient_accumulation_steps": 2, "num_train_steps": STEPS},
                         output={"save_checkpoints_steps": 5, "export_hf": False}, resources=resources)


def test_an_xla_job_runs_on_a_tpu_host_and_comes_back_bitwise_after_the_host_is_preempted(fleet, shared, tmp_path):
    client, cluster = fleet.client, fleet.cluster
    config = write_tiny_config(tmp_path / "bert_config.json", dropout=0.0)  # eager CPU and XLA draw other masks

    reference = client.submit(parse_spec(_raw(shared, config, tmp_path / "reference")))["id"]
    done = wait_for_job(client, reference, lambda job: job["state"] in TERMINAL, timeout_s=600)
    assert done["state"] == "SUCCEEDED", done
    placed = next(e["reason"] for e in client.events(reference) if e["to_state"] == "SCHEDULED")
    assert "'TPU-host': 1.0" in placed and placed.count("127.0.0.1/") == 1, placed  # the whole host
    log, _ = client.logs(reference, lines=400)
    assert f"SPMD over this host's {CHIPS} devices (micro-batch 4: 2 rows each)" in log, log[-2000:]
    # The same job in this process on eager CPU: the cluster's XLA run computed the same losses.
    run_job(parse_spec(_raw(shared, config, tmp_path / "eager", backend="local")),
            backend=LocalBackend(torch.device("cpu")))
    on_tpu_host, eager = logged_losses(tmp_path / "reference"), logged_losses(tmp_path / "eager")
    assert [step for step, _ in on_tpu_host] == list(range(1, STEPS + 1))
    for (step, ours), (_, theirs) in zip(on_tpu_host, eager, strict=True):
        assert abs(ours - theirs) <= LOSS_ATOL, (step, ours, theirs)

    preempted = client.submit(parse_spec(_raw(shared, config, tmp_path / "preempted")))["id"]
    wait_for_job(client, preempted, lambda job: job["state"] == "RUNNING" and step_of(job) >= 12, timeout_s=600)
    host = cluster.nodes[0]
    booked = [e["reason"] for e in client.events(preempted) if e["to_state"] == "SCHEDULED"][-1]
    assert booked.endswith("/" + cluster.node_id(host)[:8]), booked
    cluster.kill_node(host)  # the TPU VM is gone, as a spot/preemptible host disappears
    cluster.add_tpu_host(chips=CHIPS, cpus=2)  # capacity comes back
    done = wait_for_job(client, preempted, lambda job: job["state"] in TERMINAL, timeout_s=600)
    assert done["state"] == "SUCCEEDED", done
    assert (done["num_preemptions"], done["num_failures"], done["num_attempts"]) == (1, 0, 2)
    assert [e["to_state"] for e in client.events(preempted)].count("PREEMPTED") == 1
    # Nothing lost, nothing twice: every step logged once, with the uninterrupted run's loss, and the
    # same final bits (the resumed attempt compiled afresh on its new host, from the same checkpoint).
    assert logged_losses(tmp_path / "preempted") == on_tpu_host
    final, expected = checkpoint_weights(tmp_path / "preempted"), checkpoint_weights(tmp_path / "reference")
    assert CheckpointStore(str(tmp_path / "preempted")).latest() == STEPS
    assert final.keys() == expected.keys()
    for name in expected:
        assert torch.equal(final[name], expected[name]), name
