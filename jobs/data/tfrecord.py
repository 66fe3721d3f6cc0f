"""TFRecord files of `tf.train.Example` records, read and written without TensorFlow.

The data made by google-research/bert's `create_pretraining_data.py` (and everything else TensorFlow
writes with `tf.io.TFRecordWriter`) is a TFRecord file: a plain sequence of framed records,

    u64 length (little endian) | u32 masked crc32c(length) | payload | u32 masked crc32c(payload)

where `masked(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8 (mod 2**32)`
(tensorflow/core/lib/hash/crc32c.h: masking keeps a CRC of data that itself holds CRCs from being
trivially valid). A file may be GZIP-compressed as a whole (`compression_type="GZIP"` in TF); the
framing is then inside the gzip stream. Each payload is a serialized `tf.train.Example`
(tensorflow/core/example/example.proto, feature.proto):

    Example   { Features features = 1; }
    Features  { map<string, Feature> feature = 1; }  // wire: repeated entry {1: key, 2: value}
    Feature   { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2;
                             Int64List int64_list = 3; } }
    BytesList { repeated bytes value = 1; }
    FloatList { repeated float value = 1 [packed = true]; }
    Int64List { repeated int64 value = 1 [packed = true]; }

Reading (`iter_records`, `iter_examples`, `TFRecordReader`) streams every file through fsspec in
blocks (local paths, `file://`, `memory://`, `gs://`, `s3://`, globs of any of them), checks every
CRC, and on a bad record either raises `TFRecordError` naming the file, record and byte offset
(`on_corrupt="fail"`) or skips it, resynchronizes and counts it in `ReadStats`
(`on_corrupt="skip"`). Transient storage errors mid-stream are retried by reopening the file at
the byte where the read broke off (`RetryPolicy`; glob expansion is retried the same way); when
the retries run out, `StorageError`. Every function that opens storage takes `storage_options`,
the keyword arguments of the fsspec filesystem (`gcsfs.GCSFileSystem`, `s3fs.S3FileSystem`, ...);
gs:// URLs get a request timeout by default (`DEFAULT_GCS_REQUEST_TIMEOUT_S`).

Decoding (`decode_example`, `decode_batch`) is a small hand-written wire-format walker; the
`protobuf` package (its C `upb` backend, with the message classes built here from a descriptor, so
no generated code and no TensorFlow) decodes the value lists the walker has no fast path for. Why
both: see `_parse_example`. Writing (`write_examples`, `encode_example`, `TFRecordWriter`)
produces the bytes TensorFlow produces for the same Example, packed lists and all; the map entries
keep the order of the dict given, so decoding and re-encoding a TF-written record reproduces it byte
for byte (TF writes map entries in its hash map's order, which `decode_example` preserves).
"""

from __future__ import annotations

import array
import functools
import gzip
import logging
import operator
import os
import random
import re
import struct
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, TypeAlias, TypeVar

import fsspec
import google_crc32c
import numpy as np
from fsspec.spec import AbstractFileSystem
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, EncodeError

__all__ = [
    "DEFAULT_BLOCK_SIZE_BYTES",
    "DEFAULT_GCS_REQUEST_TIMEOUT_S",
    "PROTO_CLASSES",
    "Example",
    "ExampleError",
    "FeatureValues",
    "FixedLenFeature",
    "ReadStats",
    "RetryPolicy",
    "StorageError",
    "TFRecordError",
    "TFRecordReader",
    "TFRecordWriter",
    "decode_batch",
    "decode_example",
    "encode_example",
    "expand_urls",
    "iter_examples",
    "iter_records",
    "masked_crc32c",
    "write_examples",
]

logger = logging.getLogger(__name__)

FeatureValues: TypeAlias = list[int] | list[float] | list[bytes]
Example: TypeAlias = dict[str, FeatureValues]
OnCorrupt: TypeAlias = Literal["fail", "skip"]

# Reads go to storage in blocks this big: large enough that a GCS/S3 request's latency is amortized
# over thousands of records, small enough that the first record comes quickly and memory stays flat.
DEFAULT_BLOCK_SIZE_BYTES = 4 << 20

# gcsfs sends requests with no timeout unless given `requests_timeout`: a server that accepts the
# connection and then stalls would hang a reader forever, below any retry. So gs:// gets this
# timeout (seconds, per request, whole response included; aiohttp's `total`) unless the caller's
# `storage_options` or fsspec's config (`fsspec.config.conf["gs"]`) name `requests_timeout`
# (`None` there turns it off). 60 s still lets a 4 MiB read block (or a 5 MiB upload chunk of
# gcsfs's) through at 90 KB/s. Read each time a filesystem is made, so tests monkeypatch it down.
DEFAULT_GCS_REQUEST_TIMEOUT_S: float = 60.0
_GCS_PROTOCOLS = ("gs", "gcs")

_MASK_DELTA = 0xA282EAD8
_HEADER = struct.Struct("<QI")  # length, masked CRC32C of the 8 length bytes
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_U64_MASK = (1 << 64) - 1
_GZIP_MAGIC = b"\x1f\x8b"
# What gzip/zlib raise on a corrupt or cut-off stream.
_DECOMPRESSION_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)
# FloatList values are little-endian float32 on the wire; array("f") uses the machine's order.
_BIG_ENDIAN = sys.byteorder == "big"

# Feature.kind field numbers.
_BYTES, _FLOAT, _INT64 = 1, 2, 3
_KIND_NAMES = {_BYTES: "bytes_list", _FLOAT: "float_list", _INT64: "int64_list"}


# --------------------------------------------------------------------------------------- errors


class TFRecordError(ValueError):
    """A TFRecord file or Example payload that cannot be read as one.

    Attributes:
      url: the file, when known.
      record_index: 0-based index of the record in its file (counting skipped ones), when known.
      offset: byte offset of the record's header in the file (in the uncompressed stream for GZIP
        files), when known.
    """

    def __init__(
        self,
        message: str,
        *,
        url: str | None = None,
        record_index: int | None = None,
        offset: int | None = None,
    ) -> None:
        super().__init__(message)
        self.url = url
        self.record_index = record_index
        self.offset = offset


class ExampleError(TFRecordError):
    """A payload that is not a valid `tf.train.Example`, or a value that has no place in one."""


class StorageError(OSError):
    """Storage kept failing with transient errors after every retry `RetryPolicy` allows.

    Kept apart from `TFRecordError`: the data may be fine, and the run may succeed later, so a
    controller can treat it as retryable where it should not retry corrupt data.
    """

    def __init__(self, message: str, *, url: str, offset: int, num_attempts: int) -> None:
        super().__init__(message)
        self.url = url
        self.offset = offset
        self.num_attempts = num_attempts


def _corruption_error(url: str, record_index: int, offset: int, what: str) -> TFRecordError:
    return TFRecordError(
        f"{url}: record {record_index} at byte offset {offset}: {what}. The file is corrupt or "
        "was cut short; re-create it (or copy it again), or pass on_corrupt='skip' to skip bad "
        "records and count them in ReadStats",
        url=url,
        record_index=record_index,
        offset=offset,
    )


# ----------------------------------------------------------------------------- policies, stats


@dataclass(frozen=True)
class RetryPolicy:
    """How a reader rides out transient storage errors (a dropped connection, a 503, a timeout).

    On such an error the file is closed, the reader sleeps, reopens it and seeks back to the byte
    where the failed read started, so no record is lost or repeated. Listing a glob's matches is
    retried the same way.

    These retries come on top of the backend's own. gcsfs retries every failed request 6 times,
    sleeping 1, 2, 4, 8 and 16 s (plus up to 1 s of jitter each) in between, so one of our attempts
    against a dead GCS endpoint takes ~33 s to fail; the defaults here then add up to 5 more such
    attempts, 4-5 minutes in all. (A request that times out, see `DEFAULT_GCS_REQUEST_TIMEOUT_S`,
    is not retried by gcsfs: against a stalled server each attempt of ours takes one timeout.)
    s3fs and botocore retry a few times within a second or two. This layer is what survives
    errors that break a stream mid-file, which backends do not retry.

    Besides `retry_on`, these backend errors are transient (looked up in `sys.modules`, so that a
    backend never imported is not imported for it): `botocore.exceptions.ConnectionError` and
    `HTTPClientError` (s3fs's endpoint, connect and read errors, which are not OSErrors),
    `aiohttp.ClientError` (a `ClientResponseError` only with one of the HTTP statuses below), and
    `gcsfs.retry.HttpError` with code 408, 429 or 500-504.

    Attributes:
      max_attempts: tries per read (the first one included) before `StorageError`.
      initial_backoff_s: sleep after the first failure; multiplied by `backoff_multiplier` after
        each further one, up to `max_backoff_s`.
      jitter: sleep a uniformly random 50-100% of the backoff, so that many workers hit by the
        same outage do not come back in lockstep.
      retry_on: exception types counted as transient, besides the backend errors above.
      never_retry: subclasses of those that are not (a missing file stays missing).
    """

    max_attempts: int = 6
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    backoff_multiplier: float = 2.0
    jitter: bool = True
    retry_on: tuple[type[BaseException], ...] = (OSError, ConnectionError, TimeoutError)
    never_retry: tuple[type[BaseException], ...] = (
        FileNotFoundError,
        PermissionError,
        IsADirectoryError,
        NotADirectoryError,
    )

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"RetryPolicy.max_attempts must be >= 1, got {self.max_attempts}")
        if self.initial_backoff_s < 0 or self.max_backoff_s < 0 or self.backoff_multiplier < 1:
            raise ValueError(f"RetryPolicy backoffs must be >= 0 and the multiplier >= 1: {self}")

    def backoff_s(self, num_failures: int) -> float:
        """The sleep after `num_failures` (>= 1) failed tries in a row, before jitter."""
        backoff_s = self.initial_backoff_s * self.backoff_multiplier ** (num_failures - 1)
        return min(self.max_backoff_s, backoff_s)

    def is_transient(self, error: BaseException) -> bool:
        """Whether `error` is worth another try (see the class docstring)."""
        if isinstance(error, self.never_retry):
            return False
        return isinstance(error, self.retry_on) or _is_transient_backend_error(error)


# HTTP statuses that say "try again": request timeout, too many requests, server errors (the set
# gcsfs itself retries, `gcsfs.retry.errs`).
_TRANSIENT_HTTP_STATUSES = frozenset({408, 429, 500, 501, 502, 503, 504})


def _loaded_types(module_name: str, *names: str) -> tuple[type[BaseException], ...]:
    """The named exception classes of `module_name` if it is already imported, else ()."""
    module = sys.modules.get(module_name)
    return tuple(getattr(module, name) for name in names if hasattr(module, name))


def _is_transient_backend_error(error: BaseException) -> bool:
    """A storage client's error that `RetryPolicy.retry_on`'s builtin types do not catch.

    Looked up in `sys.modules`: an error from a client library means it was imported, and this
    module must not import (or depend on) every backend to recognize their errors.
    """
    botocore_types = _loaded_types("botocore.exceptions", "ConnectionError", "HTTPClientError")
    if isinstance(error, botocore_types):
        return True
    if isinstance(error, _loaded_types("aiohttp", "ClientResponseError")):
        return getattr(error, "status", None) in _TRANSIENT_HTTP_STATUSES
    if isinstance(error, _loaded_types("aiohttp", "ClientError")):
        return True
    if isinstance(error, _loaded_types("gcsfs.retry", "HttpError")):
        code: Any = getattr(error, "code", None)
        try:
            return int(code) in _TRANSIENT_HTTP_STATUSES
        except (TypeError, ValueError):  # gcsfs keeps the code as the server sent it, maybe a str
            return False
    return False


# A private generator for the jitter: drawing from the global `random` would shift the stream of
# any code that seeds it for reproducibility (data shuffling, a resumed run's RNG state).
_jitter_rng = random.Random()


@dataclass
class ReadStats:
    """Counters a trainer can log as metrics (`as_metrics()`); pass one object to several readers
    to add them up. Nothing here is ever reset by the reader.

    Attributes:
      num_records: records read whose two CRCs checked out.
      num_skipped_records: records dropped with `on_corrupt="skip"`: payload CRC mismatch, or (in
        `iter_examples`) a payload that is not a valid Example.
      num_resyncs: corrupt length fields (framing lost) after which the reader scanned forward to
        the next valid record header; the records in between are gone and not counted elsewhere.
      num_skipped_bytes: bytes passed over by those scans.
      num_truncated_files: files whose tail could not be read: cut off mid-record, or a corrupt or
        truncated gzip stream.
      num_retries: transient storage errors retried.
    """

    num_records: int = 0
    num_skipped_records: int = 0
    num_resyncs: int = 0
    num_skipped_bytes: int = 0
    num_truncated_files: int = 0
    num_retries: int = 0

    def as_metrics(self, prefix: str = "data/") -> dict[str, int]:
        return {prefix + k: v for k, v in asdict(self).items()}


def masked_crc32c(data: bytes) -> int:
    """The CRC32C of `data`, masked the way TFRecord stores it."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


# -------------------------------------------------------------------------------- storage layer


_T = TypeVar("_T")


def _url_to_fs(
    url: str, storage_options: Mapping[str, Any] | None
) -> tuple[AbstractFileSystem, str]:
    """fsspec's filesystem and path for `url`, the filesystem made with `storage_options` (on top
    of fsspec's config) and, for a gs:// URL that gets no `requests_timeout` from either, with
    `DEFAULT_GCS_REQUEST_TIMEOUT_S`."""
    options = dict(storage_options or {})
    protocol, _ = fsspec.core.split_protocol(url)
    if (
        protocol in _GCS_PROTOCOLS
        and "requests_timeout" not in options
        and not any("requests_timeout" in fsspec.config.conf.get(p, {}) for p in _GCS_PROTOCOLS)
    ):
        options["requests_timeout"] = DEFAULT_GCS_REQUEST_TIMEOUT_S
    return fsspec.core.url_to_fs(url, **options)


def _with_retries(
    call: Callable[[], _T],
    *,
    url: str,
    offset: int,
    what: str,
    retry: RetryPolicy,
    stats: ReadStats,
    on_failure: Callable[[], None] | None = None,
) -> _T:
    """`call()`, tried again after a backoff while it fails with an error `retry` calls transient.

    Args:
      call: one storage operation.
      url: what it works on, for messages and `StorageError.url`.
      offset: the byte it reads at (0 when it reads none), for `StorageError.offset`.
      what: the operation in words, for messages ("reading at byte offset 123").
      retry: which errors are transient, how often and how long to wait.
      stats: `num_retries` counts every retry.
      on_failure: runs after each transient failure (e.g. to drop a broken connection).

    Raises:
      StorageError: `retry.max_attempts` tries failed with transient errors.
      FileNotFoundError: `url` does not exist (never retried), with the URL in the message; the
        backend's names only the path it requested.
      Whatever else `call` raised.
    """
    num_failures = 0
    while True:
        try:
            return call()
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f"{url}: no such file or object ({e}). Check the URL: protocol, bucket and path"
            ) from e
        except Exception as e:  # classified here: anything not transient is re-raised as it was
            if not retry.is_transient(e):
                raise
            if on_failure is not None:
                on_failure()
            num_failures += 1
            if num_failures >= retry.max_attempts:
                raise StorageError(
                    f"{url}: {what} failed {num_failures} times in a row, last with {e!r}. The "
                    "storage looks unavailable: check connectivity and credentials and run again, "
                    "or allow more attempts with RetryPolicy(max_attempts=...)",
                    url=url,
                    offset=offset,
                    num_attempts=num_failures,
                ) from e
            sleep_s = retry.backoff_s(num_failures)
            if retry.jitter:
                sleep_s *= 0.5 + 0.5 * _jitter_rng.random()
            stats.num_retries += 1
            logger.warning("%s: %s failed (%r), attempt %d of %d; retrying in %.3g s",
                           url, what, e, num_failures, retry.max_attempts, sleep_s)  # fmt: skip
            time.sleep(sleep_s)


class _ResumableFile:
    """A read-only, forward-reading view of one fsspec file that retries transient errors.

    It tracks the position itself, so after an error it can reopen the file and seek to exactly
    where the failed read began. A gzip stream is decompressed on top of this object, so retries
    are invisible to the decompressor.
    """

    def __init__(
        self,
        fs: AbstractFileSystem,
        path: str,
        url: str,
        retry: RetryPolicy,
        stats: ReadStats,
        block_size_bytes: int,
    ) -> None:
        self._fs = fs
        self._path = path
        self._url = url
        self._retry = retry
        self._stats = stats
        self._block_size_bytes = block_size_bytes
        self._file: Any = None
        self.pos = 0

    def read(self, size: int = -1) -> bytes:
        data = _with_retries(
            lambda: self._read_once(size), url=self._url, offset=self.pos,
            what=f"reading at byte offset {self.pos}", retry=self._retry, stats=self._stats,
            on_failure=self._discard,
        )  # fmt: skip
        self.pos += len(data)
        return data

    def _read_once(self, size: int) -> bytes:
        f = self._file
        if f is None:
            # The backend's own request size: without it s3fs fetches 50 MiB (gcsfs 5 MiB) ahead
            # on the first read, which delays the first record and defeats a small block size.
            f = self._file = self._fs.open(self._path, "rb", block_size=self._block_size_bytes)
        # Cheap (one tell per block) and makes the position ours even where the backend hands out
        # shared file objects (fsspec's memory filesystem does).
        if f.tell() != self.pos:
            f.seek(self.pos)
        data: bytes = f.read(size)
        return data

    def seek(self, pos: int, whence: int = 0) -> int:
        assert whence == 0, "only absolute seeks are needed here"
        self.pos = pos
        return pos

    def tell(self) -> int:
        return self.pos

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._discard()

    def _discard(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            try:
                f.close()
            except Exception:  # a connection that just failed may fail to close, too; either way
                pass  # it is gone, and the reader opens a new one


# ---------------------------------------------------------------------------------- the reader


def _find_header(buf: bytes, start: int) -> int:
    """The first position >= start where a 12-byte record header with a valid length CRC fits in
    `buf`, or -1.

    Candidates are found with `bytes.find` (C speed) for four zero bytes at the top of the length:
    a record cannot be 4 GiB or more (a protobuf message is limited to 2 GiB), so only positions
    with those bytes zero need a CRC check. Runs of zeros (a zeroed-out block) are jumped over:
    an all-zero header never validates, because the masked CRC of eight zero bytes is not zero.
    """
    last = len(buf) - 12
    p = start
    crc = google_crc32c.value
    while p <= last:
        q = buf.find(b"\0\0\0\0", p + 4, last + 8)
        if q < 0:
            return -1
        p = q - 4
        if buf[p : p + 12] == _ZERO_HEADER:
            m = _NONZERO.search(buf, p + 12)
            if m is None:
                return -1
            p = max(p + 1, m.start() - 11)
            continue
        c = crc(buf[p : p + 8])
        if (((c >> 15) | (c << 17)) + _MASK_DELTA) & 0xFFFFFFFF == _U32.unpack_from(buf, p + 8)[0]:
            return p
        p += 1
    return -1


_ZERO_HEADER = bytes(12)
_NONZERO = re.compile(rb"[^\x00]")


class TFRecordReader:
    """The records of one TFRecord file, streamed in blocks, every CRC checked.

    Iterating yields each record's payload; iterate again to reread the file. `record_index` and
    `record_offset` describe the record last yielded.

    On a corrupt record, `on_corrupt="fail"` raises `TFRecordError`. `on_corrupt="skip"` goes on:
      - payload CRC mismatch: the framing is intact, so that record is skipped
        (`stats.num_skipped_records`);
      - length CRC mismatch: the framing is lost, since the length cannot be trusted; the reader
        scans forward byte by byte for the next position where 12 bytes form a header whose length
        CRC validates (a chance match is a 1 in 2**32 event, and then the payload CRC still has to
        pass) and carries on from there (`stats.num_resyncs`, `stats.num_skipped_bytes`);
      - a file cut off mid-record, or a corrupt gzip stream: the records before it are yielded and
        the rest of the file is given up with a warning (`stats.num_truncated_files`).
    Every such event is logged as a warning naming file, record and offset.

    Args:
      url: one file, as anything fsspec opens ("data/x.tfrecord", "gs://b/x.tfrecord", ...).
      compression: "GZIP" or "" (none); None detects it from the content: a file that starts
        with the gzip magic bytes and not with a valid record header is read as GZIP (the file
        name is not trusted either way).
      on_corrupt: "fail" or "skip", as above.
      retry: how transient storage errors are retried (default `RetryPolicy()`).
      block_size_bytes: how much is read from storage at a time; also the backend's request size
        (`fs.open(..., block_size=)`), so it does not fetch its own default ahead.
      stats: counters to add to; a fresh `ReadStats` by default (see `stats`).
      storage_options: keyword arguments for the fsspec filesystem of `url`, on top of fsspec's
        config (e.g. `{"requests_timeout": 30}` for gcsfs, `{"config_kwargs": {...}}` for s3fs);
        gs:// gets `requests_timeout=DEFAULT_GCS_REQUEST_TIMEOUT_S` unless one is set.
    """

    url: str
    compression: str | None
    on_corrupt: OnCorrupt
    retry: RetryPolicy
    block_size_bytes: int
    stats: ReadStats
    storage_options: dict[str, Any]
    record_index: int
    record_offset: int

    def __init__(
        self,
        url: str | os.PathLike[str],
        *,
        compression: str | None = None,
        on_corrupt: OnCorrupt = "fail",
        retry: RetryPolicy | None = None,
        block_size_bytes: int = DEFAULT_BLOCK_SIZE_BYTES,
        stats: ReadStats | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.url = os.fspath(url)
        self._location: tuple[AbstractFileSystem, str] | None = None  # resolved when first read
        self.compression = _read_compression(compression)
        if on_corrupt not in ("fail", "skip"):
            raise ValueError(f"on_corrupt must be 'fail' or 'skip', got {on_corrupt!r}")
        self.on_corrupt = on_corrupt
        self.retry = retry if retry is not None else RetryPolicy()
        if block_size_bytes < 1:
            raise ValueError(f"block_size_bytes must be positive, got {block_size_bytes}")
        self.block_size_bytes = block_size_bytes
        self.stats = stats if stats is not None else ReadStats()
        self.storage_options = dict(storage_options or {})
        self.record_index = -1
        self.record_offset = -1

    @classmethod
    def _resolved(
        cls, fs: AbstractFileSystem, path: str, url: str, **kwargs: Any
    ) -> TFRecordReader:
        """A reader of `path` on `fs` (already resolved, e.g. by a glob), shown as `url`; any
        `storage_options` among `kwargs` are not used, `fs` being made already."""
        reader = cls(url, **kwargs)
        reader._location = (fs, path)
        return reader

    def __iter__(self) -> Iterator[bytes]:
        if self._location is None:
            self._location = _url_to_fs(self.url, self.storage_options)
        fs, path = self._location
        raw = _ResumableFile(fs, path, self.url, self.retry, self.stats, self.block_size_bytes)
        try:
            yield from self._records(raw)
        finally:
            raw.close()

    def _records(self, raw: _ResumableFile) -> Iterator[bytes]:
        url, stats, skip = self.url, self.stats, self.on_corrupt == "skip"
        block_size = self.block_size_bytes
        stream: _ResumableFile | gzip.GzipFile = raw
        buf = b""  # holds stream bytes [base, base + len(buf))
        base = 0
        eof = False
        stream_error: str | None = None  # why the stream ended early, if it did

        first = raw.read(12)
        is_gzip = self.compression == "GZIP" or (
            self.compression is None and first[:2] == _GZIP_MAGIC and not _is_header(first)
        )
        if is_gzip:
            raw.seek(0)
            stream = gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[arg-type]
        else:
            buf = first

        def fill(start: int, need: int) -> None:
            """Drop buf[:start], then read until len(buf) >= need or the stream ends."""
            nonlocal buf, base, eof, stream_error
            parts = [buf[start:]]
            have = len(parts[0])
            base += start
            while have < need and not eof:
                try:
                    # At most 16 blocks a read: a length that passed its CRC by chance (resync) must
                    # not make us allocate gigabytes the file does not have.
                    chunk = stream.read(max(block_size, min(need - have, 16 * block_size)))
                except _DECOMPRESSION_ERRORS as e:
                    eof, stream_error = True, f"the gzip stream is corrupt or truncated ({e})"
                    break
                if not chunk:
                    eof = True
                    break
                parts.append(chunk)
                have += len(chunk)
            buf = parts[0] if len(parts) == 1 else b"".join(parts)

        def truncated(index: int, offset: int, have: int, need: int) -> None:
            what = stream_error or (
                f"the file ends {have} bytes into the record, which needs {need}"
            )
            if not skip:
                raise _corruption_error(url, index, offset, f"truncated record: {what}")
            stats.num_truncated_files += 1
            logger.warning("%s: record %d at byte offset %d is truncated (%s); skipping the rest "
                           "of the file", url, index, offset, what)  # fmt: skip

        # The hot loop: everything it touches per record is a local.
        crc = google_crc32c.value
        unpack_header = _HEADER.unpack_from
        unpack_u32 = _U32.unpack_from
        mask_delta = _MASK_DELTA
        pos = 0
        index = 0
        while True:
            if len(buf) - pos < 12:
                fill(pos, 12)
                pos = 0
                if len(buf) < 12:
                    if buf or stream_error:
                        truncated(index, base, len(buf), 12)
                    return
            length, length_crc = unpack_header(buf, pos)
            c = crc(buf[pos : pos + 8])
            if (((c >> 15) | (c << 17)) + mask_delta) & 0xFFFFFFFF != length_crc:
                lost_at = base + pos
                if not skip:
                    raise _corruption_error(
                        url, index, lost_at, "length CRC mismatch (the record framing is lost)"
                    )
                # Resync: scan forward for the next valid header, a block at a time, keeping the
                # last 11 bytes of each block since a header may straddle two blocks.
                stats.num_resyncs += 1
                scan = pos + 1
                while (found := _find_header(buf, scan)) < 0 and not eof:
                    keep = max(scan, len(buf) - 11)
                    fill(keep, len(buf) - keep + 12)
                    scan = 0
                skipped = (base + found if found >= 0 else base + len(buf)) - lost_at
                stats.num_skipped_bytes += skipped
                logger.warning(
                    "%s: record %d at byte offset %d has a corrupt length; skipped %d bytes to %s",
                    url, index, lost_at, skipped,
                    "the next valid record header" if found >= 0 else "the end of the file",
                )  # fmt: skip
                if found < 0:
                    if stream_error:
                        truncated(index, base + len(buf), 0, 12)
                    return
                pos = found
                index += 1
                continue
            end = pos + 12 + length
            if end + 4 > len(buf):
                fill(pos, 16 + length)
                pos, end = 0, 12 + length
                if end + 4 > len(buf):
                    truncated(index, base, len(buf), 16 + length)
                    return
            payload = buf[pos + 12 : end]
            c = crc(payload)
            if (((c >> 15) | (c << 17)) + mask_delta) & 0xFFFFFFFF == unpack_u32(buf, end)[0]:
                self.record_index, self.record_offset = index, base + pos
                stats.num_records += 1
                yield payload
            elif not skip:
                raise _corruption_error(url, index, base + pos, "payload CRC mismatch")
            else:
                stats.num_skipped_records += 1
                logger.warning("%s: record %d at byte offset %d has a bad payload CRC; skipped it",
                               url, index, base + pos)  # fmt: skip
            pos = end + 4
            index += 1


def _is_header(data: bytes) -> bool:
    if len(data) < 12:
        return False
    return masked_crc32c(data[:8]) == _U32.unpack_from(data, 8)[0]


def _read_compression(compression: str | None) -> str | None:
    if compression is None:
        return None
    if compression.upper() in ("", "NONE"):
        return ""
    if compression.upper() == "GZIP":
        return "GZIP"
    raise ValueError(
        f"compression must be None (detect), '' (none) or 'GZIP', got {compression!r}; "
        "ZLIB-compressed TFRecord files are not supported"
    )


def expand_urls(
    url_or_glob: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    retry: RetryPolicy | None = None,
    stats: ReadStats | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Iterator[tuple[AbstractFileSystem, str, str]]:
    """(filesystem, path, url) of every file named or matched, globs sorted by name.

    A name without glob characters is yielded as is, unchecked; a glob is listed on its storage,
    which is retried like a read.

    Args:
      url_or_glob: one URL or glob, or a list of them.
      retry: how transient errors listing a glob are retried (default `RetryPolicy()`).
      stats: `num_retries` counts those retries.
      storage_options: as `TFRecordReader`'s.

    Yields:
      (fs, path, url) of each file, url being its full URL.

    Raises:
      FileNotFoundError: a glob that matches nothing.
      StorageError: listing a glob still failing after the retries; `url` is the glob and
        `offset` 0.
    """
    retry = retry if retry is not None else RetryPolicy()
    stats = stats if stats is not None else ReadStats()
    urls = [url_or_glob] if isinstance(url_or_glob, (str, os.PathLike)) else list(url_or_glob)
    for url in map(os.fspath, urls):
        fs, path = _url_to_fs(url, storage_options)
        if not any(ch in path for ch in "*?["):
            yield fs, path, url
            continue
        no_match = f"no files match {url!r}; check the path and the pattern"
        try:
            matches = _with_retries(
                functools.partial(fs.glob, path, detail=True), url=url, offset=0,
                what="listing the files it matches", retry=retry, stats=stats,
            )  # fmt: skip
        except FileNotFoundError as e:  # some backends say so for a missing prefix or bucket
            raise FileNotFoundError(no_match) from e
        files = sorted(p for p, info in matches.items() if info.get("type") != "directory")
        if not files:
            raise FileNotFoundError(no_match)
        for p in files:
            yield fs, p, fs.unstrip_protocol(p)


def iter_records(
    url_or_glob: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    compression: str | None = None,
    on_corrupt: OnCorrupt = "fail",
    retry: RetryPolicy | None = None,
    block_size_bytes: int = DEFAULT_BLOCK_SIZE_BYTES,
    stats: ReadStats | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Iterator[bytes]:
    """The raw payloads of every record of one file, a glob, or a list of either, in order.

    Args: as `TFRecordReader`; pass `stats` to see what was skipped or retried.

    Raises:
      TFRecordError: a corrupt or truncated record, with `on_corrupt="fail"`.
      StorageError: storage still failing after the retries (reading, or listing a glob).
      FileNotFoundError: a missing file (the message names its URL), or a glob that matches
        nothing.
    """
    stats = stats if stats is not None else ReadStats()
    files = expand_urls(url_or_glob, retry=retry, stats=stats, storage_options=storage_options)
    for fs, path, url in files:
        reader = TFRecordReader._resolved(
            fs, path, url, compression=compression, on_corrupt=on_corrupt, retry=retry,
            block_size_bytes=block_size_bytes, stats=stats,
        )  # fmt: skip
        yield from reader


def iter_examples(
    url_or_glob: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    on_corrupt: OnCorrupt = "fail",
    *,
    compression: str | None = None,
    retry: RetryPolicy | None = None,
    block_size_bytes: int = DEFAULT_BLOCK_SIZE_BYTES,
    stats: ReadStats | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Iterator[Example]:
    """The decoded `tf.train.Example`s of every record (see `decode_example` for the values).

    With `on_corrupt="skip"`, a record whose CRCs pass but which is not a valid Example is skipped
    and counted in `stats.num_skipped_records` too.

    Args: as `TFRecordReader`.

    Raises: as `iter_records`; `TFRecordError` (an `ExampleError`) for an undecodable payload.
    """
    stats = stats if stats is not None else ReadStats()
    files = expand_urls(url_or_glob, retry=retry, stats=stats, storage_options=storage_options)
    for fs, path, url in files:
        reader = TFRecordReader._resolved(
            fs, path, url, compression=compression, on_corrupt=on_corrupt, retry=retry,
            block_size_bytes=block_size_bytes, stats=stats,
        )  # fmt: skip
        for payload in reader:
            try:
                yield decode_example(payload)
            except ExampleError as e:
                where = f"{url}: record {reader.record_index} at byte offset {reader.record_offset}"
                if on_corrupt == "fail":
                    raise ExampleError(
                        f"{where}: {e}. Its CRCs are valid, so whatever wrote it wrote something "
                        "other than a tf.train.Example; check the file, or pass on_corrupt='skip'",
                        url=url, record_index=reader.record_index, offset=reader.record_offset,
                    ) from e  # fmt: skip
                stats.num_skipped_records += 1
                logger.warning("%s is not a valid tf.train.Example (%s); skipped it", where, e)


# ------------------------------------------------------------------------------- Example protos


def _build_message_classes() -> dict[str, type[Any]]:
    """The Example protos' message classes, from a descriptor built here (no generated code).

    They live in a private descriptor pool, so they cannot clash with TensorFlow's own
    `tensorflow.Example` should both ever be loaded in one process.
    """
    fd = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="bertfleet/tf_example.proto", package="tensorflow", syntax="proto3"
    )

    Field = tuple[str, int, int, int, str]  # name, number, type, label, message type name

    def add(parent: Any, name: str, *fields: Field) -> descriptor_pb2.DescriptorProto:
        message = parent.add(name=name)
        for field_name, number, field_type, label, type_name in fields:
            f = message.field.add(name=field_name, number=number, type=field_type, label=label)
            if type_name:
                f.type_name = type_name
        return message

    messages, repeated, optional = file.message_type, fd.LABEL_REPEATED, fd.LABEL_OPTIONAL
    add(messages, "BytesList", ("value", 1, fd.TYPE_BYTES, repeated, ""))
    for name, value_type in (("FloatList", fd.TYPE_FLOAT), ("Int64List", fd.TYPE_INT64)):
        add(messages, name, ("value", 1, value_type, repeated, "")).field[0].options.packed = True
    feature = add(
        messages,
        "Feature",
        ("bytes_list", 1, fd.TYPE_MESSAGE, optional, ".tensorflow.BytesList"),
        ("float_list", 2, fd.TYPE_MESSAGE, optional, ".tensorflow.FloatList"),
        ("int64_list", 3, fd.TYPE_MESSAGE, optional, ".tensorflow.Int64List"),
    )
    feature.oneof_decl.add(name="kind")
    for f in feature.field:
        f.oneof_index = 0
    features = add(
        messages,
        "Features",
        ("feature", 1, fd.TYPE_MESSAGE, repeated, ".tensorflow.Features.FeatureEntry"),
    )
    entry = add(
        features.nested_type,
        "FeatureEntry",
        ("key", 1, fd.TYPE_STRING, optional, ""),
        ("value", 2, fd.TYPE_MESSAGE, optional, ".tensorflow.Feature"),
    )
    entry.options.map_entry = True  # what `map<string, Feature>` compiles to
    add(messages, "Example", ("features", 1, fd.TYPE_MESSAGE, optional, ".tensorflow.Features"))

    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    names = ("BytesList", "FloatList", "Int64List", "Feature", "Features", "Example")
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.{name}"))
        for name in names
    }


PROTO_CLASSES = _build_message_classes()
"""The `tf.train` message classes by name ("Example", "Feature", ...), for interop and tests."""
_BytesListPB = PROTO_CLASSES["BytesList"]
_FloatListPB = PROTO_CLASSES["FloatList"]
_Int64ListPB = PROTO_CLASSES["Int64List"]
_FeaturePB = PROTO_CLASSES["Feature"]
_LIST_PB = {_BYTES: _BytesListPB, _FLOAT: _FloatListPB, _INT64: _Int64ListPB}


class _Malformed(Exception):
    """Internal: the wire walker hit something invalid; becomes `ExampleError` at the API."""


def _varint(b: bytes, i: int, end: int) -> tuple[int, int]:
    """The varint at b[i:], as an unsigned 64-bit value, and the index after it."""
    result = 0
    shift = 0
    while i < end:
        c = b[i]
        i += 1
        result |= (c & 0x7F) << shift
        if c < 0x80:
            return result & _U64_MASK, i  # bits past 64 are dropped, as protobuf does
        shift += 7
        if shift >= 70:
            raise _Malformed("a varint is longer than 10 bytes")
    raise _Malformed("a varint runs past the end of its message")


def _skip_field(b: bytes, i: int, end: int, tag: int) -> int:
    """The index after the value of an unknown field (protobuf readers must skip them)."""
    wire_type = tag & 7
    if tag >> 3 == 0:
        raise _Malformed("field number 0")
    if wire_type == 0:
        _, i = _varint(b, i, end)
    elif wire_type == 1:
        i += 8
    elif wire_type == 2:
        n, i = _varint(b, i, end)
        i += n
    elif wire_type == 5:
        i += 4
    else:
        raise _Malformed(f"wire type {wire_type} (groups are not used by tf.train.Example)")
    if i > end:
        raise _Malformed("a field runs past the end of its message")
    return i


def _parse_example(b: bytes) -> dict[str, tuple[int, bytes]]:
    """Walk a serialized Example: {feature name: (kind, data)}, names in wire order.

    (kind, data) is (`_INT64` or `_FLOAT`, the packed values) in the usual case; (-kind, the
    serialized value list, for upb to decode) for bytes lists and lists serialized another way;
    (0, b"") for a Feature with no kind set.

    Why hand-written: with upb, `Example.FromString` is fast (~2.5 us for a BERT pretraining record)
    but turning its repeated fields into Python lists costs ~30 ns per value (~20 us per record),
    and it never hands out the packed bytes `decode_batch` wants for numpy. Here, packed int64 lists
    whose values are all below 128 (input_mask, segment_ids, labels, masked positions at seq <= 128:
    most values) are their own bytes, so `list(chunk)` makes them in C, a float32 list is one
    `array("f")`, and only lists with multi-byte varints (input_ids) go to upb. Measured with
    bench/tfrecord_read.py on the fixture's records: `decode_example` 1.2x a plain upb decode into
    lists (58.6k vs 47.8k records/s), and `decode_batch` is what takes the whole read + decode +
    collate pipeline to 2.7x the `tfrecord` package's.
    """
    try:
        parsed = _parse_canonical(b)
    except (IndexError, UnicodeDecodeError, _Malformed):  # let the general walk find what's wrong
        parsed = None
    return parsed if parsed is not None else _parse_general(b)


def _parse_canonical(b: bytes) -> dict[str, tuple[int, bytes]] | None:
    """`_parse_example` for the layout every protobuf serializer writes (each field once, lists
    packed, names under 128 bytes), or None at the first byte that departs from it.

    Each length is checked to end exactly where its enclosing message ends, so a record that
    passes is parsed as protobuf would parse it; anything else goes to `_parse_general`.
    """
    out: dict[str, tuple[int, bytes]] = {}
    n = len(b)
    if not n:
        return out
    if b[0] != 0x0A:  # Example.features
        return None
    ln = b[1]
    i = 2
    if ln >= 0x80:
        ln, i = _varint(b, 1, n)
    if i + ln != n:
        return None
    while i < n:  # Features.feature map entries: 0x0A len {0x0A len key, 0x12 len Feature}
        if b[i] != 0x0A:
            return None
        ln = b[i + 1]
        i += 2
        if ln >= 0x80:  # lengths of 128 bytes to 16 KiB are common: decode 2-byte varints inline
            if b[i] < 0x80:
                ln = ln & 0x7F | b[i] << 7
                i += 1
            else:
                ln, i = _varint(b, i - 1, n)
        end = i + ln
        key_len = b[i + 1]
        if end > n or b[i] != 0x0A or key_len >= 0x80:
            return None
        key = b[i + 2 : i + 2 + key_len]
        i += 2 + key_len
        if b[i] != 0x12:
            return None
        ln = b[i + 1]
        i += 2
        if ln >= 0x80:  # lengths of 128 bytes to 16 KiB are common: decode 2-byte varints inline
            if b[i] < 0x80:
                ln = ln & 0x7F | b[i] << 7
                i += 1
            else:
                ln, i = _varint(b, i - 1, n)
        if i + ln != end:
            return None
        if i == end:  # no kind set
            out[key.decode()] = (0, b"")
            continue
        kind_tag = b[i]  # Feature: 0x0A bytes_list, 0x12 float_list, 0x1A int64_list
        ln = b[i + 1]
        i += 2
        if ln >= 0x80:  # lengths of 128 bytes to 16 KiB are common: decode 2-byte varints inline
            if b[i] < 0x80:
                ln = ln & 0x7F | b[i] << 7
                i += 1
            else:
                ln, i = _varint(b, i - 1, n)
        if i + ln != end or kind_tag not in _KIND_TAGS:
            return None
        kind = kind_tag >> 3
        if kind == _BYTES:
            out[key.decode()] = (-_BYTES, b[i:end])
            i = end
            continue
        if i < end:  # the list: 0x0A len packed values
            if b[i] != 0x0A:
                return None
            ln = b[i + 1]
            i += 2
            if ln >= 0x80:
                if b[i] < 0x80:
                    ln = ln & 0x7F | b[i] << 7
                    i += 1
                else:
                    ln, i = _varint(b, i - 1, n)
            if i + ln != end or kind == _FLOAT and ln & 3:
                return None
        out[key.decode()] = (kind, b[i:end])
        i = end
    return out


_KIND_TAGS = frozenset((0x0A, 0x12, 0x1A))


def _parse_general(b: bytes) -> dict[str, tuple[int, bytes]]:
    """`_parse_example` for any valid encoding, as protobuf parses it: unknown fields are skipped,
    repeated `features` fields and repeated map values merge, a later entry with the same name
    replaces an earlier one, and within a Feature the last `kind` set wins. Lists come back
    serialized, for upb. Every length is bounds-checked, so malformed input raises `_Malformed`.
    """
    out: dict[str, tuple[int, bytes]] = {}
    n = len(b)
    i = 0
    while i < n:
        tag, i = _varint(b, i, n)
        if tag != 0x0A:  # anything but Example.features
            i = _skip_field(b, i, n, tag)
            continue
        ln, i = _varint(b, i, n)
        end = i + ln
        if end > n:
            raise _Malformed("Example.features runs past the end of the record")
        while i < end:  # Features: repeated map entries
            tag, i = _varint(b, i, end)
            if tag != 0x0A:
                i = _skip_field(b, i, end, tag)
                continue
            ln, i = _varint(b, i, end)
            entry_end = i + ln
            if entry_end > end:
                raise _Malformed("a feature map entry runs past the end of Features")
            key = b""
            kind = 0
            parts: list[bytes] = []
            while i < entry_end:  # map entry: 1 key, 2 value (Feature)
                tag, i = _varint(b, i, entry_end)
                if tag != 0x0A and tag != 0x12:
                    i = _skip_field(b, i, entry_end, tag)
                    continue
                ln, i = _varint(b, i, entry_end)
                stop = i + ln
                if stop > entry_end:
                    raise _Malformed("a feature name or value runs past the end of its map entry")
                if tag == 0x0A:
                    key = b[i:stop]
                    i = stop
                    continue
                # A repeated value field merges into one Feature: walk the pieces in turn.
                while i < stop:  # Feature: oneof kind {1 bytes_list, 2 float_list, 3 int64_list}
                    tag, i = _varint(b, i, stop)
                    if tag not in _KIND_TAGS:
                        i = _skip_field(b, i, stop, tag)
                        continue
                    ln, i = _varint(b, i, stop)
                    list_end = i + ln
                    if list_end > stop:
                        raise _Malformed("a value list runs past the end of its Feature")
                    # Setting another member of a oneof clears the one set before; setting the
                    # same one again merges, and merging repeated fields concatenates them.
                    if tag >> 3 != kind:
                        kind = tag >> 3
                        parts = []
                    parts.append(b[i:list_end])
                    i = list_end
            try:
                name = key.decode()
            except UnicodeDecodeError:
                raise _Malformed(f"feature name {key!r} is not valid UTF-8") from None
            out[name] = (-kind, b"".join(parts)) if kind else (0, b"")
    return out


def _values(kind: int, data: bytes) -> FeatureValues:
    """The Python values of one `_parse_example` item."""
    if kind == _INT64:
        if data.isascii():
            return list(data)  # every varint is one byte below 0x80: the bytes are the values
        return list(_Int64ListPB.FromString(b"\x0a" + _varint_bytes(len(data)) + data).value)
    if kind == _FLOAT:
        floats = array.array("f", data)
        if _BIG_ENDIAN:
            floats.byteswap()
        return floats.tolist()  # float32 -> Python float is exact
    if kind < 0:
        return list(_LIST_PB[-kind].FromString(data).value)
    return []  # a Feature with no kind set: an empty list of any type, as TF's parser reads it


def decode_example(payload: bytes | bytearray | memoryview) -> Example:
    """Decode a serialized `tf.train.Example`.

    Args:
      payload: the record's bytes.

    Returns:
      {feature name: values} in the order the features are serialized: int64_list -> list[int],
      float_list -> list[float] (each exactly the stored float32 value), bytes_list -> list[bytes],
      a Feature with no kind set -> []. Packed and unpacked encodings are both read.

    Raises:
      ExampleError: the payload is not a valid Example.
    """
    b = payload if isinstance(payload, bytes) else bytes(payload)
    try:
        return {key: _values(kind, data) for key, (kind, data) in _parse_example(b).items()}
    except (_Malformed, DecodeError) as e:
        raise ExampleError(f"not a valid tf.train.Example: {e}") from None


@dataclass(frozen=True)
class FixedLenFeature:
    """A feature every Example in a batch has with exactly `length` values (like TF's).

    Attributes:
      length: number of values per Example.
      dtype: "int64" (from an int64_list) or "float32" (from a float_list).
    """

    length: int
    dtype: Literal["int64", "float32"] = "int64"

    def __post_init__(self) -> None:
        if self.length < 0 or self.dtype not in ("int64", "float32"):
            raise ValueError(f"{self}: length must be >= 0 and dtype 'int64' or 'float32'")


def decode_batch(
    payloads: Sequence[bytes], features: Mapping[str, FixedLenFeature]
) -> dict[str, np.ndarray]:
    """Decode serialized Examples straight into one array per feature, skipping Python lists.

    The wire walk is per record, but a feature's values are joined across the batch and decoded by
    a few numpy calls (varints vectorized), which is where the per-record cost would otherwise be.
    Features not named in `features` are ignored.

    Args:
      payloads: B serialized Examples.
      features: name -> FixedLenFeature(L, dtype).

    Returns:
      name -> int64 or float32 array [B, L].

    Raises:
      ExampleError: a payload is not a valid Example, lacks a feature, or has it with another type
        or number of values.
    """
    if not features:
        return {}
    names = list(features)
    # Gather each feature's (kind, data) across the batch with C-level itemgetter/zip: a Python loop
    # over rows x features would add ~1 us a record (7 features) to a ~12 us pipeline.
    get = operator.itemgetter(*names)
    try:
        parsed = [_parse_example(p if isinstance(p, bytes) else bytes(p)) for p in payloads]
        try:
            rows = [get(items) for items in parsed]
            if len(names) == 1:  # itemgetter of one name returns the item, not a 1-tuple
                rows = [(row,) for row in rows]
        except KeyError:  # (None, b"") marks the missing feature, for _repack to report
            rows = [tuple(items.get(name, (None, b"")) for name in names) for items in parsed]
        out: dict[str, np.ndarray] = {}
        multibyte: list[tuple[str, int, Sequence[bytes]]] = []
        for name, column in zip(names, zip(*rows) if rows else [() for _ in names]):
            spec = features[name]
            want = _INT64 if spec.dtype == "int64" else _FLOAT
            kinds, chunks = zip(*column) if column else ((), ())
            if kinds.count(want) != len(kinds):
                chunks = tuple(
                    data if kind == want else _repack(name, row, spec, kind, data)
                    for row, (kind, data) in enumerate(column)
                )
            data = b"".join(chunks)
            if want == _FLOAT:
                _check_counts(name, spec.length, [len(c) // 4 for c in chunks])
                out[name] = np.frombuffer(data, dtype="<f4").astype(np.float32)
            elif data.isascii():  # every value is one byte
                _check_counts(name, spec.length, list(map(len, chunks)))
                out[name] = np.frombuffer(data, dtype=np.uint8).astype(np.int64)
            else:
                multibyte.append((name, spec.length, chunks))
        if multibyte:
            out.update(_decode_multibyte(multibyte))
        return {name: out[name].reshape(len(payloads), features[name].length) for name in names}
    except (_Malformed, DecodeError) as e:
        message = f"a batch holds a payload that is not a valid tf.train.Example: {e}"
        raise ExampleError(message) from None


def _check_counts(name: str, length: int, counts: list[int]) -> None:
    if counts.count(length) != len(counts):
        row = next(r for r, count in enumerate(counts) if count != length)
        raise ExampleError(f"example {row} of the batch has {counts[row]} values for {name!r}, "
                           f"expected {length}")  # fmt: skip


def _decode_multibyte(columns: list[tuple[str, int, Sequence[bytes]]]) -> dict[str, np.ndarray]:
    """Decode the packed varints of several int64 features (name, length, per-row chunks) at once:
    numpy's cost here is mostly per call, so one pass over all of them beats one per feature."""
    all_chunks = [chunk for _, _, chunks in columns for chunk in chunks]
    values, last = _decode_varints(b"".join(all_chunks))
    bounds = np.cumsum([0, *map(len, all_chunks)])  # where each chunk starts, then the end
    # A varint must not run from one row's list into the next.
    chunk_ends = bounds[1:][bounds[1:] > bounds[:-1]] - 1
    if not last[chunk_ends].all():
        raise _Malformed("a packed int64 list ends inside a varint")
    counts = np.diff(np.concatenate(([0], np.cumsum(last)))[bounds]).tolist()
    out = {}
    start_chunk = start_value = 0
    for name, length, chunks in columns:
        _check_counts(name, length, counts[start_chunk : start_chunk + len(chunks)])
        out[name] = values[start_value : start_value + length * len(chunks)]
        start_chunk += len(chunks)
        start_value += length * len(chunks)
    return out


def _repack(name: str, row: int, spec: FixedLenFeature, kind: int | None, data: bytes) -> bytes:
    """The packed values of a feature `_parse_example` could not give packed, or ExampleError."""
    want = _INT64 if spec.dtype == "int64" else _FLOAT
    if kind == 0:
        return b""  # no kind set: empty
    if kind != -want:
        have = "lacks" if kind is None else f"stores as {_KIND_NAMES[abs(kind)]}"
        raise ExampleError(f"example {row} of the batch {have} feature {name!r}, which should be "
                           f"{_KIND_NAMES[want]} with {spec.length} values")  # fmt: skip
    # Unpacked or split lists (legal, rare): let upb decode them, then pack them.
    list_pb = _LIST_PB[want]
    packed = list_pb(value=list_pb.FromString(data).value).SerializeToString()
    return packed[_varint(packed, 1, len(packed))[1] :] if packed else b""


def _decode_varints(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """All the varints in `data` as int64 [num_values], and a bool mask [len(data)] of the bytes
    that end one. Vectorized by byte position: first every varint's first byte, then the second
    byte of those that have one, and so on (token ids take 1 to 3), a few numpy calls each."""
    a = np.frombuffer(data, dtype=np.uint8)
    last = a < 0x80
    if not last[-1]:
        raise _Malformed("a packed int64 list ends inside a varint")
    ends = np.flatnonzero(last)
    starts = np.empty_like(ends)
    starts[0] = 0
    np.add(ends[:-1], 1, out=starts[1:])
    num_extra = ends - starts  # bytes after the first
    if int(num_extra.max()) >= 10:
        raise _Malformed("a varint is longer than 10 bytes")
    low = (a & 0x7F).astype(np.uint64)
    values = low[starts]
    for k in range(1, int(num_extra.max()) + 1):
        sel = np.flatnonzero(num_extra >= k)
        # uint64 shifts drop bits past 64, as protobuf does; negatives come out two's complement.
        values[sel] |= low[starts[sel] + k] << np.uint64(7 * k)
    return values.view(np.int64), last


# ------------------------------------------------------------------------------------- writing


def _varint_bytes(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_BYTES_TYPES = (bytes, bytearray, memoryview, str)


def _as_bytes(v: bytes | bytearray | memoryview | str) -> bytes:
    return v.encode() if isinstance(v, str) else bytes(v)


def _encode_feature(key: str, value: Any) -> bytes:
    """A serialized Feature for one value: ints -> int64_list, floats -> float_list, bytes/str ->
    bytes_list; a numpy array's dtype decides (float32 array -> float_list even if empty)."""
    if isinstance(value, np.ndarray):
        dtype_kind = value.dtype.kind
        if dtype_kind in "iub":
            # uint64 goes as Python ints, so values past int64 are refused rather than wrapped.
            flat = value.ravel() if dtype_kind == "u" else value.ravel().astype(np.int64)
            kind, values = _INT64, flat.tolist()
        elif dtype_kind == "f":
            kind, values = _FLOAT, value.ravel()
        elif dtype_kind in "SU":
            kind, values = _BYTES, [_as_bytes(v) for v in value.ravel().tolist()]
        elif dtype_kind == "O":
            return _encode_feature(key, value.ravel().tolist())
        else:
            raise ExampleError(f"feature {key!r}: cannot encode a numpy array of dtype "
                               f"{value.dtype}; use an integer, floating or bytes dtype")
    else:
        if isinstance(value, (*_BYTES_TYPES, int, float, np.generic)):
            value = [value]  # a scalar is a list of one
        try:
            items = list(value)
        except TypeError:
            raise ExampleError(
                f"feature {key!r}: cannot encode {type(value).__name__} {value!r}; give a list "
                "of ints, floats or bytes/str, or a numpy array"
            ) from None
        if not items:
            return b""  # a Feature with no kind: TF's parser takes it as empty of any type
        if all(isinstance(v, (int, np.integer, np.bool_)) for v in items):
            kind, values = _INT64, [int(v) for v in items]
        elif all(isinstance(v, (int, float, np.integer, np.floating, np.bool_)) for v in items):
            kind, values = _FLOAT, items
        elif all(isinstance(v, _BYTES_TYPES) for v in items):
            kind, values = _BYTES, [_as_bytes(v) for v in items]
        else:
            types = sorted({type(v).__name__ for v in items})
            raise ExampleError(f"feature {key!r} mixes value types {types}; give values of one "
                               "type, or a numpy array whose dtype says which list to write")
    if kind == _FLOAT:
        with np.errstate(over="ignore"):  # out of float32 range -> inf, as TF's FloatList does
            chunk = np.asarray(values, dtype="<f4").tobytes()
        list_msg = b"\x0a" + _varint_bytes(len(chunk)) + chunk if chunk else b""
        return b"\x12" + _varint_bytes(len(list_msg)) + list_msg
    try:
        if kind == _INT64:
            return _FeaturePB(int64_list=_Int64ListPB(value=values)).SerializeToString()
        return _FeaturePB(bytes_list=_BytesListPB(value=values)).SerializeToString()
    except (ValueError, TypeError, EncodeError) as e:
        raise ExampleError(f"feature {key!r}: {e}; int64_list values must fit in int64") from None


def encode_example(features: Mapping[str, Any]) -> bytes:
    """Serialize a `tf.train.Example` the way TensorFlow does, map entries in the dict's order.

    Args:
      features: {name: values}; values are a list (or a scalar) of ints -> int64_list, of floats
        (ints allowed among them) -> float_list (stored as float32), of bytes/str -> bytes_list
        (str as UTF-8), or a numpy array, whose dtype decides (so `np.zeros(0, np.float32)` is an
        empty float_list). An empty list is a Feature with no kind set, which TF reads as empty.

    Returns:
      The serialized Example.

    Raises:
      ExampleError: a value of mixed or unsupported type, or an int outside int64.
    """
    parts = []
    for key, value in features.items():
        if not isinstance(key, str):
            raise ExampleError(f"feature names must be str, got {key!r}")
        key_bytes = key.encode()
        feature = _encode_feature(key, value)
        # TF writes both fields of a map entry even when they are empty.
        entry = (
            b"\x0a" + _varint_bytes(len(key_bytes)) + key_bytes
            + b"\x12" + _varint_bytes(len(feature)) + feature
        )  # fmt: skip
        parts += (b"\x0a", _varint_bytes(len(entry)), entry)
    body = b"".join(parts)
    return b"\x0a" + _varint_bytes(len(body)) + body


class TFRecordWriter:
    """Writes records to one TFRecord file through fsspec; use as a context manager.

    The file is written in place (not atomically): a reader that opens it before `close()` sees a
    truncated file, which `TFRecordReader` reports as such.

    Args:
      url: the file to create or overwrite.
      compression: "GZIP", "" (none), or None: GZIP if the name ends in ".gz".
      storage_options: as `TFRecordReader`'s.
    """

    url: str
    compression: str
    num_records: int

    def __init__(
        self,
        url: str | os.PathLike[str],
        compression: str | None = None,
        *,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.url = os.fspath(url)
        mode = _read_compression(compression)
        if mode is None:
            mode = "GZIP" if self.url.endswith(".gz") else ""
        self.compression = mode
        self.num_records = 0
        fs, path = _url_to_fs(self.url, storage_options)
        fs.makedirs(fs._parent(path), exist_ok=True)
        self._file: Any = fs.open(path, "wb")
        self._out: Any = self._file
        if self.compression == "GZIP":
            # Level 6 is zlib's default, which TF uses; mtime=0 and no file name in the header keep
            # the output reproducible.
            self._out = gzip.GzipFile(
                filename="", mode="wb", fileobj=self._file, compresslevel=6, mtime=0
            )

    def write(self, payload: bytes) -> None:
        """Append one record with `payload` as its data."""
        length = _U64.pack(len(payload))
        self._out.write(
            length + _U32.pack(masked_crc32c(length)) + payload + _U32.pack(masked_crc32c(payload))
        )
        self.num_records += 1

    def write_example(self, features: Mapping[str, Any]) -> None:
        """Append one `encode_example(features)` record."""
        self.write(encode_example(features))

    def close(self) -> None:
        if self._out is not self._file:
            self._out.close()
        self._file.close()

    def __enter__(self) -> TFRecordWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def write_examples(
    url: str | os.PathLike[str],
    examples: Iterable[Mapping[str, Any]],
    compression: str | None = None,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> int:
    """Write each example (see `encode_example`) as a record of a new TFRecord file.

    Args:
      url: the file, anywhere fsspec writes.
      examples: dicts of feature name -> values.
      compression: "GZIP", "" (none), or None: GZIP if `url` ends in ".gz".
      storage_options: as `TFRecordReader`'s.

    Returns:
      The number of records written.

    Raises:
      ExampleError: a value that cannot be encoded.
    """
    with TFRecordWriter(url, compression, storage_options=storage_options) as writer:
        for example in examples:
            writer.write_example(example)
    return writer.num_records
