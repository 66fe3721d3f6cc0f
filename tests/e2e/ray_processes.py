"""Finding this test's Ray Train worker processes, to kill or signal them."""

from __future__ import annotations

import os

import psutil


def train_worker_pids() -> list[int]:
    """This test process's Ray Train worker processes: Ray titles them "ray::RayTrainWorker..." (the
    state API needs the dashboard), and they descend from this process (ray.init started their
    raylet), which keeps other Ray clusters on the machine out."""

    def ours(process: psutil.Process) -> bool:
        try:
            return any(parent.pid == os.getpid() for parent in process.parents())
        except psutil.Error:  # gone meanwhile
            return False

    return [p.pid for p in psutil.process_iter(["cmdline"])
            if p.info["cmdline"] and p.info["cmdline"][0].startswith("ray::RayTrainWorker") and ours(p)]
