"""The durable store: a controller restart (reopening the SQLite file) loses nothing; idempotent
submits create one job; listing, cancelling and progress."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from fleet_fixtures import FakeClock, gpu_spec, make_spec

from orchestrator.state import IllegalTransition, JobState, Progress, on_worker_failure
from orchestrator.store import IdempotencyConflict, JobNotFound, Store, database_url

S = JobState


def test_a_reopened_store_has_everything(tmp_path: Path, clock: FakeClock):
    path = tmp_path / "jobs.db"
    store = Store(path, clock=clock)
    a, _ = store.submit(make_spec(name="a"), priority=3, idempotency_key="key-a")
    b, _ = store.submit(gpu_spec(4, name="b", num_hosts=2, max_failures=1))
    store.transition(b.id, S.SCHEDULED, "placed")
    clock.advance(1)
    store.transition(b.id, S.RUNNING, "launched")
    store.record_progress(b.id, Progress(step=50, total=100, loss=2.5, throughput=123.0), checkpoint_step=40)
    store.apply(b.id, on_worker_failure(store.get(b.id), "OOM", clock.now), expected=S.RUNNING)
    before = ([store.get(j.id) for j in (a, b)], [store.events(j.id) for j in (a, b)], store.attempts(b.id))
    store.close()  # the controller goes away ...

    again = Store(str(path), clock=clock)  # ... and comes back
    after = ([again.get(j.id) for j in (a, b)], [again.events(j.id) for j in (a, b)], again.attempts(b.id))
    assert after == before
    b_after = after[0][1]
    assert (b_after.state, b_after.num_failures, b_after.last_error, b_after.checkpoint_step) == (S.QUEUED, 1, "OOM", 40)
    assert b_after.progress == Progress(step=50, total=100, loss=2.5, throughput=123.0)
    assert b_after.spec == gpu_spec(4, name="b", num_hosts=2, max_failures=1)
    assert [e.to_state for e in after[1][1]] == [S.QUEUED, S.SCHEDULED, S.RUNNING, S.QUEUED]
    # the idempotency key survives the restart too
    assert again.submit(make_spec(name="a"), priority=3, idempotency_key="key-a") == (after[0][0], False)
    again.close()


def test_idempotent_submit_creates_one_job(store: Store):
    first, created = store.submit(make_spec(name="x"), idempotency_key="retry-me")
    second, created_again = store.submit(make_spec(name="x"), idempotency_key="retry-me")
    assert created and not created_again and second == first
    assert len(store.jobs()) == 1 and len(store.events(first.id)) == 1
    other, created = store.submit(make_spec(name="x"))  # no key: a new job
    assert created and other.id != first.id


def test_an_idempotency_key_reused_for_another_spec_is_refused(store: Store):
    store.submit(make_spec(name="x"), idempotency_key="k")
    with pytest.raises(IdempotencyConflict, match="already used for job job-"):
        store.submit(make_spec(name="y"), idempotency_key="k")
    with pytest.raises(IdempotencyConflict):
        store.submit(make_spec(name="x"), priority=9, idempotency_key="k")
    assert len(store.jobs()) == 1


def test_concurrent_retries_with_one_key_create_one_job(store: Store):
    results = []

    def submit():
        results.append(store.submit(make_spec(name="race"), idempotency_key="same"))

    threads = [threading.Thread(target=submit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.jobs()) == 1
    assert {job.id for job, _ in results} == {store.jobs()[0].id}
    assert sum(created for _, created in results) == 1


def test_list_filters_by_state_in_submission_order(store: Store):
    ids = [store.submit(make_spec(name=str(i)))[0].id for i in range(4)]
    store.transition(ids[1], S.CANCELLED, "no longer needed")
    assert [j.id for j in store.jobs()] == ids
    assert [j.id for j in store.jobs(S.QUEUED)] == [ids[0], ids[2], ids[3]]
    assert [j.id for j in store.jobs(S.CANCELLED)] == [ids[1]]
    assert [j.id for j in store.jobs(limit=2)] == ids[2:]  # the newest two


def test_cancel(store: Store):
    queued, _ = store.submit(make_spec())
    assert store.cancel(queued.id).state == S.CANCELLED
    assert store.cancel(queued.id).state == S.CANCELLED  # again: nothing changes
    assert len(store.events(queued.id)) == 2

    running, _ = store.submit(make_spec())
    store.transition(running.id, S.SCHEDULED, "placed")
    store.transition(running.id, S.RUNNING, "launched")
    asked = store.cancel(running.id)
    assert asked.state == S.RUNNING and asked.cancel_requested  # the controller stops it

    done, _ = store.submit(make_spec())
    store.transition(done.id, S.SCHEDULED, "placed")
    store.transition(done.id, S.RUNNING, "launched")
    store.transition(done.id, S.SUCCEEDED, "finished")
    with pytest.raises(IllegalTransition, match="SUCCEEDED -> CANCELLED is not allowed"):
        store.cancel(done.id)


def test_unknown_job(store: Store):
    with pytest.raises(JobNotFound, match="no job 'job-nope'"):
        store.get("job-nope")
    with pytest.raises(JobNotFound):
        store.transition("job-nope", S.SCHEDULED, "x")


def test_where_the_database_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("BERTFLEET_DB", str(tmp_path / "sub" / "x.db"))
    assert database_url() == f"sqlite:///{tmp_path / 'sub' / 'x.db'}"
    assert (tmp_path / "sub").is_dir()
    assert database_url("postgresql+psycopg://ctl@db/bertfleet") == "postgresql+psycopg://ctl@db/bertfleet"
    monkeypatch.delenv("BERTFLEET_DB")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert database_url() == f"sqlite:///{tmp_path / '.bertfleet' / 'bertfleet.db'}"


def test_in_memory_store_for_quick_use():
    store = Store("sqlite://")
    job, _ = store.submit(make_spec())
    assert store.get(job.id).state == S.QUEUED
    store.close()
