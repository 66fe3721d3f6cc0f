"""Sharded, deterministic, resumable streams of pretraining records, and the DataLoader over them.

The design, chosen so that a run can stop at any step and resume on any number of workers:
- An epoch has one *global* record order that does not depend on the world size: the files in
  an order seeded by (seed, epoch), each file's records in file order, through a shuffle buffer
  seeded by (seed, epoch). Training repeats epochs back to back into one endless stream.
- Step s takes the next `batch_size * world_size` records of that stream; record k of the step
  goes to rank k % world_size. Every record of an epoch goes to exactly one rank.
- The cursor is (epoch, offset): how many records of that epoch's order all ranks together have
  consumed. It is the same on every rank, so any rank's checkpoint resumes every rank, and a
  resume on a different world size continues with exactly the records not yet consumed.

Cost of that exactness: every rank (and every DataLoader worker) reads the byte stream of all
records and decodes only its own; at very large world sizes file-level sharding would read less
but could not resume onto a different world size record-exactly.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from jobs.data.pretraining import PretrainingDataConfig, create_masked_lm_predictions
from jobs.data.tfrecord import (
    FixedLenFeature,
    ReadStats,
    TFRecordReader,
    decode_batch,
    expand_urls,
)

# Stable record ids: file index (in sorted order) in the high bits, record index in the low.
_RECORD_BITS = 32


def pretraining_features(max_seq_length: int, max_predictions_per_seq: int) -> dict[str, FixedLenFeature]:
    """The original run_pretraining.py's features, with their fixed lengths."""
    seq, pred = FixedLenFeature(max_seq_length), FixedLenFeature(max_predictions_per_seq)
    return {"input_ids": seq, "input_mask": seq, "segment_ids": seq, "masked_lm_positions": pred,
            "masked_lm_ids": pred, "masked_lm_weights": FixedLenFeature(max_predictions_per_seq, "float32"),
            "next_sentence_labels": FixedLenFeature(1)}


@dataclasses.dataclass
class StreamCursor:
    """Where a stream stands: `offset` records of epoch `epoch`'s global order are consumed."""

    epoch: int = 0
    offset: int = 0


class RecordStream:
    """The global, world-size-independent order of an epoch's records.

    Args:
        url_or_glob: TFRecord files (any fsspec URL, glob or list of them).
        seed: seeds the file order and the shuffle buffer, together with the epoch.
        shuffle_files: visit files in a seeded random order each epoch.
        shuffle_buffer: size of the shuffle buffer (0 or 1: no record shuffling).
        on_corrupt: "fail" or "skip" (see TFRecordReader); skips are counted in `stats`.
    """

    def __init__(self, url_or_glob: str | Sequence[str], seed: int = 0, shuffle_files: bool = True,
                 shuffle_buffer: int = 0, on_corrupt: str = "fail", stats: ReadStats | None = None):
        self.files = sorted(expand_urls(url_or_glob), key=lambda f: f[2])
        if not self.files:
            raise FileNotFoundError(f"{url_or_glob} matches no TFRecord file")
        self.seed = seed
        self.shuffle_files = shuffle_files
        self.shuffle_buffer = shuffle_buffer
        self.on_corrupt = on_corrupt
        self.stats = stats if stats is not None else ReadStats()

    def epoch(self, epoch: int) -> Iterator[tuple[int, bytes]]:
        """Yields (record id, payload) in epoch `epoch`'s order."""
        rng = random.Random(self.seed * 1_000_003 + epoch)
        order = list(range(len(self.files)))
        if self.shuffle_files:
            rng.shuffle(order)
        records = self._read(order)
        if self.shuffle_buffer <= 1:
            yield from records
            return
        # TF's shuffle buffer: fill, then emit a random slot and refill it with the next record.
        buffer: list[tuple[int, bytes]] = []
        for record in records:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(record)
                continue
            j = rng.randrange(len(buffer))
            yield buffer[j]
            buffer[j] = record
        rng.shuffle(buffer)
        yield from buffer

    def _read(self, order: list[int]) -> Iterator[tuple[int, bytes]]:
        for file_index in order:
            fs, path, url = self.files[file_index]
            reader = TFRecordReader._resolved(fs, path, url, on_corrupt=self.on_corrupt, stats=self.stats)
            for payload in reader:
                yield (file_index << _RECORD_BITS) | reader.record_index, payload


class DynamicMasker:
    """Re-masks records as they are loaded (RoBERTa-style dynamic masking, beyond the original):
    the static masks are undone and a new mask drawn with the original algorithm, seeded by
    (seed, epoch, record id), so every epoch sees a different mask and a resumed run the same one."""

    def __init__(self, vocab: dict[str, int], config: PretrainingDataConfig, seed: int = 0):
        self.vocab = vocab
        self.vocab_words = list(vocab)
        self.inv_vocab = {i: t for t, i in vocab.items()}
        self.config = config
        self.seed = seed

    def __call__(self, batch: dict[str, np.ndarray], epochs: np.ndarray, record_ids: np.ndarray) -> None:
        """Re-masks every row of a decoded batch in place."""
        for row, (epoch, record_id) in enumerate(zip(epochs.tolist(), record_ids.tolist())):
            ids = batch["input_ids"][row]
            weights = batch["masked_lm_weights"][row]
            real = weights > 0
            ids[batch["masked_lm_positions"][row][real]] = batch["masked_lm_ids"][row][real]
            length = int(batch["input_mask"][row].sum())
            tokens = [self.inv_vocab[i] for i in ids[:length].tolist()]
            rng = random.Random(f"{self.seed}/{epoch}/{record_id}")  # str seeds are hashed stably (sha512)
            masked, positions, labels = create_masked_lm_predictions(tokens, self.vocab_words, self.config, rng)
            ids[:length] = [self.vocab[t] for t in masked]
            n = len(positions)
            for name, values in (("masked_lm_positions", positions),
                                 ("masked_lm_ids", [self.vocab[t] for t in labels])):
                batch[name][row] = 0
                batch[name][row][:n] = values
            weights[:] = 0.0
            weights[:n] = 1.0


class PretrainingBatches(IterableDataset):
    """One rank's batches of pretraining features, as torch tensors.

    Each batch is a dict of int64 / float32 tensors [batch_size, L] (fixed shapes: every batch is
    full while `repeat` is on, as XLA wants), plus `record_ids` [batch_size] and `cursor`, the
    stream position once every rank has taken this step's batch.

    Args:
        stream: the global record order.
        batch_size: records per rank per step (the micro-batch).
        rank, world_size: this rank and the number of data-parallel ranks.
        features: name -> FixedLenFeature (see `pretraining_features`).
        cursor: where to start (from a checkpoint).
        repeat: endless stream of epochs (training); False: one pass, last batch may be short.
        masker: optional DynamicMasker.
    """

    def __init__(self, stream: RecordStream, batch_size: int, rank: int = 0, world_size: int = 1,
                 features: dict[str, FixedLenFeature] | None = None, cursor: StreamCursor | None = None,
                 repeat: bool = True, masker: DynamicMasker | None = None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.stream = stream
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.features = features or pretraining_features(128, 20)
        self.cursor = cursor or StreamCursor()
        self.repeat = repeat
        self.masker = masker

    def _global_records(self) -> Iterator[tuple[int, int, bytes, StreamCursor]]:
        """(epoch, record id, payload, cursor after it) from the cursor on."""
        epoch, skip = self.cursor.epoch, self.cursor.offset
        while True:
            offset = 0
            empty = True
            for record_id, payload in self.stream.epoch(epoch):
                empty = False
                offset += 1
                if offset <= skip:
                    continue
                yield epoch, record_id, payload, StreamCursor(epoch, offset)
            if empty:
                raise ValueError(f"{self.stream.files[0][2]}...: the TFRecord files hold no records")
            if not self.repeat:
                return
            epoch, skip = epoch + 1, 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        step_size = self.batch_size * self.world_size
        step: list[tuple[int, int, bytes, StreamCursor]] = []
        step_index = 0
        for record in self._global_records():
            step.append(record)
            if len(step) == step_size:
                # DataLoader takes batches from its workers round-robin: worker w makes steps
                # w, w + K, ... so the loader's output is in step order.
                if step_index % num_workers == worker:
                    yield self._collate(step[self.rank::self.world_size], step[-1][3])
                step, step_index = [], step_index + 1
        mine = step[self.rank::self.world_size]
        if mine and step_index % num_workers == worker:
            yield self._collate(mine, step[-1][3])

    def _collate(self, records: list[tuple[int, int, bytes, StreamCursor]], cursor: StreamCursor) -> dict[str, Any]:
        batch = decode_batch([r[2] for r in records], self.features)
        epochs = np.array([r[0] for r in records], dtype=np.int64)
        record_ids = np.array([r[1] for r in records], dtype=np.int64)
        if self.masker is not None:
            self.masker(batch, epochs, record_ids)
        out: dict[str, Any] = {name: torch.from_numpy(array) for name, array in batch.items()}
        out["record_ids"] = torch.from_numpy(record_ids)
        out["cursor"] = dataclasses.asdict(cursor)
        return out


class ResumableLoader:
    """A DataLoader over PretrainingBatches that knows how far the training loop has consumed.

    `state_dict()` is the cursor of the last batch handed out (not of what worker processes have
    prefetched), so a checkpoint taken after step s resumes at step s + 1.
    """

    def __init__(self, dataset: PretrainingBatches, num_workers: int = 0, prefetch_factor: int | None = None):
        self.dataset = dataset
        self.num_workers = num_workers
        self.prefetch_factor = prefetch_factor if num_workers else None
        self._cursor = dataclasses.replace(dataset.cursor)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        self.dataset.cursor = dataclasses.replace(self._cursor)
        # Its own generator: creating the iterator must not draw from the global torch RNG, or a
        # resumed run's dropout masks would differ from an uninterrupted run's.
        loader = DataLoader(self.dataset, batch_size=None, num_workers=self.num_workers,
                            prefetch_factor=self.prefetch_factor, generator=torch.Generator().manual_seed(0))
        for batch in loader:
            cursor = batch.pop("cursor")
            self._cursor = StreamCursor(int(cursor["epoch"]), int(cursor["offset"]))
            yield batch

    def state_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self._cursor)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._cursor = StreamCursor(int(state["epoch"]), int(state["offset"]))


def trim_batch(batch: dict[str, Any], mask: str, multiple: int = 8) -> dict[str, Any]:
    """Dynamic padding: every array of the mask's width T is cut after the batch's last masked-in
    column, rounded up to `multiple` (never past T); other arrays pass through.

    Args:
        batch: name -> numpy array or torch tensor, [N, ...] each.
        mask: the name of the 0/1 mask [N, T] (e.g. attention_mask); positions cut are 0 in every row.
        multiple: the kept width's granularity (8 keeps matmuls on tensor-core-friendly shapes).
    """
    width = batch[mask].shape[1]
    # The last column any row uses: a cumulative count peaks there first (numpy and torch alike).
    longest = int(batch[mask].any(0).cumsum(0).argmax()) + 1
    keep = min(width, -(-longest // multiple) * multiple)
    return {name: array[:, :keep] if array.ndim == 2 and array.shape[1] == width else array
            for name, array in batch.items()}


class ArrayLoader:
    """Seeded, resumable batches over in-memory arrays (fine-tuning data).

    Epoch e visits the examples in a permutation seeded by (seed, e); the cursor is (epoch,
    offset). Training drops each epoch's last partial batch, as the original's drop_remainder.

    With several workers, each step takes the next `batch_size * world_size` examples of the
    epoch's order and worker r gets every world_size-th of them from r on, so the cursor is global
    and a run resumes on any number of workers with the same examples.

    Args:
        arrays: name -> array [N, ...]; every array has the same N.
        batch_size: examples per batch on this worker.
        seed: seeds the per-epoch permutations.
        shuffle: permute (training) or keep the order (eval / predict).
        repeat: endless epochs (training) or one pass.
        drop_last: drop a last partial step.
        rank, world_size: this worker and the number of workers.
        trim_by: the name of a 0/1 mask array [N, T]: every array of width T is cut to the batch's
            longest masked-in length, rounded up to `trim_multiple` (dynamic padding; the trailing
            positions cut are padding in every row, so the model's outputs for real tokens do not
            change). None keeps max_seq_length (static shapes, e.g. for XLA).
    """

    def __init__(self, arrays: dict[str, np.ndarray], batch_size: int, seed: int = 0, shuffle: bool = True,
                 repeat: bool = True, drop_last: bool = True, rank: int = 0, world_size: int = 1,
                 trim_by: str | None = None, trim_multiple: int = 8):
        sizes = {len(a) for a in arrays.values()}
        if len(sizes) != 1:
            raise ValueError(f"arrays of different lengths: { {k: len(a) for k, a in arrays.items()} }")
        self.arrays = arrays
        self.num_examples = sizes.pop()
        if self.num_examples == 0 or (drop_last and self.num_examples < batch_size * world_size):
            raise ValueError(f"{self.num_examples} examples cannot fill one step of {batch_size} x {world_size} "
                             "workers; lower the batch size or add data")
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        self.repeat = repeat
        self.drop_last = drop_last
        self.trim_by = trim_by
        self.trim_multiple = trim_multiple
        self._cursor = StreamCursor()

    def __len__(self) -> int:
        full, rest = divmod(self.num_examples, self.batch_size * self.world_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        epoch, offset = self._cursor.epoch, self._cursor.offset
        while True:
            order = (np.random.default_rng([self.seed, epoch]).permutation(self.num_examples) if self.shuffle
                     else np.arange(self.num_examples))
            step = self.batch_size * self.world_size
            for start in range(offset, self.num_examples, step):
                index = order[start:start + step]
                if len(index) < step and self.drop_last:
                    break
                self._cursor = StreamCursor(epoch, start + len(index))
                mine = index[self.rank::self.world_size]
                yield self._batch(mine)
            if not self.repeat:
                return
            epoch, offset = epoch + 1, 0
            self._cursor = StreamCursor(epoch, 0)

    def _batch(self, index: np.ndarray) -> dict[str, torch.Tensor]:
        batch = {name: array[index] for name, array in self.arrays.items()}
        if self.trim_by is not None:
            batch = trim_batch(batch, self.trim_by, self.trim_multiple)
        return {name: torch.from_numpy(np.ascontiguousarray(array)) for name, array in batch.items()}

    def state_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self._cursor)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._cursor = StreamCursor(int(state["epoch"]), int(state["offset"]))
