"""Where metrics and log records go: a metrics JSONL in the output directory, the console, Weights &
Biases, and the job log (`job.log` in the output directory, what `bertfleet logs` shows).

W&B runs offline when no WANDB_API_KEY is set (its files land in the output directory and can be
synced later). The run id is kept in checkpoints, so a resumed job continues the same W&B run; a
resumed job only logs steps above the checkpoint's, so no step is logged twice (W&B would drop
the duplicate silently).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TextIO

import fsspec
from fsspec.implementations.local import LocalFileSystem

from jobs.spec import JobSpec

log = logging.getLogger("bertfleet")


class MetricsLogger:
    """Logs metric dicts by global step to JSONL, the console and (rank 0) W&B.

    Args:
        spec: the resolved job spec (its JSON becomes the W&B config).
        output_dir: where metrics.jsonl (appended; see AppendedFile for object stores) and W&B's
            offline files go.
        run_id: W&B run id to continue (from a checkpoint), or None for a new run.
        enabled: False on ranks other than 0.
    """

    def __init__(self, spec: JobSpec, output_dir: str, run_id: str | None = None, enabled: bool = True):
        self.enabled = enabled
        self.output_dir = output_dir.rstrip("/")
        self._wandb_run = None
        self._skip_through = -1
        self.run_id = run_id
        self._file: AppendedFile | None = None
        if not enabled:
            return
        self._file = AppendedFile(f"{self.output_dir}/metrics.jsonl", max_bytes=METRICS_MAX_BYTES)
        if spec.logging.wandb:
            self._start_wandb(spec, run_id)

    def _start_wandb(self, spec: JobSpec, run_id: str | None) -> None:
        import wandb

        offline = not os.environ.get("WANDB_API_KEY")
        local_dir = self.output_dir if "://" not in self.output_dir else None
        self._wandb_run = wandb.init(
            project=spec.logging.project, entity=spec.logging.entity, group=spec.logging.group,
            tags=spec.logging.tags or None, name=spec.name, config=json.loads(spec.to_json()),
            id=run_id, resume="allow" if run_id else None, dir=local_dir,
            mode="offline" if offline else "online", settings=wandb.Settings(console="off", silent=True))
        self.run_id = self._wandb_run.id

    @property
    def wandb_url(self) -> str | None:
        return getattr(self._wandb_run, "url", None) if self._wandb_run else None

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if not self.enabled or step <= self._skip_through:
            return
        record = {"step": step, "time": time.time(), **metrics}
        assert self._file is not None, "log() after finish()"
        self._file.append((json.dumps(record) + "\n").encode())
        if self._wandb_run is not None:
            self._wandb_run.log(metrics, step=step)

    def resume(self) -> None:
        """Before a resumed run logs: steps that were already logged before the interruption (past
        the checkpoint) are not logged again. The resumed run recomputes them bit for bit, and W&B
        would drop a step at or below its last one silently anyway."""
        if not self.enabled:
            return
        try:
            with fsspec.open(f"{self.output_dir}/metrics.jsonl", "r") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return
        for line in lines:
            try:
                self._skip_through = max(self._skip_through, int(json.loads(line)["step"]))
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by the interruption

    def flush(self) -> None:
        """Makes what was logged so far durable (object stores rewrite metrics.jsonl every few seconds)."""
        if self._file is not None:
            self._file.flush()

    def finish(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None


# --- the job log ---------------------------------------------------------------------------------------

LOG_FILE = "job.log"  # in the output directory; what GET /jobs/{id}/logs and `bertfleet logs` read
LOG_MAX_BYTES = 4 << 20  # object stores: the newest 4 MiB are kept (what the API's tail reads at most)
LOG_FLUSH_EVERY_S = 5.0  # object stores: the whole object is rewritten at most this often
METRICS_MAX_BYTES = 64 << 20  # object stores: metrics.jsonl keeps its newest 64 MiB (~300k records)
# The loggers a job's own code logs to: "bertfleet" (trainer, runner, tasks) and the packages' __name__
# loggers ("jobs.data.tfrecord" warns about corrupt records, for one).
JOB_LOGGERS = ("bertfleet", "jobs", "models")
# Environment variables whose values must never reach a log (WANDB_API_KEY, AWS_SECRET_ACCESS_KEY, ...).
_SECRET_ENV_NAME = re.compile(r"(^|_)(API_?KEY|ACCESS_?KEY|KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIALS?)(_|$)",
                              re.IGNORECASE)
_URL_PASSWORD = re.compile(r"([a-z][a-z0-9+.\-]*://[^/\s:@]+:)[^/\s@]+@", re.IGNORECASE)


class AppendedFile:
    """A file at any fsspec URL that this process appends to (one writer per file).

    Local paths are appended to: each append is one write(2) to a file opened with O_APPEND, so a
    reader sees it at once and several processes' appends interleave as whole records (on a local
    disk; not guaranteed on NFS).

    Object stores (gs://, s3://, memory://) have no append (gcsfs's "a" mode silently overwrites).
    The content is kept in memory, loaded first from the object when it exists (a resumed job
    appends to it), and the whole object rewritten at most every `flush_every_s` (from a background
    thread, so a training step never waits on the network) and at close. With `max_bytes`, only the
    newest bytes are kept: past it, the oldest half is dropped at once (not a line at a time, so the
    object's bytes shift rarely and a follower's byte offset stays valid between drops).

    Args:
        url: the file (local path or fsspec URL); its directory is created.
        max_bytes: object stores: the most kept (None: everything).
        flush_every_s: object stores: the longest an append waits before the object is rewritten.
    """

    def __init__(self, url: str, max_bytes: int | None = None, flush_every_s: float = LOG_FLUSH_EVERY_S):
        self.url = url
        self.fs, self.path = fsspec.core.url_to_fs(url)
        self.fs.makedirs(self.path.rsplit("/", 1)[0], exist_ok=True)
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.max_bytes = max_bytes
        self._fd: int | None = None
        self._buffer = bytearray()
        self._dirty = False
        self._lock = threading.Lock()  # the buffer
        self._write_lock = threading.Lock()  # one rewrite at a time, so an older one never lands last
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        self._flush_error_shown = False
        if self.is_local:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self.had_content = os.fstat(self._fd).st_size > 0
        else:
            try:
                self._buffer += self.fs.cat_file(self.path)
            except FileNotFoundError:
                pass
            self.had_content = bool(self._buffer)
            self._trim()
            self._flusher = threading.Thread(target=self._flush_periodically, args=(flush_every_s,),
                                             name=f"flush-{self.path.rsplit('/', 1)[-1]}", daemon=True)
            self._flusher.start()

    def append(self, data: bytes) -> None:
        if self._fd is not None:
            view = memoryview(data)
            while view:  # os.write may write less than asked (it does not, for a regular file)
                view = view[os.write(self._fd, view):]
            return
        with self._lock:
            self._buffer += data
            self._trim()
            self._dirty = True

    def _trim(self) -> None:
        if self.max_bytes is None or len(self._buffer) <= self.max_bytes:
            return
        cut = self._buffer.find(b"\n", len(self._buffer) - self.max_bytes // 2)
        del self._buffer[:cut + 1 if cut >= 0 else len(self._buffer) - self.max_bytes // 2]

    def _flush_periodically(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self.flush()

    def flush(self) -> None:
        """Object stores: rewrites the object if anything was appended since the last write."""
        if self._fd is not None:
            return
        with self._write_lock:
            with self._lock:
                if not self._dirty:
                    return
                data, self._dirty = bytes(self._buffer), False
            try:
                with self.fs.open(self.path, "wb") as f:
                    f.write(data)
            except Exception as err:  # noqa: BLE001 - a thread boundary: keep the data, retry next time
                with self._lock:
                    self._dirty = True
                if not self._flush_error_shown:
                    self._flush_error_shown = True
                    print(f"bertfleet: cannot write {self.url}: {err}; retrying", file=sys.stderr)

    def close(self) -> None:
        if self._flusher is not None:
            self._stop.set()
            self._flusher.join()
            self._flusher = None
        self.flush()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class JobLogHandler(logging.Handler):
    """Writes a job's log records to `{output_dir}/job.log`, at any fsspec URL (see AppendedFile).

    Rank 0 writes every record at INFO and above; the other ranks write only ERROR records, every line
    of them (tracebacks included) prefixed with `[rank N]`. Values of secret-named environment
    variables and URL passwords are masked in every line, as a last line of defence.

    Locally every rank appends to job.log. An object has one writer, so on object stores ranks other
    than 0 write their errors to `job.rank-N.log` beside it, and each log keeps its newest `max_bytes`.

    Args:
        output_dir: the job's output directory (local path or fsspec URL).
        rank: this worker's rank.
        max_bytes: object stores: the most of the log kept.
        flush_every_s: object stores: the longest a record waits before the object is rewritten.
    """

    def __init__(self, output_dir: str, rank: int = 0, max_bytes: int = LOG_MAX_BYTES,
                 flush_every_s: float = LOG_FLUSH_EVERY_S):
        super().__init__(logging.INFO if rank == 0 else logging.ERROR)
        self.rank = rank
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%Y-%m-%dT%H:%M:%SZ")
        formatter.converter = time.gmtime
        self.setFormatter(formatter)
        self._secrets = sorted({v for k, v in os.environ.items() if _SECRET_ENV_NAME.search(k) and len(v) >= 6},
                               key=len, reverse=True)
        output_dir = output_dir.rstrip("/")
        is_local = isinstance(fsspec.core.url_to_fs(output_dir)[0], LocalFileSystem)
        self.file = AppendedFile(f"{output_dir}/{LOG_FILE if rank == 0 or is_local else f'job.rank-{rank}.log'}",
                                 max_bytes=max_bytes, flush_every_s=flush_every_s)
        self.had_lines = self.file.had_content

    def format(self, record: logging.LogRecord) -> str:
        text = _URL_PASSWORD.sub(r"\1***@", super().format(record))
        for secret in self._secrets:
            text = text.replace(secret, "***")
        if self.rank:
            text = "\n".join(f"[rank {self.rank}] {line}" for line in text.splitlines())
        return text

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write_line(self.format(record))
        except Exception:  # noqa: BLE001 - logging's contract: a failing handler never breaks the job
            self.handleError(record)

    def write_line(self, text: str) -> None:
        """Writes `text` (one or more lines, no formatting) to the log."""
        self.file.append((text.rstrip("\n") + "\n").encode("utf-8", "replace"))

    def write_exception(self, message: str, err: BaseException) -> None:
        """Writes an ERROR record with `err`'s traceback to the job log only (not to the console,
        where the exception shows anyway when it leaves the process)."""
        record = logging.LogRecord("bertfleet", logging.ERROR, __file__, 0, "%s", (message,),
                                   (type(err), err, err.__traceback__))
        self.handle(record)

    def show_warning(self, original: Callable[..., None]) -> Callable[..., None]:
        """A `warnings.showwarning` that also writes the warning to the job log (backends warn about
        settings that do nothing with `warnings.warn`)."""

        def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None) -> None:
            self.handle(logging.makeLogRecord({
                "name": "py.warnings", "levelno": logging.WARNING, "levelname": "WARNING",
                "msg": "%s (%s at %s:%d)", "args": (message, category.__name__, filename, lineno)}))
            original(message, category, filename, lineno, file, line)

        return show

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()
        super().close()


@contextlib.contextmanager
def job_log(output_dir: str, rank: int = 0, **kwargs: Any) -> Iterator[JobLogHandler]:
    """Writes this process's job log records (see JobLogHandler) while the block runs.

    Attaches the handler to the job's loggers (JOB_LOGGERS), lowering those at WARNING or above to
    INFO for the block (so progress lines reach the log however the process configured logging),
    and routes `warnings.warn` to it too; everything is put back, and the log flushed and closed,
    when the block ends.

    Args:
        output_dir: the job's output directory.
        rank: this worker's rank.
        **kwargs: JobLogHandler's max_bytes and flush_every_s.
    """
    handler = JobLogHandler(output_dir, rank, **kwargs)
    loggers = [logging.getLogger(name) for name in JOB_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
    show_warning = warnings.showwarning
    warnings.showwarning = handler.show_warning(show_warning)
    try:
        yield handler
    finally:
        warnings.showwarning = show_warning
        for logger, level in zip(loggers, levels):
            logger.removeHandler(handler)
            logger.setLevel(level)
        handler.close()
