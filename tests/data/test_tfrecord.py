"""Tests of jobs/data/tfrecord.py: the TFRecord framing, Example encoding and decoding against the
original BERT code's output, corrupt and truncated input, storage outages, fsspec streaming."""

from __future__ import annotations

import gzip
import io
import json
import logging
import math
import random
import re
import struct
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest
from fsspec.implementations.memory import MemoryFileSystem
from google.protobuf import unknown_fields

from jobs.data import tfrecord
from jobs.data.tfrecord import (
    ExampleError,
    FixedLenFeature,
    ReadStats,
    RetryPolicy,
    StorageError,
    TFRecordError,
    TFRecordReader,
    decode_batch,
    decode_example,
    encode_example,
    iter_examples,
    iter_records,
    masked_crc32c,
    write_examples,
)

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"
FIXTURE_NAMES = ["sample_text_wwmFalse", "sample_text_wwmTrue"]
PRETRAINING_FEATURES = {
    "input_ids": FixedLenFeature(128),
    "input_mask": FixedLenFeature(128),
    "segment_ids": FixedLenFeature(128),
    "masked_lm_positions": FixedLenFeature(20),
    "masked_lm_ids": FixedLenFeature(20),
    "masked_lm_weights": FixedLenFeature(20, "float32"),
    "next_sentence_labels": FixedLenFeature(1),
}
PB = tfrecord.PROTO_CLASSES


def fixture(name: str) -> tuple[Path, list[dict[str, Any]]]:
    path = FIXTURES / f"{name}.tfrecord"
    assert path.is_file(), f"fixture {path} is missing"
    return path, json.loads((FIXTURES / f"{name}.decoded.json").read_text())


def frame(payload: bytes) -> bytes:
    """A TFRecord record, framed independently of the module under test."""
    length = struct.pack("<Q", len(payload))
    return (
        length + struct.pack("<I", masked_crc32c(length))
        + payload + struct.pack("<I", masked_crc32c(payload))
    )  # fmt: skip


def small_examples(num: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        {
            "ids": [rng.randrange(30522) for _ in range(rng.randrange(1, 9))],
            "weights": [float(np.float32(rng.random())) for _ in range(3)],
            "text": [f"example {i}".encode()],
        }
        for i in range(num)
    ]


def memory_url(name: str = "data.tfrecord") -> str:
    return f"memory://test-{uuid.uuid4().hex}/{name}"


# ----------------------------------------------------------------- the original code's output


def test_masked_crc_matches_the_known_value() -> None:
    # CRC32C("123456789") is the standard check value 0xE3069283; masked: rotate right 15, + delta.
    crc = 0xE3069283
    assert masked_crc32c(b"123456789") == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixture_decodes_to_the_reference_json(name: str) -> None:
    path, expected = fixture(name)
    examples = list(iter_examples(path))
    assert len(examples) == len(expected)
    for i, (got, want) in enumerate(zip(examples, expected)):
        assert sorted(got) == sorted(want), f"record {i}"
        for key, want_values in want.items():
            got_values = got[key]
            assert got_values == want_values, f"record {i} feature {key}"
            kinds = {type(v) for v in got_values}
            assert kinds == ({float} if key == "masked_lm_weights" else {int}), (key, kinds)
            if key == "masked_lm_weights":  # floats exactly: the float32 bit patterns
                got_bits = np.asarray(got_values, np.float32).view(np.uint32)
                want_bits = np.asarray(want_values, np.float32).view(np.uint32)
                assert (got_bits == want_bits).all()


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_encoder_reproduces_tensorflows_bytes(name: str) -> None:
    # TF serializes the feature map in its hash map's order, one order per file (the two fixtures
    # differ); decode_example keeps that order and encode_example writes a dict in its order, so
    # re-encoding a decoded record gives TF's bytes back exactly.
    path, _ = fixture(name)
    payloads = list(iter_records(path))
    for i, payload in enumerate(payloads):
        assert encode_example(decode_example(payload)) == payload, f"record {i}"
        # ...and upb parses our bytes to the message TF wrote.
        assert PB["Example"].FromString(encode_example(decode_example(payload))) == (
            PB["Example"].FromString(payload)
        )


@pytest.mark.parametrize("name", FIXTURE_NAMES)
@pytest.mark.parametrize("compression", [None, "GZIP"])
def test_rewriting_the_fixture_round_trips(
    name: str, compression: str | None, tmp_path: Path
) -> None:
    path, expected = fixture(name)
    out = tmp_path / ("copy.tfrecord" + (".gz" if compression else ""))
    assert write_examples(out, iter_examples(path), compression=compression) == len(expected)
    assert list(iter_examples(out)) == expected
    if compression is None:  # the whole file, framing included, is TF's byte for byte
        assert out.read_bytes() == path.read_bytes()
    else:
        assert out.read_bytes()[:2] == b"\x1f\x8b"
        assert gzip.decompress(out.read_bytes()) == path.read_bytes()
    # Re-encoding from the JSON (another key order) reads back the same examples.
    out2 = tmp_path / "from_json.tfrecord"
    write_examples(out2, expected, compression=compression)
    assert list(iter_examples(out2)) == expected


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_decode_batch_matches_the_reference(name: str) -> None:
    path, expected = fixture(name)
    payloads = list(iter_records(path))
    for start in range(0, len(payloads), 13):
        batch = decode_batch(payloads[start : start + 13], PRETRAINING_FEATURES)
        rows = expected[start : start + 13]
        for key, spec in PRETRAINING_FEATURES.items():
            array = batch[key]
            assert array.dtype == (np.float32 if spec.dtype == "float32" else np.int64), key
            assert array.shape == (len(rows), spec.length), key
            assert (array == np.asarray([r[key] for r in rows], dtype=array.dtype)).all(), key


# -------------------------------------------------------- decoding: every encoding protobuf allows


INTS = [0, 1, 127, 128, 30521, 2**40, -1, -(2**63), 2**63 - 1]
FLOATS = [0.0, -0.0, 1.5, 1e-45, 3.4e38, math.inf, 0.1]


def random_example(rng: random.Random) -> dict[str, Any]:
    """Features of every kind, empty to 200 values, names up to 200 bytes (2-byte lengths)."""
    example: dict[str, Any] = {}
    for f in range(rng.randrange(0, 6)):
        name = rng.choice(["", "a", "input_ids", "ünï", "k" * 200, f"f{f}"])
        kind = rng.randrange(4)
        n = rng.choice([0, 1, 3, 70, 200])
        if kind == 0:
            example[name] = np.array([rng.choice(INTS) for _ in range(n)], dtype=np.int64)
        elif kind == 1:
            example[name] = np.array([rng.choice(FLOATS) for _ in range(n)], dtype=np.float32)
        elif kind == 2:
            values = [rng.randbytes(rng.choice([0, 3, 300])) for _ in range(n)]
            example[name] = np.array(values, dtype=object)
        else:
            example[name] = []
    return example


def as_upb_values(payload: bytes) -> dict[str, list[Any]]:
    message = PB["Example"].FromString(payload)
    out = {}
    for key, feature in message.features.feature.items():
        kind = feature.WhichOneof("kind")
        out[key] = list(getattr(feature, kind).value) if kind else []
    return out


def float_bits(values: list[Any]) -> list[Any]:
    return [struct.pack("<f", v) if isinstance(v, float) else v for v in values]


def assert_same_values(ours: dict[str, list[Any]], upb: dict[str, list[Any]]) -> None:
    assert sorted(ours) == sorted(upb)
    for key in upb:
        assert float_bits(ours[key]) == float_bits(upb[key]), key


def unknown_field(rng: random.Random) -> bytes:
    number = rng.choice([4, 5, 15, 16, 1000])
    wire_type = rng.choice([0, 1, 2, 5])
    tag = tfrecord._varint_bytes(number << 3 | wire_type)
    body = {0: b"\x96\x01", 1: bytes(8), 2: b"\x03abc", 5: bytes(4)}[wire_type]
    return tag + body


LIST_CLASS_NAMES = {"bytes_list": "BytesList", "float_list": "FloatList", "int64_list": "Int64List"}


def reencode_noncanonically(payload: bytes, rng: random.Random) -> bytes:
    """The same Example, serialized the ways other writers may: unpacked lists, lists split in
    two, unknown fields, features split across two Features fields."""
    v = tfrecord._varint_bytes
    entries = []
    for key, feature in PB["Example"].FromString(payload).features.feature.items():
        kind = feature.WhichOneof("kind")
        values = list(getattr(feature, kind).value) if kind else []
        if kind == "int64_list" and rng.random() < 0.5:
            body = b"".join(b"\x08" + v(x & (2**64 - 1)) for x in values)  # unpacked varints
        elif kind == "float_list" and rng.random() < 0.5:
            body = b"".join(b"\x0d" + struct.pack("<f", x) for x in values)  # unpacked fixed32
        elif kind and len(values) > 1 and rng.random() < 0.5:  # one list as two merged pieces
            cls = PB[LIST_CLASS_NAMES[kind]]
            halves = (values[: len(values) // 2], values[len(values) // 2 :])
            body = b"".join(cls(value=vs).SerializeToString() for vs in halves)
        else:
            body = getattr(feature, kind).SerializeToString() if kind else b""
        if rng.random() < 0.3:
            body += unknown_field(rng)
        tag = {"bytes_list": b"\x0a", "float_list": b"\x12", "int64_list": b"\x1a", None: b""}[kind]
        feature_bytes = tag + v(len(body)) + body if kind else b""
        if rng.random() < 0.2:
            feature_bytes = unknown_field(rng) + feature_bytes
        key_bytes = key.encode()
        entry = b"\x0a" + v(len(key_bytes)) + key_bytes + b"\x12" + v(len(feature_bytes))
        entries.append(b"\x0a" + v(len(entry) + len(feature_bytes)) + entry + feature_bytes)
    split = rng.randrange(len(entries) + 1)
    parts = [b"".join(entries[:split]), b"".join(entries[split:])]
    trailer = unknown_field(rng) if rng.random() < 0.3 else b""
    return b"".join(b"\x0a" + v(len(p)) + p for p in parts) + trailer


def test_decoder_agrees_with_protobuf_on_random_examples() -> None:
    rng = random.Random(1)
    for _ in range(300):
        example = random_example(rng)
        payload = encode_example(example)
        # We and upb read our encoding as what we meant...
        meant = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in example.items()}
        assert_same_values(decode_example(payload), meant)
        assert_same_values(as_upb_values(payload), meant)
        # ...our encoding is TF's (upb's) serialization, map order aside (an empty typed list
        # decodes to [], which re-encodes untyped, so those are left out)...
        upb_bytes = PB["Example"].FromString(payload).SerializeToString(deterministic=True)
        if all(len(v) for v in example.values()):
            assert encode_example(decode_example(upb_bytes)) == upb_bytes
        # ...and every other valid encoding decodes the same, in both decoders.
        other = reencode_noncanonically(payload, rng)
        assert_same_values(decode_example(other), as_upb_values(other))
        if all(len(v) for v in example.values()):
            spec = {
                k: FixedLenFeature(len(v), "float32" if v.dtype == np.float32 else "int64")
                for k, v in example.items() if v.dtype != object
            }  # fmt: skip
            a, b = decode_batch([payload, other], spec), decode_batch([other, payload], spec)
            for k in spec:
                assert a[k].tobytes() == b[k].tobytes() == np.stack([example[k]] * 2).tobytes(), k


def test_duplicate_keys_and_oneof_follow_protobuf() -> None:
    v = tfrecord._varint_bytes

    def entry(key: bytes, feature: bytes) -> bytes:
        e = b"\x0a" + v(len(key)) + key + b"\x12" + v(len(feature)) + feature
        return b"\x0a" + v(len(e)) + e

    ints = PB["Feature"](int64_list=PB["Int64List"](value=[1, 2])).SerializeToString()
    floats = PB["Feature"](float_list=PB["FloatList"](value=[0.5])).SerializeToString()
    # "a" twice: the later entry wins; "c": a Feature with int64, float, int64 lists: the last wins.
    body = entry(b"a", ints) + entry(b"b", ints) + entry(b"a", floats)
    body += entry(b"c", ints + floats + ints)
    # "d": an unknown fixed64 field (whose bytes would read as an overlong varint) before the list.
    body += entry(b"d", b"\x09" + b"\xff" * 8 + ints)
    payload = b"\x0a" + v(len(body)) + body
    assert_same_values(decode_example(payload), as_upb_values(payload))
    assert decode_example(payload) == {"a": [0.5], "b": [1, 2], "c": [1, 2], "d": [1, 2]}


def entry_with_unknown_fields(payload: bytes) -> bool:
    """Whether upb parked a map entry as an unknown field of Features: upb does that with an entry
    holding unknown fields (so that closed-enum values round-trip), where the protobuf spec and
    C++ parse the entry, skipping the unknown field, as we do."""
    features = PB["Example"].FromString(payload).features
    return len(unknown_fields.UnknownFieldSet(features)) > 0


def test_malformed_payloads_raise_example_error_only() -> None:
    rng = random.Random(2)
    path, _ = fixture("sample_text_wwmFalse")
    payloads = list(iter_records(path))[:5]
    payloads += [encode_example(random_example(rng)) for _ in range(20)]
    for i, payload in enumerate(payloads):
        cuts = [payload[:n] for n in range(len(payload))]
        flips = []
        for _ in range(40):
            b = bytearray(payload)
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            flips.append(bytes(b))
        for bad in cuts + flips:
            try:
                ours = decode_example(bad)
            except ExampleError:
                ours = None
            if i < 5:  # a fixture record: decode_batch agrees, or refuses what has other shapes
                try:
                    batch = decode_batch([bad], PRETRAINING_FEATURES)
                except ExampleError:
                    pass
                else:
                    assert ours is not None
                    assert {k: a[0].tolist() for k, a in batch.items()} == {
                        k: ours[k] for k in PRETRAINING_FEATURES
                    }  # fmt: skip
            if ours is None:
                continue  # (upb accepts a few of these: it skips groups, which we reject)
            if not entry_with_unknown_fields(bad):
                assert_same_values(ours, as_upb_values(bad))
    with pytest.raises(ExampleError, match="not a valid tf.train.Example"):
        decode_example(b"\x0a\x05\x0a\x03")


def test_decode_batch_rejects_missing_and_mistyped_features() -> None:
    good = encode_example({"x": [1, 2], "y": [0.5]})
    with pytest.raises(ExampleError, match="example 1 of the batch lacks feature 'z'"):
        decode_batch([encode_example({"z": [1]}), good], {"z": FixedLenFeature(1)})
    with pytest.raises(ExampleError, match="stores as int64_list feature 'x', which should be"):
        decode_batch([good], {"x": FixedLenFeature(2, "float32")})
    with pytest.raises(ExampleError, match="example 1 of the batch has 3 values for 'x', expected"):
        decode_batch([good, encode_example({"x": [1, 2, 300]})], {"x": FixedLenFeature(2)})
    with pytest.raises(ExampleError, match="has 1 values for 'x'"):
        decode_batch([encode_example({"x": [300]}), good], {"x": FixedLenFeature(2)})
    assert decode_batch([], {"x": FixedLenFeature(2)})["x"].shape == (0, 2)


# ------------------------------------------------------------------------------------ encoding


def test_value_types_on_write() -> None:
    example = {
        "ints": [1, -2, 2**63 - 1],
        "bools": [True, False],
        "floats": [0.1, 2],
        "strs": ["héllo", b"raw"],
        "scalar": 7,
        "f32": np.array([1, 2], dtype=np.float32),  # explicitly a float_list despite int values
        "i32": np.array([[1, 2], [3, 4]], dtype=np.int32),
        "u8": np.array([255], dtype=np.uint8),
        "empty_floats": np.zeros(0, np.float32),
        "untyped_empty": [],
    }
    message = PB["Example"].FromString(encode_example(example)).features.feature
    kinds = {k: message[k].WhichOneof("kind") for k in example}
    assert kinds == {
        "ints": "int64_list", "bools": "int64_list", "floats": "float_list", "strs": "bytes_list",
        "scalar": "int64_list", "f32": "float_list", "i32": "int64_list", "u8": "int64_list",
        "empty_floats": "float_list", "untyped_empty": None,
    }  # fmt: skip
    assert decode_example(encode_example(example)) == {
        "ints": [1, -2, 2**63 - 1], "bools": [1, 0], "floats": [float(np.float32(0.1)), 2.0],
        "strs": ["héllo".encode(), b"raw"], "scalar": [7], "f32": [1.0, 2.0], "i32": [1, 2, 3, 4],
        "u8": [255], "empty_floats": [], "untyped_empty": [],
    }  # fmt: skip
    for bad in ({"x": [1, b"a"]}, {"x": [2**63]}, {"x": object()}, {1: [1]}, {"x": np.array([1j])}):
        with pytest.raises(ExampleError):
            encode_example(bad)  # type: ignore[arg-type]


# ------------------------------------------------------------------------ framing and corruption


def write_small_file(url: str, num: int = 4, compression: str | None = None) -> list[bytes]:
    examples = small_examples(num)
    write_examples(url, examples, compression=compression)
    return [encode_example(e) for e in examples]


def test_tiny_blocks_read_the_same_records(tmp_path: Path) -> None:
    path, _ = fixture("sample_text_wwmTrue")
    want = list(iter_records(path))
    for block in (1, 7, 12, 13, 1000):
        assert list(iter_records(path, block_size_bytes=block)) == want


@pytest.mark.parametrize("compression", ["", "GZIP"])
def test_truncation_at_every_offset(compression: str, tmp_path: Path) -> None:
    url = str(tmp_path / "small.tfrecord")
    payloads = write_small_file(url, 3, compression)
    data = Path(url).read_bytes()
    boundaries = {0}
    for p in payloads:
        boundaries.add(max(boundaries) + 16 + len(p))
    cut_path = tmp_path / "cut.tfrecord"
    for n in range(len(data)):
        cut_path.write_bytes(data[:n])
        clean = n in boundaries if compression == "" else n == 0  # an empty file is a valid one
        got: list[bytes] = []
        with pytest.raises(TFRecordError, match="truncated") if not clean else nullcontext():
            for payload in iter_records(cut_path, block_size_bytes=5):
                got.append(payload)
        assert got == payloads[: len(got)], n
        stats = ReadStats()
        skipped = list(iter_records(cut_path, on_corrupt="skip", stats=stats, block_size_bytes=5))
        assert skipped == got, n
        assert stats.num_truncated_files == (0 if clean else 1), n
        if compression == "":
            assert len(got) == max(i for i, b in enumerate(sorted(boundaries)) if b <= n), n


def test_corruption_error_names_file_record_offset_and_fix(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = str(tmp_path / "bad.tfrecord")
    payloads = write_small_file(url, 3)
    data = bytearray(Path(url).read_bytes())
    second = 16 + len(payloads[0])
    data[second + 12 + 2] ^= 0xFF  # inside record 1's payload
    Path(url).write_bytes(bytes(data))
    with pytest.raises(TFRecordError) as info:
        list(iter_records(url))
    message = str(info.value)
    assert url in message and "record 1" in message and f"byte offset {second}" in message
    assert "on_corrupt='skip'" in message and "re-create" in message
    assert (info.value.url, info.value.record_index, info.value.offset) == (url, 1, second)
    assert isinstance(info.value, ValueError)
    stats = ReadStats()
    with caplog.at_level(logging.WARNING, logger=tfrecord.__name__):
        assert list(iter_records(url, on_corrupt="skip", stats=stats)) == [payloads[0], payloads[2]]
    assert stats.num_skipped_records == 1 and stats.num_records == 2
    (record,) = caplog.records
    assert f"{url}: record 1 at byte offset {second}" in record.getMessage()
    assert stats.as_metrics()["data/num_skipped_records"] == 1


def test_single_byte_flips_lose_only_the_damaged_record(tmp_path: Path) -> None:
    url = str(tmp_path / "flip.tfrecord")
    payloads = write_small_file(url, 6)
    data = Path(url).read_bytes()
    starts = [0]
    for p in payloads:
        starts.append(starts[-1] + 16 + len(p))
    rng = random.Random(3)
    bad = tmp_path / "flipped.tfrecord"
    for offset in list(range(0, 40)) + rng.sample(range(len(data)), 60):
        flipped = bytearray(data)
        flipped[offset] ^= 1 << rng.randrange(8)
        bad.write_bytes(bytes(flipped))
        damaged = max(i for i, s in enumerate(starts) if s <= offset)
        with pytest.raises(TFRecordError):
            list(iter_records(bad))
        for block in (3, 1 << 20):
            stats = ReadStats()
            got = list(iter_records(bad, on_corrupt="skip", stats=stats, block_size_bytes=block))
            assert got == payloads[:damaged] + payloads[damaged + 1 :], (offset, block)
            in_length = offset - starts[damaged] < 12
            counts = (stats.num_resyncs, stats.num_skipped_records)
            assert counts == ((1, 0) if in_length else (0, 1))
            if in_length:
                assert stats.num_skipped_bytes == starts[damaged + 1] - starts[damaged]


def test_random_corruption_never_hangs_and_yields_only_real_records(tmp_path: Path) -> None:
    url = str(tmp_path / "many.tfrecord")
    payloads = write_small_file(url, 30)
    data = Path(url).read_bytes()
    rng = random.Random(4)
    bad = tmp_path / "bad.tfrecord"
    for trial in range(60):
        b = bytearray(data)
        for _ in range(rng.choice([1, 3, 20])):
            b[rng.randrange(len(b))] = rng.randrange(256)
        if trial % 3 == 0:  # a zeroed-out block, as a failing disk leaves
            start = rng.randrange(len(b))
            zeroed = b[start : start + rng.randrange(1, 300)]
            b[start : start + len(zeroed)] = bytes(len(zeroed))
        if trial % 5 == 0:
            b = b[: rng.randrange(len(b))]
        bad.write_bytes(bytes(b))
        got = list(iter_records(bad, on_corrupt="skip", block_size_bytes=rng.choice([16, 4096])))
        it = iter(payloads)
        assert all(any(g == p for p in it) for g in got), trial  # a subsequence of the originals


def test_resync_skips_a_zeroed_region(tmp_path: Path) -> None:
    url = str(tmp_path / "zeros.tfrecord")
    payloads = write_small_file(url, 5)
    data = bytearray(Path(url).read_bytes())
    start = 16 + len(payloads[0])
    end = start + 16 + len(payloads[1]) + 16 + len(payloads[2])
    data[start:end] = bytes(end - start)
    Path(url).write_bytes(bytes(data))
    stats = ReadStats()
    got = list(iter_records(url, on_corrupt="skip", stats=stats, block_size_bytes=8))
    assert got == [payloads[0], payloads[3], payloads[4]]
    assert (stats.num_resyncs, stats.num_skipped_bytes) == (1, end - start)


def test_a_payload_that_is_not_an_example(tmp_path: Path) -> None:
    url = str(tmp_path / "mixed.tfrecord")
    good = encode_example({"x": [1]})
    Path(url).write_bytes(frame(good) + frame(b"\x0a\x05junk") + frame(good))
    assert list(iter_records(url)) == [good, b"\x0a\x05junk", good]
    where = rf"record 1 at byte offset {16 + len(good)}.*on_corrupt='skip'"
    with pytest.raises(ExampleError, match=where):
        list(iter_examples(url))
    stats = ReadStats()
    assert list(iter_examples(url, "skip", stats=stats)) == [{"x": [1]}] * 2
    assert stats.num_skipped_records == 1


def test_empty_file_and_bad_arguments(tmp_path: Path) -> None:
    (tmp_path / "empty.tfrecord").write_bytes(b"")
    assert list(iter_records(tmp_path / "empty.tfrecord")) == []
    with pytest.raises(ValueError, match="on_corrupt"):
        TFRecordReader(tmp_path / "empty.tfrecord", on_corrupt="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ZLIB"):
        list(iter_records(tmp_path / "empty.tfrecord", compression="ZLIB"))
    with pytest.raises(FileNotFoundError):
        list(iter_records(tmp_path / "missing.tfrecord"))


# --------------------------------------------------------------------------- gzip and fsspec


def test_gzip_is_detected_by_content(tmp_path: Path) -> None:
    path, expected = fixture("sample_text_wwmFalse")
    gz = tmp_path / "data.tfrecord.gz"
    write_examples(gz, expected)  # ".gz" -> GZIP
    assert gz.read_bytes()[:2] == b"\x1f\x8b"
    renamed = tmp_path / "no_suffix.tfrecord"
    renamed.write_bytes(gz.read_bytes())
    for url in (gz, renamed):
        assert list(iter_examples(url)) == expected
        assert list(iter_examples(url, compression="GZIP")) == expected
    plain_named_gz = tmp_path / "plain.gz"
    write_examples(plain_named_gz, expected, compression="")
    assert list(iter_examples(plain_named_gz)) == expected
    with pytest.raises(TFRecordError, match="gzip"):
        list(iter_records(path, compression="GZIP"))
    # Corrupt compressed data: the records before it, then an error (or, skipping, a count).
    data = bytearray(gz.read_bytes())
    data[len(data) // 2] ^= 0xFF
    renamed.write_bytes(bytes(data))
    with pytest.raises(TFRecordError):
        list(iter_records(renamed))
    stats = ReadStats()
    got = list(iter_records(renamed, on_corrupt="skip", stats=stats))
    it = iter(list(iter_records(path)))
    assert all(any(g == p for p in it) for g in got)  # a subsequence of the real records
    assert stats.num_truncated_files + stats.num_skipped_records + stats.num_resyncs >= 1


def test_fsspec_urls_and_globs(tmp_path: Path) -> None:
    base = f"memory://globs-{uuid.uuid4().hex}"
    files = {}
    for name in ("b.tfrecord", "a.tfrecord", "c.tfrecord.gz", "sub/d.tfrecord"):
        files[name] = small_examples(2, seed=len(files))
        write_examples(f"{base}/{name}", files[name])
    names = ("a.tfrecord", "b.tfrecord", "c.tfrecord.gz", "sub/d.tfrecord")
    a, b, c, d = (files[name] for name in names)
    assert list(iter_examples(f"{base}/*.tfrecord*")) == a + b + c  # sorted, gzip detected
    assert list(iter_examples(f"{base}/**/d.tfrecord")) == d
    assert list(iter_examples([f"{base}/b.tfrecord", f"{base}/a.tfrecord"])) == b + a
    with pytest.raises(FileNotFoundError, match="no files match"):
        list(iter_examples(f"{base}/*.nothing"))
    local = tmp_path / "local.tfrecord"
    write_examples(local, files["a.tfrecord"])
    for url in (str(local), local, f"file://{local}", str(tmp_path / "l*.tfrecord")):
        assert list(iter_examples(url)) == files["a.tfrecord"]
    put(f"{base}/bad.tfrecord", bytes(20))
    with pytest.raises(TFRecordError) as info:
        list(iter_records(f"{base}/ba*.tfrecord"))
    assert "bad.tfrecord" in str(info.value) and str(info.value).startswith("memory://")


# A test double for a network outage: a memory filesystem whose files fail some reads, and whose
# globs fail some listings.
class FlakyMemoryFileSystem(MemoryFileSystem):
    protocol = ("flakymem",)
    store: dict[str, Any] = {}
    pseudo_dirs = [""]
    fail_from_offset = 0
    num_failures_left = 0
    num_glob_failures_left = 0
    error: Callable[[str], BaseException] = OSError
    reads: list[tuple[int, int]] = []  # (offset, bytes returned) of every read
    opens: list[dict[str, Any]] = []  # mode, block_size and the instance's storage options

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        return super()._strip_protocol(path.removeprefix("flakymem://"))

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        FlakyMemoryFileSystem.opens.append(
            {"mode": mode, "block_size": kwargs.get("block_size"), **self.storage_options}
        )
        f = super()._open(path, mode, **kwargs)
        return _FlakyFile(f) if mode == "rb" else f

    def glob(self, path: str, **kwargs: Any) -> Any:
        fs = FlakyMemoryFileSystem
        if fs.num_glob_failures_left:
            fs.num_glob_failures_left -= 1
            raise fs.error(f"simulated outage listing {path}")
        return super().glob(path, **kwargs)


class _FlakyFile(io.RawIOBase):
    def __init__(self, f: Any) -> None:
        self._f = f

    def read(self, size: int = -1) -> bytes:  # type: ignore[override]
        fs = FlakyMemoryFileSystem
        start = self._f.tell()
        if fs.num_failures_left and (size < 0 or start + size > fs.fail_from_offset):
            fs.num_failures_left -= 1
            raise fs.error(f"simulated outage reading at {start}")
        data = self._f.read(size)
        fs.reads.append((start, len(data)))
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()


fsspec.register_implementation("flakymem", FlakyMemoryFileSystem, clobber=True)


@pytest.fixture
def flaky() -> Iterator[type[FlakyMemoryFileSystem]]:
    fs = FlakyMemoryFileSystem
    fs.store.clear()
    fs.reads, fs.num_failures_left, fs.fail_from_offset, fs.error = [], 0, 0, OSError
    fs.opens, fs.num_glob_failures_left = [], 0
    yield fs
    fs.store.clear()


def put(url: str, data: bytes) -> None:
    with fsspec.open(url, "wb") as f:
        f.write(data)


def test_reading_streams_in_blocks(flaky: type[FlakyMemoryFileSystem]) -> None:
    examples = small_examples(20000)
    put("flakymem://big/data.tfrecord", b"".join(frame(encode_example(e)) for e in examples))
    size = fsspec.filesystem("flakymem").size("/big/data.tfrecord")
    assert size > 1 << 20
    records = iter_examples("flakymem://big/data.tfrecord", block_size_bytes=64 << 10)
    assert next(records) == examples[0]
    assert sum(n for _, n in flaky.reads) <= 12 + (64 << 10)  # 12 bytes to sniff gzip, one block
    assert list(records) == examples[1:]
    assert max(n for _, n in flaky.reads) <= 64 << 10
    assert sum(n for _, n in flaky.reads) == size


@pytest.mark.parametrize("compression", ["", "GZIP"])
@pytest.mark.parametrize("error", [OSError, ConnectionError, TimeoutError])
def test_transient_errors_are_retried_from_the_same_offset(
    flaky: type[FlakyMemoryFileSystem], error: type[BaseException], compression: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    url = "flakymem://outage/data.tfrecord"
    examples = small_examples(3000)
    write_examples(url, examples, compression=compression)
    sleeps: list[float] = []
    monkeypatch.setattr(tfrecord.time, "sleep", sleeps.append)
    flaky.fail_from_offset, flaky.num_failures_left, flaky.error = 20000, 4, error
    stats = ReadStats()
    retry = RetryPolicy(max_attempts=5, initial_backoff_s=0.5, jitter=False)
    got = list(iter_examples(url, retry=retry, stats=stats, block_size_bytes=8192))
    assert got == examples
    assert stats.num_retries == 4 and flaky.num_failures_left == 0
    assert sleeps == [0.5, 1.0, 2.0, 4.0]  # exponential backoff


def test_storage_error_after_the_last_attempt(
    flaky: type[FlakyMemoryFileSystem], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "flakymem://down/data.tfrecord"
    write_examples(url, small_examples(3000))
    monkeypatch.setattr(tfrecord.time, "sleep", lambda s: None)
    flaky.fail_from_offset, flaky.num_failures_left = 20000, 100
    got = []
    with pytest.raises(StorageError) as info:
        for example in iter_examples(url, retry=RetryPolicy(max_attempts=3), block_size_bytes=8192):
            got.append(example)
    assert got == small_examples(3000)[: len(got)] and got
    message, offset = str(info.value), info.value.offset
    assert offset <= 20000 < offset + 8192  # the read that crossed into the outage
    assert url in message and f"byte offset {offset}" in message and "3 times" in message
    assert (info.value.url, info.value.num_attempts) == (url, 3)
    assert isinstance(info.value.__cause__, OSError)


def test_missing_files_are_not_retried(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(tfrecord.time, "sleep", sleeps.append)
    for url in (memory_url(), str(tmp_path / "missing.tfrecord")):
        # Named in full: a backend's own error names only the path it asked for.
        with pytest.raises(FileNotFoundError, match=re.escape(url)) as info:
            list(iter_records(url))
        assert isinstance(info.value.__cause__, FileNotFoundError)
    assert sleeps == []


def test_reads_ask_the_backend_for_blocks_of_the_block_size(
    flaky: type[FlakyMemoryFileSystem],
) -> None:
    url = "flakymem://blocks/data.tfrecord"
    write_examples(url, small_examples(10))
    assert len(list(iter_records(url, block_size_bytes=8192))) == 10
    assert [o["block_size"] for o in flaky.opens if o["mode"] == "rb"] == [8192]


def test_storage_options_reach_the_filesystem(flaky: type[FlakyMemoryFileSystem]) -> None:
    url, options = "flakymem://options/data.tfrecord", {"flavour": "test"}
    write_examples(url, small_examples(3), storage_options=options)
    assert list(iter_examples(url, storage_options=options)) == small_examples(3)
    assert list(iter_records("flakymem://options/*.tfrecord", storage_options=options))
    assert len(list(TFRecordReader(url, storage_options=options))) == 3
    assert [o["flavour"] for o in flaky.opens] == ["test"] * 4
    ((fs, _, _),) = tfrecord.expand_urls("flakymem://options/*", storage_options=options)
    assert fs.storage_options == options


def test_gcs_gets_a_default_request_timeout(
    _gcs_client_settings: None, loopback_only: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(fsspec.config.conf, "gs", {"token": "anon"})
    url = "gs://bucket/data.tfrecord"

    def timeout(storage_options: dict[str, Any] | None = None) -> Any:
        return tfrecord._url_to_fs(url, storage_options)[0].requests_timeout

    assert timeout() == tfrecord.DEFAULT_GCS_REQUEST_TIMEOUT_S == 60
    assert timeout({"requests_timeout": 5}) == 5
    assert timeout({"requests_timeout": None}) is None  # the caller's choice
    monkeypatch.setitem(fsspec.config.conf, "gs", {"token": "anon", "requests_timeout": 7})
    assert timeout() == 7
    assert "requests_timeout" not in tfrecord._url_to_fs(memory_url(), None)[0].storage_options


def test_a_glob_listing_is_retried(
    flaky: type[FlakyMemoryFileSystem], monkeypatch: pytest.MonkeyPatch
) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(tfrecord.time, "sleep", sleeps.append)
    write_examples("flakymem://glob/a.tfrecord", small_examples(5))
    glob = "flakymem://glob/*.tfrecord"
    flaky.num_glob_failures_left = 2
    stats = ReadStats()
    retry = RetryPolicy(max_attempts=3, initial_backoff_s=0.5, jitter=False)
    assert len(list(iter_records(glob, retry=retry, stats=stats))) == 5
    assert stats.num_retries == 2 and sleeps == [0.5, 1.0]

    flaky.num_glob_failures_left = 3
    with pytest.raises(StorageError, match=re.escape(glob)) as info:
        list(iter_records(glob, retry=retry))
    assert (info.value.url, info.value.offset, info.value.num_attempts) == (glob, 0, 3)
    assert isinstance(info.value.__cause__, OSError)


def _aiohttp_response_error(status: int) -> BaseException:
    import aiohttp

    return aiohttp.ClientResponseError(None, (), status=status)  # type: ignore[arg-type]


def _backend_errors() -> list[Any]:
    import aiohttp
    import botocore.exceptions as boto
    from gcsfs.retry import HttpError

    return [
        pytest.param(boto.EndpointConnectionError(endpoint_url="x"), True, id="boto-endpoint"),
        pytest.param(boto.ReadTimeoutError(endpoint_url="x"), True, id="boto-read-timeout"),
        pytest.param(boto.ResponseStreamingError(error="reset"), True, id="boto-streaming"),
        pytest.param(boto.NoCredentialsError(), False, id="boto-no-credentials"),
        pytest.param(aiohttp.ClientPayloadError("cut"), True, id="aiohttp-payload"),
        pytest.param(_aiohttp_response_error(503), True, id="aiohttp-503"),
        pytest.param(_aiohttp_response_error(403), False, id="aiohttp-403"),
        pytest.param(HttpError({"code": 503, "message": "busy"}), True, id="gcsfs-503"),
        pytest.param(HttpError({"code": "429", "message": "slow"}), True, id="gcsfs-429-str"),
        pytest.param(HttpError({"code": 408, "message": "timeout"}), True, id="gcsfs-408"),
        pytest.param(HttpError({"code": 400, "message": "bad"}), False, id="gcsfs-400"),
        pytest.param(HttpError(), False, id="gcsfs-no-code"),
        pytest.param(ValueError("not storage"), False, id="value-error"),
        pytest.param(PermissionError("denied"), False, id="permission"),
    ]


@pytest.mark.parametrize(("error", "transient"), _backend_errors())
def test_backend_errors_that_are_transient(error: BaseException, transient: bool) -> None:
    assert RetryPolicy().is_transient(error) is transient


def test_a_backend_error_is_retried_from_the_same_offset(
    flaky: type[FlakyMemoryFileSystem], monkeypatch: pytest.MonkeyPatch
) -> None:
    import botocore.exceptions

    url = "flakymem://boto/data.tfrecord"
    examples = small_examples(3000)
    write_examples(url, examples)
    monkeypatch.setattr(tfrecord.time, "sleep", lambda s: None)

    def error(message: str) -> BaseException:
        return botocore.exceptions.EndpointConnectionError(endpoint_url=message)

    flaky.fail_from_offset, flaky.num_failures_left, flaky.error = 20000, 2, error
    stats = ReadStats()
    assert list(iter_examples(url, stats=stats, block_size_bytes=8192)) == examples
    assert stats.num_retries == 2


def test_backend_errors_are_recognized_without_importing_backends() -> None:
    code = (
        "import sys; from jobs.data.tfrecord import RetryPolicy; "
        "assert not RetryPolicy().is_transient(ValueError()); "
        "print(sorted(m for m in ('aiohttp', 'botocore', 'gcsfs', 's3fs') if m in sys.modules))"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                         check=True, timeout=60)  # fmt: skip
    assert out.stdout.strip() == "[]"


def test_retry_policy_backoff() -> None:
    policy = RetryPolicy(initial_backoff_s=1, backoff_multiplier=3, max_backoff_s=20)
    assert [policy.backoff_s(n) for n in range(1, 6)] == [1, 3, 9, 20, 20]
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
