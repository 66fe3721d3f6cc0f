"""Pretraining-data read throughput from GCS: MB/s and records/s to stream a TFRecord file from a
GCS emulator through gcsfs, check its CRCs and decode its tf.train.Examples with
jobs/data/tfrecord.py, next to reading the same file from local disk, and next to the `tfrecord`
PyPI package on the local file (it cannot read gs://).

The data is the original create_pretraining_data.py output (../shared/fixtures) replicated to
~50k records, uploaded to a `gcp-storage-emulator` this script starts on 127.0.0.1 (in memory).
The emulator is a single-threaded Python HTTP server on the same 2 cores, not GCS: the gs:// rows
measure our reader plus gcsfs plus a local HTTP round trip per block, a floor for what the reader
costs on top of real storage, not a GCS forecast. Each row runs --repeats times, interleaved, and
the best run counts.

Usage: python bench/tfrecord_gcs.py [--records 50000] [--block-size-mib 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

# Read when gcsfs is imported: "true" selects a filesystem class that classifies buckets over gRPC,
# which the emulator does not serve.
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"

import fsspec  # noqa: E402

from jobs.data.dataset import pretraining_features  # noqa: E402
from jobs.data.tfrecord import (  # noqa: E402
    DEFAULT_BLOCK_SIZE_BYTES,
    ReadStats,
    decode_batch,
    iter_examples,
    iter_records,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FIXTURE = SHARED / "fixtures" / "sample_text_wwmFalse.tfrecord"
BUCKET = "bench"
FEATURES = pretraining_features(max_seq_length=128, max_predictions_per_seq=20)


def start_emulator(log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A GCS emulator on a free port of 127.0.0.1 with bucket BUCKET, once it answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [sys.executable, "-m", "gcp_storage_emulator", "start", "--host=127.0.0.1",
            f"--port={port}", f"--default-bucket={BUCKET}", "--in-memory", "--quiet"]  # fmt: skip
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + 30
    while True:
        try:
            opener.open(f"{url}/storage/v1/b", timeout=1).close()
            return proc, url
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise SystemExit(f"the GCS emulator did not start:\n{log_path.read_text()}") from None
            time.sleep(0.05)


def ours_examples(url: str, block_size: int) -> int:
    """`iter_examples`: every record CRC-checked and decoded to a dict of lists."""
    return sum(1 for _ in iter_examples(url, block_size_bytes=block_size))


def ours_batches(url: str, block_size: int, batch_size: int = 32) -> int:
    """The trainer's path: CRC-checked records decoded a batch at a time into arrays."""
    stats = ReadStats()
    batch: list[bytes] = []
    num = 0
    for payload in iter_records(url, block_size_bytes=block_size, stats=stats):
        batch.append(payload)
        if len(batch) == batch_size:
            num += len(decode_batch(batch, FEATURES)["input_ids"])
            batch = []
    if batch:
        num += len(decode_batch(batch, FEATURES)["input_ids"])
    assert stats.num_retries == stats.num_skipped_records == 0
    return num


def peer_examples(path: str, block_size: int) -> int:
    """The `tfrecord` package: no CRC checks, decodes every feature to numpy."""
    from tfrecord.reader import tfrecord_loader

    description = {k: "float" if spec.dtype == "float32" else "int" for k, spec in FEATURES.items()}
    return sum(1 for _ in tfrecord_loader(path, None, description))


def timed(run: Callable[[], int]) -> tuple[int, float]:
    start = time.perf_counter()
    num = run()
    return num, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--block-size-mib", type=float, default=DEFAULT_BLOCK_SIZE_BYTES / 2**20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    block_size = int(args.block_size_mib * 2**20)
    try:
        import tfrecord  # noqa: F401

        has_peer = True
    except ImportError:
        has_peer = False

    fixture = FIXTURE.read_bytes()
    num_fixture = sum(1 for _ in iter_records(FIXTURE))
    copies = -(-args.records // num_fixture)
    num_records = copies * num_fixture
    tmp = Path(tempfile.mkdtemp())
    proc, endpoint = start_emulator(tmp / "emulator.log")
    try:
        fsspec.config.conf["gs"] = {"token": "anon", "endpoint_url": endpoint}
        local = tmp / "pretraining.tfrecord"
        local.write_bytes(fixture * copies)
        size_mb = local.stat().st_size / 1e6
        gs_url = f"gs://{BUCKET}/pretraining.tfrecord"
        fs = fsspec.filesystem("gs")
        _, upload_s = timed(lambda: fs.put_file(str(local), gs_url) or 0)
        assert fs.size(gs_url) == local.stat().st_size
        print(f"{num_records} records, {size_mb:.1f} MB (seq 128, 20 masked); block size "
              f"{block_size / 2**20:g} MiB; best of {args.repeats}; gcp-storage-emulator at "
              f"{endpoint} (upload {size_mb / upload_s:.0f} MB/s)")  # fmt: skip

        rows: list[tuple[str, Callable[[], int]]] = [
            ("ours gs://  iter_examples", lambda: ours_examples(gs_url, block_size)),
            ("ours gs://  iter_records + decode_batch", lambda: ours_batches(gs_url, block_size)),
            ("ours local  iter_examples", lambda: ours_examples(str(local), block_size)),
            ("ours local  iter_records + decode_batch", lambda: ours_batches(str(local), block_size)),
        ]
        if has_peer:
            rows.append(("peer local tfrecord_loader (no CRCs)", lambda: peer_examples(str(local), block_size)))
        best = {label: float("inf") for label, _ in rows}
        for _ in range(args.repeats):
            for label, run in rows:
                num, seconds = timed(run)
                assert num == num_records, (label, num)
                best[label] = min(best[label], seconds)

        print(f"{'read + check + decode':<42} {'MB/s':>7} {'records/s':>10}")
        for label, _ in rows:
            print(f"{label:<42} {size_mb / best[label]:>7.1f} {num_records / best[label]:>10,.0f}")
        if not has_peer:
            print("peer: the `tfrecord` package is not installed (pip install tfrecord)")
    finally:
        proc.kill()
        proc.wait(timeout=10)
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
