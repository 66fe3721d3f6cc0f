"""One row of the dashboard's jobs table: the job as GET /jobs gives it, plus what the table shows
from its spec (model size, resources) and an ETA from its progress."""

from __future__ import annotations

from typing import Any

from orchestrator.state import Job, JobState


def eta_s(job: Job) -> float | None:
    """Seconds left for a RUNNING job at its newest throughput (examples/s over the global batch),
    or None when that is not known."""
    progress = job.progress
    if job.state != JobState.RUNNING or None in (progress.step, progress.total, progress.throughput):
        return None
    if not progress.throughput or progress.throughput <= 0:
        return None
    steps_left = max(0, progress.total - progress.step)  # type: ignore[operator]
    return steps_left * job.spec.training.train_batch_size / progress.throughput


def job_row(job: Job) -> dict[str, Any]:
    spec = job.spec
    resources = spec.resources
    return job.to_dict() | {
        "model_size": spec.model.size or spec.model.bert_config_file or spec.model.init_checkpoint,
        "resources": {"accelerator": resources.accelerator, "accelerator_type": resources.accelerator_type,
                      "num_workers": resources.num_workers, "backend": resources.backend},
        "eta_s": eta_s(job),
    }
