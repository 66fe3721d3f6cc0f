"""Reads the records of an offline W&B run file (`run-ID.wandb`), for tests.

The file is a LevelDB-style log (7-byte ":W&B" header, 32 KiB blocks, each chunk with a 7-byte
header: crc32, little-endian length, type FULL/FIRST/MIDDLE/LAST) of wandb Record protobufs.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

_BLOCK = 32768


def read_records(path: Path) -> list[pb.Record]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        left_in_block = _BLOCK - pos % _BLOCK
        if left_in_block < 7:
            pos += left_in_block  # zero padding at the end of a block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL, LAST
            record = pb.Record()
            record.ParseFromString(pending + chunk)
            records.append(record)
            pending = b""
        elif kind in (2, 3):  # FIRST, MIDDLE
            pending += chunk
        else:
            break
    return records


def run_history(run_dir: Path) -> tuple[str, list[dict]]:
    """(run id, history rows with their `_step`) of every run file under a wandb/ directory."""
    run_ids, rows = set(), []
    for path in sorted(run_dir.glob("offline-run-*/run-*.wandb")):
        for record in read_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run_ids.add(record.run.run_id)
            elif kind == "history":
                rows.append({(item.key or "/".join(item.nested_key)): json.loads(item.value_json)
                             for item in record.history.item})
    assert len(run_ids) == 1, f"expected one W&B run id, got {run_ids}"
    return run_ids.pop(), rows
