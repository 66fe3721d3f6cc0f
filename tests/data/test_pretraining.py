"""Creating pretraining data: record-for-record equal to the original create_pretraining_data.py,
and the chunked, parallel mode for corpora larger than memory."""

from __future__ import annotations

import json
import random

import pytest

from jobs.data.pretraining import (DataError, PretrainingDataConfig, create_masked_lm_predictions,
                                   create_pretraining_data, expand_inputs, iter_raw_documents, truncate_seq_pair)
from jobs.data.tfrecord import iter_examples
from models.tokenization import FullTokenizer

FEATURES = ("input_ids", "input_mask", "segment_ids", "masked_lm_positions", "masked_lm_ids",
            "masked_lm_weights", "next_sentence_labels")


@pytest.fixture(scope="module")
def tokenizer(shared):
    return FullTokenizer(shared / "data" / "uncased_vocab.txt", do_lower_case=True)


@pytest.mark.parametrize("wwm", [False, True])
def test_exact_mode_reproduces_the_original_records(shared, tokenizer, tmp_path, wwm):
    config = PretrainingDataConfig(max_seq_length=128, max_predictions_per_seq=20, masked_lm_prob=0.15,
                                   random_seed=12345, dupe_factor=5, do_whole_word_mask=wwm)
    out = tmp_path / "out.tfrecord"
    stats = create_pretraining_data([str(shared / "data" / "sample_text.txt")], [str(out)], tokenizer, config)
    expected = json.loads((shared / "fixtures" / f"sample_text_wwm{wwm}.decoded.json").read_text())
    ours = list(iter_examples(str(out)))
    assert stats.num_instances == len(expected) == len(ours)
    for index, (a, b) in enumerate(zip(ours, expected)):
        for name in FEATURES:
            assert a[name] == b[name], f"record {index}, feature {name}"


def test_round_robin_outputs(shared, tokenizer, tmp_path):
    config = PretrainingDataConfig(dupe_factor=2)
    outs = [str(tmp_path / f"o{k}.tfrecord") for k in range(3)]
    stats = create_pretraining_data([str(shared / "data" / "sample_text.txt")], outs, tokenizer, config)
    counts = [len(list(iter_examples(o))) for o in outs]
    assert sum(counts) == stats.num_instances and max(counts) - min(counts) <= 1


def test_masking_follows_the_80_10_10_rule(tokenizer):
    config = PretrainingDataConfig(max_predictions_per_seq=1000, masked_lm_prob=0.5)
    vocab_words = list(tokenizer.vocab)
    rng = random.Random(0)
    counts = {"mask": 0, "same": 0, "random": 0}
    for _ in range(200):
        tokens = ["[CLS]"] + [f"w{i}" for i in range(60)] + ["[SEP]"]
        masked, positions, labels = create_masked_lm_predictions(tokens, vocab_words, config, rng)
        assert positions == sorted(positions) and 0 not in positions and 61 not in positions
        assert len(positions) == round(62 * 0.5)
        for p, label in zip(positions, labels):
            assert tokens[p] == label
            counts["mask" if masked[p] == "[MASK]" else "same" if masked[p] == label else "random"] += 1
    total = sum(counts.values())
    assert 0.77 < counts["mask"] / total < 0.83
    assert 0.08 < counts["same"] / total < 0.12 and 0.08 < counts["random"] / total < 0.12


def test_whole_word_masking_masks_every_piece(tokenizer):
    config = PretrainingDataConfig(do_whole_word_mask=True, masked_lm_prob=0.3, max_predictions_per_seq=50)
    tokens = ["[CLS]"] + ["un", "##believ", "##able", "cat", "run", "##ning"] * 5 + ["[SEP]"]
    rng = random.Random(1)
    for _ in range(50):
        _, positions, _ = create_masked_lm_predictions(tokens, list(tokenizer.vocab), config, rng)
        chosen = set(positions)
        for start, length in ((1, 3), (5, 2)):
            for k in range(5):
                word = set(range(start + 6 * k, start + 6 * k + length))
                assert word <= chosen or not (word & chosen), "a word must be masked whole or not at all"


def test_truncate_seq_pair_trims_the_longer():
    a, b = list("abcdefgh"), list("xyz")
    truncate_seq_pair(a, b, 6, random.Random(0))
    assert len(a) + len(b) == 6 and len(b) == 3


def test_chunked_mode_is_parallel_deterministic_and_complete(shared, tokenizer, tmp_path):
    source = shared / "data" / "wikitext2_valid.txt"
    # WikiText articles: " = Title = " headers; make blank-line-separated docs of a few hundred lines.
    lines = source.read_text(encoding="utf-8").splitlines()[:600]
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(line if line.strip() else "" for line in lines) + "\n", encoding="utf-8")
    config = PretrainingDataConfig(dupe_factor=1, max_seq_length=64)
    one = create_pretraining_data([str(text)], [str(tmp_path / "a" / "shard")], tokenizer, config,
                                  chunk_documents=20, num_workers=1)
    two = create_pretraining_data([str(text)], [str(tmp_path / "b" / "shard")], tokenizer, config,
                                  chunk_documents=20, num_workers=2, progress=True)
    assert one.num_instances == two.num_instances > 50
    assert len(one.output_files) == len(two.output_files) > 1
    for fa, fb in zip(sorted(one.output_files), sorted(two.output_files)):
        assert list(iter_examples(fa)) == list(iter_examples(fb))
    assert sum(len(list(iter_examples(f))) for f in one.output_files) == one.num_instances


def test_split_sentences_with_a_real_segmenter(tokenizer, tmp_path):
    text = tmp_path / "raw.txt"
    text.write_text("Dr. Smith went to Washington. He arrived at 5 p.m. on Monday! Did he stay? Yes.\n\n"
                    "Another document here. It has two sentences.\n", encoding="utf-8")
    docs = list(iter_raw_documents([str(text)], split_sentences=True))
    assert docs[0] == ["Dr. Smith went to Washington.", "He arrived at 5 p.m. on Monday!", "Did he stay?", "Yes."]
    assert len(docs[1]) == 2


def test_bad_input_is_named(tokenizer, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine line\nsecond \xff\xfe line\n")
    with pytest.raises(DataError, match=r"bad.txt: line 2 is not valid UTF-8 \(byte 17"):
        create_pretraining_data([str(bad)], [str(tmp_path / "o")], tokenizer, PretrainingDataConfig())
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    good = tmp_path / "good.txt"
    good.write_text("one sentence here.\nanother one.\n\n\u200b\n\nthird doc.\nmore.\n")
    stats = create_pretraining_data([str(empty), str(good)], [str(tmp_path / "o")], tokenizer,
                                    PretrainingDataConfig(dupe_factor=1))
    assert stats.empty_files == [str(empty)] and stats.num_empty_documents == 1 and stats.num_documents == 2
    with pytest.raises(DataError, match="no files match"):
        expand_inputs(str(tmp_path / "nothing*.txt"))
    with pytest.raises(DataError, match="masked_lm_prob"):
        PretrainingDataConfig(masked_lm_prob=1.5)
