"""The job queue: which QUEUED job runs next, with gang semantics (all of a job's workers are placed,
or none are).

A job's gang is `num_workers` identical bundles, one per worker, each on a single node:
  cpu  {"CPU": c}
  gpu  {"CPU": c, "GPU": 1}                 (+ {"accelerator_type:<T>": 0.001} when the spec names a type)
  tpu  {"CPU": c, "TPU-host": 1}            one worker per host, holding the whole host (+ accelerator type)
with c = resources.cpus_per_worker (default 1), which is also what the launched workers ask Ray for.
The accelerator-type resource follows Ray's convention: nodes carry `accelerator_type:H100: 1` and
each worker asks for a sliver of it, so any number of workers share the label.

Order and starvation (`next_schedulable`): jobs are considered by priority (higher first), then in
submission order. The first job whose gang fits the free resources now is taken. A job that does not
fit now but would fit on the empty cluster is *blocked*: nothing behind it is taken, of any priority,
so it cannot be starved by smaller jobs slipping past it again and again; it runs as soon as enough
running jobs end. A job that cannot fit even on the empty cluster is skipped (it would otherwise block
the queue forever). Jobs waiting out a failure backoff (`next_attempt_after`) are not ready and neither
block nor are taken.

The cost of the rule is idle capacity while a big job waits for its gang (no backfilling); the gain
is that the wait is bounded by the running jobs' lengths, whatever is submitted after it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from jobs.spec import JobSpec
from orchestrator.state import Job, JobState
from orchestrator.store import Store

ACCELERATOR_TYPE_SHARE = 0.001  # what one worker asks of a node's `accelerator_type:<T>` label (as Ray does)
_EPS = 1e-9


@dataclass(frozen=True)
class Gang:
    """`num_workers` copies of `bundle`, each placed whole on one node."""

    bundle: dict[str, float]
    num_workers: int


def gang_of(spec: JobSpec) -> Gang:
    """The resources a job's worker group needs (see the module docstring)."""
    resources = spec.resources
    bundle: dict[str, float] = {"CPU": float(resources.cpus_per_worker or 1)}
    if resources.accelerator == "gpu":
        bundle["GPU"] = 1.0
    elif resources.accelerator == "tpu":
        bundle["TPU-host"] = 1.0
    if resources.accelerator != "cpu" and resources.accelerator_type:
        bundle[f"accelerator_type:{resources.accelerator_type}"] = ACCELERATOR_TYPE_SHARE
    return Gang(bundle, resources.num_workers)


@dataclass
class Node:
    """One node's resources: what it has (`total`) and what is not booked (`free`; default: total)."""

    name: str
    total: dict[str, float]
    free: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.free:
            self.free = dict(self.total)


def _copies(bundle: Mapping[str, float], available: Mapping[str, float]) -> int:
    """How many copies of `bundle` fit into `available`."""
    counts = [math.floor((available.get(k, 0.0) + _EPS) / need) for k, need in bundle.items() if need > 0]
    return min(counts) if counts else 0


def place(gang: Gang, available: Sequence[Mapping[str, float]]) -> list[int] | None:
    """Where each worker of `gang` goes: node indices (packed onto the fewest nodes: the nodes with
    room for the most workers first), or None when the whole gang does not fit.

    The bundles are identical, so counting copies per node is exact (no bin-packing search needed).
    """
    room = sorted(((_copies(gang.bundle, free), i) for i, free in enumerate(available)), key=lambda x: (-x[0], x[1]))
    placement: list[int] = []
    for copies, index in room:
        take = min(copies, gang.num_workers - len(placement))
        placement += [index] * take
        if len(placement) == gang.num_workers:
            return placement
    return None


def book(nodes: Sequence[Node], gang: Gang, placement: Iterable[int]) -> None:
    """Subtracts a placed gang from the nodes' free resources."""
    for index in placement:
        for key, need in gang.bundle.items():
            nodes[index].free[key] = nodes[index].free.get(key, 0.0) - need
            assert nodes[index].free[key] > -_EPS, f"booked more {key} than node {nodes[index].name} has"


def release(nodes: Sequence[Node], gang: Gang, placement: Iterable[int]) -> None:
    """Returns a placed gang's resources to the nodes."""
    for index in placement:
        for key, need in gang.bundle.items():
            nodes[index].free[key] = nodes[index].free.get(key, 0.0) + need


def queue_order(jobs: Iterable[Job]) -> list[Job]:
    """Higher priority first, then first submitted first."""
    return sorted(jobs, key=lambda job: (-job.priority, job.seq))


def next_schedulable(jobs: Iterable[Job], nodes: Sequence[Node], now: datetime) -> tuple[Job, list[int]] | None:
    """The next QUEUED job to start and where its workers go, or None (see the module docstring for
    the rule).

    Args:
        jobs: candidate jobs (those not QUEUED are ignored).
        nodes: the cluster, with `free` net of what is already booked.
        now: for failure backoffs.
    """
    free = [node.free for node in nodes]
    total = [node.total for node in nodes]
    for job in queue_order(j for j in jobs if j.state == JobState.QUEUED):
        if job.next_attempt_after is not None and job.next_attempt_after > now:
            continue
        gang = gang_of(job.spec)
        placement = place(gang, free)
        if placement is not None:
            return job, placement
        if place(gang, total) is not None:
            return None  # blocked: it fits once running jobs end, and nothing may overtake it
    return None


def unschedulable_reason(job: Job, nodes: Sequence[Node]) -> str | None:
    """Why a job cannot run even on the empty cluster (None when it can)."""
    gang = gang_of(job.spec)
    if place(gang, [node.total for node in nodes]) is not None:
        return None
    room = sum(_copies(gang.bundle, node.total) for node in nodes)
    return (f"needs {gang.num_workers} workers of {gang.bundle}, but the whole cluster holds only {room}; "
            "shrink resources or add nodes")


class JobQueue:
    """The queue over a store's QUEUED jobs."""

    def __init__(self, store: Store):
        self.store = store

    def next_schedulable(self, nodes: Sequence[Node], now: datetime | None = None) -> tuple[Job, list[int]] | None:
        return next_schedulable(self.store.jobs(JobState.QUEUED), nodes, now or self.store.clock())
