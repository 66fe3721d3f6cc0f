"""Helpers for the control-plane tests: a clock the test moves, and job specs that ask for CPU, GPU
or TPU gangs."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from jobs.spec import JobSpec, parse_spec


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self) -> None:
        self.now = datetime(2025, 1, 1, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


def raw_spec(output_dir: str | Path = "/tmp/bertfleet-test", name: str | None = None, **resources: Any) -> dict:
    """A minimal valid spec mapping; `resources` go into its resources section."""
    raw: dict[str, Any] = {"kind": "pretrain", "model": {"size": "tiny"}, "output": {"output_dir": str(output_dir)}}
    if name:
        raw["name"] = name
    if resources:
        raw["resources"] = resources
    return raw


def make_spec(output_dir: str | Path = "/tmp/bertfleet-test", name: str | None = None, **resources: Any) -> JobSpec:
    return parse_spec(raw_spec(output_dir, name, **resources))


def gpu_spec(num_gpus: int, name: str | None = None, num_hosts: int = 1, **extra: Any) -> JobSpec:
    """A DDP job with `num_gpus` workers of one GPU each, spread over `num_hosts` hosts."""
    return make_spec(name=name, accelerator="gpu", backend="ddp", num_hosts=num_hosts,
                     devices_per_host=num_gpus // num_hosts, **extra)
