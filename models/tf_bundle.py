"""TensorFlow's tensor-bundle checkpoint format (what `tf.train.Saver` V2 writes), without TensorFlow.

A checkpoint `PREFIX` is two kinds of file:

- `PREFIX.index`: a LevelDB-style SSTable (tensorflow/core/lib/io/table_builder.cc) mapping each
  tensor name to a serialized `BundleEntryProto` (dtype, shape, which data shard, offset, size,
  masked CRC32C). The key "" holds a `BundleHeaderProto` (number of shards, endianness, version).
- `PREFIX.data-SSSSS-of-NNNNN`: the shards, raw tensor bytes at the offsets the index gives.

`read_tf_checkpoint` / `list_tf_checkpoint` read any such bundle; `write_tf_checkpoint` writes one the
way TensorFlow's BundleWriter does (tensorflow/core/util/tensor_bundle/tensor_bundle.cc), down to
the byte: same SSTable options, same protobuf field order, data in sorted-name order (the order in
which Saver adds variables). Every block and tensor checksum is verified on read, and every length
read from the file is bounds-checked, so corrupt input raises `CheckpointError` instead of hanging
or allocating wildly.

The two protobufs are decoded by a small wire-format reader instead of generated classes: they have
a handful of scalar fields, and the field numbers (tensor_bundle.proto, tensor_shape.proto,
versions.proto) are part of TensorFlow's on-disk format, so they cannot change:

    BundleHeaderProto: 1 num_shards (int32), 2 endianness (enum: 0 LITTLE, 1 BIG),
                       3 version (VersionDef: 1 producer, 2 min_consumer, 3 bad_consumers)
    BundleEntryProto:  1 dtype (DataType enum), 2 shape (TensorShapeProto), 3 shard_id (int32),
                       4 offset (int64), 5 size (int64), 6 crc32c (fixed32), 7 slices (repeated)
    TensorShapeProto:  2 dim (repeated Dim: 1 size (int64), 2 name), 3 unknown_rank (bool)
"""

from __future__ import annotations

import math
import os
import re
import struct
import uuid
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import google_crc32c
import numpy as np

__all__ = [
    "CheckpointError",
    "list_tf_checkpoint",
    "read_tf_checkpoint",
    "resolve_tf_checkpoint_prefix",
    "write_tf_checkpoint",
]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or written; the message names the file, the problem and the fix."""


class _Corrupt(Exception):
    """Internal: a malformed structure; re-raised as CheckpointError with the file name added."""


# --- format constants ---------------------------------------------------------------------------

# format.h: kTableMagicNumber, stored as a little-endian fixed64 in the last 8 bytes of the index.
_TABLE_MAGIC = 0xDB4775248B80FB57
# Footer = metaindex handle + index handle, zero-padded to 2 * BlockHandle::kMaxEncodedLength (2 * 20),
# then the magic.
_FOOTER_SIZE = 48
_HANDLES_SIZE = 40
# Every block is followed by 1 byte compression type + 4 bytes masked CRC32C of (contents + type).
_BLOCK_TRAILER_SIZE = 5
_NO_COMPRESSION = 0
_SNAPPY_COMPRESSION = 1
# table_options.h defaults, which BundleWriter keeps (it only turns compression off): 256 KiB blocks,
# a restart point every 16 keys. The index block restarts at every key (table_builder.cc).
_BLOCK_SIZE = 262144
_RESTART_INTERVAL = 16
# tensor_bundle.cc: kTensorBundleVersion (what we write as producer, and the consumer we are).
_BUNDLE_VERSION = 1
_HEADER_KEY = b""
_ENDIAN_LITTLE, _ENDIAN_BIG = 0, 1

# DataType enum values (tensorflow/core/framework/types.proto) for the dtypes numpy holds natively.
_NUMPY_DTYPES: dict[int, np.dtype] = {
    1: np.dtype(np.float32),
    2: np.dtype(np.float64),
    3: np.dtype(np.int32),
    4: np.dtype(np.uint8),
    5: np.dtype(np.int16),
    6: np.dtype(np.int8),
    8: np.dtype(np.complex64),
    9: np.dtype(np.int64),
    10: np.dtype(np.bool_),
    17: np.dtype(np.uint16),
    18: np.dtype(np.complex128),
    19: np.dtype(np.float16),
    22: np.dtype(np.uint32),
    23: np.dtype(np.uint64),
}
_DT_STRING = 7
_DT_BFLOAT16 = 14  # numpy has no bfloat16: read as uint16 and widened to float32
_OTHER_DTYPE_NAMES = {
    _DT_STRING: "string",
    _DT_BFLOAT16: "bfloat16",
    11: "qint8",
    12: "quint8",
    13: "qint32",
    15: "qint16",
    16: "quint16",
    20: "resource",
    21: "variant",
}
_ENUM_OF_NUMPY = {dtype: enum for enum, dtype in _NUMPY_DTYPES.items()}

_DATA_SUFFIX = re.compile(r"\.data-\d{5}-of-\d{5}$")


def _dtype_name(enum: int) -> str:
    if enum in _NUMPY_DTYPES:
        return _NUMPY_DTYPES[enum].name
    return _OTHER_DTYPE_NAMES.get(enum, f"DataType({enum})")


# --- checksums ----------------------------------------------------------------------------------

_CRC_CHUNK_BYTES = 1 << 22


def _crc32c(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC32C of `data`, continuing from `crc`.

    google_crc32c's C extension only takes `bytes`; large buffers go through in 4 MiB chunks so a
    multi-GB tensor is never copied whole just to be checksummed.
    """
    if isinstance(data, bytes):
        return google_crc32c.extend(crc, data)
    view = memoryview(data).cast("B")
    for start in range(0, len(view), _CRC_CHUNK_BYTES):
        crc = google_crc32c.extend(crc, bytes(view[start : start + _CRC_CHUNK_BYTES]))
    return crc


def _mask(crc: int) -> int:
    # crc32c.h: stored CRCs are rotated and offset so that a CRC of data containing CRCs stays strong.
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


# --- varints and protobuf wire format -----------------------------------------------------------


def _read_varint(buf: bytes, pos: int, limit: int, max_bytes: int = 10) -> tuple[int, int]:
    """Decodes a base-128 varint at buf[pos:limit]; returns (value, position after it)."""
    result = 0
    for i in range(max_bytes):
        if pos >= limit:
            raise _Corrupt("a varint runs past the end of its buffer")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            return result, pos
    raise _Corrupt(f"a varint is longer than {max_bytes} bytes")


def _varint(value: int) -> bytes:
    value &= 0xFFFFFFFFFFFFFFFF  # negative ints are encoded as their 64-bit two's complement
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


_WIRE_VARINT, _WIRE_FIXED64, _WIRE_BYTES, _WIRE_FIXED32 = 0, 1, 2, 5


def _proto_fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """Yields (field number, wire type, value) for each field of a serialized protobuf message."""
    pos, limit = 0, len(buf)
    while pos < limit:
        tag, pos = _read_varint(buf, pos, limit)
        field, wire = tag >> 3, tag & 7
        if field == 0:
            raise _Corrupt("a protobuf field has number 0")
        value: int | bytes
        if wire == _WIRE_VARINT:
            value, pos = _read_varint(buf, pos, limit)
        elif wire in (_WIRE_FIXED64, _WIRE_FIXED32):
            width = 8 if wire == _WIRE_FIXED64 else 4
            if pos + width > limit:
                raise _Corrupt("a fixed-width protobuf field runs past the end of its message")
            value = int.from_bytes(buf[pos : pos + width], "little")
            pos += width
        elif wire == _WIRE_BYTES:
            length, pos = _read_varint(buf, pos, limit)
            if pos + length > limit:
                raise _Corrupt("a length-delimited protobuf field runs past the end of its message")
            value = buf[pos : pos + length]
            pos += length
        else:  # 3/4 are proto2 groups, which none of these messages use; 6/7 do not exist
            raise _Corrupt(f"protobuf wire type {wire} (field {field}) is not valid here")
        yield field, wire, value


def _int(field: int, wire: int, value: int | bytes, message: str, wire_type: int = _WIRE_VARINT) -> int:
    """A varint (or fixed-width) field's value, as a signed 64-bit int."""
    if wire != wire_type or not isinstance(value, int):
        raise _Corrupt(f"{message} field {field} has wire type {wire}, expected {wire_type}")
    return _signed64(value) if wire_type == _WIRE_VARINT else value


def _bytes(field: int, wire: int, value: int | bytes, message: str) -> bytes:
    """A length-delimited field's payload (a sub-message here)."""
    if wire != _WIRE_BYTES or not isinstance(value, bytes):
        raise _Corrupt(f"{message} field {field} has wire type {wire}, expected {_WIRE_BYTES}")
    return value


def _tag(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _varint_field(field: int, value: int) -> bytes:
    # proto3 scalars: a zero value is not serialized at all.
    return _tag(field, _WIRE_VARINT) + _varint(value) if value else b""


def _message_field(field: int, payload: bytes) -> bytes:
    # A set sub-message is serialized even when empty (a scalar's shape is "12 00").
    return _tag(field, _WIRE_BYTES) + _varint(len(payload)) + payload


@dataclass(frozen=True)
class _Header:
    num_shards: int
    endianness: int
    producer: int
    min_consumer: int
    bad_consumers: tuple[int, ...]


@dataclass(frozen=True)
class _Entry:
    dtype: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int  # masked, as stored
    num_slices: int


def _decode_header(buf: bytes) -> _Header:
    num_shards = endianness = producer = min_consumer = 0
    bad: list[int] = []
    for field, wire, value in _proto_fields(buf):
        if field == 1:
            num_shards = _int(field, wire, value, "BundleHeaderProto")
        elif field == 2:
            endianness = _int(field, wire, value, "BundleHeaderProto")
        elif field == 3:
            for vfield, vwire, vvalue in _proto_fields(_bytes(field, wire, value, "BundleHeaderProto")):
                if vfield == 1:
                    producer = _int(vfield, vwire, vvalue, "VersionDef")
                elif vfield == 2:
                    min_consumer = _int(vfield, vwire, vvalue, "VersionDef")
                elif vfield == 3 and vwire == _WIRE_BYTES:  # proto3 packs repeated int32
                    packed = _bytes(vfield, vwire, vvalue, "VersionDef")
                    pos = 0
                    while pos < len(packed):
                        item, pos = _read_varint(packed, pos, len(packed))
                        bad.append(_signed64(item))
                elif vfield == 3:
                    bad.append(_int(vfield, vwire, vvalue, "VersionDef"))
    return _Header(num_shards, endianness, producer, min_consumer, tuple(bad))


def _encode_header(num_shards: int) -> bytes:
    # BundleWriter::Finish sets endianness LITTLE (0, so absent) and min_consumer 0 (absent too).
    version = _varint_field(1, _BUNDLE_VERSION) + _varint_field(2, 0)
    return _varint_field(1, num_shards) + _varint_field(2, _ENDIAN_LITTLE) + _message_field(3, version)


def _decode_shape(buf: bytes) -> tuple[int, ...]:
    dims: list[int] = []
    for field, wire, value in _proto_fields(buf):
        if field == 2:
            size = 0
            for dfield, dwire, dvalue in _proto_fields(_bytes(field, wire, value, "TensorShapeProto")):
                if dfield == 1:
                    size = _int(dfield, dwire, dvalue, "TensorShapeProto.Dim")
            if size < 0:
                raise _Corrupt(f"a tensor shape has dimension {size}; a saved tensor's shape is fully known")
            dims.append(size)
        elif field == 3 and _int(field, wire, value, "TensorShapeProto"):
            raise _Corrupt("a tensor shape is marked unknown_rank; a saved tensor's rank is known")
    return tuple(dims)


def _decode_entry(buf: bytes) -> _Entry:
    dtype = shard_id = offset = size = crc = num_slices = 0
    shape: tuple[int, ...] = ()
    for field, wire, value in _proto_fields(buf):
        if field == 1:
            dtype = _int(field, wire, value, "BundleEntryProto")
        elif field == 2:
            shape = _decode_shape(_bytes(field, wire, value, "BundleEntryProto"))
        elif field == 3:
            shard_id = _int(field, wire, value, "BundleEntryProto")
        elif field == 4:
            offset = _int(field, wire, value, "BundleEntryProto")
        elif field == 5:
            size = _int(field, wire, value, "BundleEntryProto")
        elif field == 6:
            crc = _int(field, wire, value, "BundleEntryProto", _WIRE_FIXED32)
        elif field == 7:
            num_slices += 1
    if shard_id < 0 or offset < 0 or size < 0:
        raise _Corrupt(f"negative shard_id/offset/size ({shard_id}, {offset}, {size})")
    return _Entry(dtype, shape, shard_id, offset, size, crc, num_slices)


def _encode_entry(dtype: int, shape: tuple[int, ...], offset: int, size: int, crc32c: int) -> bytes:
    # Field order and zero-omission exactly as C++ SerializeAsString emits them; shard_id is always 0.
    shape_proto = b"".join(_message_field(2, _varint_field(1, dim)) for dim in shape)
    return (
        _varint_field(1, dtype)
        + _message_field(2, shape_proto)
        + _varint_field(4, offset)
        + _varint_field(5, size)
        + (_tag(6, _WIRE_FIXED32) + struct.pack("<I", crc32c) if crc32c else b"")
    )


# --- SSTable (the .index file) reading ----------------------------------------------------------


def _decode_handle(buf: bytes, pos: int, limit: int) -> tuple[tuple[int, int], int]:
    """BlockHandle: varint64 offset, varint64 size."""
    offset, pos = _read_varint(buf, pos, limit)
    size, pos = _read_varint(buf, pos, limit)
    return (offset, size), pos


def _read_block(table: bytes, handle: tuple[int, int], what: str) -> bytes:
    offset, size = handle
    body_end = len(table) - _FOOTER_SIZE
    if offset + size + _BLOCK_TRAILER_SIZE > body_end:
        raise _Corrupt(
            f"the {what} (bytes {offset}..{offset + size + _BLOCK_TRAILER_SIZE}) runs past the end of the "
            f"table data ({body_end} bytes); the file is truncated or corrupt"
        )
    contents = table[offset : offset + size]
    kind = table[offset + size]
    stored = int.from_bytes(table[offset + size + 1 : offset + size + 5], "little")
    actual = _mask(_crc32c(table[offset : offset + size + 1]))  # the CRC covers the type byte too
    if stored != actual:
        raise _Corrupt(
            f"CRC mismatch in the {what} at offset {offset} (stored {stored:#010x}, computed {actual:#010x})"
        )
    if kind == _SNAPPY_COMPRESSION:
        raise _Corrupt(
            f"the {what} is snappy-compressed, which this reader does not implement "
            "(TensorFlow never compresses bundle indexes)"
        )
    if kind != _NO_COMPRESSION:
        raise _Corrupt(f"the {what} has unknown compression type {kind}")
    return contents


def _decode_block(block: bytes, what: str) -> list[tuple[bytes, bytes]]:
    """Entries of one block: prefix-compressed keys, then uint32 restart offsets and their count."""
    if len(block) < 4:
        raise _Corrupt(f"the {what} is {len(block)} bytes, too short to hold its restart count")
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    if num_restarts == 0 or num_restarts > (len(block) - 4) // 4:
        raise _Corrupt(f"the {what} claims {num_restarts} restart points, impossible for {len(block)} bytes")
    entries_end = len(block) - 4 - 4 * num_restarts
    restarts = struct.unpack_from(f"<{num_restarts}I", block, entries_end)

    entries: list[tuple[bytes, bytes]] = []
    shared_at: dict[int, int] = {}  # entry start offset -> its shared-prefix length
    key = b""
    pos = 0
    while pos < entries_end:
        start = pos
        # Each length is a varint32 (block_builder.cc PutVarint32).
        shared, pos = _read_varint(block, pos, entries_end, 5)
        non_shared, pos = _read_varint(block, pos, entries_end, 5)
        value_len, pos = _read_varint(block, pos, entries_end, 5)
        if shared > len(key):
            raise _Corrupt(
                f"an entry in the {what} shares {shared} bytes with a {len(key)}-byte previous key"
            )
        if pos + non_shared + value_len > entries_end:
            raise _Corrupt(f"an entry in the {what} runs past the block's restart array")
        key = key[:shared] + block[pos : pos + non_shared]
        pos += non_shared
        entries.append((key, block[pos : pos + value_len]))
        pos += value_len
        shared_at[start] = shared
    # A reader seeks by binary search over the restart points, so each must start a full key.
    for restart in restarts:
        if (shared_at.get(restart) != 0) if entries else (restart != 0):
            raise _Corrupt(f"restart point {restart} in the {what} does not start an uncompressed key")
    return entries


def _read_table(table: bytes) -> list[tuple[bytes, bytes]]:
    """All (key, value) pairs of an SSTable, in order, with every block's CRC checked."""
    if len(table) < _FOOTER_SIZE:
        raise _Corrupt(
            f"the file is {len(table)} bytes, shorter than the {_FOOTER_SIZE}-byte table footer (truncated?)"
        )
    footer = table[-_FOOTER_SIZE:]
    magic = int.from_bytes(footer[_HANDLES_SIZE:], "little")
    if magic != _TABLE_MAGIC:
        raise _Corrupt(
            f"bad magic number {magic:#018x} (expected {_TABLE_MAGIC:#018x}): not a TensorFlow checkpoint "
            "index, or the file is truncated"
        )
    metaindex_handle, pos = _decode_handle(footer, 0, _HANDLES_SIZE)
    index_handle, _ = _decode_handle(footer, pos, _HANDLES_SIZE)
    # TF writes an empty metaindex and never reads it; checking it anyway catches a corrupt footer.
    _decode_block(_read_block(table, metaindex_handle, "metaindex block"), "metaindex block")
    index = _decode_block(_read_block(table, index_handle, "index block"), "index block")

    items: list[tuple[bytes, bytes]] = []
    for block_number, (separator, handle_bytes) in enumerate(index):
        handle, _ = _decode_handle(handle_bytes, 0, len(handle_bytes))
        what = f"data block {block_number}"
        for key, value in _decode_block(_read_block(table, handle, what), what):
            # Keys are strictly increasing across the table, and each index key bounds its block.
            if items and key <= items[-1][0]:
                raise _Corrupt(f"key {key!r} in {what} is not after the previous key {items[-1][0]!r}")
            if key > separator:
                raise _Corrupt(f"key {key!r} in {what} is past its index key {separator!r}")
            items.append((key, value))
    return items


# --- SSTable writing ----------------------------------------------------------------------------


class _BlockBuilder:
    """block_builder.cc: keys share a prefix with the previous key except at every restart point."""

    def __init__(self, restart_interval: int) -> None:
        self.restart_interval = restart_interval
        self.reset()

    def reset(self) -> None:
        self.buffer = bytearray()
        self.restarts = [0]  # byte offsets of the entries that store their whole key
        self.counter = 0  # entries since the last restart
        self.last_key = b""

    def add(self, key: bytes, value: bytes) -> None:
        shared = 0
        if self.counter < self.restart_interval:
            limit = min(len(key), len(self.last_key))
            while shared < limit and key[shared] == self.last_key[shared]:
                shared += 1
        else:
            self.restarts.append(len(self.buffer))
            self.counter = 0
        self.buffer += _varint(shared) + _varint(len(key) - shared) + _varint(len(value))
        self.buffer += key[shared:] + value
        self.last_key = key
        self.counter += 1

    def size_estimate(self) -> int:
        return len(self.buffer) + 4 * len(self.restarts) + 4

    def finish(self) -> bytes:
        contents = bytes(self.buffer) + struct.pack(f"<{len(self.restarts)}I", *self.restarts)
        contents += struct.pack("<I", len(self.restarts))
        self.reset()
        return contents


def _shortest_separator(start: bytes, limit: bytes) -> bytes:
    """table_builder.cc FindShortestSeparator: a short key in [start, limit) for the index block."""
    common = 0
    min_length = min(len(start), len(limit))
    while common < min_length and start[common] == limit[common]:
        common += 1
    if common < min_length:
        byte = start[common]
        if byte < 0xFF and byte + 1 < limit[common]:
            return start[:common] + bytes([byte + 1])
    return start  # one is a prefix of the other, or no byte to spare: keep it


def _short_successor(key: bytes) -> bytes:
    """table_builder.cc FindShortSuccessor: the shortest key >= `key` (the last index entry)."""
    for i, byte in enumerate(key):
        if byte != 0xFF:
            return key[:i] + bytes([byte + 1])
    return key


def _build_table(
    items: list[tuple[bytes, bytes]],
    block_size: int = _BLOCK_SIZE,
    restart_interval: int = _RESTART_INTERVAL,
) -> bytes:
    """The SSTable TableBuilder writes for `items` (sorted, unique keys), uncompressed."""
    out = bytearray()

    def write_block(contents: bytes) -> tuple[int, int]:
        handle = (len(out), len(contents))
        trailer = bytes([_NO_COMPRESSION])
        out.extend(contents + trailer + struct.pack("<I", _mask(_crc32c(contents + trailer))))
        return handle

    data = _BlockBuilder(restart_interval)
    index = _BlockBuilder(1)
    pending: tuple[int, int] | None = None  # last data block's handle, indexed once the next key is known
    last_key = b""
    for number, (key, value) in enumerate(items):
        if number > 0 and len(key) + len(value) >= 2 * block_size and data.buffer:
            pending = write_block(data.finish())  # a huge entry gets a block of its own
        if pending is not None:
            index.add(_shortest_separator(last_key, key), _varint(pending[0]) + _varint(pending[1]))
            pending = None
        last_key = key
        data.add(key, value)
        if data.size_estimate() >= block_size:
            pending = write_block(data.finish())
    if data.buffer:
        pending = write_block(data.finish())
    metaindex = write_block(_BlockBuilder(restart_interval).finish())  # TF writes no meta blocks
    if pending is not None:
        index.add(_short_successor(last_key), _varint(pending[0]) + _varint(pending[1]))
    index_handle = write_block(index.finish())
    handles = b"".join(_varint(number) for number in (*metaindex, *index_handle))
    out += handles.ljust(_HANDLES_SIZE, b"\0") + struct.pack("<Q", _TABLE_MAGIC)
    return bytes(out)


# --- prefix resolution --------------------------------------------------------------------------


def _index_path(prefix: Path) -> Path:
    return Path(f"{prefix}.index")


def _data_path(prefix: Path, shard: int, num_shards: int) -> Path:
    return Path(f"{prefix}.data-{shard:05d}-of-{num_shards:05d}")


_TEXT_ESCAPE = re.compile(rb"\\([0-7]{1,3}|x[0-9a-fA-F]{1,2}|.)")
_SIMPLE_ESCAPES = {b"n": b"\n", b"t": b"\t", b"r": b"\r", b'"': b'"', b"'": b"'", b"\\": b"\\"}


def _unescape_text_proto(text: str) -> str:
    """Undoes protobuf text-format string escaping (C escapes; non-ASCII bytes as octal)."""

    def replace(match: re.Match[bytes]) -> bytes:
        code = match.group(1)
        if code[:1] == b"x":
            return bytes([int(code[1:], 16)])
        if re.fullmatch(rb"[0-7]{1,3}", code):
            return bytes([int(code, 8) & 0xFF])
        return _SIMPLE_ESCAPES.get(code, code)

    return _TEXT_ESCAPE.sub(replace, text.encode("utf-8")).decode("utf-8", "surrogateescape")


def _prefix_in_directory(directory: Path) -> Path:
    state = directory / "checkpoint"
    if state.is_file():
        text = state.read_text(encoding="utf-8", errors="replace")
        match = re.search(r'^\s*model_checkpoint_path:\s*"((?:[^"\\]|\\.)*)"', text, re.MULTILINE)
        if match:
            raw = _unescape_text_proto(match.group(1))
            named = Path(raw) if Path(raw).is_absolute() else directory / raw
            if _index_path(named).is_file():
                return named
            # Older Savers record absolute paths, which go stale when the directory is copied
            # elsewhere; the checkpoint normally sits next to its state file.
            beside = directory / Path(raw).name
            if _index_path(beside).is_file():
                return beside
            raise CheckpointError(
                f"{state}: model_checkpoint_path is {raw!r}, but neither {_index_path(named)} nor "
                f"{_index_path(beside)} exists; copy the checkpoint files next to it or pass the prefix"
            )
    indexes = sorted(directory.glob("*.index"))
    if len(indexes) == 1:
        return indexes[0].with_name(indexes[0].name[: -len(".index")])
    if not indexes:
        raise CheckpointError(
            f"{directory}: no 'checkpoint' state file and no *.index file here; pass a checkpoint prefix "
            f"such as {directory / 'bert_model.ckpt'} (the path without .index / .data-*)"
        )
    names = ", ".join(p.name for p in indexes)
    raise CheckpointError(
        f"{directory}: holds several checkpoints ({names}); pass the prefix of the one you want"
    )


def resolve_tf_checkpoint_prefix(path: str | Path) -> Path:
    """Finds the checkpoint prefix (`.../bert_model.ckpt`) that `path` refers to.

    Args:
        path: the prefix itself; its `.index` or `.data-SSSSS-of-NNNNN` file; or a directory that
            holds a `checkpoint` state file (its `model_checkpoint_path` is used) or exactly one
            `*.index` file.

    Returns:
        The prefix; `prefix.index` exists.

    Raises:
        CheckpointError: nothing at `path` names an existing checkpoint index.
    """
    path = Path(path)
    if path.name.endswith(".index"):
        prefix = path.with_name(path.name[: -len(".index")])
    elif match := _DATA_SUFFIX.search(path.name):
        prefix = path.with_name(path.name[: match.start()])
    elif path.is_dir() and not _index_path(path).is_file():
        prefix = _prefix_in_directory(path)
    else:
        prefix = path
    if not _index_path(prefix).is_file():
        raise CheckpointError(
            f"{_index_path(prefix)}: no such file, so {path} is not a TensorFlow checkpoint; pass the prefix "
            "(e.g. .../bert_model.ckpt, the path without .index / .data-*) or the directory holding it"
        )
    return prefix


# --- bundle reading -----------------------------------------------------------------------------


def _load_index(prefix: Path) -> tuple[_Header, dict[str, _Entry]]:
    index_path = _index_path(prefix)
    try:
        table = index_path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{index_path}: no such file; check the checkpoint prefix") from None
    try:
        items = _read_table(table)
        if not items or items[0][0] != _HEADER_KEY:
            raise _Corrupt("the header entry (key \"\") is missing")
        header = _decode_header(items[0][1])
        entries: dict[str, _Entry] = {}
        for key, value in items[1:]:
            name = key.decode("utf-8", "surrogateescape")
            try:
                entries[name] = _decode_entry(value)
            except _Corrupt as error:
                raise _Corrupt(f"entry {name!r}: {error}") from None
    except _Corrupt as error:
        raise CheckpointError(
            f"{index_path}: corrupt checkpoint index: {error}; re-copy or re-download the checkpoint"
        ) from None

    if header.min_consumer > _BUNDLE_VERSION or _BUNDLE_VERSION in header.bad_consumers:
        raise CheckpointError(
            f"{index_path}: written in a newer bundle format (min_consumer {header.min_consumer}, "
            f"bad consumers {list(header.bad_consumers)}) than this reader's version {_BUNDLE_VERSION}; "
            "re-save it with tf.compat.v1.train.Saver"
        )
    if header.endianness not in (_ENDIAN_LITTLE, _ENDIAN_BIG):
        raise CheckpointError(
            f"{index_path}: corrupt checkpoint index: unknown endianness {header.endianness}; "
            "re-copy or re-download the checkpoint"
        )
    for name, entry in entries.items():
        if not entry.num_slices and not 0 <= entry.shard_id < header.num_shards:
            raise CheckpointError(
                f"{index_path}: corrupt checkpoint index: tensor {name!r} is in shard {entry.shard_id} of "
                f"{header.num_shards}; re-copy or re-download the checkpoint"
            )
    return header, entries


def list_tf_checkpoint(prefix: str | Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Names, dtypes and shapes of a checkpoint's tensors, reading only its `.index`.

    Args:
        prefix: a checkpoint prefix, or anything `resolve_tf_checkpoint_prefix` accepts.

    Returns:
        {tensor name: (dtype name, shape)} in the checkpoint's (sorted) order; dtype names are
        numpy's ("float32", "int64", ...), or TensorFlow's for the rest ("bfloat16", "string").

    Raises:
        CheckpointError: no index, or a corrupt one.
    """
    _, entries = _load_index(resolve_tf_checkpoint_prefix(prefix))
    return {name: (_dtype_name(entry.dtype), entry.shape) for name, entry in entries.items()}


def _read_exact(file: BinaryIO, buffer: bytearray) -> int:
    """Fills `buffer` from `file` (raw reads may return short); returns the bytes read."""
    view = memoryview(buffer)
    done = 0
    while done < len(buffer):
        count = file.readinto(view[done:])
        if not count:
            break
        done += count
    return done


def _decode_strings(raw: bytearray, count: int, byteorder: str) -> tuple[np.ndarray, int]:
    """tensor_bundle.cc string layout: varint64 lengths, masked CRC of the lengths, then the bytes.

    The entry's crc32c is not a CRC of these bytes: it chains over each length as a uint32 (uint64
    if it does not fit), then the stored length checksum, then every string's bytes. Returns the
    strings and that (unmasked) chain.
    """
    if count > len(raw):  # every length takes at least one byte: bounds the loop below
        raise _Corrupt(f"{count} strings cannot fit in {len(raw)} bytes")
    lengths: list[int] = []
    crc = 0
    pos = 0
    for _ in range(count):
        length, pos = _read_varint(raw, pos, len(raw))
        lengths.append(length)
        width = "I" if length <= 0xFFFFFFFF else "Q"
        crc = _crc32c(struct.pack(f"{byteorder}{width}", length), crc)
    if pos + 4 > len(raw):
        raise _Corrupt("the string lengths run past the tensor's bytes")
    stored = bytes(raw[pos : pos + 4])
    if _mask(crc) != int.from_bytes(stored, "little" if byteorder == "<" else "big"):
        raise _Corrupt("CRC mismatch in the string lengths")
    crc = _crc32c(stored, crc)
    pos += 4
    if pos + sum(lengths) != len(raw):
        raise _Corrupt(f"string lengths add up to {pos + sum(lengths)} bytes, not the entry's {len(raw)}")
    strings = np.empty(count, dtype=object)
    for i, length in enumerate(lengths):
        strings[i] = bytes(raw[pos : pos + length])
        crc = _crc32c(strings[i], crc)
        pos += length
    return strings, crc


def _decode_tensor(raw: bytearray, entry: _Entry, byteorder: str) -> tuple[np.ndarray, int]:
    """The tensor in `raw` (its entry's bytes), and the unmasked CRC its entry should record."""
    if entry.dtype == _DT_STRING:
        strings, crc = _decode_strings(raw, math.prod(entry.shape), byteorder)
        return strings.reshape(entry.shape), crc
    crc = _crc32c(raw)
    if entry.dtype == _DT_BFLOAT16:
        bits = np.frombuffer(raw, dtype=np.dtype(np.uint16).newbyteorder(byteorder))
        # bfloat16 is the top half of a float32: widening is exact.
        return (bits.astype(np.uint32) << 16).view(np.float32).reshape(entry.shape), crc
    dtype = _NUMPY_DTYPES[entry.dtype]
    array = np.frombuffer(raw, dtype=dtype.newbyteorder(byteorder)).reshape(entry.shape)
    return (array if byteorder == "<" else array.astype(dtype)), crc  # astype: to this machine's order


def read_tf_checkpoint(prefix: str | Path, names: Collection[str] | None = None) -> dict[str, np.ndarray]:
    """Reads a checkpoint's tensors into numpy arrays, verifying every checksum.

    Args:
        prefix: a checkpoint prefix, or anything `resolve_tf_checkpoint_prefix` accepts.
        names: read only these tensors (e.g. to skip Adam slots); None reads all.

    Returns:
        {tensor name: array} in the checkpoint's (sorted) order, names exactly as stored
        (`bert/encoder/layer_0/attention/self/query/kernel`, ...). Arrays are writable and in this
        machine's byte order; bfloat16 becomes float32 (exactly); strings become object arrays of bytes.

    Raises:
        CheckpointError: a missing, truncated or corrupt index or data file (named), a checksum
            mismatch (naming the tensor), an unknown `names` entry, or a tensor this reader cannot
            represent (partitioned variables, resource/variant/quantized dtypes).
    """
    prefix = resolve_tf_checkpoint_prefix(prefix)
    index_path = _index_path(prefix)
    header, entries = _load_index(prefix)
    if names is not None:
        unknown = sorted(set(names) - entries.keys())
        if unknown:
            raise CheckpointError(
                f"{index_path}: no tensor named {unknown}; list_tf_checkpoint shows the names"
            )
        entries = {name: entry for name, entry in entries.items() if name in names}
    for name, entry in entries.items():
        _check_readable(index_path, name, entry)

    byteorder = "<" if header.endianness == _ENDIAN_LITTLE else ">"
    arrays: dict[str, np.ndarray] = {}
    shards = sorted({entry.shard_id for entry in entries.values()})
    for shard in shards:  # all shards are checked before any is read
        data_path = _data_path(prefix, shard, header.num_shards)
        if not data_path.is_file():
            raise CheckpointError(
                f"{data_path}: no such file, but {index_path} stores tensors in it; copy every "
                f"{prefix.name}.data-* file along with the index"
            )
    for shard in shards:
        in_shard = {name: entry for name, entry in entries.items() if entry.shard_id == shard}
        arrays |= _read_shard(_data_path(prefix, shard, header.num_shards), in_shard, byteorder)
    return {name: arrays[name] for name in entries}


def _check_readable(index_path: Path, name: str, entry: _Entry) -> None:
    """Raises CheckpointError unless `entry` is a whole tensor of a dtype we decode, of a consistent size."""
    if entry.num_slices:
        raise CheckpointError(
            f"{index_path}: tensor {name!r} is a partitioned variable ({entry.num_slices} slices), "
            "which this reader does not assemble; re-save it unpartitioned"
        )
    if entry.dtype == _DT_STRING:
        return  # variable-length: _decode_strings checks its layout
    if entry.dtype not in _NUMPY_DTYPES and entry.dtype != _DT_BFLOAT16:
        raise CheckpointError(
            f"{index_path}: tensor {name!r} has dtype {_dtype_name(entry.dtype)}, which has no numpy "
            "equivalent; pass names= to read the other tensors"
        )
    itemsize = 2 if entry.dtype == _DT_BFLOAT16 else _NUMPY_DTYPES[entry.dtype].itemsize
    if entry.size != math.prod(entry.shape) * itemsize:
        raise CheckpointError(
            f"{index_path}: corrupt checkpoint index: tensor {name!r} of shape {entry.shape} and dtype "
            f"{_dtype_name(entry.dtype)} records {entry.size} bytes; re-copy or re-download the checkpoint"
        )


def _read_shard(data_path: Path, entries: dict[str, _Entry], byteorder: str) -> dict[str, np.ndarray]:
    """Reads and checksums `entries`, all stored in the data file `data_path`."""
    arrays: dict[str, np.ndarray] = {}
    with open(data_path, "rb", buffering=0) as file:
        file_size = os.fstat(file.fileno()).st_size
        # Read in file order, so a checkpoint on slow storage streams sequentially.
        for name, entry in sorted(entries.items(), key=lambda item: item[1].offset):
            if entry.offset + entry.size > file_size:
                raise CheckpointError(
                    f"{data_path}: is {file_size} bytes, but tensor {name!r} is stored at bytes "
                    f"{entry.offset}..{entry.offset + entry.size}; the file is truncated, re-copy it"
                )
            file.seek(entry.offset)
            raw = bytearray(entry.size)
            if _read_exact(file, raw) != entry.size:
                raise CheckpointError(f"{data_path}: shrank while tensor {name!r} was read; re-copy it")
            try:
                arrays[name], crc = _decode_tensor(raw, entry, byteorder)
            except _Corrupt as error:
                raise CheckpointError(
                    f"{data_path}: tensor {name!r}: {error}; the file is corrupt, re-copy or re-download it"
                ) from None
            if _mask(crc) != entry.crc32c:
                raise CheckpointError(
                    f"{data_path}: CRC mismatch for tensor {name!r} (stored {entry.crc32c:#010x}, "
                    f"computed {_mask(crc):#010x}); the file is corrupt, re-copy or re-download it"
                )
    return arrays


# --- bundle writing -----------------------------------------------------------------------------


def _encode_strings(array: np.ndarray) -> tuple[bytes, int]:
    """The string layout `_decode_strings` reads; returns (bytes, unmasked crc)."""
    items = [item.encode("utf-8") if isinstance(item, str) else bytes(item) for item in array.reshape(-1)]
    crc = 0
    lengths = bytearray()
    for item in items:
        lengths += _varint(len(item))
        crc = _crc32c(struct.pack("<I" if len(item) <= 0xFFFFFFFF else "<Q", len(item)), crc)
    length_checksum = struct.pack("<I", _mask(crc))
    crc = _crc32c(length_checksum, crc)
    for item in items:
        crc = _crc32c(item, crc)
    return bytes(lengths) + length_checksum + b"".join(items), crc


def _tensor_bytes(name: str, value: object) -> tuple[int, tuple[int, ...], bytes | memoryview, int]:
    """(DataType enum, shape, little-endian bytes, unmasked crc32c) of one tensor to write."""
    array = np.asarray(value)
    shape = tuple(int(dim) for dim in array.shape)
    if array.dtype.kind in "SU" or array.dtype == object:
        if array.dtype == object and not all(isinstance(item, (bytes, str)) for item in array.reshape(-1)):
            raise CheckpointError(
                f"tensor {name!r}: an object array must hold only bytes or str to be saved as strings"
            )
        payload, crc = _encode_strings(array)
        return _DT_STRING, shape, payload, crc
    native = array.dtype.newbyteorder("=")
    if native not in _ENUM_OF_NUMPY:
        raise CheckpointError(
            f"tensor {name!r}: dtype {array.dtype} has no TensorFlow equivalent here; convert it to one of "
            f"{sorted({dtype.name for dtype in _ENUM_OF_NUMPY})}"
        )
    little = np.ascontiguousarray(array, dtype=native.newbyteorder("<"))
    payload = memoryview(little.reshape(-1).view(np.uint8))
    return _ENUM_OF_NUMPY[native], shape, payload, _crc32c(payload)


def write_tf_checkpoint(prefix: str | Path, tensors: Mapping[str, np.ndarray]) -> None:
    """Writes `tensors` as a one-shard TensorFlow checkpoint, as `tf.compat.v1.train.Saver` would.

    Data goes in sorted-name order (Saver sorts its variables before SaveV2), the index with
    TensorFlow's table options, so both files are byte-identical to what Saver writes for the same
    tensors. (TF2's object-based savers may add tensors to the data file in another order; their
    contents and index keys are the same, the offsets differ.) Each file is written under a temporary
    name and renamed into place, the index last, so neither is ever seen half-written. No
    `checkpoint` state file is written.

    Args:
        prefix: where to write (`PREFIX.index`, `PREFIX.data-00000-of-00001`); parent dirs are created.
        tensors: {name: array}; numeric and bool dtypes, or bytes/str arrays (saved as DT_STRING).

    Raises:
        CheckpointError: an empty or non-str name, or a dtype TensorFlow cannot store.
    """
    prefix = Path(prefix)
    for name in tensors:
        if not isinstance(name, str) or not name:
            raise CheckpointError(
                f"{prefix}: tensor name {name!r} is invalid; names are non-empty str (\"\" holds the header)"
            )
    names = sorted(tensors, key=lambda name: name.encode("utf-8"))  # the index is ordered bytewise
    prefix.parent.mkdir(parents=True, exist_ok=True)
    data_path, index_path = _data_path(prefix, 0, 1), _index_path(prefix)
    temp_suffix = f".tempstate{uuid.uuid4().hex}"
    data_temp, index_temp = Path(f"{data_path}{temp_suffix}"), Path(f"{index_path}{temp_suffix}")
    try:
        items = [(_HEADER_KEY, _encode_header(num_shards=1))]
        offset = 0
        with open(data_temp, "wb") as file:
            for name in names:
                dtype, shape, payload, crc = _tensor_bytes(name, tensors[name])
                file.write(payload)
                size = len(payload)
                items.append((name.encode("utf-8"), _encode_entry(dtype, shape, offset, size, _mask(crc))))
                offset += size  # BundleWriter's default data_alignment is 1: no padding
        index_temp.write_bytes(_build_table(items))
        os.replace(data_temp, data_path)
        os.replace(index_temp, index_path)
    finally:
        data_temp.unlink(missing_ok=True)
        index_temp.unlink(missing_ok=True)
