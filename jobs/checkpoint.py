"""Atomic, fsspec-backed training checkpoints.

Layout under `{output_dir}/checkpoints/`:
    step-00001000/state.pt     weights, optimizer, schedule, step, RNG states, data cursor, W&B id
    step-00001000/spec.json    the resolved job spec
    step-00001000/COMMITTED    written last; its presence is the commit

Object stores have no atomic directory rename, so the commit is the marker: a reader only ever
considers directories whose COMMITTED exists, and the marker is written after every other file is
closed. A crash mid-write leaves an uncommitted directory that is ignored and later cleaned up.
"""

from __future__ import annotations

import io
import logging
import random
import re
from typing import Any

import fsspec
import numpy as np
import torch

log = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"step-(\d{8})$")
MARKER = "COMMITTED"


def rng_state() -> dict[str, Any]:
    """Every RNG a training step draws from: Python, NumPy, torch CPU and CUDA."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointStore:
    """Writes, finds and prunes committed checkpoints under one fsspec URL.

    Args:
        output_dir: the job's output directory (local path or fsspec URL).
        keep: number of newest committed checkpoints to keep.
    """

    def __init__(self, output_dir: str, keep: int = 3):
        self.fs, self.root = fsspec.core.url_to_fs(f"{output_dir.rstrip('/')}/checkpoints")
        self.keep = keep

    def _dir(self, step: int) -> str:
        return f"{self.root}/step-{step:08d}"

    def committed_steps(self) -> list[int]:
        """Steps with a committed checkpoint, ascending."""
        if not self.fs.exists(self.root):
            return []
        steps = []
        for path in self.fs.ls(self.root, detail=False):
            match = _STEP_DIR.search(path.rstrip("/"))
            if match and self.fs.exists(f"{path.rstrip('/')}/{MARKER}"):
                steps.append(int(match.group(1)))
        return sorted(steps)

    def latest(self) -> int | None:
        steps = self.committed_steps()
        return steps[-1] if steps else None

    def directory(self, step: int) -> str:
        return self._dir(step)

    def begin(self, step: int) -> str:
        """Makes an empty, uncommitted directory for `step` (clearing a leftover attempt)."""
        directory = self._dir(step)
        if self.fs.exists(directory):
            self.fs.rm(directory, recursive=True)
        self.fs.makedirs(directory, exist_ok=True)
        return directory

    def write(self, directory: str, state: dict[str, Any], spec_json: str) -> None:
        """Writes rank 0's state.pt and spec.json into an uncommitted directory."""
        buffer = io.BytesIO()
        torch.save(state, buffer)
        with self.fs.open(f"{directory}/state.pt", "wb") as f:
            f.write(buffer.getvalue())
        with self.fs.open(f"{directory}/spec.json", "w") as f:
            f.write(spec_json)

    def commit(self, directory: str, step: int) -> None:
        """Publishes the checkpoint (the marker, written after every other file is closed), then
        prunes old ones."""
        with self.fs.open(f"{directory}/{MARKER}", "w") as f:
            f.write(f"{step}\n")
        self._prune()

    def save(self, step: int, state: dict[str, Any], spec_json: str) -> str:
        """begin + write + commit, for one process. Returns the checkpoint's directory."""
        directory = self.begin(step)
        self.write(directory, state, spec_json)
        self.commit(directory, step)
        return directory

    def load(self, step: int | None = None) -> dict[str, Any] | None:
        """The state of `step` (default: the newest committed), or None when there is none."""
        step = self.latest() if step is None else step
        if step is None:
            return None
        directory = self._dir(step)
        if not self.fs.exists(f"{directory}/{MARKER}"):
            raise FileNotFoundError(f"checkpoint {directory} is not committed (no {MARKER}); use a committed step "
                                    f"({self.committed_steps()})")
        with self.fs.open(f"{directory}/state.pt", "rb") as f:
            # weights_only=False: the state holds RNG tuples and numpy arrays; it is our own file.
            return torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=False)

    def _prune(self) -> None:
        steps = self.committed_steps()
        for step in steps[:-self.keep]:
            directory = self._dir(step)
            self.fs.rm(f"{directory}/{MARKER}")  # uncommit first: a reader never sees a half-deleted one
            self.fs.rm(directory, recursive=True)
        # Uncommitted leftovers older than the newest commit are dead attempts.
        if not steps:
            return
        for path in self.fs.ls(self.root, detail=False):
            match = _STEP_DIR.search(path.rstrip("/"))
            if match and int(match.group(1)) < steps[-1] and not self.fs.exists(f"{path.rstrip('/')}/{MARKER}"):
                self.fs.rm(path, recursive=True)
