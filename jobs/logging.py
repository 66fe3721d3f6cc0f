"""Where metrics go: a metrics JSONL in the output directory, the console, and Weights & Biases.

W&B runs offline when no WANDB_API_KEY is set (its files land in the output directory and can be
synced later). The run id is kept in checkpoints, so a resumed job continues the same W&B run; a
resumed job only logs steps above the checkpoint's, so no step is logged twice (W&B would drop
the duplicate silently).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import fsspec

from jobs.spec import JobSpec

log = logging.getLogger("bertfleet")


class MetricsLogger:
    """Logs metric dicts by global step to JSONL, the console and (rank 0) W&B.

    Args:
        spec: the resolved job spec (its JSON becomes the W&B config).
        output_dir: where metrics.jsonl (and W&B's offline files) go.
        run_id: W&B run id to continue (from a checkpoint), or None for a new run.
        enabled: False on ranks other than 0.
    """

    def __init__(self, spec: JobSpec, output_dir: str, run_id: str | None = None, enabled: bool = True):
        self.enabled = enabled
        self.output_dir = output_dir.rstrip("/")
        self._wandb_run = None
        self._skip_through = -1
        self.run_id = run_id
        if not enabled:
            return
        fs, path = fsspec.core.url_to_fs(self.output_dir)
        fs.makedirs(path, exist_ok=True)
        if spec.logging.wandb:
            self._start_wandb(spec, run_id)

    def _start_wandb(self, spec: JobSpec, run_id: str | None) -> None:
        import wandb

        offline = not os.environ.get("WANDB_API_KEY")
        local_dir = self.output_dir if "://" not in self.output_dir else None
        self._wandb_run = wandb.init(
            project=spec.logging.project, entity=spec.logging.entity, group=spec.logging.group,
            tags=spec.logging.tags or None, name=spec.name, config=json.loads(spec.to_json()),
            id=run_id, resume="allow" if run_id else None, dir=local_dir,
            mode="offline" if offline else "online", settings=wandb.Settings(console="off", silent=True))
        self.run_id = self._wandb_run.id

    @property
    def wandb_url(self) -> str | None:
        return getattr(self._wandb_run, "url", None) if self._wandb_run else None

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if not self.enabled or step <= self._skip_through:
            return
        record = {"step": step, "time": time.time(), **metrics}
        # Local files are appended; fsspec object stores have no append, see README "Not done".
        with fsspec.open(f"{self.output_dir}/metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._wandb_run is not None:
            self._wandb_run.log(metrics, step=step)

    def resume(self) -> None:
        """Before a resumed run logs: steps that were already logged before the interruption (past
        the checkpoint) are not logged again. The resumed run recomputes them bit for bit, and W&B
        would drop a step at or below its last one silently anyway."""
        if not self.enabled:
            return
        try:
            with fsspec.open(f"{self.output_dir}/metrics.jsonl", "r") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return
        for line in lines:
            try:
                self._skip_through = max(self._skip_through, int(json.loads(line)["step"]))
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by the interruption

    def finish(self) -> None:
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None
