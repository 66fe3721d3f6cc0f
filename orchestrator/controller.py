"""The job controller: one explicit `step()` at a time, each a pass of watch -> requeue -> schedule.

Policies decide (orchestrator/state.py, orchestrator/queue.py), the controller executes (through the
store, which records each transition with its event in one transaction, and the launcher, which
starts and stops runs), callbacks observe. Tests drive `step()` by hand with a fake launcher and a
fixed set of nodes, one transition at a time; `run_forever` is the same step on a timer.

What the controller holds in memory is only what it cannot get back from the store: the handles of
the runs it launched and the resources it booked for them. After a restart it finds SCHEDULED and
RUNNING jobs it holds no handle for and requeues them (`state.on_run_lost`), to resume from their
newest checkpoints; nothing in the store is lost.

A launcher is any object with
    launch(job) -> handle            start the job's worker group; raise if it cannot start
    poll(handle) -> RunStatus        running | succeeded | failed (with an error) | preempted
    stop(handle) -> None             stop the run (for a cancel)
`RayLauncher` runs `orchestrator.launch.run_on_ray` in a Ray task.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from orchestrator import outputs
from orchestrator.queue import Gang, Node, book, gang_of, next_schedulable, release
from orchestrator.state import (
    Decision,
    IllegalTransition,
    Job,
    JobState,
    Progress,
    on_preempted,
    on_preemption,
    on_run_lost,
    on_stopped_for_cancel,
    on_success,
    on_worker_failure,
)
from orchestrator.store import Store

log = logging.getLogger("bertfleet.controller")


@dataclass(frozen=True)
class RunStatus:
    """What a launcher knows about a run."""

    state: Literal["running", "succeeded", "failed", "preempted"]
    error: str | None = None
    progress: Progress | None = None
    checkpoint_step: int | None = None


class Launcher(Protocol):
    def launch(self, job: Job) -> Any: ...

    def poll(self, handle: Any) -> RunStatus: ...

    def stop(self, handle: Any) -> None: ...


class ControllerCallback(Protocol):
    def on_transition(self, job: Job, from_state: JobState, reason: str) -> None:
        """Called after a transition is committed; `job` is the job after it. Exceptions are logged."""


@dataclass(frozen=True)
class Transition:
    job_id: str
    from_state: JobState
    to_state: JobState
    reason: str


@dataclass
class _Run:
    handle: Any
    gang: Gang
    node_names: list[str]  # one per worker


@dataclass
class Controller:
    """Args:
        store: the job store.
        launcher: starts, watches and stops runs.
        nodes: the cluster's nodes with their total resources (or a function returning them, asked
            every step, so nodes may come and go); free resources are the totals minus what this
            controller booked.
        callbacks: observers of every transition.
        read_metrics: fill progress from each running job's metrics.jsonl when the launcher reports none.
    """

    store: Store
    launcher: Launcher
    nodes: Sequence[Node] | Callable[[], Sequence[Node]]
    callbacks: list[ControllerCallback] = field(default_factory=list)
    read_metrics: bool = True
    _runs: dict[str, _Run] = field(default_factory=dict, init=False)
    _reconciled: bool = field(default=False, init=False)
    _wake: threading.Event = field(default_factory=threading.Event, init=False)

    # --- the step ---------------------------------------------------------------------------------------

    def step(self, now: datetime | None = None) -> list[Transition]:
        """One pass: (first step only) requeue runs a previous controller lost; watch the running jobs;
        requeue preempted ones; start every job the queue allows.

        Returns:
            The transitions made, in order.
        """
        now = now or self.store.clock()
        done: list[Transition] = []
        if not self._reconciled:
            self._reconcile(done)
        self._watch(now, done)
        for job in self.store.jobs(JobState.PREEMPTED):
            self._apply(job, on_preempted(job), done)
        self._schedule(now, done)
        return done

    @property
    def running(self) -> list[str]:
        """Ids of the jobs whose runs this controller holds."""
        return list(self._runs)

    def _apply(self, job: Job, decision: Decision, done: list[Transition]) -> Job | None:
        """Executes a decision if the job is still in the state it was read in; None if it moved on."""
        try:
            after = self.store.apply(job.id, decision, expected=job.state)
        except IllegalTransition as err:
            log.info("%s", err)
            return None
        done.append(Transition(job.id, job.state, after.state, decision.reason))
        log.info("job %s: %s -> %s: %s", job.id, job.state.value, after.state.value, decision.reason)
        for callback in self.callbacks:
            try:
                callback.on_transition(after, job.state, decision.reason)
            except Exception:  # an observer never stops the controller
                log.exception("callback %r failed on job %s", callback, job.id)
        return after

    def _reconcile(self, done: list[Transition]) -> None:
        for state in (JobState.SCHEDULED, JobState.RUNNING):
            for job in self.store.jobs(state):
                if job.id not in self._runs:  # its run died with the previous controller
                    self._apply(job, on_stopped_for_cancel(job) if job.cancel_requested else on_run_lost(job), done)
        self._reconciled = True

    def _watch(self, now: datetime, done: list[Transition]) -> None:
        for job_id, run in list(self._runs.items()):
            job = self.store.get(job_id)
            if job.state != JobState.RUNNING:  # ended elsewhere (e.g. by hand in the store): stop it
                self._stop(job_id)
                continue
            if job.cancel_requested:
                self._stop(job_id)
                self._apply(job, on_stopped_for_cancel(job), done)
                continue
            try:
                status = self.launcher.poll(run.handle)
            except Exception:  # the launcher is a process boundary; try again next step
                log.exception("polling job %s failed; will poll again", job_id)
                continue
            self._record_progress(job, status)
            if status.state == "running":
                continue
            self._forget(job_id)
            if status.state == "succeeded":
                self._apply(job, on_success(job), done)
            elif status.state == "preempted":
                preempted = self._apply(job, on_preemption(job, status.error or "preempted"), done)
                if preempted is not None:
                    self._apply(preempted, on_preempted(preempted), done)
            else:
                self._apply(job, on_worker_failure(job, status.error or "the run failed (no error given)", now), done)

    def _record_progress(self, job: Job, status: RunStatus) -> None:
        progress, checkpoint = status.progress, status.checkpoint_step
        if progress is None and self.read_metrics:
            try:
                records = outputs.read_metrics(job.spec.output.output_dir, limit=200)
            except Exception:  # storage is a process boundary; progress is best effort
                log.debug("reading metrics of job %s failed", job.id, exc_info=True)
                records = []
            progress, from_file = outputs.progress_from_metrics(records, job.spec.training.num_train_steps)
            checkpoint = checkpoint if checkpoint is not None else from_file
        if progress not in (None, job.progress) or checkpoint not in (None, job.checkpoint_step):
            self.store.record_progress(job.id, progress, checkpoint)

    def _schedule(self, now: datetime, done: list[Transition]) -> None:
        nodes = self._free_nodes()
        candidates = self.store.jobs(JobState.QUEUED)
        while (pick := next_schedulable(candidates, nodes, now)) is not None:
            job, placement = pick
            candidates = [c for c in candidates if c.id != job.id]
            gang = gang_of(job.spec)
            where = ", ".join(sorted({nodes[i].name for i in placement}))
            scheduled = self._apply(job, Decision(JobState.SCHEDULED, f"gang of {gang.num_workers} x {gang.bundle} "
                                                  f"placed on {where}"), done)
            if scheduled is None:
                continue  # cancelled meanwhile
            book(nodes, gang, placement)
            try:
                handle = self.launcher.launch(scheduled)
            except Exception as err:  # noqa: BLE001 - the launcher is a process boundary: decide, don't crash
                release(nodes, gang, placement)
                self._apply(scheduled, on_worker_failure(scheduled, f"launch failed: {err}", now), done)
                continue
            running = self._apply(scheduled, Decision(JobState.RUNNING, f"launched attempt {scheduled.num_attempts + 1}"),
                                  done)
            if running is None:  # cancelled between booking and launch
                self.launcher.stop(handle)
                release(nodes, gang, placement)
                continue
            self._runs[job.id] = _Run(handle, gang, [nodes[i].name for i in placement])

    def _free_nodes(self) -> list[Node]:
        nodes = [Node(n.name, dict(n.total)) for n in (self.nodes() if callable(self.nodes) else self.nodes)]
        index = {node.name: i for i, node in enumerate(nodes)}
        for run in self._runs.values():
            book(nodes, run.gang, [index[name] for name in run.node_names if name in index])  # gone nodes free nothing
        return nodes

    def _stop(self, job_id: str) -> None:
        run = self._forget(job_id)
        try:
            self.launcher.stop(run.handle)
        except Exception:  # the launcher is a process boundary
            log.exception("stopping job %s failed", job_id)

    def _forget(self, job_id: str) -> _Run:
        return self._runs.pop(job_id)

    # --- the loop ---------------------------------------------------------------------------------------

    def wake(self) -> None:
        """Makes `run_forever` step now (after a submit or a cancel) instead of at its next tick."""
        self._wake.set()

    def run_forever(self, interval_s: float = 5.0, stop: threading.Event | None = None) -> None:
        """Steps every `interval_s` (or when woken) until `stop` is set."""
        stop = stop or threading.Event()
        while not stop.is_set():
            try:
                self.step()
            except Exception:  # the controller loop outlives any one bad step
                log.exception("controller step failed")
            self._wake.wait(interval_s)
            self._wake.clear()


# --- Ray ---------------------------------------------------------------------------------------------


def _run_job_task(spec_json: str, storage_path: str | None) -> dict[str, Any]:
    from jobs.spec import spec_from_json
    from orchestrator.launch import run_on_ray

    return run_on_ray(spec_from_json(spec_json), storage_path)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def summarize_error(text: str, max_chars: int = 500) -> str:
    """The line that names the root cause of a (Ray-wrapped) traceback: its last unindented
    `SomeError: message` line, which is what the worker raised."""
    lines = [line for line in text.strip().splitlines() if line and not line[0].isspace() and not line.startswith("^")]
    causes = [line for line in lines if re.match(r"[\w.]+(Error|Exception|Exit|Interrupt)\b", line)]
    summary = (causes or lines or ["the run failed (no error text)"])[-1]
    return summary if len(summary) <= max_chars else summary[:max_chars] + "..."


def ray_nodes() -> list[Node]:
    """The alive nodes of the Ray cluster this process is connected to, with their total resources."""
    import ray

    return [Node(n.get("NodeManagerAddress", n["NodeID"]) + f"/{n['NodeID'][:8]}", dict(n["Resources"]))
            for n in ray.nodes() if n.get("Alive")]


class RayLauncher:
    """Runs each job as `run_on_ray` inside a Ray task pinned to this (the head) node, so the driver
    of the worker group is not on a preemptible node. The task takes no CPU; the worker group asks
    for the gang.

    The controller owns the retry budget: run_on_ray gets max_failures 0, so a failure reaches the
    controller at once instead of being retried inside Ray Train first (which would count twice).

    Preemption is recognized from the error text (Ray reports a preempted node as the node or actor
    having died); anything else is a real failure.
    """

    def __init__(self, storage_path: str | None = None):
        self.storage_path = storage_path

    def launch(self, job: Job) -> Any:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        spec = job.spec
        spec = spec.model_copy(update={"resources": spec.resources.model_copy(update={"max_failures": 0})})
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        task = ray.remote(num_cpus=0, max_retries=0)(_run_job_task)
        return task.options(name=f"bertfleet-{job.id}", scheduling_strategy=here).remote(spec.to_json(),
                                                                                         self.storage_path)

    def poll(self, handle: Any) -> RunStatus:
        import ray

        ready, _ = ray.wait([handle], timeout=0)
        if not ready:
            return RunStatus("running")
        try:
            ray.get(handle)
        except Exception as err:  # noqa: BLE001 - whatever the run raised decides failure vs preemption
            text = _ANSI.sub("", f"{type(err).__name__}: {err}")
            log.warning("run %s ended with an error:\n%s", handle, text)
            preempted = any(s in text.lower() for s in ("preempt", "node died", "nodedied", "node failed"))
            return RunStatus("preempted" if preempted else "failed", error=summarize_error(text))
        return RunStatus("succeeded")

    def stop(self, handle: Any) -> None:
        import ray

        ray.cancel(handle, force=True)
