"""jobs/data/tfrecord.py against real object storage: a GCS JSON API emulator reached through gcsfs,
and moto's S3 server reached through s3fs, each a subprocess on 127.0.0.1 (see conftest.py).

What the in-process fakes of test_tfrecord.py cannot show: globs, writes and reads over HTTP, that
reading streams (bytes counted on the wire), that an outage of the real server process mid-file is
ridden out or reported, and that errors name the object's URL.
"""

from __future__ import annotations

import json
import random
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import fsspec
import pytest
from fsspec.spec import AbstractFileSystem

from jobs.data import tfrecord
from jobs.data.tfrecord import (
    ReadStats,
    RetryPolicy,
    StorageError,
    TFRecordError,
    iter_examples,
    iter_records,
    write_examples,
)

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("loopback_only")]

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"
SEQ_LENGTH, MAX_PREDICTIONS = 128, 20


def pretraining_examples(num: int, seed: int) -> list[dict[str, Any]]:
    """Examples shaped like create_pretraining_data.py's, features in the order it writes them."""
    rng = random.Random(seed)
    examples = []
    for _ in range(num):
        length = rng.randrange(8, SEQ_LENGTH + 1)
        pad = SEQ_LENGTH - length
        num_masked = rng.randrange(1, MAX_PREDICTIONS + 1)
        examples.append({
            "input_ids": [101] + [rng.randrange(999, 30522) for _ in range(length - 2)] + [102] + [0] * pad,
            "input_mask": [1] * length + [0] * pad,
            "segment_ids": [0] * (length // 2) + [1] * (length - length // 2) + [0] * pad,
            "masked_lm_positions": sorted(rng.sample(range(1, length), min(num_masked, length - 1)))
            + [0] * (MAX_PREDICTIONS - min(num_masked, length - 1)),
            "masked_lm_ids": [rng.randrange(999, 30522) for _ in range(MAX_PREDICTIONS)],
            "masked_lm_weights": [1.0] * min(num_masked, length - 1)
            + [0.0] * (MAX_PREDICTIONS - min(num_masked, length - 1)),
            "next_sentence_labels": [rng.randrange(2)],
        })  # fmt: skip
    return examples


def fixture_records() -> tuple[bytes, list[dict[str, Any]]]:
    """The TF-written fixture file's bytes and its reference decoding."""
    name = "sample_text_wwmFalse"
    data = (FIXTURES / f"{name}.tfrecord").read_bytes()
    return data, json.loads((FIXTURES / f"{name}.decoded.json").read_text())


def record_offsets(data: bytes) -> list[int]:
    """Where each record of a TFRecord file starts, read from the framing independently of the module."""
    offsets, pos = [], 0
    while pos < len(data):
        offsets.append(pos)
        pos += 16 + struct.unpack_from("<Q", data, pos)[0]
    assert pos == len(data)
    return offsets


class Server(Protocol):
    """What these tests use of conftest.py's ServerProcess."""

    scheme: str
    bucket: str
    port: int

    def start(self) -> None: ...
    def pause(self) -> None: ...
    def stop(self) -> None: ...
    def fsspec_settings(self, endpoint_url: str | None = None) -> dict[str, Any]: ...


def fresh_dir(server: Server) -> str:
    """A URL prefix on `server` that no other test writes under."""
    return f"{server.scheme}://{server.bucket}/test-{time.time_ns()}"


@pytest.fixture(params=["gcs_emulator", "s3_server"])
def store(request: pytest.FixtureRequest) -> str:
    """Runs the test against each server; the value is the URL prefix of a fresh directory."""
    return fresh_dir(request.getfixturevalue(request.param))


# --------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("suffix", [".tfrecord", ".tfrecord.gz"])
def test_written_parts_read_back_through_a_glob(store: str, suffix: str) -> None:
    parts = [pretraining_examples(40, seed=0), pretraining_examples(25, seed=1)]
    for i, examples in enumerate(parts):
        assert write_examples(f"{store}/part-{i:05d}{suffix}", examples) == len(examples)
    fs, path = fsspec.core.url_to_fs(store)
    if suffix.endswith(".gz"):  # really gzip on the server, not just by name
        assert fs.cat_file(f"{path}/part-00000{suffix}")[:2] == b"\x1f\x8b"
    stats = ReadStats()
    got = list(iter_examples(f"{store}/part-*{suffix}", stats=stats))
    assert got == parts[0] + parts[1]
    assert stats.num_records == 65 and stats.num_retries == 0
    assert list(iter_examples(f"{store}/part-00001{suffix}")) == parts[1]


def test_uploaded_fixture_decodes_to_the_reference_json(store: str) -> None:
    data, expected = fixture_records()
    fs, path = fsspec.core.url_to_fs(store)
    fs.pipe_file(f"{path}/sample.tfrecord", data)
    # Small blocks, so records straddle many separate range requests.
    got = list(iter_examples(f"{store}/sample.tfrecord", block_size_bytes=4096))
    assert got == expected


# ---------------------------------------------------------------------------------- streaming


class CountingProxy:
    """A TCP proxy on 127.0.0.1 in front of a server, counting the bytes the server sends: what a
    client really fetched, whatever its library does inside."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.bytes_from_server = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for s in self._sockets:
                s.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
                server = socket.create_connection(("127.0.0.1", self._upstream_port), timeout=10)
            except OSError:
                return  # closed
            server.settimeout(None)
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                if count:
                    with self._lock:
                        self.bytes_from_server += len(data)
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


@pytest.fixture
def counting_proxy(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, AbstractFileSystem, CountingProxy]]:
    """(URL prefix, filesystem, proxy): `request.param`'s store, which URLs now reach through a
    CountingProxy, and a filesystem that still reaches it directly (for uploads)."""
    server = request.getfixturevalue(request.param)
    direct_fs = fsspec.filesystem(server.scheme)
    proxy = CountingProxy(server.port)
    monkeypatch.setitem(fsspec.config.conf, server.scheme, server.fsspec_settings(proxy.url))
    try:
        yield fresh_dir(server), direct_fs, proxy
    finally:
        proxy.close()


# Without block_size, s3fs would fetch its default 50 MiB readahead block on the first read: here
# the whole file.
@pytest.mark.parametrize("counting_proxy", ["gcs_emulator", "s3_server"], indirect=True)
def test_the_first_record_arrives_after_a_small_part_of_the_file(
    counting_proxy: tuple[str, AbstractFileSystem, CountingProxy],
) -> None:
    base, direct_fs, proxy = counting_proxy
    data, expected = fixture_records()
    copies = 170  # 8.3 MB, 10200 records
    url = f"{base}/big.tfrecord"
    direct_fs.pipe_file(url, data * copies)
    assert proxy.bytes_from_server == 0
    block_size = 256 << 10
    records = iter_examples(url, block_size_bytes=block_size)
    assert next(records) == expected[0]
    fetched = proxy.bytes_from_server
    # Two blocks, plus HTTP headers and a metadata request, is generous; the file is 32 blocks.
    assert fetched < 2 * block_size + (64 << 10), f"{fetched} bytes fetched for the first record"
    assert sum(1 for _ in records) == 60 * copies - 1
    # The count is real: by the end the whole file came through the proxy.
    assert proxy.bytes_from_server >= len(data) * copies


# ------------------------------------------------------------------------------------ outages


def upload_fixture_copies(server: Server, copies: int) -> tuple[str, bytes, list[dict[str, Any]]]:
    data, expected = fixture_records()
    url = f"{fresh_dir(server)}/data.tfrecord"
    fs, path = fsspec.core.url_to_fs(url)
    fs.pipe_file(path, data * copies)
    return url, data * copies, expected * copies


OUTAGE_BLOCK_SIZE = 16 << 10


@pytest.mark.usefixtures("fast_gcsfs_retries")
def test_an_emulator_restarted_within_the_retry_window_loses_nothing(
    fresh_gcs_emulator: Server,
) -> None:
    url, _, expected = upload_fixture_copies(fresh_gcs_emulator, copies=4)  # 196 KB, 12 blocks
    stats = ReadStats()
    retry = RetryPolicy(max_attempts=8, initial_backoff_s=0.2, backoff_multiplier=1.5,
                        max_backoff_s=1.0, jitter=False)  # fmt: skip
    records = iter_examples(url, retry=retry, stats=stats, block_size_bytes=OUTAGE_BLOCK_SIZE)
    got = [next(records) for _ in range(30)]  # 2 blocks in; the other 10 are only on the server

    fresh_gcs_emulator.stop()
    restart_errors: list[BaseException] = []

    def restart_once_a_retry_was_seen() -> None:
        try:
            deadline = time.monotonic() + 10
            while stats.num_retries == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            fresh_gcs_emulator.start()
        except BaseException as e:  # noqa: BLE001 - reported by the test thread below
            restart_errors.append(e)

    restarter = threading.Thread(target=restart_once_a_retry_was_seen, daemon=True)
    restarter.start()
    got += records
    restarter.join(timeout=15)
    assert not restart_errors, restart_errors
    assert got == expected  # every record once, in order
    assert stats.num_retries >= 1 and stats.num_records == len(expected)


@pytest.mark.usefixtures("fast_gcsfs_retries")
def test_an_emulator_that_stays_down_gives_a_storage_error(fresh_gcs_emulator: Server) -> None:
    url, data, expected = upload_fixture_copies(fresh_gcs_emulator, copies=4)
    records = iter_examples(url, retry=RetryPolicy(max_attempts=3, initial_backoff_s=0.1),
                            block_size_bytes=OUTAGE_BLOCK_SIZE)  # fmt: skip
    got = [next(records) for _ in range(30)]
    fresh_gcs_emulator.stop()
    start = time.monotonic()
    with pytest.raises(StorageError) as info:
        got.extend(records)
    assert time.monotonic() - start < 10
    error = info.value
    assert got == expected[: len(got)]
    # The read that failed is a whole block past the start of the file (after the first 12 bytes,
    # which tell plain from gzip), and past every record yielded.
    assert (error.url, error.num_attempts) == (url, 3)
    assert (error.offset - 12) % OUTAGE_BLOCK_SIZE == 0
    assert record_offsets(data)[len(got) - 1] < error.offset < len(data)
    message = str(error)
    assert url in message and f"byte offset {error.offset}" in message and "3 times" in message
    assert isinstance(error.__cause__, OSError)


def read_rest_in_background(
    records: Iterator[Any], wait_s: float, unblock: Callable[[], None]
) -> tuple[bool, list[BaseException]]:
    """Consume `records` in a thread for up to `wait_s`: (whether it finished, [its error]).

    A read still hanging then is ended with `unblock()` and joined before returning: left to run
    into later tests, it makes gcsfs log tracebacks from its I/O thread while pytest formats one
    in the main thread, and CPython 3.11 keeps `ast.parse`'s recursion depth per interpreter, not
    per thread (pytest-dev/pytest#10763: INTERNALERROR, "AST constructor recursion depth mismatch").
    """
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            for _ in records:
                pass
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            errors.append(e)

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    thread.join(timeout=wait_s)
    finished = not thread.is_alive()
    if not finished:
        unblock()
        thread.join(timeout=30)
        assert not thread.is_alive(), "the read still hangs after unblock()"
    return finished, errors


@pytest.mark.usefixtures("fast_gcsfs_retries")
def test_a_stalled_emulator_with_a_request_timeout_gives_a_storage_error(
    fresh_gcs_emulator: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _, _ = upload_fixture_copies(fresh_gcs_emulator, copies=4)
    # Through fsspec's defaults, which the reader must not override with its own default.
    monkeypatch.setattr(tfrecord, "DEFAULT_GCS_REQUEST_TIMEOUT_S", 600)
    settings = {**fresh_gcs_emulator.fsspec_settings(), "requests_timeout": 1}
    monkeypatch.setitem(fsspec.config.conf, "gs", settings)
    records = iter_examples(url, retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.1),
                            block_size_bytes=OUTAGE_BLOCK_SIZE)  # fmt: skip
    [next(records) for _ in range(30)]
    fresh_gcs_emulator.pause()
    finished, errors = read_rest_in_background(records, wait_s=10, unblock=fresh_gcs_emulator.stop)
    assert finished, "still reading from a stalled server after 10 s"
    assert len(errors) == 1 and isinstance(errors[0], StorageError), errors
    assert errors[0].url == url and errors[0].num_attempts == 2
    assert isinstance(errors[0].__cause__, TimeoutError)


@pytest.mark.usefixtures("fast_gcsfs_retries")
def test_a_stalled_emulator_with_a_timeout_in_storage_options_gives_a_storage_error(
    fresh_gcs_emulator: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _, _ = upload_fixture_copies(fresh_gcs_emulator, copies=4)
    monkeypatch.setattr(tfrecord, "DEFAULT_GCS_REQUEST_TIMEOUT_S", 600)
    records = iter_examples(url, retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.1),
                            block_size_bytes=OUTAGE_BLOCK_SIZE,
                            storage_options={"requests_timeout": 1})  # fmt: skip
    [next(records) for _ in range(30)]
    fresh_gcs_emulator.pause()
    finished, errors = read_rest_in_background(records, wait_s=10, unblock=fresh_gcs_emulator.stop)
    assert finished, "still reading from a stalled server after 10 s"
    assert len(errors) == 1 and isinstance(errors[0], StorageError), errors
    assert isinstance(errors[0].__cause__, TimeoutError)


@pytest.mark.usefixtures("fast_gcsfs_retries")
def test_a_stalled_emulator_gives_a_storage_error_with_default_settings(
    fresh_gcs_emulator: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _, _ = upload_fixture_copies(fresh_gcs_emulator, copies=4)
    # No timeout set anywhere: gs:// gets tfrecord's default, 60 s, cut to 1 s to keep this short.
    assert "requests_timeout" not in fsspec.config.conf["gs"]
    monkeypatch.setattr(tfrecord, "DEFAULT_GCS_REQUEST_TIMEOUT_S", 1)
    records = iter_examples(url, retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.1),
                            block_size_bytes=OUTAGE_BLOCK_SIZE)  # fmt: skip
    [next(records) for _ in range(30)]
    fresh_gcs_emulator.pause()
    finished, errors = read_rest_in_background(records, wait_s=5, unblock=fresh_gcs_emulator.stop)
    assert finished, "still reading from a stalled server after 5 s"
    assert len(errors) == 1 and isinstance(errors[0], StorageError), errors
    assert isinstance(errors[0].__cause__, TimeoutError)


# --------------------------------------------------------------------------------- corruption


def test_a_corrupt_record_on_gcs_is_named_or_skipped(gcs_emulator: Server) -> None:
    data, expected = fixture_records()
    bad_index = 7
    bad_offset = record_offsets(data)[bad_index]
    corrupt = bytearray(data)
    corrupt[bad_offset + 12 + 100] ^= 0x01  # a bit inside the payload
    base = fresh_dir(gcs_emulator)
    fs, path = fsspec.core.url_to_fs(base)
    fs.pipe_file(f"{path}/part-00000.tfrecord", bytes(corrupt))
    url = f"{base}/part-00000.tfrecord"

    with pytest.raises(TFRecordError) as info:
        list(iter_examples(f"{base}/part-*.tfrecord", block_size_bytes=4096))
    error = info.value
    assert (error.url, error.record_index, error.offset) == (url, bad_index, bad_offset)
    message = str(error)
    assert url in message and f"record {bad_index} " in message and f"byte offset {bad_offset}" in message

    stats = ReadStats()
    got = list(iter_examples(url, on_corrupt="skip", stats=stats, block_size_bytes=4096))
    assert got == expected[:bad_index] + expected[bad_index + 1 :]
    assert stats.num_skipped_records == 1 and stats.num_records == len(expected) - 1


# ------------------------------------------------------------------------ missing, unreachable


def test_a_missing_object_fails_at_once(store: str) -> None:
    stats = ReadStats()
    start = time.monotonic()
    with pytest.raises(FileNotFoundError):
        list(iter_records(f"{store}/missing.tfrecord", stats=stats))
    glob = f"{store}/missing-*.tfrecord"
    with pytest.raises(FileNotFoundError, match=f"no files match '{re.escape(glob)}'"):
        list(iter_records(glob, stats=stats))
    assert stats.num_retries == 0 and time.monotonic() - start < 5  # not retried


def test_a_missing_object_error_names_the_url(store: str) -> None:
    # The backend's own error names only the path it requested: gcsfs's 'b/bucket/o/...', s3fs's
    # 'bucket/...'.
    url = f"{store}/missing.tfrecord"
    with pytest.raises(FileNotFoundError, match=re.escape(url)) as info:
        list(iter_records(url))
    assert isinstance(info.value.__cause__, FileNotFoundError)


@pytest.fixture
def unreachable_gcs(
    _gcs_client_settings: None, unused_port: int, monkeypatch: pytest.MonkeyPatch
) -> str:
    """gs:// pointed at a closed port on 127.0.0.1; the value is a URL prefix there."""
    endpoint = f"http://127.0.0.1:{unused_port}"
    monkeypatch.setitem(fsspec.config.conf, "gs", {"token": "anon", "endpoint_url": endpoint})
    return "gs://bucket/unreachable"


@pytest.mark.usefixtures("fast_gcsfs_retries")
def test_an_unreachable_gcs_endpoint_gives_a_storage_error(unreachable_gcs: str) -> None:
    url = f"{unreachable_gcs}/data.tfrecord"
    start = time.monotonic()
    with pytest.raises(StorageError) as info:
        list(iter_records(url, retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.05)))
    assert time.monotonic() - start < 10
    error = info.value
    assert (error.url, error.offset, error.num_attempts) == (url, 0, 2)
    assert url in str(error) and "byte offset 0" in str(error)


@pytest.mark.usefixtures("fast_gcsfs_retries")
def test_an_unreachable_gcs_endpoint_fails_a_glob_with_a_storage_error(unreachable_gcs: str) -> None:
    url = f"{unreachable_gcs}/part-*.tfrecord"
    stats = ReadStats()
    with pytest.raises(StorageError, match=re.escape(url)) as info:
        list(iter_records(url, retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.05),
                          stats=stats))  # fmt: skip
    assert (info.value.url, info.value.offset, info.value.num_attempts) == (url, 0, 2)
    assert stats.num_retries == 1


# s3fs raises botocore's EndpointConnectionError, a BotoCoreError and not an OSError.
def test_an_unreachable_s3_endpoint_gives_a_storage_error(
    s3_server: Server, unused_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = s3_server.fsspec_settings(f"http://127.0.0.1:{unused_port}")
    settings["config_kwargs"] = {"retries": {"max_attempts": 1}, "connect_timeout": 1}
    monkeypatch.setitem(fsspec.config.conf, "s3", settings)
    url = "s3://bucket/unreachable/data.tfrecord"
    with pytest.raises(StorageError) as info:
        list(iter_records(url, retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.05)))
    assert (info.value.url, info.value.offset, info.value.num_attempts) == (url, 0, 2)
