"""Runs one job in this process: the resolved spec is written beside the run, then the task runs,
with the job's log records going to `job.log` in its output directory (jobs/logging.py)."""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable

from jobs.backends import LocalBackend
from jobs.checkpoint import CheckpointStore
from jobs.logging import JobLogHandler, job_log
from jobs.results import write_text
from jobs.spec import JobSpec
from jobs.trainer import StopTraining

log = logging.getLogger("bertfleet")

TASKS = {"pretrain": "jobs.tasks.pretrain", "classify": "jobs.tasks.classify", "squad": "jobs.tasks.squad",
         "features": "jobs.tasks.features", "distill": "jobs.tasks.distill"}


def run_job(spec: JobSpec, should_stop: Callable[[], bool] | None = None,
            backend: LocalBackend | None = None) -> dict:
    """Writes `spec.json` to the output directory and runs the task on this worker; returns its
    metrics (the same on every worker).

    While the task runs, its log records go to `{output_dir}/job.log` (rank 0's from INFO up, the
    other ranks' errors; see jobs/logging.py), and an error that ends the job is written there with
    its traceback. A later attempt (a resume) appends to the same log after a separator line.

    Args:
        spec: the resolved job.
        should_stop: polled after each step; True checkpoints and stops (preemption).
        backend: this worker's backend; default one local process.
    """
    backend = backend or LocalBackend()
    output_dir = spec.output.output_dir
    with job_log(output_dir, rank=backend.rank) as job_log_handler:
        try:
            if backend.is_main:
                _mark_attempt(job_log_handler, output_dir)
                write_text(f"{output_dir.rstrip('/')}/spec.json", spec.to_json())
                log.info("running %s job %s -> %s", spec.kind, spec.name or "", output_dir)
            task = importlib.import_module(TASKS[spec.kind])
            return task.run(spec.with_resolved_paths(), should_stop=should_stop, backend=backend)
        except StopTraining:
            raise  # a requested stop (preemption), not an error: the trainer logged it
        except Exception as err:
            job_log_handler.write_exception(f"the job failed: {type(err).__name__}: {err}", err)
            raise


def _mark_attempt(job_log_handler: JobLogHandler, output_dir: str) -> None:
    """Separates a later attempt's lines from the earlier ones' in a log that already has some."""
    if not job_log_handler.had_lines:
        return
    step = CheckpointStore(output_dir).latest()
    where = f"step {step} (the newest committed checkpoint)" if step is not None else "the start (no checkpoint)"
    job_log_handler.write_line(f"--- attempt resumed at {where}, "
                               f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} ---")
