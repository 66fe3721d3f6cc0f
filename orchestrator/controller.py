"""The job controller: one explicit `step()` at a time, each a pass of watch -> requeue -> schedule.

Policies decide (orchestrator/state.py, orchestrator/queue.py), the controller executes (through the
store, which records each transition with its event in one transaction, and the launcher, which
starts and stops runs), callbacks observe. Tests drive `step()` by hand with a fake launcher and a
fixed set of nodes, one transition at a time; `run_forever` is the same step on a timer.

What the controller holds in memory is only what it cannot get back from the store: the handles of
the runs it launched and the resources it booked for them. After a restart it finds SCHEDULED and
RUNNING jobs it holds no handle for, re-attaches to those whose runs are still going (when the
launcher can) and requeues the others (`state.on_run_lost`), to resume from their newest
checkpoints; nothing in the store is lost and nothing runs twice.

A launcher is any object with
    launch(job, node_names) -> handle  start the job's worker group (node_names: where the gang was
                                       booked, one per worker); raise if it cannot start
    poll(handle) -> RunStatus          running | succeeded | failed (with an error) | preempted
    stop(handle) -> None               stop the run (for a cancel)
and optionally
    attach(job) -> (handle, node_names) | None   find a run a previous controller launched and that
                                       is still going, so a restarted controller re-attaches to it
                                       instead of requeueing it
`RayLauncher` runs `orchestrator.launch.run_on_ray` in a detached, named Ray actor per run
(`RunDriver`), which outlives the controller: a restarted controller re-attaches to it by name.
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
from orchestrator.queue import Gang, Node, book, gang_of, next_schedulable, release, unschedulable_reason
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
    def launch(self, job: Job, node_names: list[str]) -> Any: ...

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
    ended: RunStatus | None = None  # the launcher's final word, kept while the controller decides
    ended_at: datetime | None = None


# Errors that mean a worker stopped answering rather than failed: its host may be going away. Ray
# declares a node dead only after its health checks fail for a while (~15 s by default), later than
# the worker group notices; the controller waits up to `node_loss_grace_s` to tell the two apart.
LOST_CONTACT_MARKERS = ("unavailable", "actordied", "actor died", "connection refused", "failed to connect",
                        "health check failed", "node died", "node has died", "raylet")


def _lost_contact(error: str | None) -> bool:
    text = (error or "").lower()
    return any(marker in text for marker in LOST_CONTACT_MARKERS)


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
        node_loss_grace_s: how long a run that lost contact with its workers waits for Ray to declare
            one of its nodes dead (a preemption) before it counts as a real failure.
    """

    store: Store
    launcher: Launcher
    nodes: Sequence[Node] | Callable[[], Sequence[Node]]
    callbacks: list[ControllerCallback] = field(default_factory=list)
    read_metrics: bool = True
    node_loss_grace_s: float = 45.0
    _runs: dict[str, _Run] = field(default_factory=dict, init=False)
    _waiting: dict[str, str] = field(default_factory=dict, init=False)  # job id -> why it cannot fit, as noted
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
        attach = getattr(self.launcher, "attach", None)
        for state in (JobState.SCHEDULED, JobState.RUNNING):
            for job in self.store.jobs(state):
                if job.id in self._runs:
                    continue
                found = None
                if attach is not None and state == JobState.RUNNING:
                    try:
                        found = attach(job)
                    except Exception:  # the launcher is a process boundary: treat the run as lost
                        log.exception("re-attaching to job %s failed; requeueing it", job.id)
                if found is not None:
                    handle, node_names = found
                    self._runs[job.id] = _Run(handle, gang_of(job.spec), list(node_names))
                    log.info("job %s: re-attached to its run on %s", job.id, ", ".join(sorted(set(node_names))))
                    continue  # _watch polls it (and stops it if a cancel came in meanwhile)
                # its run died with the previous controller
                self._apply(job, on_stopped_for_cancel(job) if job.cancel_requested else on_run_lost(job), done)
        self._reconciled = True

    def _watch(self, now: datetime, done: list[Transition]) -> None:
        alive: set[str] | None = None  # names of the nodes alive now, asked for once a step when needed
        for job_id, run in list(self._runs.items()):
            job = self.store.get(job_id)
            if job.state != JobState.RUNNING:  # ended elsewhere (e.g. by hand in the store): stop it
                self._stop(job_id)
                continue
            if job.cancel_requested:
                self._stop(job_id)
                self._apply(job, on_stopped_for_cancel(job), done)
                continue
            if run.ended is None:
                try:
                    status = self.launcher.poll(run.handle)
                except Exception:  # the launcher is a process boundary; try again next step
                    log.exception("polling job %s failed; will poll again", job_id)
                    continue
                self._record_progress(job, status)
                if status.state == "running":
                    continue
                run.ended, run.ended_at = status, now
            status = run.ended
            if status.state == "failed":
                if alive is None:
                    alive = {node.name for node in self._nodes()}
                gone = sorted(set(run.node_names) - alive)
                if gone:  # Ray's node-death signal: the run failed because its host went away
                    status = RunStatus("preempted", error=f"node {', '.join(gone)} left the cluster "
                                                          f"({status.error or 'the run failed'})")
                elif _lost_contact(status.error) and (now - run.ended_at).total_seconds() < self.node_loss_grace_s:
                    continue  # a worker became unreachable: wait until Ray declares its node dead, or not
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
            node_names = [nodes[i].name for i in placement]
            try:
                handle = self.launcher.launch(scheduled, node_names)
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
            self._runs[job.id] = _Run(handle, gang, node_names)
        self._note_unschedulable(candidates)

    def _note_unschedulable(self, queued: list[Job]) -> None:
        """Tells (once, as an event) each queued job that cannot fit even the empty cluster why it waits:
        it stays queued, since nodes may join, but its owner should not have to guess."""
        nodes = self._nodes()
        for job in queued:
            reason = unschedulable_reason(job, nodes)
            if reason is not None and self._waiting.get(job.id) != reason:
                self.store.note(job.id, f"waiting for capacity: {reason}")
                log.info("job %s waits: %s", job.id, reason)
            if reason is None:
                self._waiting.pop(job.id, None)
            else:
                self._waiting[job.id] = reason

    def _nodes(self) -> Sequence[Node]:
        return self.nodes() if callable(self.nodes) else self.nodes

    def _free_nodes(self) -> list[Node]:
        nodes = [Node(n.name, dict(n.total)) for n in self._nodes()]
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

RUN_NAMESPACE = "bertfleet"
PREEMPTION_MARKERS = ("preempt", "node died", "node has died", "nodedied", "node failed", "node was killed",
                      "raylet died", "raylet failed")


def run_actor_name(job_id: str) -> str:
    return f"bertfleet-run-{job_id}"


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def summarize_error(text: str, max_chars: int = 500) -> str:
    """The line that names the root cause of a (Ray-wrapped) traceback: its last unindented
    `SomeError: message` line, which is what the worker raised."""
    lines = [line for line in text.strip().splitlines() if line and not line[0].isspace() and not line.startswith("^")]
    causes = [line for line in lines if re.match(r"[\w.]+(Error|Exception|Exit|Interrupt)\b", line)]
    summary = (causes or lines or ["the run failed (no error text)"])[-1]
    if summary.endswith(":"):  # a wrapper (Ray Train's WorkerGroupError): its first cause follows
        after = lines[lines.index(summary) + 1:] if summary in lines else []
        detail = next((line for line in after if not re.match(r"\[Rank \d+", line)), None)
        summary = f"{summary} {detail}" if detail else summary
    return summary if len(summary) <= max_chars else summary[:max_chars] + "..."


def ray_nodes() -> list[Node]:
    """The alive nodes of the Ray cluster this process is connected to, with their total resources."""
    import ray

    return [Node(_node_name(n), dict(n["Resources"])) for n in ray.nodes() if n.get("Alive")]


def _node_name(node: dict[str, Any]) -> str:
    """How the controller names a Ray node (an entry of ray.nodes()): address/short id."""
    return f"{node.get('NodeManagerAddress', node['NodeID'])}/{node['NodeID'][:8]}"


def ray_node_ids(names: Sequence[str]) -> list[str]:
    """The Ray node id behind each name `ray_nodes` gave; a name whose node is gone raises ValueError."""
    import ray

    ids = {_node_name(n): n["NodeID"] for n in ray.nodes() if n.get("Alive")}
    gone = sorted(set(names) - set(ids))
    if gone:
        raise ValueError(f"node {', '.join(gone)} left the cluster before the run started")
    return [ids[name] for name in names]


class RunDriver:
    """Drives one attempt of one job: `run_on_ray` in a thread of a detached actor on the head node.

    Detached and named after the job, so the run outlives the controller that launched it and a
    restarted controller finds it again (`RayLauncher.attach`). Killing this actor ends the run: the
    Ray Train workers are actors it owns, and Ray kills what a dead owner owned.
    """

    def __init__(self, spec_json: str, storage_path: str | None, node_names: list[str]):
        self.node_names = node_names
        self._outcome: tuple[str, str | None] | None = None
        threading.Thread(target=self._main, args=(spec_json, storage_path), name="run", daemon=True).start()

    def _main(self, spec_json: str, storage_path: str | None) -> None:
        from jobs.spec import spec_from_json
        from orchestrator.launch import run_on_ray

        try:
            run_on_ray(spec_from_json(spec_json), storage_path, node_ids=ray_node_ids(self.node_names))
            self._outcome = ("succeeded", None)
        except BaseException as err:  # noqa: BLE001 - whatever the run raised is its outcome
            self._outcome = ("failed", _ANSI.sub("", f"{type(err).__name__}: {err}"))

    def status(self) -> tuple[str, str | None]:
        """("running", None), ("succeeded", None) or ("failed", error text)."""
        return self._outcome or ("running", None)

    def nodes(self) -> list[str]:
        return self.node_names


@dataclass(frozen=True)
class RunHandle:
    name: str
    actor: Any


class RayLauncher:
    """Runs each attempt in a `RunDriver` actor pinned to this (the head) node, so the driver of the
    worker group is not on a preemptible node. The driver takes no CPU; the worker group asks for the
    gang.

    The controller owns the retry budget: run_on_ray gets max_failures 0, so a failure reaches the
    controller at once instead of being retried inside Ray Train first (which would count twice).

    Preemption is recognized from the error text (Ray reports a preempted node as the node or actor
    having died; a worker that got a preemption notice raises cluster.preemption.Preempted); anything
    else is a real failure. A driver that died (the head's worker process was killed) is a lost run,
    reported as preempted: it is not the job's fault.
    """

    def __init__(self, storage_path: str | None = None, poll_timeout_s: float = 30.0):
        self.storage_path = storage_path
        self.poll_timeout_s = poll_timeout_s

    def launch(self, job: Job, node_names: list[str]) -> RunHandle:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        name = run_actor_name(job.id)
        self._kill_stale(name)
        spec = job.spec
        cpus = spec.resources.cpus_per_worker or gang_of(spec).bundle["CPU"]  # what the controller booked
        spec = spec.model_copy(update={"resources": spec.resources.model_copy(
            update={"max_failures": 0, "cpus_per_worker": int(cpus)})})
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        actor = ray.remote(RunDriver).options(
            name=name, namespace=RUN_NAMESPACE, lifetime="detached", max_restarts=0, num_cpus=0,
            scheduling_strategy=here).remote(spec.to_json(), self.storage_path, list(node_names))
        return RunHandle(name, actor)

    def attach(self, job: Job) -> tuple[RunHandle, list[str]] | None:
        import ray

        name = run_actor_name(job.id)
        try:
            actor = ray.get_actor(name, namespace=RUN_NAMESPACE)
            node_names = ray.get(actor.nodes.remote(), timeout=self.poll_timeout_s)
        except (ValueError, ray.exceptions.RayActorError):
            return None
        return RunHandle(name, actor), node_names

    def poll(self, handle: RunHandle) -> RunStatus:
        import ray

        try:
            state, error = ray.get(handle.actor.status.remote(), timeout=self.poll_timeout_s)
        except ray.exceptions.GetTimeoutError:
            return RunStatus("running")  # busy; ask again next step
        except ray.exceptions.RayActorError as err:
            return RunStatus("preempted", error=f"the run's driver died: {summarize_error(str(err))}")
        if state == "running":
            return RunStatus("running")
        ray.kill(handle.actor, no_restart=True)  # detached: it would otherwise stay
        if state == "succeeded":
            return RunStatus("succeeded")
        log.warning("run %s ended with an error:\n%s", handle.name, error)
        preempted = any(marker in (error or "").lower() for marker in PREEMPTION_MARKERS)
        return RunStatus("preempted" if preempted else "failed", error=summarize_error(error or ""))

    def stop(self, handle: RunHandle) -> None:
        import ray

        ray.kill(handle.actor, no_restart=True)

    @staticmethod
    def _kill_stale(name: str) -> None:
        """Kills a driver left under this name (a controller that died between launching and recording
        RUNNING): two drivers of one job must never run at once."""
        import time

        import ray

        try:
            stale = ray.get_actor(name, namespace=RUN_NAMESPACE)
        except ValueError:
            return
        log.warning("killing a stale run driver %s before relaunching", name)
        ray.kill(stale, no_restart=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the name is free once the actor is gone
            try:
                ray.get_actor(name, namespace=RUN_NAMESPACE)
            except ValueError:
                return
            time.sleep(0.2)
