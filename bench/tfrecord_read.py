"""Pretraining-data read throughput: records/s to read a TFRecord file, check it, decode its
tf.train.Examples and collate batches of numpy arrays of the 7 BERT pretraining features, ours
(jobs/data/tfrecord.py) vs the `tfrecord` PyPI package, in one run. Target: ours >= 2x the peer.

The data is the original create_pretraining_data.py output (../shared/fixtures) replicated to
~50k records in a temp dir. Ours checks both CRCs of every record; the peer's reader has no CRC
checking at all (tfrecord.reader.tfrecord_iterator reads the CRC fields and ignores them), so it
does strictly less work. Each pipeline runs --repeats times, interleaved, and the best run counts
(the machine may be shared). Also printed: our dict-of-lists path (`iter_examples`), and
`decode_example` against a plain upb decode of the same records (the reason it is hand-written).

Usage: python bench/tfrecord_read.py [--records 50000] [--batch-size 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from jobs.data.dataset import pretraining_features  # noqa: E402
from jobs.data.tfrecord import (
    PROTO_CLASSES,
    ReadStats,
    decode_batch,
    decode_example,
    iter_examples,
    iter_records,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FIXTURE = SHARED / "fixtures" / "sample_text_wwmFalse.tfrecord"
FEATURES = pretraining_features(max_seq_length=128, max_predictions_per_seq=20)
Batches = Iterator[dict[str, np.ndarray]]


def ours(path: str, batch_size: int) -> Batches:
    """The trainer's path: CRC-checked records, decoded a batch at a time into arrays."""
    stats = ReadStats()
    batch: list[bytes] = []
    for payload in iter_records(path, stats=stats):
        batch.append(payload)
        if len(batch) == batch_size:
            yield decode_batch(batch, FEATURES)
            batch = []
    if batch:
        yield decode_batch(batch, FEATURES)
    assert stats.num_skipped_records == stats.num_resyncs == 0


def ours_lists(path: str, batch_size: int) -> Batches:
    """The general path: dicts of Python lists per example, stacked by numpy."""
    batch: list[dict] = []
    for example in iter_examples(path):
        batch.append(example)
        if len(batch) == batch_size:
            yield {k: np.array([e[k] for e in batch], dtype=_dtype(k)) for k in FEATURES}
            batch = []
    if batch:
        yield {k: np.array([e[k] for e in batch], dtype=_dtype(k)) for k in FEATURES}


def peer(path: str, batch_size: int) -> Batches:
    from tfrecord.reader import tfrecord_loader

    description = {k: "float" if spec.dtype == "float32" else "int" for k, spec in FEATURES.items()}
    batch: list[dict] = []
    for example in tfrecord_loader(path, None, description):
        batch.append(example)
        if len(batch) == batch_size:
            yield {k: np.stack([e[k] for e in batch]) for k in FEATURES}
            batch = []
    if batch:
        yield {k: np.stack([e[k] for e in batch]) for k in FEATURES}


def _dtype(name: str) -> type:
    return np.float32 if FEATURES[name].dtype == "float32" else np.int64


def _records_per_s(pipeline: Callable[[str, int], Batches], path: str, batch_size: int) -> float:
    start = time.perf_counter()
    num = sum(len(b["input_ids"]) for b in pipeline(path, batch_size))
    return num / (time.perf_counter() - start)


def _decode_per_s(decode: Callable[[bytes], object], payloads: list[bytes]) -> float:
    start = time.perf_counter()
    for payload in payloads:
        decode(payload)
    return len(payloads) / (time.perf_counter() - start)


def _upb_decode(payload: bytes) -> dict[str, list]:
    """What the obvious protobuf-based decoder does (upb backend)."""
    example = PROTO_CLASSES["Example"].FromString(payload)
    out = {}
    for key, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        out[key] = list(getattr(feature, kind).value) if kind else []
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    try:
        import tfrecord  # noqa: F401
    except ImportError:
        raise SystemExit("the peer is missing: pip install tfrecord") from None
    from google.protobuf.internal import api_implementation

    import google_crc32c

    fixture = FIXTURE.read_bytes()
    num_fixture = sum(1 for _ in iter_records(FIXTURE))
    copies = -(-args.records // num_fixture)
    tmp = tempfile.mkdtemp()
    try:
        path = str(Path(tmp) / "pretraining.tfrecord")
        with open(path, "wb") as f:
            for _ in range(copies):
                f.write(fixture)
        num_records = copies * num_fixture
        print(f"python {platform.python_version()}, numpy {np.__version__}, protobuf backend "
              f"{api_implementation.Type()}, google_crc32c {google_crc32c.implementation}; "
              f"{num_records} records ({Path(path).stat().st_size / 2**20:.1f} MiB, seq 128, 20 "
              f"masked), batch {args.batch_size}, best of {args.repeats}")  # fmt: skip

        # Same arrays out of both, before timing anything.
        a, b = next(ours(path, args.batch_size)), next(peer(path, args.batch_size))
        for k in FEATURES:
            assert a[k].dtype == b[k].dtype and (a[k] == b[k]).all(), k

        pipelines = {"ours": ours, "ours_lists": ours_lists, "peer": peer}
        best = dict.fromkeys(pipelines, 0.0)
        for _ in range(args.repeats):
            for name, pipeline in pipelines.items():
                best[name] = max(best[name], _records_per_s(pipeline, path, args.batch_size))
        print(f"{'read + decode + collate':<48} {'records/s':>10} {'vs peer':>8}")
        rows = [
            ("ours: iter_records + decode_batch (CRCs)", best["ours"]),
            ("ours: iter_examples + np.array (CRCs)", best["ours_lists"]),
            ("peer: tfrecord.reader.tfrecord_loader (no CRCs)", best["peer"]),
        ]
        for label, rate in rows:
            print(f"{label:<48} {rate:>10,.0f} {rate / best['peer']:>7.2f}x")

        payloads = list(iter_records(FIXTURE)) * 200
        ours_rate = upb_rate = 0.0
        for _ in range(args.repeats):
            ours_rate = max(ours_rate, _decode_per_s(decode_example, payloads))
            upb_rate = max(upb_rate, _decode_per_s(_upb_decode, payloads))
        print(f"decode_example {ours_rate:,.0f}/s vs plain upb decode {upb_rate:,.0f}/s: "
              f"{ours_rate / upb_rate:.2f}x")  # fmt: skip
        ratio = best["ours"] / best["peer"]
        print(f"ratio ours/peer: {ratio:.2f}x (target >= 2x): {'OK' if ratio >= 2 else 'MISSED'}")
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
