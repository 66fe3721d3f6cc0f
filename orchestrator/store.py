"""The durable job store: jobs, their attempts and every state change as an event (SQLAlchemy 2.x;
an SQLite file by default, any SQLAlchemy URL for a controller shared by a team).

Every write is one short transaction that reads the job's row, checks the transition against
`state.TRANSITIONS`, updates the row and appends the event, so a crash or restart never leaves a state
without its event (nor the other way round). On SQLite, write transactions start with BEGIN IMMEDIATE
(two processes, e.g. the API and the controller, serialize instead of failing on a lock upgrade);
elsewhere the row is locked with SELECT ... FOR UPDATE.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.pool import StaticPool

from jobs.spec import JobSpec
from orchestrator.state import (
    Decision,
    Event,
    IllegalTransition,
    Job,
    JobState,
    Progress,
    check_transition,
    on_cancel,
    on_resume,
)

DEFAULT_DB = Path("~/.bertfleet/bertfleet.db")


class JobNotFound(KeyError):
    """No job with this id."""

    def __str__(self) -> str:  # KeyError would print the repr of its argument
        return str(self.args[0])


class IdempotencyConflict(ValueError):
    """An idempotency key reused for a different spec or priority."""


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class _UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out (SQLite keeps no time zone)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        assert value.tzinfo is not None, "store times are timezone-aware UTC"
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.replace(tzinfo=timezone.utc) if value is not None else None


class _Base(DeclarativeBase):
    pass


class JobRow(_Base):
    __tablename__ = "jobs"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True, index=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(12), index=True)
    spec_json: Mapped[str] = mapped_column(Text)
    spec_digest: Mapped[str] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True, nullable=True)
    submitted_at: Mapped[datetime] = mapped_column(_UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(_UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(_UTCDateTime, nullable=True)
    next_attempt_after: Mapped[datetime | None] = mapped_column(_UTCDateTime, nullable=True)
    num_attempts: Mapped[int] = mapped_column(Integer, default=0)
    num_preemptions: Mapped[int] = mapped_column(Integer, default=0)
    num_failures: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    checkpoint_step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    progress_step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    progress_total: Mapped[int | None] = mapped_column(Integer, nullable=True)
    progress_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    progress_throughput: Mapped[float | None] = mapped_column(Float, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)


class AttemptRow(_Base):
    """One launch of a job's gang: from SCHEDULED -> RUNNING until it leaves RUNNING."""

    __tablename__ = "attempts"
    __table_args__ = (UniqueConstraint("job_seq", "number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_seq: Mapped[int] = mapped_column(ForeignKey("jobs.seq"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(_UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(_UTCDateTime, nullable=True)
    outcome: Mapped[str | None] = mapped_column(String(12), nullable=True)  # succeeded|failed|preempted|cancelled|lost
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class EventRow(_Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_seq: Mapped[int] = mapped_column(ForeignKey("jobs.seq"), index=True)
    time: Mapped[datetime] = mapped_column(_UTCDateTime)
    from_state: Mapped[str | None] = mapped_column(String(12), nullable=True)
    to_state: Mapped[str] = mapped_column(String(12))
    reason: Mapped[str] = mapped_column(Text)


def _snapshot(row: JobRow) -> Job:
    return Job(id=row.id, name=row.name, kind=row.kind, priority=row.priority, state=JobState(row.state),
               spec_json=row.spec_json, submitted_at=row.submitted_at, started_at=row.started_at,
               finished_at=row.finished_at, next_attempt_after=row.next_attempt_after, num_attempts=row.num_attempts,
               num_preemptions=row.num_preemptions, num_failures=row.num_failures, last_error=row.last_error,
               checkpoint_step=row.checkpoint_step,
               progress=Progress(row.progress_step, row.progress_total, row.progress_loss, row.progress_throughput),
               cancel_requested=row.cancel_requested, seq=row.seq)


def database_url(target: str | os.PathLike[str] | None = None) -> str:
    """An SQLAlchemy URL from a URL, a file path, or (None) $BERTFLEET_DB or ~/.bertfleet/bertfleet.db."""
    target = str(target or os.environ.get("BERTFLEET_DB") or DEFAULT_DB)
    if "://" in target:
        return target
    path = Path(target).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


_READ_ONLY = "bertfleet_read_only"


def _make_engine(url: str) -> Engine:
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    in_memory = url in ("sqlite://", "sqlite:///:memory:")
    engine = create_engine(url, connect_args={"check_same_thread": False},
                           poolclass=StaticPool if in_memory else None)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event start transactions (pysqlite's own BEGIN is DEFERRED).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=10000")
        if not in_memory:
            cursor.execute("PRAGMA journal_mode=WAL")  # readers do not wait for the writer
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Writers take the write lock up front (no deadlock upgrading a read lock); readers do not, so
        # in WAL mode they never wait for a writer (measured: reads taking it made submits queue up).
        connection.exec_driver_sql("BEGIN" if connection.get_execution_options().get(_READ_ONLY) else "BEGIN IMMEDIATE")

    return engine


class Store:
    """Jobs, attempts and events in one database.

    Args:
        url: SQLAlchemy URL, SQLite file path, or None for $BERTFLEET_DB / ~/.bertfleet/bertfleet.db.
        clock: the time source (tests pass a fake one).
    """

    def __init__(self, url: str | os.PathLike[str] | None = None, clock: Callable[[], datetime] = utcnow):
        self.url = database_url(url)
        self.clock = clock
        self.engine = _make_engine(self.url)
        _Base.metadata.create_all(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._write_lock = threading.RLock() if self.url.startswith("sqlite") else contextlib.nullcontext()
        self._read_sessions = sessionmaker(self.engine.execution_options(**{_READ_ONLY: True}), expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _transaction(self) -> Iterator[Session]:
        # SQLite has one writer at a time; writers of this process queue on a lock instead of in
        # SQLite's busy handler, which sleeps up to 100 ms a retry (measured: submit p99 1.2 s -> ~50 ms).
        with self._write_lock, self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def _reading(self) -> Iterator[Session]:
        """A transaction that only reads (a consistent snapshot; takes no write lock)."""
        with self._read_sessions() as session, session.begin():
            yield session

    def _row(self, session: Session, job_id: str, lock: bool = False) -> JobRow:
        query = select(JobRow).where(JobRow.id == job_id)
        row = session.scalars(query.with_for_update() if lock else query).one_or_none()
        if row is None:
            raise JobNotFound(f"no job {job_id!r}")
        return row

    # --- submit and read ----------------------------------------------------------------------------

    def submit(self, spec: JobSpec, priority: int = 0, idempotency_key: str | None = None) -> tuple[Job, bool]:
        """Stores a validated spec as a QUEUED job.

        Returns:
            (job, created): created is False when `idempotency_key` was seen before; the job is then
            the one that first submit created.

        Raises:
            IdempotencyConflict: the key was used for a different spec or priority.
        """
        spec_json = spec.to_json()
        digest = hashlib.sha256(f"{priority}\n{spec_json}".encode()).hexdigest()
        if idempotency_key is not None:
            existing = self._by_idempotency_key(idempotency_key, digest)
            if existing is not None:
                return existing, False
        now = self.clock()
        row = JobRow(id=f"job-{secrets.token_hex(6)}", name=spec.name or spec.kind, kind=spec.kind,
                     priority=priority, state=JobState.QUEUED.value, spec_json=spec_json, spec_digest=digest,
                     idempotency_key=idempotency_key, submitted_at=now, num_attempts=0, num_preemptions=0,
                     num_failures=0, cancel_requested=False)
        try:
            with self._transaction() as session:
                session.add(row)
                session.flush()
                session.add(EventRow(job_seq=row.seq, time=now, from_state=None, to_state=JobState.QUEUED.value,
                                     reason=f"submitted with priority {priority}"))
        except IntegrityError:
            # A concurrent submit with the same key won the race: answer with its job.
            existing = self._by_idempotency_key(idempotency_key, digest) if idempotency_key else None
            if existing is None:
                raise
            return existing, False
        return _snapshot(row), True

    def _by_idempotency_key(self, key: str, digest: str) -> Job | None:
        with self._reading() as session:
            row = session.scalars(select(JobRow).where(JobRow.idempotency_key == key)).one_or_none()
            if row is None:
                return None
            if row.spec_digest != digest:
                raise IdempotencyConflict(f"idempotency key {key!r} was already used for job {row.id} with a different "
                                          "spec or priority; use a new key for a new job")
            return _snapshot(row)

    def get(self, job_id: str) -> Job:
        with self._reading() as session:
            return _snapshot(self._row(session, job_id))

    def jobs(self, state: JobState | None = None, limit: int | None = None) -> list[Job]:
        """Jobs in submission order (oldest first), optionally only those in `state`, and only the
        newest `limit` of them when given."""
        query = select(JobRow).order_by(JobRow.seq.desc())
        if state is not None:
            query = query.where(JobRow.state == state.value)
        if limit is not None:
            query = query.limit(limit)
        with self._reading() as session:
            return [_snapshot(row) for row in session.scalars(query)][::-1]

    def events(self, job_id: str) -> list[Event]:
        with self._reading() as session:
            row = self._row(session, job_id)
            rows = session.scalars(select(EventRow).where(EventRow.job_seq == row.seq).order_by(EventRow.id))
            return [Event(e.time, job_id, JobState(e.from_state) if e.from_state else None, JobState(e.to_state),
                          e.reason) for e in rows]

    def attempts(self, job_id: str) -> list[dict[str, Any]]:
        with self._reading() as session:
            row = self._row(session, job_id)
            rows = session.scalars(select(AttemptRow).where(AttemptRow.job_seq == row.seq).order_by(AttemptRow.number))
            return [{"number": a.number, "started_at": a.started_at, "finished_at": a.finished_at,
                     "outcome": a.outcome, "error": a.error} for a in rows]

    # --- change -------------------------------------------------------------------------------------

    def transition(self, job_id: str, to_state: JobState, reason: str, *, expected: JobState | None = None,
                   count_failure: bool = False, count_preemption: bool = False,
                   next_attempt_after: datetime | None = None, error: str | None = None,
                   resumed: bool = False) -> Job:
        """Moves a job to `to_state` and records the event, in one transaction.

        Args:
            expected: the state the caller last saw; when the job has moved on since (e.g. a cancel
                came in), nothing changes and IllegalTransition is raised.
            resumed: a user's resume (state.on_resume): the failure count, the backoff and any cancel
                request are reset.

        Raises:
            JobNotFound, IllegalTransition.
        """
        now = self.clock()
        with self._transaction() as session:
            row = self._row(session, job_id, lock=True)
            from_state = JobState(row.state)
            if expected is not None and from_state != expected:
                raise IllegalTransition(f"job {job_id} is {from_state.value}, not {expected.value} as expected; "
                                        f"{to_state.value} not applied")
            check_transition(job_id, from_state, to_state)
            if from_state == JobState.RUNNING:
                self._close_attempt(session, row, to_state, count_failure, error, now)
            if to_state == JobState.RUNNING:
                row.num_attempts += 1
                row.started_at = row.started_at or now
                row.next_attempt_after = None
                session.add(AttemptRow(job_seq=row.seq, number=row.num_attempts, started_at=now))
            if to_state.is_terminal:
                row.finished_at = now
            elif from_state.is_terminal:
                row.finished_at = None  # ended, then resumed: it has not finished (again) yet
            if resumed:
                row.num_failures = 0
                row.next_attempt_after = None
                row.cancel_requested = False
            if count_failure:
                row.num_failures += 1
                row.last_error = error
            if count_preemption:
                row.num_preemptions += 1
            if next_attempt_after is not None:
                row.next_attempt_after = next_attempt_after
            row.state = to_state.value
            session.add(EventRow(job_seq=row.seq, time=now, from_state=from_state.value, to_state=to_state.value,
                                 reason=reason))
            session.flush()
            return _snapshot(row)

    def note(self, job_id: str, reason: str) -> None:
        """Records an event that changes nothing (from and to the job's current state), e.g. why it waits."""
        with self._transaction() as session:
            row = self._row(session, job_id, lock=True)
            session.add(EventRow(job_seq=row.seq, time=self.clock(), from_state=row.state, to_state=row.state,
                                 reason=reason))

    def apply(self, job_id: str, decision: Decision, expected: JobState | None = None) -> Job:
        """Executes a policy's Decision (see `transition`)."""
        return self.transition(job_id, decision.to_state, decision.reason, expected=expected,
                               count_failure=decision.count_failure, count_preemption=decision.count_preemption,
                               next_attempt_after=decision.next_attempt_after, error=decision.error,
                               resumed=decision.resumed)

    @staticmethod
    def _close_attempt(session: Session, row: JobRow, to_state: JobState, failed: bool, error: str | None,
                       now: datetime) -> None:
        attempt = session.scalars(select(AttemptRow).where(AttemptRow.job_seq == row.seq,
                                                           AttemptRow.number == row.num_attempts)).one_or_none()
        if attempt is None:
            return
        attempt.finished_at = now
        outcomes = {JobState.SUCCEEDED: "succeeded", JobState.FAILED: "failed", JobState.CANCELLED: "cancelled",
                    JobState.PREEMPTED: "preempted"}
        attempt.outcome = "failed" if failed else outcomes.get(to_state, "lost")
        attempt.error = error

    def request_cancel(self, job_id: str) -> Job:
        """Marks a RUNNING job for cancelling (the controller stops the run, then records CANCELLED).
        Use `state.on_cancel` first: jobs that are not running are cancelled with a transition."""
        with self._transaction() as session:
            row = self._row(session, job_id, lock=True)
            if row.state != JobState.RUNNING.value:
                raise IllegalTransition(f"job {job_id} is {row.state}; only a RUNNING job waits for its run to stop")
            row.cancel_requested = True
            session.flush()
            return _snapshot(row)

    def cancel(self, job_id: str, who: str = "user") -> Job:
        """Cancels a job now if it is not running, else asks the controller to stop it; a job already
        CANCELLED is returned as it is.

        Raises:
            JobNotFound; IllegalTransition: the job already SUCCEEDED or FAILED.
        """
        for _ in range(3):  # the job may move on between reading it and changing it
            job = self.get(job_id)
            if job.state == JobState.CANCELLED:
                return job
            decision = on_cancel(job, who)
            try:
                if decision is None:
                    return self.request_cancel(job_id)
                return self.apply(job_id, decision, expected=job.state)
            except IllegalTransition:
                continue
        raise IllegalTransition(f"job {job_id} kept changing state; try the cancel again")

    def resume(self, job_id: str, who: str = "user") -> Job:
        """Puts a FAILED or CANCELLED job back in the queue, to resume from its newest committed
        checkpoint with its failures counted afresh (state.on_resume).

        Raises:
            JobNotFound; IllegalTransition: the job is in another state (the message says what to do).
        """
        job = self.get(job_id)
        # expected: a concurrent resume (or anything else) that moved the job first wins; this one fails
        return self.apply(job_id, on_resume(job, who), expected=job.state)

    def record_progress(self, job_id: str, progress: Progress | None = None, checkpoint_step: int | None = None) -> None:
        """Updates a running job's progress and newest committed checkpoint (not a transition: no event)."""
        with self._transaction() as session:
            row = self._row(session, job_id, lock=True)
            if progress is not None:
                row.progress_step, row.progress_total = progress.step, progress.total
                row.progress_loss, row.progress_throughput = progress.loss, progress.throughput
            if checkpoint_step is not None:
                row.checkpoint_step = max(checkpoint_step, row.checkpoint_step or 0)
