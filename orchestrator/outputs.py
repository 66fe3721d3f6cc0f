"""Reading what a running job writes to its output directory (any fsspec URL): the metrics JSONL
(jobs/logging.py's MetricsLogger) and the job log (jobs/logging.py's JobLogHandler), read from the
end, or from a byte offset, so a long run costs no more than a short one.
"""

from __future__ import annotations

import json
from typing import Any

import fsspec

from jobs.logging import LOG_FILE
from orchestrator.state import Progress

METRICS_FILE = "metrics.jsonl"
TAIL_BYTES = 4 << 20


def tail_lines(url: str, num_lines: int, max_bytes: int = TAIL_BYTES) -> list[str]:
    """The last `num_lines` whole lines of a file within its last `max_bytes` ([] if it is missing)."""
    fs, path = fsspec.core.url_to_fs(url)
    try:
        size = fs.size(path)
    except (FileNotFoundError, OSError):
        return []
    start = max(0, (size or 0) - max_bytes)
    with fs.open(path, "rb") as f:
        f.seek(start)
        data = f.read()
    lines = data.decode("utf-8", "replace").splitlines()
    if start > 0 and lines:
        lines = lines[1:]  # cut mid-line
    return lines[-num_lines:] if num_lines > 0 else []


def read_log(output_dir: str, num_lines: int = 200, offset: int | None = None,
             max_bytes: int = TAIL_BYTES) -> tuple[str, int]:
    """The job log's text and the byte offset to ask for next, to follow it.

    Only whole lines are returned (a line still being written comes with the next call), so the
    offset always lies at a line start.

    Args:
        output_dir: the job's output directory.
        num_lines: without an offset: the last num_lines lines (of the last max_bytes).
        offset: the text after this byte offset, at most max_bytes of it. An offset past the end means
            the log was rewritten shorter (an object store's log drops its oldest half when full): the
            answer is then the tail, as without an offset.
        max_bytes: the most read per call.

    Returns:
        (text, next offset); ("", 0) while there is no log yet.
    """
    fs, path = fsspec.core.url_to_fs(f"{output_dir.rstrip('/')}/{LOG_FILE}")
    try:
        size = fs.size(path) or 0
    except (FileNotFoundError, OSError):
        return "", 0
    if offset is not None and offset <= size:
        with fs.open(path, "rb") as f:
            f.seek(offset)
            data = f.read(max_bytes)
        end = data.rfind(b"\n") + 1
        if end == 0 and len(data) == max_bytes:
            end = len(data)  # one line longer than max_bytes: it comes in pieces
        return data[:end].decode("utf-8", "replace"), offset + end
    start = max(0, size - max_bytes)
    with fs.open(path, "rb") as f:
        f.seek(start)
        data = f.read(max_bytes)
    first = data.find(b"\n") + 1 if start > 0 else 0  # cut mid-line
    end = max(first, data.rfind(b"\n") + 1)
    lines = data[first:end].decode("utf-8", "replace").splitlines()[-num_lines:] if num_lines > 0 else []
    return "".join(f"{line}\n" for line in lines), start + end


def read_metrics(output_dir: str, limit: int = 1000, since_step: int | None = None) -> list[dict[str, Any]]:
    """The newest `limit` metric records (each {"step", "time", name: value, ...}), oldest first, only
    those with step > since_step when given (among the newest, not a scan of the whole file). Lines cut
    short by an interruption are skipped."""
    records = []
    # ~1 KiB per record is ample (the trainer's are ~200 bytes), so a poll reads little of a long file
    path = f"{output_dir.rstrip('/')}/{METRICS_FILE}"
    for line in tail_lines(path, num_lines=2 * limit + 10, max_bytes=min(TAIL_BYTES, 1024 * (2 * limit + 10))):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and (since_step is None or int(record.get("step", -1)) > since_step):
            records.append(record)
    return records[-limit:] if limit > 0 else []


def progress_from_metrics(records: list[dict[str, Any]], total_steps: int | None) -> tuple[Progress | None, int | None]:
    """(progress, newest committed checkpoint step) from metric records, as the trainer logs them
    (`train/loss`, `train/examples_per_s`, `checkpoint/step`); (None, None) with no records."""
    if not records:
        return None, None
    loss = throughput = None
    checkpoint = None
    for record in records:
        loss = record.get("train/loss", loss)
        throughput = record.get("train/examples_per_s", throughput)
        if "checkpoint/step" in record:
            checkpoint = max(int(record["checkpoint/step"]), checkpoint or 0)
    step = max(int(r.get("step", 0)) for r in records)
    return Progress(step=step, total=total_steps, loss=loss, throughput=throughput), checkpoint
