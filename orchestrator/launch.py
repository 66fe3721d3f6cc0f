"""Runs one job on a Ray Train worker group: one worker per data-parallel rank, the spec's backend
on each, torch.distributed set up by Ray (gloo on CPU, NCCL on GPU).

Workers run `jobs.runner.run_job` unchanged; Ray supplies the process group and restarts the group
on a worker failure (FailureConfig), after which the job resumes from its own newest committed
checkpoint. A preemption notice (SIGTERM, the GCE metadata flag; cluster/preemption.py) makes every
worker commit a checkpoint at the same step and fail with "preempted", which the controller requeues.
This module is the only place that knows a job runs on Ray.
"""

from __future__ import annotations

import logging
import tempfile
from typing import Any

import ray
from ray.train.torch.config import TorchConfig, _TorchBackend

from cluster import preemption
from jobs.spec import JobSpec, spec_from_json

log = logging.getLogger("bertfleet")


class _PreemptionAwareTorchBackend(_TorchBackend):
    """Ray Train's torch backend (process group set-up and teardown), plus a preemption watcher on
    every worker's main thread.

    Ray Train runs the training function in a thread of the worker actor, and a signal handler can
    only be installed from the main thread; the actor's own method calls (what `worker_group.execute`
    sends) run there, since a worker actor has one thread of execution. Ray's default SIGTERM handler
    in a worker raises SystemExit, killing it mid-step; the watcher's replaces it until shutdown.
    (Subclassing `_TorchBackend` is how Ray's own TorchftConfig extends it.)
    """

    def on_training_start(self, worker_group: Any, backend_config: TorchConfig) -> None:
        super().on_training_start(worker_group, backend_config)
        worker_group.execute(_install_preemption_watcher)

    def on_shutdown(self, worker_group: Any, backend_config: TorchConfig) -> None:
        super().on_shutdown(worker_group, backend_config)
        try:  # Ray's SIGTERM handler back, so that Ray's own teardown of the workers is not delayed
            ray.get(worker_group.execute_async(preemption.uninstall), timeout=10)
        except ray.exceptions.RayError as err:  # a dead worker (SIGKILL, node lost) has nothing to restore
            log.info("preemption watchers not closed on every worker: %s", type(err).__name__)


def _install_preemption_watcher() -> None:
    preemption.install()  # (the watcher itself stays in the worker: it holds a lock and a thread)


class PreemptionAwareTorchConfig(TorchConfig):
    """TorchConfig whose workers turn SIGTERM and the GCE preemption flag into an emergency checkpoint."""

    @property
    def backend_cls(self) -> type[_TorchBackend]:
        return _PreemptionAwareTorchBackend


def _worker_main(config: dict[str, Any]) -> None:
    """One worker's job. On a preemption notice (to any worker) every worker commits the checkpoint
    of the same step and raises `Preempted`, whose "preempted" the controller reads as a preemption.

    Raises:
        cluster.preemption.Preempted: the job stopped on a notice after committing its checkpoint.
    """
    import ray.train

    from jobs.backends import make_backend
    from jobs.runner import run_job
    from jobs.trainer import StopTraining

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    spec = spec_from_json(config["spec"])
    # PreemptionAwareTorchConfig's backend installed this process's watcher from the main thread; this
    # function runs in Ray Train's training thread, where a SIGTERM handler cannot be installed.
    watcher = preemption.installed()
    own_watcher = watcher is None
    if watcher is None:
        log.warning("no preemption watcher on this worker (not started with PreemptionAwareTorchConfig): "
                    "SIGTERM is not turned into a checkpoint")
        watcher = preemption.PreemptionWatcher(sigterm=False).start()
    backend = make_backend(spec.resources.backend, spec)
    try:
        metrics = run_job(spec, should_stop=watcher.should_stop, backend=backend)
    except StopTraining as stop:
        raise preemption.Preempted(preemption.stop_message(watcher, stop.args[0])) from stop
    finally:
        backend.shutdown()
        if own_watcher:
            watcher.close()
    ray.train.report({k: v for k, v in metrics.items() if isinstance(v, (int, float, str))})


def run_on_ray(spec: JobSpec, storage_path: str | None = None, node_ids: list[str] | None = None) -> dict[str, Any]:
    """Runs `spec` on a Ray Train worker group of spec.resources.num_workers workers.

    Args:
        node_ids: the Ray node of each worker (the controller's booking), or None to let Ray place them.

    Returns:
        The main worker's final metrics.

    Raises:
        ray.train.TrainingFailedError: the job failed more than resources.max_failures times.
    """
    import torch.distributed
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from orchestrator.queue import gang_of

    resources = spec.resources
    use_gpu = resources.accelerator == "gpu"
    cpus = resources.cpus_per_worker
    if cpus is None:
        # Ray sets each worker's OMP_NUM_THREADS (torch's threads) to its CPU count: a CPU job with
        # 1 CPU a worker would compute on one core of many (measured: 55% slower per step).
        cpus = 1 if resources.accelerator != "cpu" else max(1, int(ray.cluster_resources().get("CPU", 1))
                                                            // resources.num_workers)
    bundle = gang_of(spec).bundle | {"CPU": cpus}  # what the controller booked, one bundle per worker
    # NCCL where torch has it; simulated GPU nodes (fake GPU resources, CPU-only torch) train over gloo.
    process_group = "nccl" if use_gpu and torch.distributed.is_nccl_available() else "gloo"
    if use_gpu and process_group == "gloo":
        log.warning("this torch has no NCCL: the GPU workers communicate over gloo (simulated GPU nodes?)")
    trainer = TorchTrainer(
        _worker_main,
        train_loop_config={"spec": spec.to_json()},
        # a TPU worker holds its whole host: no two on one host
        scaling_config=ScalingConfig(num_workers=resources.num_workers, use_gpu=use_gpu, resources_per_worker=bundle,
                                     placement_strategy="STRICT_SPREAD" if resources.accelerator == "tpu" else "PACK",
                                     # each worker where the controller booked it, so its books (and its
                                     # node-death checks) are about the nodes the workers really run on
                                     label_selector=[{"ray.io/node-id": node_id} for node_id in node_ids]
                                     if node_ids else None),
        torch_config=PreemptionAwareTorchConfig(backend=process_group),
        run_config=RunConfig(name=spec.name or f"bertfleet-{spec.kind}",
                             storage_path=storage_path or tempfile.mkdtemp(prefix="bertfleet-ray-"),
                             # preemptions are the controller's to retry (a fresh placement when capacity
                             # returns); Ray Train's own retry of drained nodes would hide them from it
                             failure_config=FailureConfig(max_failures=resources.max_failures,
                                                          max_preemption_failures=0)),
    )
    result = trainer.fit()
    return dict(result.metrics or {})
