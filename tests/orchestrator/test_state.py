"""The job state machine: every legal and illegal transition, through the table and through the store
(each recorded as an event in the same transaction), and the policies that decide them."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from fleet_fixtures import FakeClock, make_spec
from sqlalchemy import event

from orchestrator.state import (
    TERMINAL,
    TRANSITIONS,
    Decision,
    IllegalTransition,
    JobState,
    backoff_s,
    check_transition,
    on_cancel,
    on_preempted,
    on_preemption,
    on_run_lost,
    on_success,
    on_worker_failure,
)
from orchestrator.store import EventRow, Store

S = JobState
ALL = list(JobState)
# How to bring a fresh (QUEUED) job to each state, along legal transitions.
PATH_TO = {S.QUEUED: [], S.SCHEDULED: [S.SCHEDULED], S.RUNNING: [S.SCHEDULED, S.RUNNING],
           S.PREEMPTED: [S.SCHEDULED, S.RUNNING, S.PREEMPTED], S.SUCCEEDED: [S.SCHEDULED, S.RUNNING, S.SUCCEEDED],
           S.FAILED: [S.SCHEDULED, S.RUNNING, S.FAILED], S.CANCELLED: [S.CANCELLED]}
LEGAL = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}


def test_the_table_is_the_documented_lifecycle():
    assert LEGAL == {
        (S.QUEUED, S.SCHEDULED), (S.QUEUED, S.CANCELLED),
        (S.SCHEDULED, S.RUNNING), (S.SCHEDULED, S.QUEUED), (S.SCHEDULED, S.FAILED), (S.SCHEDULED, S.CANCELLED),
        (S.RUNNING, S.SUCCEEDED), (S.RUNNING, S.FAILED), (S.RUNNING, S.CANCELLED), (S.RUNNING, S.PREEMPTED),
        (S.RUNNING, S.QUEUED),
        (S.PREEMPTED, S.QUEUED), (S.PREEMPTED, S.CANCELLED),
        (S.FAILED, S.QUEUED), (S.CANCELLED, S.QUEUED)}  # a user's resume (on_resume)
    # an ended job's only way back is the queue (a resume); SUCCEEDED has nothing to resume
    assert all(TRANSITIONS[s] <= {S.QUEUED} for s in TERMINAL) and not TRANSITIONS[S.SUCCEEDED]
    assert all(S.CANCELLED in TRANSITIONS[s] for s in ALL if s not in TERMINAL)


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory: pytest.TempPathFactory):
    store = Store(tmp_path_factory.mktemp("state") / "jobs.db", clock=FakeClock())
    yield store
    store.close()


@pytest.mark.parametrize("to_state", ALL, ids=lambda s: s.value)
@pytest.mark.parametrize("from_state", ALL, ids=lambda s: s.value)
def test_every_transition_through_the_store(shared_store: Store, from_state: JobState, to_state: JobState):
    job, _ = shared_store.submit(make_spec())
    for state in PATH_TO[from_state]:
        shared_store.transition(job.id, state, f"to {state.value}")
    before = shared_store.get(job.id)
    assert before.state == from_state
    num_events = len(shared_store.events(job.id))
    if (from_state, to_state) in LEGAL:
        check_transition(job.id, from_state, to_state)
        after = shared_store.transition(job.id, to_state, "because the test says so")
        assert after.state == to_state == shared_store.get(job.id).state
        events = shared_store.events(job.id)
        assert len(events) == num_events + 1
        assert (events[-1].from_state, events[-1].to_state, events[-1].reason) == (
            from_state, to_state, "because the test says so")
    else:
        with pytest.raises(IllegalTransition, match=f"{from_state.value} -> {to_state.value} is not allowed"):
            check_transition(job.id, from_state, to_state)
        with pytest.raises(IllegalTransition):
            shared_store.transition(job.id, to_state, "must not happen")
        assert shared_store.get(job.id) == before
        assert len(shared_store.events(job.id)) == num_events


def test_a_new_job_can_only_be_queued():
    check_transition("j", None, S.QUEUED)
    with pytest.raises(IllegalTransition, match=r"\(new\) -> RUNNING"):
        check_transition("j", None, S.RUNNING)


def test_a_transition_expecting_a_stale_state_changes_nothing(store: Store):
    job, _ = store.submit(make_spec())
    store.transition(job.id, S.CANCELLED, "cancelled meanwhile")
    with pytest.raises(IllegalTransition, match="is CANCELLED, not QUEUED as expected"):
        store.transition(job.id, S.SCHEDULED, "the scheduler's stale view", expected=S.QUEUED)
    assert [e.to_state for e in store.events(job.id)] == [S.QUEUED, S.CANCELLED]


def test_state_and_event_commit_together(store: Store):
    """A failure while writing the event rolls the state change back with it (and the attempt)."""
    job, _ = store.submit(make_spec())
    store.transition(job.id, S.SCHEDULED, "placed")

    def fail(*_args):
        raise RuntimeError("disk full while writing the event")

    event.listen(EventRow, "before_insert", fail)
    try:
        with pytest.raises(RuntimeError, match="disk full"):
            store.transition(job.id, S.RUNNING, "launched")
        with pytest.raises(RuntimeError, match="disk full"):
            store.submit(make_spec(name="never-stored"))
    finally:
        event.remove(EventRow, "before_insert", fail)
    after = store.get(job.id)
    assert after.state == S.SCHEDULED and after.num_attempts == 0 and after.started_at is None
    assert store.attempts(job.id) == []
    assert [j.name for j in store.jobs()] == ["pretrain"]
    assert [e.to_state for e in store.events(job.id)] == [S.QUEUED, S.SCHEDULED]


def test_bookkeeping_follows_the_transitions(store: Store, clock: FakeClock):
    job, _ = store.submit(make_spec())
    assert store.events(job.id)[0].from_state is None
    store.transition(job.id, S.SCHEDULED, "placed")
    clock.advance(5)
    store.transition(job.id, S.RUNNING, "launched")
    clock.advance(60)
    store.apply(job.id, Decision(S.PREEMPTED, "spot VM reclaimed", count_preemption=True))
    store.transition(job.id, S.QUEUED, "requeued")
    store.transition(job.id, S.SCHEDULED, "placed")
    store.transition(job.id, S.RUNNING, "launched")
    clock.advance(60)
    done = store.apply(job.id, on_success(store.get(job.id)))
    assert (done.num_attempts, done.num_preemptions, done.num_failures) == (2, 1, 0)
    assert done.started_at == clock.now - timedelta(seconds=120) and done.finished_at == clock.now
    assert [a["outcome"] for a in store.attempts(job.id)] == ["preempted", "succeeded"]


# --- policies ------------------------------------------------------------------------------------------


def test_backoff_doubles_and_is_capped():
    assert [backoff_s(n, base_s=10, max_s=100) for n in (1, 2, 3, 4, 5, 50)] == [10, 20, 40, 80, 100, 100]


def test_real_failures_count_and_back_off_then_fail_with_the_cause(store: Store, clock: FakeClock):
    job, _ = store.submit(make_spec(max_failures=2))
    for failure in (1, 2):
        store.transition(job.id, S.SCHEDULED, "placed")
        running = store.transition(job.id, S.RUNNING, "launched")
        decision = on_worker_failure(running, f"CUDA error {failure}", clock.now, base_s=10)
        assert decision.to_state == S.QUEUED and decision.count_failure
        assert decision.next_attempt_after == clock.now + timedelta(seconds=10 * 2 ** (failure - 1))
        queued = store.apply(job.id, decision, expected=S.RUNNING)
        assert (queued.num_failures, queued.last_error) == (failure, f"CUDA error {failure}")
        assert queued.next_attempt_after == decision.next_attempt_after
    store.transition(job.id, S.SCHEDULED, "placed")
    running = store.transition(job.id, S.RUNNING, "launched")
    assert running.next_attempt_after is None
    decision = on_worker_failure(running, "CUDA error 3", clock.now)
    assert decision.to_state == S.FAILED
    assert "failed 3 time(s), more than resources.max_failures 2; last error: CUDA error 3" in decision.reason
    failed = store.apply(job.id, decision)
    assert (failed.state, failed.num_failures, failed.last_error) == (S.FAILED, 3, "CUDA error 3")
    assert [a["outcome"] for a in store.attempts(job.id)] == ["failed"] * 3


def test_preemptions_do_not_count_against_max_failures(store: Store, clock: FakeClock):
    job, _ = store.submit(make_spec(max_failures=0))
    for _ in range(5):
        store.transition(job.id, S.SCHEDULED, "placed")
        running = store.transition(job.id, S.RUNNING, "launched")
        decision = on_preemption(running, "TPU host maintenance")
        assert decision.to_state == S.PREEMPTED and not decision.count_failure
        preempted = store.apply(job.id, decision)
        assert on_preempted(preempted).to_state == S.QUEUED
        store.apply(job.id, on_preempted(preempted))
    after = store.get(job.id)
    assert (after.num_preemptions, after.num_failures, after.state) == (5, 0, S.QUEUED)
    store.transition(job.id, S.SCHEDULED, "placed")
    running = store.transition(job.id, S.RUNNING, "launched")
    assert on_worker_failure(running, "segfault", clock.now).to_state == S.FAILED  # max_failures 0: first is fatal


def test_requeue_after_preemption_names_the_checkpoint(store: Store):
    job, _ = store.submit(make_spec())
    store.record_progress(job.id, checkpoint_step=1200)
    assert "resumes from checkpoint step 1200" in on_preempted(store.get(job.id)).reason


def test_cancel_policy(store: Store):
    job, _ = store.submit(make_spec())
    assert on_cancel(job).to_state == S.CANCELLED
    store.transition(job.id, S.SCHEDULED, "placed")
    running = store.transition(job.id, S.RUNNING, "launched")
    assert on_cancel(running) is None  # the run must be stopped first
    done = store.apply(job.id, on_success(running))
    with pytest.raises(IllegalTransition, match="SUCCEEDED -> CANCELLED"):
        on_cancel(done)


def test_a_lost_run_is_requeued_without_counting_a_failure(store: Store):
    job, _ = store.submit(make_spec())
    store.transition(job.id, S.SCHEDULED, "placed")
    running = store.transition(job.id, S.RUNNING, "launched")
    decision = on_run_lost(running)
    assert decision.to_state == S.QUEUED and not decision.count_failure and not decision.count_preemption
    assert store.apply(job.id, decision).num_failures == 0
    assert store.attempts(job.id)[0]["outcome"] == "lost"


def test_state_names_parse_in_any_case(tmp_path: Path):
    assert JobState.parse("running") is S.RUNNING
    with pytest.raises(ValueError, match="unknown job state 'RUNNIN'; one of QUEUED"):
        JobState.parse("RUNNIN")
