"""Runs one job in this process: the resolved spec is written beside the run, then the task runs."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable

from jobs.backends import LocalBackend
from jobs.spec import JobSpec
from jobs.results import write_text

log = logging.getLogger("bertfleet")

TASKS = {"pretrain": "jobs.tasks.pretrain", "classify": "jobs.tasks.classify", "squad": "jobs.tasks.squad",
         "features": "jobs.tasks.features", "distill": "jobs.tasks.distill"}


def run_job(spec: JobSpec, should_stop: Callable[[], bool] | None = None,
            backend: LocalBackend | None = None) -> dict:
    """Writes `spec.json` to the output directory and runs the task on this worker; returns its
    metrics (the same on every worker).

    Args:
        spec: the resolved job.
        should_stop: polled after each step; True checkpoints and stops (preemption).
        backend: this worker's backend; default one local process.
    """
    backend = backend or LocalBackend()
    if backend.is_main:
        write_text(f"{spec.output.output_dir.rstrip('/')}/spec.json", spec.to_json())
        log.info("running %s job %s -> %s", spec.kind, spec.name or "", spec.output.output_dir)
    task = importlib.import_module(TASKS[spec.kind])
    return task.run(spec.with_resolved_paths(), should_stop=should_stop, backend=backend)
