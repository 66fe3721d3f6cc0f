"""Sharded, deterministic, resumable streams: every record to one rank, reproducible order, and
resume on the same or another world size with no record twice and none skipped."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from jobs.data.dataset import (
    ArrayLoader,
    DynamicMasker,
    PretrainingBatches,
    RecordStream,
    ResumableLoader,
    StreamCursor,
    pretraining_features,
    trim_batch,
)
from jobs.data.pretraining import PretrainingDataConfig
from jobs.data.tfrecord import write_examples
from models.tokenization import FullTokenizer

SEQ, PRED = 16, 4
FEATURES = pretraining_features(SEQ, PRED)
FILE_SIZES = (37, 23, 41)
NUM_RECORDS = sum(FILE_SIZES)


def _example(n: int) -> dict:
    ids = [101] + [1000 + (n * 7 + k) % 500 for k in range(SEQ - 2)] + [102]
    return {"input_ids": ids, "input_mask": [1] * SEQ, "segment_ids": [0] * SEQ,
            "masked_lm_positions": [1, 2, 3, 0], "masked_lm_ids": ids[1:4] + [0],
            "masked_lm_weights": [1.0, 1.0, 1.0, 0.0], "next_sentence_labels": [n % 2]}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("records")
    n = 0
    for k, size in enumerate(FILE_SIZES):
        write_examples(str(root / f"part-{k}.tfrecord"), [_example(n + i) for i in range(size)])
        n += size
    return str(root / "part-*.tfrecord")


def _take(files, world_size, steps, cursor=None, batch_size=5, seed=3, buffer=16, repeat=True):
    """Runs `steps` steps on every rank; returns per-step record ids (rank-major) and the cursor."""
    loaders = [ResumableLoader(PretrainingBatches(RecordStream(files, seed=seed, shuffle_buffer=buffer), batch_size,
                                                  r, world_size, FEATURES, cursor=cursor, repeat=repeat))
               for r in range(world_size)]
    iters = [iter(loader) for loader in loaders]
    out = []
    for _ in range(steps):
        batches = [next(it) for it in iters]
        ids = np.stack([b["record_ids"].numpy() for b in batches], 1).reshape(-1)  # global order of the step
        out.append(ids.tolist())
    states = {tuple(loader.state_dict().items()) for loader in loaders}
    assert len(states) == 1, "every rank must hold the same cursor"
    return out, StreamCursor(**loaders[0].state_dict())


def test_every_record_goes_to_exactly_one_rank_per_epoch(files):
    seen = []
    for rank in range(3):
        ds = PretrainingBatches(RecordStream(files, seed=1, shuffle_buffer=8), 4, rank, 3, FEATURES, repeat=False)
        seen += [i for batch in ds for i in batch["record_ids"].tolist()]
    assert len(seen) == NUM_RECORDS and len(set(seen)) == NUM_RECORDS


def test_order_is_seeded_and_changes_per_epoch(files):
    a = [r for r, _ in RecordStream(files, seed=1, shuffle_buffer=8).epoch(0)]
    assert a == [r for r, _ in RecordStream(files, seed=1, shuffle_buffer=8).epoch(0)]
    assert a != [r for r, _ in RecordStream(files, seed=2, shuffle_buffer=8).epoch(0)]
    assert a != [r for r, _ in RecordStream(files, seed=1, shuffle_buffer=8).epoch(1)]
    assert sorted(a) == sorted(r for r, _ in RecordStream(files, seed=1, shuffle_buffer=8).epoch(1))


def test_batches_hold_the_pretraining_features(files):
    batch = next(iter(PretrainingBatches(RecordStream(files), 6, features=FEATURES)))
    assert batch["input_ids"].shape == (6, SEQ) and batch["input_ids"].dtype == torch.int64
    assert batch["masked_lm_weights"].dtype == torch.float32 and batch["next_sentence_labels"].shape == (6, 1)


@pytest.mark.parametrize("resume_world_size", [2, 1, 3])
def test_resume_consumes_exactly_the_remaining_records(files, resume_world_size):
    # 2 ranks x 5 records a step: 101 records per epoch, so the run crosses two epoch boundaries.
    full, _ = _take(files, 2, 24)
    head, cursor = _take(files, 2, 9)
    assert head == full[:9]
    consumed = 9 * 10
    assert cursor == StreamCursor(0, consumed)
    remaining = 24 * 10 - consumed
    steps = remaining // (5 * resume_world_size)
    tail, _ = _take(files, resume_world_size, steps, cursor=cursor)
    flat_full = list(itertools.chain(*full))
    flat_resumed = list(itertools.chain(*head, *tail))
    assert flat_resumed == flat_full[:len(flat_resumed)], "none twice, none skipped, same order"
    if resume_world_size == 2:
        assert tail == full[9:]
    # Across the epochs run, each record was consumed once per epoch.
    counts = np.bincount(np.unique(flat_full[:NUM_RECORDS], return_inverse=True)[1])
    assert counts.max() == 1


def test_worker_processes_give_the_same_batches(files):
    def run(num_workers):
        loader = ResumableLoader(PretrainingBatches(RecordStream(files, seed=5, shuffle_buffer=10), 7,
                                                    1, 2, FEATURES), num_workers=num_workers)
        return [b["record_ids"].tolist() + b["input_ids"][:, 1].tolist() for b in itertools.islice(loader, 12)], \
            loader.state_dict()
    assert run(0) == run(2)


def test_dynamic_masking_is_new_each_epoch_and_reproducible(files, shared):
    tokenizer = FullTokenizer(shared / "data" / "uncased_vocab.txt")
    config = PretrainingDataConfig(max_seq_length=SEQ, max_predictions_per_seq=PRED, masked_lm_prob=0.25)

    def epochs(seed):
        masker = DynamicMasker(tokenizer.vocab, config, seed=seed)
        ds = PretrainingBatches(RecordStream(files, shuffle_files=False), NUM_RECORDS, features=FEATURES,
                                masker=masker)
        return [b for b in itertools.islice(ds, 2)]

    e0, e1 = epochs(0)
    assert torch.equal(e0["record_ids"], e1["record_ids"])
    assert not torch.equal(e0["masked_lm_positions"], e1["masked_lm_positions"])
    again = epochs(0)[0]
    assert torch.equal(again["input_ids"], e0["input_ids"])
    # Undoing the mask gives back the original tokens.
    for batch in (e0, e1):
        ids = batch["input_ids"].clone()
        rows = torch.arange(NUM_RECORDS)[:, None].expand(-1, PRED)
        real = batch["masked_lm_weights"] > 0
        ids[rows[real], batch["masked_lm_positions"][real]] = batch["masked_lm_ids"][real]
        expected = torch.tensor([_example(i)["input_ids"] for i in range(NUM_RECORDS)])
        order = torch.tensor([(r >> 32) for r in batch["record_ids"].tolist()])
        assert order.tolist() == sorted(order.tolist())
        assert torch.equal(ids, expected)
        assert (real.sum(1) == 4).all()  # round(16 * 0.25) = 4 predictions


def test_bad_arguments(files, tmp_path):
    with pytest.raises(ValueError, match="rank 2"):
        PretrainingBatches(RecordStream(files), 4, rank=2, world_size=2)
    with pytest.raises(FileNotFoundError):
        RecordStream(str(tmp_path / "none-*.tfrecord"))


def test_array_loader_cuts_batches_to_their_longest_sequence_rounded_to_8():
    lengths = np.array([3, 17, 5, 9, 30, 2])
    mask = (np.arange(32)[None, :] < lengths[:, None]).astype(np.int64)
    arrays = {"input_ids": mask * 7, "input_mask": mask, "segment_ids": np.zeros_like(mask),
              "label_ids": np.arange(6)}
    loader = ArrayLoader(arrays, 2, shuffle=False, repeat=False, trim_by="input_mask")
    widths = [(batch["input_ids"].shape[1], batch["input_mask"].sum(1).tolist(), batch["label_ids"].shape)
              for batch in loader]
    assert widths == [(24, [3, 17], (2,)), (16, [5, 9], (2,)), (32, [30, 2], (2,))]  # nothing real is cut
    static = next(iter(ArrayLoader(arrays, 2, shuffle=False, repeat=False)))
    assert static["input_ids"].shape == (2, 32)


def test_trim_batch_cuts_numpy_and_torch_batches_alike_after_the_last_used_column():
    mask = np.zeros((3, 40), dtype=np.int64)
    mask[0, :5] = 1
    mask[1, 3:12] = 1  # a row that starts late: the last used column (11) decides, not the count (9)
    arrays = {"input_ids": mask * 3, "attention_mask": mask, "start_positions": np.array([1, 4, 0])}
    for batch in (arrays, {name: torch.from_numpy(array) for name, array in arrays.items()}):
        cut = trim_batch(batch, "attention_mask")
        assert cut["input_ids"].shape == (3, 16) and cut["attention_mask"].sum() == mask.sum()
        assert cut["start_positions"].shape == (3,)
    assert trim_batch(arrays, "attention_mask", multiple=64)["input_ids"].shape == (3, 40)  # never past T
    empty = trim_batch({"attention_mask": np.zeros((2, 40), dtype=np.int64)}, "attention_mask")
    assert empty["attention_mask"].shape == (2, 8)
