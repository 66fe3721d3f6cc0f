"""Runs one job on a Ray Train worker group: one worker per data-parallel rank, the spec's backend
on each, torch.distributed set up by Ray (gloo on CPU, NCCL on GPU).

Workers run `jobs.runner.run_job` unchanged; Ray supplies the process group and restarts the group
on a worker failure (FailureConfig), after which the job resumes from its own newest committed
checkpoint. This module is the only place that knows a job runs on Ray.
"""

from __future__ import annotations

import logging
import tempfile
from typing import Any

from jobs.spec import JobSpec, spec_from_json

log = logging.getLogger("bertfleet")


def _worker_main(config: dict[str, Any]) -> None:
    import ray.train

    from jobs.backends import make_backend
    from jobs.runner import run_job

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    spec = spec_from_json(config["spec"])
    backend = make_backend(spec.resources.backend, spec)
    try:
        metrics = run_job(spec, backend=backend)
    finally:
        backend.shutdown()
    ray.train.report({k: v for k, v in metrics.items() if isinstance(v, (int, float, str))})


def run_on_ray(spec: JobSpec, storage_path: str | None = None) -> dict[str, Any]:
    """Runs `spec` on a Ray Train worker group of spec.resources.num_workers workers.

    Returns:
        The main worker's final metrics.

    Raises:
        ray.train.TrainingFailedError: the job failed more than resources.max_failures times.
    """
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    import ray

    resources = spec.resources
    use_gpu = resources.accelerator == "gpu"
    cpus = resources.cpus_per_worker
    if cpus is None:
        # Ray sets each worker's OMP_NUM_THREADS (torch's threads) to its CPU count: a CPU job with
        # 1 CPU a worker would compute on one core of many (measured: 55% slower per step).
        cpus = 1 if use_gpu else max(1, int(ray.cluster_resources().get("CPU", 1)) // resources.num_workers)
    trainer = TorchTrainer(
        _worker_main,
        train_loop_config={"spec": spec.to_json()},
        scaling_config=ScalingConfig(num_workers=resources.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"GPU": 1, "CPU": cpus} if use_gpu else {"CPU": cpus}),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(name=spec.name or f"bertfleet-{spec.kind}",
                             storage_path=storage_path or tempfile.mkdtemp(prefix="bertfleet-ray-"),
                             failure_config=FailureConfig(max_failures=resources.max_failures)),
    )
    result = trainer.fit()
    return dict(result.metrics or {})
