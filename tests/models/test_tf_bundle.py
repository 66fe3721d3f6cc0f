"""Tests for models/tf_bundle.py: reading Google's BERT checkpoint fixture, writing bundles that are
byte-identical to TensorFlow's, and failing loudly (never hanging) on missing or corrupt files."""

from __future__ import annotations

import ast
import json
import random
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from models import tf_bundle
from models.tf_bundle import (
    CheckpointError,
    list_tf_checkpoint,
    read_tf_checkpoint,
    resolve_tf_checkpoint_prefix,
    write_tf_checkpoint,
)

FIXTURE_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "tf_checkpoint_small"
FIXTURE_PREFIX = FIXTURE_DIR / "bert_model.ckpt"
DATA_SUFFIX = ".data-00000-of-00001"


def expected_bert_shapes(config: dict[str, int]) -> dict[str, tuple[int, ...]]:
    """Every variable google-research/bert's BertModel + pretraining heads create, with its shape."""
    hidden, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    shapes: dict[str, tuple[int, ...]] = {
        "bert/embeddings/word_embeddings": (vocab, hidden),
        "bert/embeddings/position_embeddings": (config["max_position_embeddings"], hidden),
        "bert/embeddings/token_type_embeddings": (config["type_vocab_size"], hidden),
        "bert/embeddings/LayerNorm/beta": (hidden,),
        "bert/embeddings/LayerNorm/gamma": (hidden,),
        "bert/pooler/dense/kernel": (hidden, hidden),
        "bert/pooler/dense/bias": (hidden,),
        "cls/predictions/output_bias": (vocab,),
        "cls/predictions/transform/dense/kernel": (hidden, hidden),
        "cls/predictions/transform/dense/bias": (hidden,),
        "cls/predictions/transform/LayerNorm/beta": (hidden,),
        "cls/predictions/transform/LayerNorm/gamma": (hidden,),
        "cls/seq_relationship/output_weights": (2, hidden),
        "cls/seq_relationship/output_bias": (2,),
    }
    for layer in range(config["num_hidden_layers"]):
        base = f"bert/encoder/layer_{layer}"
        for dense, (fan_in, fan_out) in {
            "attention/self/query": (hidden, hidden),
            "attention/self/key": (hidden, hidden),
            "attention/self/value": (hidden, hidden),
            "attention/output/dense": (hidden, hidden),
            "intermediate/dense": (hidden, inter),
            "output/dense": (inter, hidden),
        }.items():
            shapes[f"{base}/{dense}/kernel"] = (fan_in, fan_out)
            shapes[f"{base}/{dense}/bias"] = (fan_out,)
        for norm in ("attention/output/LayerNorm", "output/LayerNorm"):
            shapes[f"{base}/{norm}/beta"] = (hidden,)
            shapes[f"{base}/{norm}/gamma"] = (hidden,)
    return shapes


@pytest.fixture
def fixture_copy(tmp_path: Path) -> Path:
    """A writable copy of the fixture checkpoint; returns its prefix."""
    for suffix in (".index", DATA_SUFFIX):
        shutil.copyfile(f"{FIXTURE_PREFIX}{suffix}", tmp_path / f"bert_model.ckpt{suffix}")
    return tmp_path / "bert_model.ckpt"


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


# --- the Google-format fixture ------------------------------------------------------------------


def test_fixture_has_every_bert_variable_with_the_config_shape() -> None:
    config = json.loads((FIXTURE_DIR / "bert_config.json").read_text())
    expected = expected_bert_shapes(config)
    listed = list_tf_checkpoint(FIXTURE_PREFIX)
    assert {name: shape for name, (_, shape) in listed.items()} == expected
    assert {dtype for dtype, _ in listed.values()} == {"float32"}
    assert list(listed) == sorted(listed)  # the index is ordered by name

    tensors = read_tf_checkpoint(FIXTURE_PREFIX)
    assert list(tensors) == list(listed)
    for name, array in tensors.items():
        assert array.dtype == np.float32 and array.shape == expected[name], name
        assert array.flags.writeable, name


def test_fixture_values_are_a_fresh_bert_init() -> None:
    # The fixture is an untrained model: LayerNorm is (gamma 1, beta 0), biases 0, and weights come
    # from truncated_normal(stddev=initializer_range=0.5), which cuts at 2 stddev. Reading the wrong
    # bytes, byte order or dtype would break these.
    tensors = read_tf_checkpoint(FIXTURE_PREFIX)
    for name, array in tensors.items():
        if name.endswith("gamma"):
            np.testing.assert_array_equal(array, 1.0, err_msg=name)
        elif name.endswith(("beta", "bias")):
            np.testing.assert_array_equal(array, 0.0, err_msg=name)
        else:
            assert np.all(np.abs(array) <= 1.0), name
            assert 0.3 < float(array.std()) < 0.6, name


def test_rewriting_the_fixture_is_byte_identical(tmp_path: Path) -> None:
    # Same tensors in -> the same .index (SSTable options, separators, proto bytes, CRCs, footer)
    # and the same .data (sorted order, no padding) as TensorFlow's Saver wrote.
    write_tf_checkpoint(tmp_path / "rewritten", read_tf_checkpoint(FIXTURE_PREFIX))
    for suffix in (".index", DATA_SUFFIX):
        written = Path(f"{tmp_path / 'rewritten'}{suffix}").read_bytes()
        assert written == Path(f"{FIXTURE_PREFIX}{suffix}").read_bytes(), suffix
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rewritten" + DATA_SUFFIX, "rewritten.index"]


def test_written_order_does_not_depend_on_dict_order(tmp_path: Path) -> None:
    tensors = read_tf_checkpoint(FIXTURE_PREFIX)
    write_tf_checkpoint(tmp_path / "reversed", dict(reversed(list(tensors.items()))))
    assert Path(f"{tmp_path / 'reversed'}.index").read_bytes() == Path(f"{FIXTURE_PREFIX}.index").read_bytes()


# --- prefix resolution --------------------------------------------------------------------------


def test_resolve_accepts_prefix_directory_and_either_file() -> None:
    for path in (
        FIXTURE_PREFIX,
        str(FIXTURE_PREFIX),
        FIXTURE_DIR,  # via its `checkpoint` state file
        Path(f"{FIXTURE_PREFIX}.index"),
        Path(f"{FIXTURE_PREFIX}{DATA_SUFFIX}"),
    ):
        assert resolve_tf_checkpoint_prefix(path) == FIXTURE_PREFIX, path
    assert list(read_tf_checkpoint(FIXTURE_DIR)) == list(read_tf_checkpoint(FIXTURE_PREFIX))


def test_resolve_directory_without_state_file_and_with_stale_absolute_path(fixture_copy: Path) -> None:
    directory = fixture_copy.parent
    assert resolve_tf_checkpoint_prefix(directory) == fixture_copy  # the single *.index
    # Older Savers store absolute paths; a moved directory still resolves to the file beside it.
    (directory / "checkpoint").write_text('model_checkpoint_path: "/gone/elsewhere/bert_model.ckpt"\n')
    assert resolve_tf_checkpoint_prefix(directory) == fixture_copy
    (directory / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-99"\n')
    with pytest.raises(CheckpointError, match="model.ckpt-99"):
        resolve_tf_checkpoint_prefix(directory)


def test_resolve_reports_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"no 'checkpoint' state file and no \*\.index"):
        resolve_tf_checkpoint_prefix(tmp_path)
    with pytest.raises(CheckpointError, match=r"model\.ckpt\.index: no such file"):
        resolve_tf_checkpoint_prefix(tmp_path / "model.ckpt")
    write_tf_checkpoint(tmp_path / "a", {"x": np.zeros(1)})
    write_tf_checkpoint(tmp_path / "b", {"x": np.zeros(1)})
    with pytest.raises(CheckpointError, match="several checkpoints"):
        resolve_tf_checkpoint_prefix(tmp_path)


def test_resolve_unescapes_the_state_file(tmp_path: Path) -> None:
    directory = tmp_path / 'dir "quoted"'
    write_tf_checkpoint(directory / "m\u00e9.ckpt", {"x": np.zeros(1)})
    # Text-format protos C-escape quotes and write non-ASCII bytes as octal escapes.
    (directory / "checkpoint").write_text(
        'model_checkpoint_path: "m\\303\\251.ckpt"\nall_model_checkpoint_paths: "m\\303\\251.ckpt"\n'
    )
    assert resolve_tf_checkpoint_prefix(directory) == directory / "m\u00e9.ckpt"


# --- writing and round trips --------------------------------------------------------------------


def test_round_trip_every_dtype_and_shape(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    tensors: dict[str, np.ndarray] = {
        "global_step": np.array(1234567890123, dtype=np.int64),
        "f32": rng.standard_normal((3, 4, 5)).astype(np.float32),
        "f64": rng.standard_normal(7),
        "f16": rng.standard_normal((2, 3)).astype(np.float16),
        "i8": np.array([-128, 0, 127], dtype=np.int8),
        "u8": np.arange(256, dtype=np.uint8),
        "i16": np.array([-3, 4], dtype=np.int16),
        "u16": np.array([65535], dtype=np.uint16),
        "i32": np.array([[-(2**31), 2**31 - 1]], dtype=np.int32),
        "u32": np.array([2**32 - 1], dtype=np.uint32),
        "u64": np.array([2**64 - 1], dtype=np.uint64),
        "bool": np.array([True, False, True]),
        "c64": np.array([1 + 2j], dtype=np.complex64),
        "c128": np.array([[3 - 4j]], dtype=np.complex128),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "big_endian": np.arange(6, dtype=">f4").reshape(2, 3),
        "transposed": np.arange(12, dtype=np.float32).reshape(3, 4).T,  # not C-contiguous
        "strings": np.array([[b"", b"abc"], [b"\x00\xff", "h\u00e9".encode()]], dtype=object),
        "unicode": np.array(["caf\u00e9", "x"]),
        "scalar_string": np.array(b"only"),
        "bert/\u00fcnicode/name": np.float32(2.5),
    }
    write_tf_checkpoint(tmp_path / "ckpt", tensors)
    restored = read_tf_checkpoint(tmp_path / "ckpt")
    assert list(restored) == sorted(tensors, key=lambda name: name.encode())
    for name, original in tensors.items():
        got = restored[name]
        assert got.shape == np.shape(original), name
        if name in ("strings", "scalar_string"):
            assert got.dtype == object and got.tolist() == np.asarray(original).tolist(), name
        elif name == "unicode":
            assert got.tolist() == [b"caf\xc3\xa9", b"x"]
        else:
            assert got.dtype == np.asarray(original).dtype.newbyteorder("="), name
            np.testing.assert_array_equal(got, original, err_msg=name)
    listed = list_tf_checkpoint(tmp_path / "ckpt")
    assert listed["strings"] == ("string", (2, 2))
    assert listed["global_step"] == ("int64", ())
    assert listed["bool"] == ("bool", (3,))


def test_write_replaces_an_existing_checkpoint_and_creates_directories(tmp_path: Path) -> None:
    prefix = tmp_path / "new" / "dirs" / "model.ckpt"
    write_tf_checkpoint(prefix, {"a": np.ones(100, np.float32)})
    write_tf_checkpoint(prefix, {"b": np.zeros(2, np.int32)})
    assert list_tf_checkpoint(prefix) == {"b": ("int32", (2,))}
    assert sorted(p.name for p in prefix.parent.iterdir()) == ["model.ckpt" + DATA_SUFFIX, "model.ckpt.index"]


def test_write_an_empty_checkpoint(tmp_path: Path) -> None:
    write_tf_checkpoint(tmp_path / "empty", {})
    assert read_tf_checkpoint(tmp_path / "empty") == {}


@pytest.mark.parametrize(
    ("tensors", "match"),
    [
        ({"": np.zeros(1)}, "invalid"),
        ({"t": np.array([1, "x"], dtype=object)}, "only bytes or str"),
        ({"t": np.array(["2020-01-01"], dtype="datetime64[D]")}, "no TensorFlow equivalent"),
    ],
)
def test_write_rejects_what_tensorflow_cannot_store(tmp_path: Path, tensors: dict, match: str) -> None:
    with pytest.raises(CheckpointError, match=match):
        write_tf_checkpoint(tmp_path / "bad", tensors)
    assert list(tmp_path.iterdir()) == []  # no temp files left behind


def _index_entries(table: bytes) -> list[tuple[bytes, tuple[int, int]]]:
    """(separator key, data block handle) for each data block of an SSTable."""
    footer = table[-48:]
    _, pos = tf_bundle._decode_handle(footer, 0, 40)
    index_handle, _ = tf_bundle._decode_handle(footer, pos, 40)
    index = tf_bundle._decode_block(tf_bundle._read_block(table, index_handle, "index"), "index")
    return [(key, tf_bundle._decode_handle(handle, 0, len(handle))[0]) for key, handle in index]


def test_many_variables_span_blocks_and_restart_points() -> None:
    # 300 keys with long shared prefixes, built with 4 KiB blocks, exercise prefix compression,
    # restart points, several data blocks and the index block's separator keys.
    items = [(b"", b"header")] + sorted(
        (f"bert/encoder/layer_{i // 16}/attention/self/w{i:03d}".encode(), bytes([i % 256]) * (20 + i % 60))
        for i in range(300)
    )
    table = tf_bundle._build_table(items, block_size=4096)
    assert tf_bundle._read_table(table) == items
    assert len(table) < sum(len(k) + len(v) for k, v in items)  # prefix compression happened

    index = _index_entries(table)
    blocks = []
    for _, handle in index:
        contents = tf_bundle._read_block(table, handle, "data")
        (num_restarts,) = struct.unpack_from("<I", contents, len(contents) - 4)
        blocks.append(tf_bundle._decode_block(contents, "data"))
        assert num_restarts == -(-len(blocks[-1]) // 16)  # one restart point per 16 keys
    assert len(blocks) >= 3
    for (separator, _), block, next_block in zip(index, blocks, blocks[1:] + [None]):
        assert block[-1][0] <= separator  # each index key bounds its block ...
        if next_block:
            assert separator < next_block[0][0]  # ... and stays below the next block's first key
    assert index[-1][0] == b"c"  # short successor of the last key "bert/..."


def test_many_variables_round_trip_across_default_blocks(tmp_path: Path) -> None:
    # With TensorFlow's 256 KiB blocks, 300 names with 1 KiB unshared tails need two data blocks.
    tensors = {f"v{i:03d}/{'x' * 1000}/{i}": np.full((2,), i, dtype=np.int32) for i in range(300)}
    tensors |= {f"shared/prefix/layer_{i}/kernel": np.float32(i) for i in range(40)}
    write_tf_checkpoint(tmp_path / "many", tensors)
    assert len(_index_entries(Path(f"{tmp_path / 'many'}.index").read_bytes())) == 2
    restored = read_tf_checkpoint(tmp_path / "many")
    assert list(restored) == sorted(tensors)
    for name, value in tensors.items():
        np.testing.assert_array_equal(restored[name], value)


def test_separators_follow_leveldb() -> None:
    assert tf_bundle._shortest_separator(b"abcd", b"abzz") == b"abd"
    assert tf_bundle._shortest_separator(b"abc", b"abd") == b"abc"  # no room between c and d
    assert tf_bundle._shortest_separator(b"abc", b"abcd") == b"abc"  # prefix: unchanged
    assert tf_bundle._shortest_separator(b"a\xff", b"b") == b"a\xff"
    assert tf_bundle._short_successor(b"cls/seq") == b"d"
    assert tf_bundle._short_successor(b"\xff\xffa") == b"\xff\xffb"
    assert tf_bundle._short_successor(b"\xff") == b"\xff"


# --- formats TensorFlow writes that the writer does not ---------------------------------------


def _bundle(
    prefix: Path, header: bytes, entries: dict[str, bytes], shards: dict[int, bytes], num_shards: int
) -> None:
    """Writes an index with `header` and `entries` (name -> BundleEntryProto bytes) and the shards."""
    items = [(b"", header)] + sorted((name.encode(), entry) for name, entry in entries.items())
    Path(f"{prefix}.index").write_bytes(tf_bundle._build_table(items))
    for shard, data in shards.items():
        Path(f"{prefix}.data-{shard:05d}-of-{num_shards:05d}").write_bytes(data)


def _entry(dtype: int, shape: tuple[int, ...], offset: int, data: bytes, shard: int = 0) -> bytes:
    crc = tf_bundle._mask(tf_bundle._crc32c(data))
    return tf_bundle._encode_entry(dtype, shape, offset, len(data), crc) + tf_bundle._varint_field(3, shard)


def _header(num_shards: int, big_endian: bool = False, min_consumer: int = 0) -> bytes:
    version = tf_bundle._varint_field(1, 1) + tf_bundle._varint_field(2, min_consumer)
    return (
        tf_bundle._varint_field(1, num_shards)
        + tf_bundle._varint_field(2, int(big_endian))
        + tf_bundle._message_field(3, version)
    )


def test_reads_bfloat16_big_endian_and_several_shards(tmp_path: Path) -> None:
    values = np.array([1.0, -2.5, 3.140625], dtype=np.float32)  # exactly representable in bfloat16
    bf16 = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    ints = np.array([1, -2], dtype="<i8").tobytes()
    _bundle(
        tmp_path / "ckpt",
        _header(num_shards=2),
        {
            "bf16": _entry(14, (3,), 0, bf16),
            "ints": _entry(9, (2,), 6, ints),
            "far": _entry(9, (2,), 0, ints, shard=1),
        },
        {0: bf16 + ints, 1: ints},
        num_shards=2,
    )
    assert list_tf_checkpoint(tmp_path / "ckpt")["bf16"] == ("bfloat16", (3,))
    restored = read_tf_checkpoint(tmp_path / "ckpt")
    np.testing.assert_array_equal(restored["bf16"], values)
    assert restored["bf16"].dtype == np.float32
    np.testing.assert_array_equal(restored["far"], [1, -2])

    big = np.array([[1.5, -2.0]], dtype=">f4").tobytes()
    _bundle(tmp_path / "big", _header(1, big_endian=True), {"w": _entry(1, (1, 2), 0, big)}, {0: big}, 1)
    restored = read_tf_checkpoint(tmp_path / "big")
    np.testing.assert_array_equal(restored["w"], [[1.5, -2.0]])
    assert restored["w"].dtype == np.float32  # native order


def test_unsupported_entries_raise_with_the_tensor_name(tmp_path: Path) -> None:
    data = b"\0" * 4
    entries = {"ok": _entry(1, (1,), 0, data), "var": _entry(21, (), 0, data)}
    _bundle(tmp_path / "v", _header(1), entries, {0: data}, 1)
    assert list_tf_checkpoint(tmp_path / "v")["var"] == ("variant", ())
    with pytest.raises(CheckpointError, match="'var' has dtype variant"):
        read_tf_checkpoint(tmp_path / "v")
    assert list(read_tf_checkpoint(tmp_path / "v", names=["ok"])) == ["ok"]
    with pytest.raises(CheckpointError, match="no tensor named"):
        read_tf_checkpoint(tmp_path / "v", names=["nope"])

    sliced = tf_bundle._encode_entry(1, (4,), 0, 0, 0) + tf_bundle._message_field(7, b"")
    _bundle(tmp_path / "s", _header(1), {"part": sliced}, {0: b""}, 1)
    with pytest.raises(CheckpointError, match="'part' is a partitioned variable"):
        read_tf_checkpoint(tmp_path / "s")

    _bundle(tmp_path / "new", _header(1, min_consumer=7), {}, {}, 1)
    with pytest.raises(CheckpointError, match="newer bundle format"):
        list_tf_checkpoint(tmp_path / "new")


# --- missing and corrupt files ------------------------------------------------------------------


def test_flipped_data_byte_names_the_tensor(tmp_path: Path) -> None:
    write_tf_checkpoint(tmp_path / "c", {"a": np.zeros(4, np.float32), "b": np.ones(4, np.float32)})
    flip_byte(Path(f"{tmp_path / 'c'}{DATA_SUFFIX}"), 16 + 3)  # inside "b", stored after "a"
    with pytest.raises(CheckpointError, match=r"c\.data-00000-of-00001: CRC mismatch for tensor 'b'"):
        read_tf_checkpoint(tmp_path / "c")
    assert list_tf_checkpoint(tmp_path / "c")  # the index alone is still fine


def test_flipped_fixture_data_byte_is_caught(fixture_copy: Path) -> None:
    data = Path(f"{fixture_copy}{DATA_SUFFIX}")
    flip_byte(data, data.stat().st_size - 1)  # the last tensor in file order
    last = "cls/seq_relationship/output_weights"
    with pytest.raises(CheckpointError, match=f"CRC mismatch for tensor '{last}'"):
        read_tf_checkpoint(fixture_copy)


def test_flipped_index_byte_is_a_block_crc_error(fixture_copy: Path) -> None:
    flip_byte(Path(f"{fixture_copy}.index"), 100)
    with pytest.raises(CheckpointError, match=r"ckpt\.index: corrupt .*CRC mismatch in the data block 0"):
        list_tf_checkpoint(fixture_copy)


def test_every_single_byte_flip_in_the_index_is_caught(fixture_copy: Path) -> None:
    index = Path(f"{fixture_copy}.index")
    original = index.read_bytes()
    # Only the footer's zero padding after the two block handles goes unchecked (as in TensorFlow).
    footer = original[-48:]
    _, pos = tf_bundle._decode_handle(footer, 0, 40)
    _, handles_end = tf_bundle._decode_handle(footer, pos, 40)
    padding = set(range(len(original) - 48 + handles_end, len(original) - 8))
    for offset in range(len(original)):
        if offset in padding:
            continue
        corrupt = bytearray(original)
        corrupt[offset] ^= 0x01
        index.write_bytes(bytes(corrupt))
        with pytest.raises(CheckpointError):
            list_tf_checkpoint(fixture_copy)


@pytest.mark.parametrize("keep", [0, 1, 47, 48, 500, -1])
def test_truncated_index(fixture_copy: Path, keep: int) -> None:
    index = Path(f"{fixture_copy}.index")
    index.write_bytes(index.read_bytes()[:keep])
    with pytest.raises(CheckpointError, match=r"bert_model\.ckpt\.index: corrupt checkpoint index"):
        read_tf_checkpoint(fixture_copy)


def test_truncated_data_names_file_and_tensor(fixture_copy: Path) -> None:
    data = Path(f"{fixture_copy}{DATA_SUFFIX}")
    data.write_bytes(data.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=r"00001: is 85042 bytes, but tensor 'cls/seq_rel.*truncated"):
        read_tf_checkpoint(fixture_copy)


def test_missing_files_are_named(fixture_copy: Path) -> None:
    Path(f"{fixture_copy}{DATA_SUFFIX}").unlink()
    with pytest.raises(CheckpointError, match=r"bert_model\.ckpt\.data-00000-of-00001: no such file"):
        read_tf_checkpoint(fixture_copy)
    assert len(list_tf_checkpoint(fixture_copy)) == 46  # listing needs only the index
    Path(f"{fixture_copy}.index").unlink()
    with pytest.raises(CheckpointError, match=r"bert_model\.ckpt\.index: no such file"):
        read_tf_checkpoint(fixture_copy)


def test_garbage_index(tmp_path: Path) -> None:
    rng = random.Random(0)
    index = tmp_path / "g.index"
    index.write_bytes(bytes(rng.randrange(256) for _ in range(300)))
    with pytest.raises(CheckpointError, match="bad magic number"):
        list_tf_checkpoint(tmp_path / "g")
    index.write_bytes(b"not a checkpoint\n" * 3)
    with pytest.raises(CheckpointError, match="bad magic number"):
        list_tf_checkpoint(tmp_path / "g")
    # Right magic, garbage handles (huge varints, offsets past the end).
    index.write_bytes(b"\xff" * 40 + struct.pack("<Q", tf_bundle._TABLE_MAGIC))
    with pytest.raises(CheckpointError, match="corrupt checkpoint index"):
        list_tf_checkpoint(tmp_path / "g")


def _block_with_crc(contents: bytes) -> bytes:
    trailer = b"\0"
    return contents + trailer + struct.pack("<I", tf_bundle._mask(tf_bundle._crc32c(contents + trailer)))


def _handles(*handles: tuple[int, int]) -> bytes:
    return b"".join(tf_bundle._varint(offset) + tf_bundle._varint(size) for offset, size in handles)


def test_garbage_that_passes_the_crc_never_hangs_or_crashes(tmp_path: Path) -> None:
    # CRCs catch accidents; these blocks carry valid CRCs around random contents, so the parsers
    # themselves must reject them (or read them) with nothing but CheckpointError.
    rng = random.Random(1)
    empty_block = tf_bundle._BlockBuilder(16).finish()
    meta = _block_with_crc(empty_block)
    for trial in range(300):
        size = rng.randrange(0, 80)
        garbage = bytes(rng.randrange(256) for _ in range(size))
        if trial % 3 == 0:  # a garbage index block
            body = meta + _block_with_crc(garbage)
            handles = _handles((0, len(empty_block)), (len(meta), size))
        elif trial % 3 == 1:  # a valid index pointing at a garbage data block
            index_block = tf_bundle._BlockBuilder(1)
            index_block.add(b"\xff", tf_bundle._varint(len(meta)) + tf_bundle._varint(size))
            index_contents = index_block.finish()
            body = meta + _block_with_crc(garbage)
            handles = _handles((0, len(empty_block)), (len(body), len(index_contents)))
            body += _block_with_crc(index_contents)
        else:  # a real table around garbage header and entry protos
            table = tf_bundle._build_table([(b"", garbage[: size // 2]), (b"t", garbage[size // 2 :])])
            body, handles = table[:-48], table[-48:-8]
        footer = handles.ljust(40, b"\0") + struct.pack("<Q", tf_bundle._TABLE_MAGIC)
        (tmp_path / "f.index").write_bytes(body + footer)
        (tmp_path / f"f{DATA_SUFFIX}").write_bytes(garbage)
        try:
            read_tf_checkpoint(tmp_path / "f")
        except CheckpointError:
            pass


def test_mutated_fixture_index_with_valid_crcs_raises_only_checkpoint_error(fixture_copy: Path) -> None:
    # Near-valid corruption: bytes of the fixture's one data block are changed, deleted or
    # overwritten and the block re-checksummed, so the block, entry and proto parsers (not the CRC)
    # must catch it. Every outcome is a clean read or a CheckpointError.
    original = Path(f"{FIXTURE_PREFIX}.index").read_bytes()
    [(separator, (offset, size))] = _index_entries(original)
    block = original[offset : offset + size]
    rng = random.Random(2)
    outcomes: set[str] = set()
    for _ in range(300):
        mutated = bytearray(block)
        for _ in range(rng.randrange(1, 4)):
            position = rng.randrange(len(mutated))
            action = rng.randrange(3)
            if action == 0:
                mutated[position] = rng.randrange(256)
            elif action == 1:
                mutated[position] ^= 1 << rng.randrange(8)
            else:
                del mutated[position]
        index_block = tf_bundle._BlockBuilder(1)
        index_block.add(separator, tf_bundle._varint(0) + tf_bundle._varint(len(mutated)))
        index_contents = index_block.finish()
        empty = tf_bundle._BlockBuilder(16).finish()
        body = _block_with_crc(bytes(mutated))
        handles = _handles((len(body), len(empty)), (len(body) + len(empty) + 5, len(index_contents)))
        body += _block_with_crc(empty) + _block_with_crc(index_contents)
        Path(f"{fixture_copy}.index").write_bytes(
            body + handles.ljust(40, b"\0") + struct.pack("<Q", tf_bundle._TABLE_MAGIC)
        )
        try:
            read_tf_checkpoint(fixture_copy)
            outcomes.add("read")
        except CheckpointError as error:
            outcomes.add("corrupt checkpoint index" if "corrupt checkpoint index" in str(error) else "other")
    assert "corrupt checkpoint index" in outcomes


# --- dependencies -------------------------------------------------------------------------------


def test_imports_only_stdlib_numpy_and_crc32c() -> None:
    tree = ast.parse(Path(tf_bundle.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    third_party = imported - {
        "__future__", "collections", "dataclasses", "math", "os", "pathlib", "re", "struct", "typing", "uuid"
    }
    assert third_party == {"numpy", "google_crc32c"}
