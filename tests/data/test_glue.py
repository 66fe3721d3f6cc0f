"""Classification data (jobs/data/glue.py): the shared copies read through their layouts, every task's
GLUE-release layout, features, the seeded holdout split, GLUE's metrics (by hand and against scipy /
sklearn where installed), the original's output files, and every bad-input error."""

from __future__ import annotations

import csv
import gzip
import json
from collections import Counter
from pathlib import Path

import fsspec
import numpy as np
import pytest

from jobs.data import pretraining
from jobs.results import write_eval_results, write_test_results
from jobs.data.glue import (
    SHARED_LAYOUTS,
    TASKS,
    DataError,
    InputExample,
    TableFormat,
    accuracy,
    average_ranks,
    compute_metrics,
    convert_examples_to_arrays,
    f1_score,
    get_task,
    matthews_corrcoef,
    pearson,
    read_examples,
    read_task_split,
    spearman,
    split_holdout,
    xnli_task,
)
from models.tokenization import FullTokenizer

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
DATA = SHARED / "data"


@pytest.fixture(scope="module")
def tokenizer() -> FullTokenizer:
    return FullTokenizer(DATA / "uncased_vocab.txt", do_lower_case=True)


def write(path: Path, text: str, bom: bool = False) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return str(path)


def tsv(*rows: list[str]) -> str:
    return "".join("\t".join(row) + "\n" for row in rows)


# ------------------------------------------------------------------------------ the shared copies


@pytest.mark.parametrize("name, layout, count, counts, first, last", [
    ("cola_train.tsv", "cola", 8551, {"1": 6023, "0": 2528},
     ("our friends wo n't buy this analysis , let alone the next one we propose", "1"),
     ("what all did you get for christmas ?", "1")),
    ("cola_dev.tsv", "cola", 516, {"1": 354, "0": 162},
     ("somebody just left guess who", "1"), ("john talked to bill about himself", "1")),
    ("sst2_train.tsv", "sst2", 6920, {"1": 3610, "0": 3310},
     (("a stirring , funny and finally transporting re imagining of beauty and the beast and 1930s "
       "horror films"), "1"),
     ("a deliciously nonsensical comedy about a city coming apart at its seams", "1")),
    ("sst2_dev.tsv", "sst2", 1821, {"0": 912, "1": 909},
     ("no movement , no yuks , not much of anything", "0"),
     ("but here 's the real damn it is n't funny , either", "0")),
])  # fmt: skip
def test_shared_single_sentence_files(name, layout, count, counts, first, last):
    task = "cola" if layout == "cola" else "sst2"
    examples = read_examples(str(DATA / name), task, SHARED_LAYOUTS[layout], "train")
    assert len(examples) == count
    assert Counter(ex.label for ex in examples) == counts
    assert (examples[0].text_a, examples[0].label) == first
    assert (examples[-1].text_a, examples[-1].label) == last
    assert examples[0].guid == "train-0" and examples[-1].guid == f"train-{count - 1}"
    assert all(ex.text_b is None for ex in examples)


def test_shared_msr_paraphrase_file():
    url = str(DATA / "msr_paraphrase_train.txt")
    examples = read_examples(url, "mrpc", SHARED_LAYOUTS["mrpc_msr"], "train")
    # 4076 MSRP training pairs + 4 rows appended to this copy; the BOM'd header is not an example.
    assert len(examples) == 4080
    assert Counter(ex.label for ex in examples) == {"1": 2755, "0": 1325}
    assert examples[0] == InputExample(
        "train-1",
        'Amrozi accused his brother, whom he called "the witness", of deliberately distorting his evidence.',
        'Referring to him as only "the witness", Amrozi accused his brother of deliberately distorting '
        "his evidence.",
        "1",
    )  # fmt: skip
    assert examples[-1] == InputExample("train-4080", "I very much enjoy hearing birds sing.",
                                        "I find it very satisfying to hear birds singing.", "1")  # fmt: skip
    assert not any("\r" in ex.text_b or "\ufeff" in ex.text_a for ex in examples)
    # The raw MSRP file is GLUE's MRPC train.tsv layout, so the task's own layout reads it too.
    assert read_examples(url, "mrpc", split="train") == examples
    # Why TSV defaults to QUOTE_NONE (the original's quotechar=None): with CSV quoting, the `"` that
    # open ~750 sentences swallow tabs and newlines, and rows merge.
    quoted = TableFormat(has_header=True, text_a_column=3, text_b_column=4, label_column=0,
                         quoting=csv.QUOTE_MINIMAL)  # fmt: skip
    with pytest.raises(DataError, match="has 4 columns, but text_b is column 4"):
        read_examples(url, "mrpc", quoted)


# ------------------------------------------------------------------- GLUE-release layouts, by task

MNLI_TRAIN_HEADER = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse",
                     "sentence2_binary_parse", "sentence1_parse", "sentence2_parse", "sentence1",
                     "sentence2", "label1", "gold_label"]  # fmt: skip
MNLI_DEV_HEADER = MNLI_TRAIN_HEADER[:11] + ["label2", "label3", "label4", "label5", "gold_label"]
MNLI_TEST_HEADER = MNLI_TRAIN_HEADER[:10]
XNLI_HEADER = ["language", "gold_label", "sentence1_binary_parse", "sentence2_binary_parse",
               "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "promptID", "pairID",
               "genre", "label1", "label2", "label3", "label4", "label5", "sentence1_tokenized",
               "sentence2_tokenized", "match"]  # fmt: skip


def row(header: list[str], **cells: str) -> list[str]:
    """A row of `header`'s columns: the named cells, "-" elsewhere."""
    return [cells.pop(name, "-") for name in header]


def mnli_row(header: list[str], pair_id: str, s1: str, s2: str, label: str | None) -> list[str]:
    cells = {"index": pair_id, "sentence1": s1, "sentence2": s2, "label1": "neutral"}
    if label is not None:
        cells["gold_label"] = label
    return row(header, **cells)


def ex(guid: str, a: str, b: str | None = None, label: str | float | None = None) -> InputExample:
    return InputExample(guid, a, b, label)


# task -> {file name: (contents, split, expected examples)}, the contents as the GLUE/XNLI release.
GLUE_FILES: dict[str, dict[str, tuple[str, str, list[InputExample]]]] = {
    "cola": {
        "train.tsv": (tsv(["gj04", "1", "", "Our friends won't buy this analysis."],
                          ["gj04", "0", "*", "They drank the pub."]), "train",
                      [ex("train-0", "Our friends won't buy this analysis.", label="1"),
                       ex("train-1", "They drank the pub.", label="0")]),
        "dev.tsv": (tsv(["gj04", "1", "", 'He said "hi.']), "dev", [ex("dev-0", 'He said "hi.', label="1")]),
        "test.tsv": (tsv(["index", "sentence"], ["0", "Bill whistled past the house."]), "test",
                     [ex("test-1", "Bill whistled past the house.")]),
    },
    "sst2": {
        "train.tsv": (tsv(["sentence", "label"], ["hide new secretions ", "0"], ["it 's a charming journey", "1"]),
                      "train", [ex("train-1", "hide new secretions ", label="0"),
                                ex("train-2", "it 's a charming journey", label="1")]),
        "dev.tsv": (tsv(["sentence", "label"], ["unflinchingly bleak", "0"]), "dev",
                    [ex("dev-1", "unflinchingly bleak", label="0")]),
        "test.tsv": (tsv(["index", "sentence"], ["0", "uneasy mishmash"]), "test", [ex("test-1", "uneasy mishmash")]),
    },
    "mrpc": {
        "train.tsv": (tsv(["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
                          ["1", "702876", "702977", 'He called "the witness".', "Referring to him."]),
                      "train", [ex("train-1", 'He called "the witness".', "Referring to him.", "1")]),
        "dev.tsv": (tsv(["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"], ["0", "1", "2", "A.", "B."]),
                    "dev", [ex("dev-1", "A.", "B.", "0")]),
        "test.tsv": (tsv(["index", "#1 ID", "#2 ID", "#1 String", "#2 String"], ["0", "1089874", "1089925", "C.", "D."]),
                     "test", [ex("test-1", "C.", "D.")]),
    },
    "stsb": {
        "train.tsv": (tsv(["index", "genre", "filename", "year", "old_index", "source1", "source2",
                           "sentence1", "sentence2", "score"],
                          ["0", "main-captions", "MSRvid", "2012test", "0001", "none", "none",
                           "A plane is taking off.", "An air plane is taking off.", "5.000"]),
                      "train", [ex("train-0", "A plane is taking off.", "An air plane is taking off.", 5.0)]),
        "dev.tsv": (tsv(["index", "genre", "filename", "year", "old_index", "source1", "source2",
                         "sentence1", "sentence2", "score"],
                        ["7", "g", "f", "y", "o", "s", "s", "A man.", "A woman.", "1.25"]),
                    "dev", [ex("dev-7", "A man.", "A woman.", 1.25)]),
        "test.tsv": (tsv(["index", "genre", "filename", "year", "old_index", "source1", "source2",
                          "sentence1", "sentence2"],
                         ["3", "g", "f", "y", "o", "s", "s", "A girl.", "A boy."]),
                     "test", [ex("test-3", "A girl.", "A boy.")]),
    },
    "qqp": {
        "train.tsv": (tsv(["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
                          ["133273", "213221", "213222", "How is life?", "Which level?", "0"]),
                      "train", [ex("train-133273", "How is life?", "Which level?", "0")]),
        "dev.tsv": (tsv(["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
                        ["5", "1", "2", "Q1?", "Q2?", "1"]), "dev", [ex("dev-5", "Q1?", "Q2?", "1")]),
        "test.tsv": (tsv(["id", "question1", "question2"], ["0", "Why?", "How?"]), "test",
                     [ex("test-0", "Why?", "How?")]),
    },
    "mnli": {
        "train.tsv": (tsv(MNLI_TRAIN_HEADER, mnli_row(MNLI_TRAIN_HEADER, "31193", "P1.", "H1.", "neutral")),
                      "train", [ex("train-31193", "P1.", "H1.", "neutral")]),
        "dev_matched.tsv": (tsv(MNLI_DEV_HEADER, mnli_row(MNLI_DEV_HEADER, "9815", "P2.", "H2.", "entailment")),
                            "dev", [ex("dev-9815", "P2.", "H2.", "entailment")]),
        "dev_mismatched.tsv": (tsv(MNLI_DEV_HEADER, mnli_row(MNLI_DEV_HEADER, "1", "P3.", "H3.", "contradiction")),
                               "dev_mismatched", [ex("dev_mismatched-1", "P3.", "H3.", "contradiction")]),
        "test_matched.tsv": (tsv(MNLI_TEST_HEADER, mnli_row(MNLI_TEST_HEADER, "0", "P4.", "H4.", None)),
                             "test", [ex("test-0", "P4.", "H4.")]),
        "test_mismatched.tsv": (tsv(MNLI_TEST_HEADER, mnli_row(MNLI_TEST_HEADER, "2", "P5.", "H5.", None)),
                                "test_mismatched", [ex("test_mismatched-2", "P5.", "H5.")]),
    },
    "mnli-mm": {
        "train.tsv": (tsv(MNLI_TRAIN_HEADER, mnli_row(MNLI_TRAIN_HEADER, "7", "P0.", "H0.", "entailment")),
                      "train", [ex("train-7", "P0.", "H0.", "entailment")]),
        "dev_mismatched.tsv": (tsv(MNLI_DEV_HEADER, mnli_row(MNLI_DEV_HEADER, "1", "P3.", "H3.", "neutral")),
                               "dev", [ex("dev-1", "P3.", "H3.", "neutral")]),
        "test_mismatched.tsv": (tsv(MNLI_TEST_HEADER, mnli_row(MNLI_TEST_HEADER, "2", "P5.", "H5.", None)),
                                "test", [ex("test-2", "P5.", "H5.")]),
    },
    "qnli": {
        "train.tsv": (tsv(["index", "question", "sentence", "label"], ["0", "When?", "Then.", "entailment"]),
                      "train", [ex("train-0", "When?", "Then.", "entailment")]),
        "dev.tsv": (tsv(["index", "question", "sentence", "label"], ["4", "Who?", "Nobody.", "not_entailment"]),
                    "dev", [ex("dev-4", "Who?", "Nobody.", "not_entailment")]),
        "test.tsv": (tsv(["index", "question", "sentence"], ["0", "What?", "That."]), "test",
                     [ex("test-0", "What?", "That.")]),
    },
    "rte": {
        "train.tsv": (tsv(["index", "sentence1", "sentence2", "label"], ["0", "S1.", "S2.", "not_entailment"]),
                      "train", [ex("train-0", "S1.", "S2.", "not_entailment")]),
        "dev.tsv": (tsv(["index", "sentence1", "sentence2", "label"], ["1", "S3.", "S4.", "entailment"]),
                    "dev", [ex("dev-1", "S3.", "S4.", "entailment")]),
        "test.tsv": (tsv(["index", "sentence1", "sentence2"], ["0", "S5.", "S6."]), "test", [ex("test-0", "S5.", "S6.")]),
    },
    "wnli": {
        "train.tsv": (tsv(["index", "sentence1", "sentence2", "label"], ["0", "I stuck a pin.", "I stuck it.", "1"]),
                      "train", [ex("train-0", "I stuck a pin.", "I stuck it.", "1")]),
        "dev.tsv": (tsv(["index", "sentence1", "sentence2", "label"], ["2", "W1.", "W2.", "0"]),
                    "dev", [ex("dev-2", "W1.", "W2.", "0")]),
        "test.tsv": (tsv(["index", "sentence1", "sentence2"], ["0", "W3.", "W4."]), "test", [ex("test-0", "W3.", "W4.")]),
    },
    "xnli": {
        # The original's XnliProcessor: "contradictory" in the translated train file.
        "multinli/multinli.train.zh.tsv": (
            tsv(["premise", "hypo", "label"], ["前提。", "假设。", "contradictory"], ["前提二。", "假设二。", "neutral"]),
            "train", [ex("train-1", "前提。", "假设。", "contradiction"), ex("train-2", "前提二。", "假设二。", "neutral")]),
        "xnli.dev.tsv": (
            tsv(XNLI_HEADER, row(XNLI_HEADER, language="en", gold_label="neutral", sentence1="E.", sentence2="F."),
                row(XNLI_HEADER, language="zh", gold_label="entailment", sentence1="中一。", sentence2="中二。")),
            "dev", [ex("dev-2", "中一。", "中二。", "entailment")]),
        "xnli.test.tsv": (
            tsv(XNLI_HEADER, row(XNLI_HEADER, language="zh", gold_label="contradiction", sentence1="T.", sentence2="U.")),
            "test", [ex("test-1", "T.", "U.", "contradiction")]),
    },
}  # fmt: skip


def test_every_registered_task_has_a_layout_test():
    assert set(GLUE_FILES) == set(TASKS)


@pytest.mark.parametrize("task", sorted(GLUE_FILES))
def test_glue_release_layouts(task, tmp_path):
    spec = get_task(task)
    for file_name, (contents, split, expected) in GLUE_FILES[task].items():
        write(tmp_path / file_name, contents)
        assert spec.split(split).file_name == file_name
        examples = read_task_split(str(tmp_path), spec, split)
        assert examples == expected, (task, file_name)
    for split in spec.splits:  # every split of the task has a file above
        assert spec.split(split).file_name in GLUE_FILES[task]


def test_task_registry():
    assert get_task("SST-2") is TASKS["sst2"] and get_task("STS-B") is TASKS["stsb"]
    assert get_task("MNLI-MM") is TASKS["mnli-mm"] and get_task("CoLA") is TASKS["cola"]
    assert TASKS["mnli"].label_list == ("contradiction", "entailment", "neutral")  # the original's
    assert TASKS["xnli"].label_list == ("contradiction", "entailment", "neutral")
    assert TASKS["mrpc"].label_list == TASKS["cola"].label_list == ("0", "1")
    assert TASKS["qnli"].label_list == TASKS["rte"].label_list == ("entailment", "not_entailment")
    assert TASKS["stsb"].is_regression and TASKS["stsb"].num_labels == 1
    assert [name for name, spec in TASKS.items() if spec.is_regression] == ["stsb"]
    assert TASKS["mnli-mm"].split("dev").file_name == "dev_mismatched.tsv"
    assert TASKS["mnli"].split("dev").file_name == "dev_matched.tsv"
    de = xnli_task("de")
    assert de.split("train").file_name == "multinli/multinli.train.de.tsv"
    assert de.split("dev").fmt.filter_value == "de"


# --------------------------------------------------------------------------- other file formats


def test_csv_jsonl_gzip_bom_and_memory_urls(tmp_path):
    csv_url = write(tmp_path / "d.csv", 'id,text,label\r\n7,"Hello, ""world""",1\r\n8,plain,0\r\n', bom=True)
    fmt = TableFormat(delimiter=",", has_header=True, text_a_column="text", label_column="label",
                      guid_column="id")  # fmt: skip
    assert read_examples(csv_url, "sst2", fmt, "dev") == [ex("dev-7", 'Hello, "world"', label="1"),
                                                          ex("dev-8", "plain", label="0")]  # fmt: skip

    jsonl = ('{"q": "Is it?", "p": "It is.", "y": 1}\n\n'
             '{"q": "Was it?", "p": "No.", "y": "0"}\n')  # fmt: skip
    fmt = TableFormat(file_format="jsonl", text_a_column="q", text_b_column="p", label_column="y")
    expected = [ex("train-0", "Is it?", "It is.", "1"), ex("train-2", "Was it?", "No.", "0")]
    assert read_examples(write(tmp_path / "d.jsonl", jsonl), "mrpc", fmt) == expected
    arrays = '["Is it?", "It is.", 1.5]\n'
    fmt = TableFormat(file_format="jsonl", text_a_column=0, text_b_column=1, label_column=-1)
    assert read_examples(write(tmp_path / "a.jsonl", arrays), "stsb", fmt) == [
        ex("train-0", "Is it?", "It is.", 1.5)]  # fmt: skip

    gz = tmp_path / "cola.tsv.gz"
    gz.write_bytes(gzip.compress(tsv(["a sentence", "1"]).encode()))
    assert read_examples(str(gz), "cola", SHARED_LAYOUTS["cola"]) == [ex("train-0", "a sentence", label="1")]

    with fsspec.open("memory://glue/sst2.tsv", "wb") as f:
        f.write(tsv(["0", "bad"]).encode())
    assert read_examples("memory://glue/sst2.tsv", "sst2", SHARED_LAYOUTS["sst2"])[0].text_a == "bad"


# ------------------------------------------------------------------------------------- features


def test_convert_examples_to_arrays_layout(tokenizer):
    examples = [ex("a", "the cat sat", "on the mat", "1"), ex("b", "hello world", None, "0"),
                ex("c", "the dog " * 20, "a b c d e f g h i j", None)]  # fmt: skip
    arrays = convert_examples_to_arrays(examples, ["0", "1"], tokenizer, max_seq_length=12)
    assert set(arrays) == {"input_ids", "input_mask", "segment_ids", "label_ids"}
    for name in ("input_ids", "input_mask", "segment_ids"):
        assert arrays[name].dtype == np.int64 and arrays[name].shape == (3, 12)
    assert arrays["label_ids"].dtype == np.int64 and arrays["label_ids"].tolist() == [1, 0, 0]
    tokens = [tokenizer.convert_ids_to_tokens(ids) for ids in arrays["input_ids"]]
    assert tokens[0][:10] == ["[CLS]", "the", "cat", "sat", "[SEP]", "on", "the", "mat", "[SEP]", "[PAD]"]
    assert arrays["segment_ids"][0].tolist() == [0] * 5 + [1] * 4 + [0] * 3
    assert arrays["input_mask"][0].tolist() == [1] * 9 + [0] * 3
    assert tokens[1][:4] == ["[CLS]", "hello", "world", "[SEP]"]
    assert arrays["input_mask"][1].tolist() == [1] * 4 + [0] * 8 and not arrays["segment_ids"][1].any()
    # The original's truncation to 12 - 3 = 9 tokens: pop from the longer (B when equal), so 40 + 10
    # tokens end as 5 + 4.
    assert tokens[2] == ["[CLS]", "the", "dog", "the", "dog", "the", "[SEP]", "a", "b", "c", "d", "[SEP]"]
    assert arrays["input_mask"][2].all()
    # Row for row what the tokenizer's single-example encode gives.
    for i, example in enumerate(examples):
        single = tokenizer.encode(example.text_a, example.text_b, 12)
        assert np.array_equal(single.input_ids, arrays["input_ids"][i])
        assert np.array_equal(single.segment_ids, arrays["segment_ids"][i])


def test_convert_regression_and_label_errors(tokenizer):
    arrays = convert_examples_to_arrays([ex("a", "x", "y", 3.8), ex("b", "x", "y", None)], [],
                                        tokenizer, 8, is_regression=True)  # fmt: skip
    assert arrays["label_ids"].dtype == np.float32 and arrays["label_ids"].tolist() == [np.float32(3.8), 0.0]
    with pytest.raises(DataError, match=r"example dev-3: label '2' is not one of \['0', '1'\]"):
        convert_examples_to_arrays([ex("dev-3", "x", None, "2")], ["0", "1"], tokenizer, 8)
    with pytest.raises(DataError, match="example e: label 'high' is not a number"):
        convert_examples_to_arrays([ex("e", "x", None, "high")], [], tokenizer, 8, is_regression=True)


def test_shared_file_end_to_end(tokenizer):
    examples = read_examples(str(DATA / "cola_dev.tsv"), "cola", SHARED_LAYOUTS["cola"], "dev")
    arrays = convert_examples_to_arrays(examples, TASKS["cola"].label_list, tokenizer, 64)
    assert arrays["input_ids"].shape == (516, 64)
    assert arrays["label_ids"].tolist() == [int(e.label) for e in examples]
    assert (arrays["input_ids"][:, 0] == tokenizer.vocab["[CLS]"]).all()


# --------------------------------------------------------------------------------- holdout split


def test_split_holdout_is_seeded_deterministic_and_disjoint():
    examples = read_examples(str(DATA / "msr_paraphrase_train.txt"), "mrpc", SHARED_LAYOUTS["mrpc_msr"])
    train, dev = split_holdout(examples, 0.1, seed=12345)
    assert len(dev) == 408 and len(train) == 4080 - 408
    assert split_holdout(examples, 0.1, seed=12345) == (train, dev)
    assert {e.guid for e in train}.isdisjoint(e.guid for e in dev)
    assert sorted([e.guid for e in train + dev]) == sorted(e.guid for e in examples)
    order = {e.guid: i for i, e in enumerate(examples)}
    assert [order[e.guid] for e in dev] == sorted(order[e.guid] for e in dev)  # input order kept
    assert split_holdout(examples, 0.1, seed=1)[1] != dev
    # Pinned: the split depends on (seed, position) only, not on library versions.
    assert split_holdout(list(range(10)), 0.3, seed=0) == ([0, 1, 2, 3, 5, 7, 8], [4, 6, 9])
    assert split_holdout(list(range(5)), 0.01, seed=0)[1].__len__() == 1  # at least one each side
    assert len(split_holdout(list(range(5)), 0.99, seed=0)[0]) == 1


@pytest.mark.parametrize("fraction, n", [(0.0, 10), (1.0, 10), (-0.1, 10), (0.5, 1)])
def test_split_holdout_rejects(fraction, n):
    with pytest.raises(DataError):
        split_holdout(list(range(n)), fraction, seed=0)


# --------------------------------------------------------------------------------------- metrics


def test_metrics_by_hand():
    assert accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5
    # TP=2, FP=1, FN=1, TN=1.
    p, y = [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]
    assert f1_score(p, y) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert matthews_corrcoef(p, y) == pytest.approx((2 * 1 - 1 * 1) / np.sqrt(3 * 3 * 2 * 2))
    assert f1_score([0, 0], [0, 0]) == 0.0  # no positives: sklearn's zero_division=0
    assert matthews_corrcoef([1, 1, 1], [0, 1, 0]) == 0.0  # undefined: one predicted class
    assert matthews_corrcoef([0, 1, 1], [0, 1, 1]) == 1.0 and matthews_corrcoef([1, 0], [0, 1]) == -1.0
    # Multi-class: t = [2, 1, 1], p = [2, 0, 2], 3 correct of 4: (12 - 6) / sqrt((16 - 6) (16 - 8)).
    assert matthews_corrcoef([0, 2, 2, 0], [0, 1, 2, 0]) == pytest.approx(6 / np.sqrt(80))
    x, y2 = [1, 2, 3, 4], [2, 4, 5, 4]
    assert pearson(x, y2) == pytest.approx(3.5 / np.sqrt(5 * 4.75))
    assert average_ranks([10, 20, 10, 30, 20, 20]).tolist() == [1.5, 4.0, 1.5, 6.0, 4.0, 4.0]
    assert spearman(x, y2) == pytest.approx(3 / np.sqrt(5 * 4.5))  # y ranks [1, 2.5, 4, 2.5]
    assert np.isnan(pearson([1, 1, 1], [1, 2, 3])) and np.isnan(spearman([2, 2], [1, 2]))
    with pytest.raises(ValueError, match="equally many"):
        accuracy([1, 0], [1])


def test_metrics_against_scipy():
    stats = pytest.importorskip("scipy.stats", reason="scipy is not installed")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 6, 500) / 5.0  # STS-B-like scores, many ties
    y = np.clip(x + rng.normal(0, 0.3, 500), 0, 5).round(1)
    assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)
    assert np.array_equal(average_ranks(y), stats.rankdata(y, method="average"))
    # Binary MCC is the phi coefficient: the Pearson correlation of the 0/1 vectors.
    p, t = rng.integers(0, 2, 300), rng.integers(0, 2, 300)
    assert matthews_corrcoef(p, t) == pytest.approx(stats.pearsonr(p, t)[0], abs=1e-12)


def test_metrics_against_sklearn():
    sk = pytest.importorskip("sklearn.metrics", reason="scikit-learn is not installed (numpy-only "
                             "metrics are checked by hand and against scipy instead)")  # fmt: skip
    rng = np.random.default_rng(1)
    for num_classes in (2, 3):
        p, t = rng.integers(0, num_classes, 400), rng.integers(0, num_classes, 400)
        assert accuracy(p, t) == pytest.approx(sk.accuracy_score(t, p))
        assert matthews_corrcoef(p, t) == pytest.approx(sk.matthews_corrcoef(t, p))
    p, t = rng.integers(0, 2, 400), rng.integers(0, 2, 400)
    assert f1_score(p, t) == pytest.approx(sk.f1_score(t, p))


def test_compute_metrics_per_task():
    logits = np.array([[0.1, 0.9], [2.0, -1.0], [0.3, 0.4], [1.0, 0.0]])  # argmax 1, 0, 1, 0
    labels = np.array([1, 0, 0, 0])
    mrpc = compute_metrics("mrpc", logits, labels)
    assert mrpc == {"eval_accuracy": 0.75, "eval_f1": pytest.approx(2 / 3)}
    assert set(compute_metrics("QQP", logits, labels)) == {"eval_accuracy", "eval_f1"}
    cola = compute_metrics("cola", [1, 0, 1, 0], labels)
    assert cola == {"eval_accuracy": 0.75, "eval_mcc": pytest.approx(1 / np.sqrt(3))}
    for task in ("sst2", "mnli", "mnli-mm", "qnli", "rte", "wnli", "xnli"):
        assert set(compute_metrics(task, [0, 1], [0, 1])) == {"eval_accuracy"}
    stsb = compute_metrics("sts-b", np.array([[1.0], [2.0], [3.0], [4.0]]), [2.0, 4.0, 5.0, 4.0])
    assert stsb == {"eval_pearson": pytest.approx(3.5 / np.sqrt(23.75)),
                    "eval_spearmanr": pytest.approx(3 / np.sqrt(22.5))}  # fmt: skip
    assert all(type(v) is float for v in {**mrpc, **cola, **stsb}.values())


# --------------------------------------------------------------------------------------- writers


def test_write_eval_results_exact_text(tmp_path):
    out = tmp_path / "out" / "nested"  # created
    url = write_eval_results(str(out), {"global_step": 343, "eval_loss": np.float32(0.25),
                                        "eval_accuracy": 0.8431372549019608})  # fmt: skip
    assert url == str(out / "eval_results.txt")
    assert (out / "eval_results.txt").read_bytes() == (
        b"eval_accuracy = 0.8431372549019608\neval_loss = 0.25\nglobal_step = 343\n")


def test_write_test_results_exact_text(tmp_path):
    probabilities = np.array([[0.1, 0.9], [0.25, 0.75], [1.0, 3e-08]], dtype=np.float32)
    write_test_results(str(tmp_path), probabilities)
    assert (tmp_path / "test_results.tsv").read_bytes() == b"0.1\t0.9\n0.25\t0.75\n1.0\t3e-08\n"
    write_test_results("memory://results/", [[0.5, 0.25, 0.25]])
    with fsspec.open("memory://results/test_results.tsv", "rb") as f:
        assert f.read() == b"0.5\t0.25\t0.25\n"
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        write_test_results(str(tmp_path), [0.5, 0.5])


# ------------------------------------------------------------------------------------ bad input


def test_data_error_is_the_pretraining_one():
    assert DataError is pretraining.DataError and issubclass(DataError, ValueError)


def test_missing_file(tmp_path):
    missing = str(tmp_path / "nope.tsv")
    with pytest.raises(DataError, match=f"data file '{missing}' does not exist"):
        read_examples(missing, "cola", SHARED_LAYOUTS["cola"])
    with pytest.raises(DataError, match="dev.tsv' does not exist"):
        read_task_split(str(tmp_path), "rte", "dev")


def test_row_with_too_few_columns(tmp_path):
    url = write(tmp_path / "short.tsv", tsv(["0", "fine"], ["1"], ["0", "never reached"]))
    with pytest.raises(DataError) as err:
        read_examples(url, "sst2", SHARED_LAYOUTS["sst2"])
    assert str(err.value).startswith(f"{url}: line 2 has 1 columns, but text_a is column 1;")
    url = write(tmp_path / "msr.tsv", tsv(["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
                                          ["1", "2", "3", "only a"]))  # fmt: skip
    with pytest.raises(DataError, match=r"msr.tsv: line 2 has 4 columns, but text_b is column 4 \('#2 String'\)"):
        read_examples(url, "mrpc", SHARED_LAYOUTS["mrpc_msr"])


def test_label_not_in_the_task(tmp_path):
    url = write(tmp_path / "cola.tsv", tsv(["good", "1"], ["bad", "2"]))
    with pytest.raises(DataError) as err:
        read_examples(url, "cola", SHARED_LAYOUTS["cola"])
    assert str(err.value) == (f"{url}: line 2: label '2' is not one of ['0', '1'] (task 'cola'); "
                              "fix the file or the TableFormat's label column")  # fmt: skip
    # SST-2 read with the CoLA layout: the sentence lands in the label column.
    with pytest.raises(DataError, match=r"line 1: label 'a stirring , funny .*' is not one of"):
        read_examples(str(DATA / "sst2_train.tsv"), "sst2", SHARED_LAYOUTS["cola"])
    url = write(tmp_path / "stsb.tsv", tsv(["a", "b", "high"]))
    with pytest.raises(DataError, match="line 1: label 'high' is not a number"):
        read_examples(url, "stsb", TableFormat(text_a_column=0, text_b_column=1, label_column=2))


def test_header_column_that_does_not_exist(tmp_path):
    url = write(tmp_path / "h.tsv", tsv(["sentence", "label"], ["x", "1"]), bom=True)
    fmt = TableFormat(has_header=True, text_a_column="sentence", label_column="gold")
    with pytest.raises(DataError, match=r"line 1 \(the header\) has no column 'gold' for the label; "
                                        r"its columns are \['sentence', 'label'\]"):  # fmt: skip
        read_examples(url, "sst2", fmt)
    # The BOM is not part of the first header name.
    fmt = TableFormat(has_header=True, text_a_column="sentence", label_column="label")
    assert read_examples(url, "sst2", fmt) == [ex("train-1", "x", label="1")]


def test_empty_and_header_only_files(tmp_path):
    with pytest.raises(DataError, match="empty.tsv has no rows; expected train examples of task 'cola'"):
        read_examples(write(tmp_path / "empty.tsv", ""), "cola", SHARED_LAYOUTS["cola"])
    with pytest.raises(DataError, match="blank.tsv has no rows"):
        read_examples(write(tmp_path / "blank.tsv", "\n\n", bom=True), "cola", SHARED_LAYOUTS["cola"])
    with pytest.raises(DataError, match="header.tsv has only a header row"):
        read_examples(write(tmp_path / "header.tsv", tsv(["index", "sentence"])), "cola", split="test")
    url = write(tmp_path / "xnli.dev.tsv", tsv(XNLI_HEADER, row(XNLI_HEADER, language="en", gold_label="neutral")))
    with pytest.raises(DataError, match="none of its 1 rows has 'zh' in column 0"):
        read_examples(url, "xnli", split="dev")


def test_other_bad_input(tmp_path):
    with pytest.raises(DataError, match="unknown task 'glue'"):
        get_task("glue")
    with pytest.raises(DataError, match=r"task 'cola' has no split 'dev_matched'"):
        read_task_split(str(tmp_path), "cola", "dev_matched")
    with pytest.raises(DataError, match="names column 'text' but the file has no header"):
        TableFormat(text_a_column="text")
    with pytest.raises(DataError, match="delimiter must be one character"):
        TableFormat(delimiter="||")
    url = write(tmp_path / "bad.jsonl", '{"text": "a", "label": "1"}\n{"text": \n')
    fmt = TableFormat(file_format="jsonl", text_a_column="text", label_column="label")
    with pytest.raises(DataError, match="bad.jsonl: line 2 is not valid JSON"):
        read_examples(url, "sst2", fmt)
    url = write(tmp_path / "keys.jsonl", json.dumps({"sentence": "a", "label": "1"}) + "\n")
    expected = r"keys.jsonl: line 1 has no key 'text' for text_a; its keys are \['label', 'sentence'\]"
    with pytest.raises(DataError, match=expected):
        read_examples(url, "sst2", fmt)
    latin1 = tmp_path / "latin1.tsv"
    latin1.write_bytes("caf\xe9\t1\n".encode("latin-1"))
    with pytest.raises(DataError, match="latin1.tsv is not valid UTF-8"):
        read_examples(str(latin1), "cola", SHARED_LAYOUTS["cola"])
