"""A job's life as an explicit state machine: the states, the one table of allowed transitions, the
plain `Job` snapshot that policies read, and the pure policy functions that decide what happens next.

Policies decide, the controller executes (through `Store.apply`, which records the state change and
its event in one transaction), callbacks observe. Nothing here touches the database, Ray or a clock:
every function takes the time it needs as an argument, so tests step through a life by hand.

```
QUEUED -> SCHEDULED -> RUNNING -> SUCCEEDED | FAILED | CANCELLED
                       RUNNING -> QUEUED     a real failure with failures left: retried after a backoff
                       RUNNING -> PREEMPTED -> QUEUED -> ... -> RUNNING   resumed from its newest checkpoint
FAILED | CANCELLED -> QUEUED   a user's resume (`bertfleet resume`): from its newest checkpoint, failures counted afresh
(and CANCELLED from every state that has not ended; see TRANSITIONS for the whole table)
```
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any

from jobs.spec import JobSpec, spec_from_json


class JobState(str, enum.Enum):
    QUEUED = "QUEUED"
    SCHEDULED = "SCHEDULED"
    RUNNING = "RUNNING"
    PREEMPTED = "PREEMPTED"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL

    @classmethod
    def parse(cls, text: str) -> JobState:
        """A state from its name, any case.

        Raises:
            ValueError: not a state; the message lists the states.
        """
        try:
            return cls(text.upper())
        except ValueError:
            raise ValueError(f"unknown job state {text!r}; one of {', '.join(s.value for s in cls)}") from None


TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})

# The only transitions there are. Reasons live on the events, not here: RUNNING -> QUEUED is a retry
# after a real failure, or a run lost with its controller (which is not the job's fault).
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.SCHEDULED, JobState.CANCELLED}),
    # SCHEDULED: the gang is booked; launching it can still fail (-> QUEUED to retry, or FAILED).
    JobState.SCHEDULED: frozenset({JobState.RUNNING, JobState.QUEUED, JobState.FAILED, JobState.CANCELLED}),
    JobState.RUNNING: frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.PREEMPTED,
                                 JobState.QUEUED}),
    JobState.PREEMPTED: frozenset({JobState.QUEUED, JobState.CANCELLED}),
    JobState.SUCCEEDED: frozenset(),
    # The run has ended; only a user's resume (`on_resume`) brings the job back. A SUCCEEDED job has
    # nothing left to resume: more training is a new job.
    JobState.FAILED: frozenset({JobState.QUEUED}),
    JobState.CANCELLED: frozenset({JobState.QUEUED}),
}


class IllegalTransition(RuntimeError):
    """A transition the table does not allow (or a job that is no longer in the state expected)."""


def check_transition(job_id: str, from_state: JobState | None, to_state: JobState) -> None:
    """Raises IllegalTransition unless `from_state -> to_state` is in TRANSITIONS (None: a new job,
    which can only be QUEUED)."""
    allowed = frozenset({JobState.QUEUED}) if from_state is None else TRANSITIONS[from_state]
    if to_state not in allowed:
        shown = from_state.value if from_state else "(new)"
        options = ", ".join(sorted(s.value for s in allowed)) or "none: the job has ended"
        raise IllegalTransition(f"job {job_id}: {shown} -> {to_state.value} is not allowed (from {shown}: {options})")


@dataclass(frozen=True)
class Progress:
    step: int | None = None
    total: int | None = None
    loss: float | None = None
    throughput: float | None = None  # examples per second


@dataclass
class Job:
    """A read-only snapshot of one job, as the store had it; what policies decide on."""

    id: str
    name: str
    kind: str
    priority: int
    state: JobState
    spec_json: str
    submitted_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    next_attempt_after: datetime | None = None
    num_attempts: int = 0
    num_preemptions: int = 0
    num_failures: int = 0
    last_error: str | None = None
    checkpoint_step: int | None = None
    progress: Progress = field(default_factory=Progress)
    cancel_requested: bool = False
    seq: int = 0  # submission order (FIFO within a priority)

    @cached_property
    def spec(self) -> JobSpec:
        return spec_from_json(self.spec_json, f"job {self.id} spec")

    def to_dict(self, with_spec: bool = False) -> dict[str, Any]:
        """The JSON form the API and `--json` print."""
        out: dict[str, Any] = {
            "id": self.id, "name": self.name, "kind": self.kind, "priority": self.priority, "state": self.state.value,
            "submitted_at": _iso(self.submitted_at), "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at), "next_attempt_after": _iso(self.next_attempt_after),
            "num_attempts": self.num_attempts, "num_preemptions": self.num_preemptions,
            "num_failures": self.num_failures, "last_error": self.last_error, "checkpoint_step": self.checkpoint_step,
            "progress": {"step": self.progress.step, "total": self.progress.total, "loss": self.progress.loss,
                         "throughput": self.progress.throughput},
            "cancel_requested": self.cancel_requested,
        }
        if with_spec:
            out["spec"] = json.loads(self.spec_json)
        return out


@dataclass(frozen=True)
class Event:
    time: datetime
    job_id: str
    from_state: JobState | None
    to_state: JobState
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"time": _iso(self.time), "job_id": self.job_id,
                "from_state": self.from_state.value if self.from_state else None, "to_state": self.to_state.value,
                "reason": self.reason}


@dataclass(frozen=True)
class Decision:
    """What a policy decided: the next state, why, and the bookkeeping that goes with it. The store
    applies all of it, with the event, in one transaction."""

    to_state: JobState
    reason: str
    count_failure: bool = False
    count_preemption: bool = False
    next_attempt_after: datetime | None = None
    error: str | None = None
    resumed: bool = False  # a user's resume: failures counted afresh, no backoff, no stale cancel request


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t else None


# ---------------------------------------------------------------------------------------------------
# Policies: pure functions of a job snapshot (and the time), returning a Decision.

BACKOFF_BASE_S = 10.0
BACKOFF_MAX_S = 600.0


def backoff_s(num_failures: int, base_s: float = BACKOFF_BASE_S, max_s: float = BACKOFF_MAX_S) -> float:
    """Seconds to wait before retrying after the `num_failures`-th real failure: base, 2 x base,
    4 x base, ..., capped at max_s. No jitter: retries are few and spread by their jobs' own timing."""
    assert num_failures >= 1, f"backoff is for the first failure onwards, got {num_failures}"
    return min(max_s, base_s * 2 ** min(num_failures - 1, 32))


def on_worker_failure(job: Job, error: str, now: datetime, base_s: float = BACKOFF_BASE_S,
                      max_s: float = BACKOFF_MAX_S) -> Decision:
    """A real failure (not a preemption) of a SCHEDULED or RUNNING job.

    As Ray Train's FailureConfig counts them, spec.resources.max_failures failures are retried and the
    one after ends the job: max_failures 0 fails on the first error, 3 allows four attempts that fail.

    Returns:
        QUEUED with next_attempt_after = now + backoff, or FAILED naming the cause.
    """
    failures = job.num_failures + 1
    max_failures = job.spec.resources.max_failures
    if failures > max_failures:
        return Decision(JobState.FAILED, f"failed {failures} time(s), more than resources.max_failures "
                        f"{max_failures}; last error: {error}", count_failure=True, error=error)
    wait_s = backoff_s(failures, base_s, max_s)
    return Decision(JobState.QUEUED, f"failure {failures} of at most {max_failures} tolerated, retrying in "
                    f"{wait_s:g}s: {error}", count_failure=True, error=error,
                    next_attempt_after=now + timedelta(seconds=wait_s))


def on_preemption(job: Job, reason: str = "preempted") -> Decision:
    """The run was preempted (spot/TPU reclaim, node drain): not the job's fault, so it does not count
    against max_failures."""
    return Decision(JobState.PREEMPTED, reason, count_preemption=True)


def on_preempted(job: Job) -> Decision:
    """A PREEMPTED job goes back to the queue to resume from its newest committed checkpoint."""
    where = f"checkpoint step {job.checkpoint_step}" if job.checkpoint_step is not None else "the start (no checkpoint yet)"
    return Decision(JobState.QUEUED, f"requeued after preemption {job.num_preemptions}; resumes from {where}")


def on_success(job: Job) -> Decision:
    return Decision(JobState.SUCCEEDED, "the run finished")


def on_cancel(job: Job, who: str = "user") -> Decision | None:
    """A cancel request. A job not yet running is cancelled at once; a RUNNING one returns None: the
    controller must stop its run first, then records CANCELLED (see `on_stopped_for_cancel`).

    Raises:
        IllegalTransition: the job already SUCCEEDED or FAILED.
    """
    if job.state == JobState.RUNNING:
        return None
    check_transition(job.id, job.state, JobState.CANCELLED)
    return Decision(JobState.CANCELLED, f"cancelled by {who} while {job.state.value}")


def on_stopped_for_cancel(job: Job) -> Decision:
    return Decision(JobState.CANCELLED, "cancelled by request; the run was stopped")


# What to do instead of resuming a job in a state that cannot be resumed.
_NOT_RESUMABLE = {
    JobState.QUEUED: "it is already waiting to run",
    JobState.SCHEDULED: "it is starting; to restart it, cancel it, then resume it",
    JobState.RUNNING: "it is running; to restart it, cancel it (bertfleet cancel), then resume it",
    JobState.PREEMPTED: "it goes back to the queue by itself and resumes from its newest checkpoint",
    JobState.SUCCEEDED: "it finished; to train further, submit a new job (e.g. with a larger "
                        "training.num_train_steps and the same output.output_dir, to start from its checkpoint)",
}


def on_resume(job: Job, who: str = "user") -> Decision:
    """A user's resume of a FAILED or CANCELLED job: back to the queue, to resume from its newest
    committed checkpoint (the job keeps its output_dir, where the trainer finds it). The failure count
    and backoff start afresh, so resources.max_failures applies to the resumed job as to a new one, and
    a cancel request left from before is cleared.

    Raises:
        IllegalTransition: the job is in any other state; the message says what to do instead.
    """
    if job.state not in (JobState.FAILED, JobState.CANCELLED):
        raise IllegalTransition(f"job {job.id} is {job.state.value}: only a FAILED or CANCELLED job can be "
                                f"resumed; {_NOT_RESUMABLE[job.state]}")
    check_transition(job.id, job.state, JobState.QUEUED)
    where = f"checkpoint step {job.checkpoint_step}" if job.checkpoint_step is not None else "the start (no checkpoint)"
    return Decision(JobState.QUEUED, f"resumed by {who} from {where} after it was {job.state.value}", resumed=True)


def on_run_lost(job: Job) -> Decision:
    """A SCHEDULED or RUNNING job whose run the (restarted) controller no longer holds: requeued to
    resume, not counted as a failure (the controller, not the job, went away)."""
    return Decision(JobState.QUEUED, f"the controller lost this {job.state.value} run (controller restart); "
                    "requeued to resume")
