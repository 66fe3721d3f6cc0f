"""jobs/data/squad.py against the original run_squad.py and the official SQuAD evaluation scripts.

The fixtures (../shared/fixtures/squad, settings in settings.json) are the original code's outputs on
the Normans + Computational_complexity_theory articles of SQuAD 2.0 dev (626 questions): features
for training and evaluation, predictions from fixed logits, and the official v2.0 evaluation of
those predictions. Everything is compared feature by feature and field by field.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest

from jobs.data import squad
from jobs.data.squad import (
    InputFeatures,
    SquadError,
    SquadExample,
    SquadResult,
    convert_examples_to_features,
    evaluate_v1,
    evaluate_v2,
    features_to_arrays,
    get_final_text,
    iter_features,
    load_squad_json,
    read_squad_examples,
    write_prediction_files,
    write_predictions,
)
from models.tokenization import FullTokenizer, basic_tokenize

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
FIXTURES = SHARED / "fixtures" / "squad"
FEATURE_FIELDS = (
    "unique_id", "example_index", "doc_span_index", "tokens", "token_to_orig_map",
    "token_is_max_context", "input_ids", "input_mask", "segment_ids", "start_position",
    "end_position", "is_impossible",
)  # fmt: skip


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def settings() -> dict[str, Any]:
    return json.loads((FIXTURES / "settings.json").read_text())


@pytest.fixture(scope="module")
def data_file(settings: dict[str, Any]) -> Path:
    return SHARED / "data" / settings["data"]


@pytest.fixture(scope="module")
def tokenizer(settings: dict[str, Any]) -> FullTokenizer:
    return FullTokenizer(
        SHARED / "data" / settings["vocab"], do_lower_case=settings["do_lower_case"]
    )


def feature_args(settings: dict[str, Any]) -> dict[str, int]:
    return {k: settings[k] for k in ("max_seq_length", "doc_stride", "max_query_length")}


@pytest.fixture(scope="module")
def eval_examples(settings: dict[str, Any], data_file: Path) -> list[SquadExample]:
    examples, report = read_squad_examples(data_file, False, settings["version_2_with_negative"])
    assert report.num_questions == report.num_examples == len(examples) == 626
    return examples


@pytest.fixture(scope="module")
def eval_features(
    settings: dict[str, Any], tokenizer: FullTokenizer, eval_examples: list[SquadExample]
) -> list[InputFeatures]:
    return convert_examples_to_features(
        eval_examples, tokenizer, **feature_args(settings), is_training=False
    )


def read_jsonl(name: str) -> list[dict[str, Any]]:
    with (FIXTURES / name).open() as f:
        return [json.loads(line) for line in f]


def read_fixture_json(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(), object_pairs_hook=OrderedDict)


def assert_features_equal(ours: list[InputFeatures], reference: list[dict[str, Any]]) -> None:
    assert len(ours) == len(reference)
    for index, (feature, expected) in enumerate(zip(ours, reference, strict=True)):
        # JSON object keys are strings; the original's dicts have int keys.
        expected = dict(expected)
        for name in ("token_to_orig_map", "token_is_max_context"):
            expected[name] = {int(k): v for k, v in expected[name].items()}
        assert set(expected) == set(FEATURE_FIELDS)
        for name in FEATURE_FIELDS:
            got = getattr(feature, name)
            assert got == expected[name], (
                f"feature {index} (unique_id {expected['unique_id']}): {name}"
            )
            if name in ("token_to_orig_map", "token_is_max_context"):
                assert list(got) == list(expected[name]), f"feature {index}: {name} key order"


def first_answer_only(data_file: Path, out: Path) -> Path:
    """The data with one answer per question: how the original's training features were made."""
    dataset = json.loads(data_file.read_text())
    for article in dataset["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                qa["answers"] = qa["answers"][:1]
    out.write_text(json.dumps(dataset))
    return out


def write_json(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(obj))
    return path


def tiny_dataset(
    *qas: dict[str, Any], context: str = "Paris is the capital of France."
) -> dict[str, Any]:
    return {
        "version": "v2.0",
        "data": [{"title": "t", "paragraphs": [{"context": context, "qas": list(qas)}]}],
    }


def qa(
    qid: str, text: str | None = None, start: int = 0, impossible: bool = False
) -> dict[str, Any]:
    answers = [] if text is None else [{"text": text, "answer_start": start}]
    return {
        "id": qid,
        "question": f"question {qid}?",
        "answers": answers,
        "is_impossible": impossible,
    }


# ------------------------------------------------------------------- features vs the original


def test_eval_features_equal_the_original(eval_features: list[InputFeatures]) -> None:
    assert_features_equal(eval_features, read_jsonl("eval_features.jsonl"))


def test_train_features_equal_the_original(
    settings: dict[str, Any], tokenizer: FullTokenizer, data_file: Path, tmp_path: Path
) -> None:
    train_file = first_answer_only(data_file, tmp_path / "train.json")
    examples, report = read_squad_examples(train_file, True, settings["version_2_with_negative"])
    assert report.num_unalignable == 0 and len(examples) == 626
    assert sum(e.is_impossible for e in examples) == 333
    features = convert_examples_to_features(
        examples, tokenizer, **feature_args(settings), is_training=True
    )
    reference = read_jsonl("train_features.jsonl")
    assert_features_equal(features, reference)
    # The fixture exercises both 0/0 cases: impossible questions and windows without the answer.
    assert any(f["is_impossible"] for f in reference)
    assert any(not f["is_impossible"] and f["start_position"] == 0 for f in reference)


def test_chunked_tokenization_keeps_ids_and_order(
    settings: dict[str, Any], tokenizer: FullTokenizer, eval_examples: list[SquadExample],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # Examples are tokenized in chunks (one Rust batch each); chunk edges must not show.
    monkeypatch.setattr(squad, "_EXAMPLES_PER_CHUNK", 97)
    features = list(
        iter_features(eval_examples, tokenizer, **feature_args(settings), is_training=False)
    )
    assert_features_equal(features, read_jsonl("eval_features.jsonl"))


def test_features_to_arrays(
    settings: dict[str, Any], tokenizer: FullTokenizer, eval_examples: list[SquadExample],
    eval_features: list[InputFeatures],
) -> None:  # fmt: skip
    arrays = features_to_arrays(eval_features)
    n, t = len(eval_features), settings["max_seq_length"]
    assert set(arrays) == {"unique_ids", "input_ids", "input_mask", "segment_ids"}
    assert (
        arrays["input_ids"].shape
        == arrays["input_mask"].shape
        == arrays["segment_ids"].shape
        == (n, t)
    )
    assert all(a.dtype == np.int64 for a in arrays.values())
    assert arrays["unique_ids"].tolist() == list(range(1000000000, 1000000000 + n))
    assert arrays["input_ids"][5].tolist() == eval_features[5].input_ids

    example = SquadExample("q", "where is it?", ["it", "is", "here."], "here", 2, 2)
    train, evaluation = (
        convert_examples_to_features([example], tokenizer, 16, 8, 8, is_training=is_training)
        for is_training in (True, False)
    )
    arrays = features_to_arrays(train)
    assert arrays["start_positions"].tolist() == arrays["end_positions"].tolist() == [8]
    assert train[0].tokens[8] == "here"  # [CLS] where is it ? [SEP] it is here . [SEP]
    with pytest.raises(ValueError, match="only some features"):
        features_to_arrays(train + evaluation)
    with pytest.raises(ValueError, match="input_ids of different lengths"):
        features_to_arrays(evaluation + eval_features[:1])


# ---------------------------------------------------------------- predictions vs the original


@pytest.fixture(scope="module")
def predictions(
    settings: dict[str, Any], eval_examples: list[SquadExample], eval_features: list[InputFeatures]
) -> tuple[OrderedDict[str, str], OrderedDict[str, Any], OrderedDict[str, float]]:
    results = [SquadResult(**r) for r in read_jsonl("eval_logits.jsonl")]
    assert [r.unique_id for r in results] == [f.unique_id for f in eval_features]
    return write_predictions(
        eval_examples, eval_features, results, settings["n_best_size"], settings["max_answer_length"],
        settings["do_lower_case"], settings["version_2_with_negative"], settings["null_score_diff_threshold"],
    )  # fmt: skip


def assert_json_close(got: Any, expected: Any, where: str = "") -> None:
    """Same structure, keys (in order), strings and ints; floats within 1e-6."""
    if isinstance(expected, dict):
        assert isinstance(got, dict) and list(got) == list(expected), where
        for key in expected:
            assert_json_close(got[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), where
        for i, (g, e) in enumerate(zip(got, expected)):
            assert_json_close(g, e, f"{where}[{i}]")
    elif isinstance(expected, float):
        assert isinstance(got, float) and math.isclose(got, expected, rel_tol=0, abs_tol=1e-6), (
            where
        )
    else:
        assert type(got) is type(expected) and got == expected, where


def test_write_predictions_equals_the_original(predictions: tuple[Any, Any, Any]) -> None:
    ours = dict(zip(("predictions", "nbest_predictions", "null_odds"), predictions))
    for name, got in ours.items():
        assert_json_close(got, read_fixture_json(f"{name}.json"), name)
    # The fixture covers both outcomes of the null-score test and the original's de-tokenisation.
    assert "" in ours["predictions"].values() and any(ours["predictions"].values())
    assert ours["predictions"]["56ddde6b9a695914005b962a"].startswith(". They were descended")


def test_prediction_files_are_byte_identical(
    predictions: tuple[Any, Any, Any], tmp_path: Path
) -> None:
    # The original writes json.dumps(indent=4) + "\n"; the fixture files are its output, so equal
    # bytes also mean every float kept all of its digits.
    written = write_prediction_files(tmp_path / "out", *predictions)
    assert sorted(written) == ["nbest_predictions.json", "null_odds.json", "predictions.json"]
    for name, path in written.items():
        assert Path(path).read_bytes() == (FIXTURES / name).read_bytes(), name
    v1_files = write_prediction_files(f"memory://squad-{time.time_ns()}/v1", *predictions[:2])
    assert sorted(v1_files) == ["nbest_predictions.json", "predictions.json"]
    with fsspec.open(v1_files["predictions.json"], "r") as f:
        assert f.read() == (FIXTURES / "predictions.json").read_text()


# ------------------------------------------------------------------ official evaluation scripts


def test_evaluate_v2_equals_the_official_script(
    data_file: Path, predictions: tuple[Any, Any, Any]
) -> None:
    preds, _, null_odds = predictions
    dataset = load_squad_json(data_file)
    with_na = evaluate_v2(
        dataset["data"], read_fixture_json("predictions.json"), read_fixture_json("null_odds.json")
    )
    expected = read_fixture_json("official_eval_v2.json")
    assert list(with_na.items()) == list(expected.items())  # values, keys and their order
    assert isinstance(with_na, OrderedDict)
    # Our own predictions and null odds (not the fixture files) give the same evaluation.
    assert evaluate_v2(dataset, preds, null_odds) == expected
    no_na = evaluate_v2(dataset, preds)
    assert list(no_na.items()) == list(read_fixture_json("official_eval_v2_no_na.json").items())


def test_evaluate_v2_threshold_and_best_threshold() -> None:
    dataset = tiny_dataset(qa("a", "Paris"), qa("b", "France", 24), qa("c"), qa("d"))
    preds = {"a": "Paris", "b": "Lyon", "c": "", "d": "Paris"}
    no_na = evaluate_v2(dataset, preds)
    assert list(no_na) == ["exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total",
                           "NoAns_exact", "NoAns_f1", "NoAns_total"]  # fmt: skip
    assert (no_na["exact"], no_na["HasAns_exact"], no_na["NoAns_exact"]) == (50.0, 50.0, 50.0)
    # Null odds above na_prob_thresh count as predicted "no answer": "b" and "d" flip.
    na = {"a": -3.0, "b": 2.0, "c": 1.5, "d": 4.0}
    with_na = evaluate_v2(dataset, preds, na, na_prob_thresh=1.0)
    assert (with_na["exact"], with_na["HasAns_exact"], with_na["NoAns_exact"]) == (
        75.0,
        50.0,
        100.0,
    )
    # The sweep: start at 2 NoAns right; a: +1 (3, thresh -3), c: 0, b: +0, d: -1.
    assert (with_na["best_exact"], with_na["best_exact_thresh"]) == (75.0, -3.0)


def test_evaluate_v1_on_a_hand_made_dataset(caplog: pytest.LogCaptureFixture) -> None:
    def q(qid: str, *golds: str) -> dict[str, Any]:
        return {
            "id": qid,
            "question": "?",
            "answers": [{"text": g, "answer_start": 0} for g in golds],
        }

    dataset = {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": "...", "qas": [
        q("1", "Denver Broncos", "Denver Broncos"),  # "the Denver Broncos": EM 1 (articles go), F1 1
        q("2", "Santa Clara, California"),  # "Santa Clara": EM 0, F1 2*1*(2/3)/(1+2/3) = 0.8
        q("3", "gold", "golden anniversary"),  # "Golden!": best gold is the 2nd: EM 0, F1 2/3
        q("4", "Levi's Stadium"),  # no prediction: 0 and 0
    ]}]}]}  # fmt: skip
    preds = {"1": "the Denver Broncos", "2": "Santa Clara", "3": "Golden!", "x": "ignored"}
    with caplog.at_level(logging.WARNING, logger="jobs.data.squad"):
        result = evaluate_v1(dataset["data"], preds)
    assert list(result) == ["exact_match", "f1"]
    assert result["exact_match"] == 25.0
    assert result["f1"] == pytest.approx(100.0 * (1 + 0.8 + 2 / 3) / 4)
    assert "Unanswered question 4 will receive score 0." in caplog.text
    assert evaluate_v1(dataset, {"1": "Denver", "2": "", "3": "", "4": ""}) == {
        "exact_match": 0.0, "f1": pytest.approx(100.0 * (2 / 3) / 4)}  # fmt: skip


def test_evaluation_errors() -> None:
    dataset = tiny_dataset(qa("a", "Paris"), qa("b"))
    with pytest.raises(SquadError, match=r"no prediction for 1 of 2 questions .*'b'"):
        evaluate_v2(dataset, {"a": "Paris"})
    with pytest.raises(SquadError, match=r"na_probs has no value for 1 questions"):
        evaluate_v2(dataset, {"a": "Paris", "b": ""}, {"a": 0.0})
    with pytest.raises(SquadError, match=r"data\[0\]\.paragraphs\[0\]\.qas\[1\] has no 'answers'"):
        evaluate_v2(
            tiny_dataset(qa("a", "Paris"), {"id": "b", "question": "?"}), {"a": "", "b": ""}
        )
    with pytest.raises(SquadError, match="no questions"):
        evaluate_v1({"data": []}, {})


# ---------------------------------------------------------------------- reading: the details


def test_whitespace_split_and_char_offsets(tmp_path: Path) -> None:
    # U+202F splits words as in the original; U+00A0 does not (it is left to BasicTokenizer).
    context = "  A\u202fnarrow\u00a0gap\tand\n\nmore "
    path = write_json(tmp_path / "d.json", tiny_dataset(qa("q", "gap\tand", 11), context=context))
    [example], _ = read_squad_examples(path, is_training=True)
    assert example.doc_tokens == ["A", "narrow\u00a0gap", "and", "more"]
    assert (example.start_position, example.end_position) == (1, 2)
    assert example.orig_answer_text == "gap\tand" and not example.is_impossible
    _, offsets = squad._split_paragraph(context)
    assert offsets[:4] == [-1, -1, 0, 0] and offsets[-1] == 3


def test_unalignable_answers_are_skipped_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_json(tmp_path / "d.json", tiny_dataset(
        qa("good", "France", 24),
        qa("bad", "Lyon", 0),  # the text at answer_start is "Paris"
        qa("none", impossible=True),
        qa("sub", "Fran", 24),  # part of a word is found in it: kept, as the original does
    ))  # fmt: skip
    # The original cleans the answer with str.split, which splits at U+00A0 where the document
    # words are not split: such answers are not found either.
    nbsp = write_json(
        tmp_path / "nbsp.json",
        tiny_dataset(qa("nbsp", "Paris\u00a0is", 0), context="Paris\u00a0is nice."),
    )
    assert read_squad_examples(nbsp, is_training=True)[1].unalignable_qas_ids == ["nbsp"]
    with caplog.at_level(logging.WARNING, logger="jobs.data.squad"):
        examples, report = read_squad_examples(path, is_training=True, version_2_with_negative=True)
    assert [e.qas_id for e in examples] == ["good", "none", "sub"]
    assert report.unalignable_qas_ids == ["bad"] and report.num_unalignable == 1
    assert (report.num_questions, report.num_examples) == (4, 3)
    assert "Could not find answer: 'Paris' vs. 'Lyon'" in caplog.text
    impossible = examples[1]
    assert (impossible.start_position, impossible.end_position, impossible.orig_answer_text) == (
        -1,
        -1,
        "",
    )
    # Evaluation reads no answers, so nothing is skipped and no example is impossible.
    examples, report = read_squad_examples(path, is_training=False, version_2_with_negative=True)
    assert len(examples) == 4 and report.num_unalignable == 0
    assert all(e.start_position is None and not e.is_impossible for e in examples)


def test_gcs_round_trip(
    gcs_emulator: Any, loopback_only: None, tokenizer: FullTokenizer, data_file: Path
) -> None:
    url = f"gs://bucket/squad-{time.time_ns()}"
    with fsspec.open(f"{url}/dev.json", "wb") as f:
        f.write(data_file.read_bytes())
    examples, report = read_squad_examples(
        f"{url}/dev.json", is_training=False, version_2_with_negative=True
    )
    assert report.source == f"{url}/dev.json" and len(examples) == 626
    written = write_prediction_files(f"{url}/out", {"a": "b"}, {"a": []}, {"a": 1.5})
    with fsspec.open(written["null_odds.json"], "r") as f:
        assert f.read() == '{\n    "a": 1.5\n}\n'


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ('{"data": [\n  {"paragraphs": [}\n]}', r"not valid JSON: .* at line 2, column 19"),
        ('{"version": "1.1"}', r"has no 'data' key"),
        ('{"data": {"paragraphs": []}}', r"data must be a list of articles, got dict"),
        ('[1, 2]', r"is not a JSON object with a 'data' list"),
        ('{"data": [{"title": "x"}]}', r"data\[0\] has no 'paragraphs'"),
        ('{"data": [{"paragraphs": [{"context": 5, "qas": []}]}]}',
         r"data\[0\]\.paragraphs\[0\]\.context must be str, got int"),
        ('{"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "q"}]}]}]}',
         r"data\[0\]\.paragraphs\[0\]\.qas\[0\] has no 'question'"),
    ],
)  # fmt: skip
def test_malformed_files_name_the_place(tmp_path: Path, content: str, pattern: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(SquadError, match=pattern) as info:
        read_squad_examples(path, is_training=False)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "dev-v2.0.json"
    with pytest.raises(
        SquadError, match=r"does not exist; pass the path or URL of a SQuAD JSON file"
    ):
        read_squad_examples(missing, is_training=False)
    with pytest.raises(SquadError, match="does not exist"):
        load_squad_json(f"memory://squad-{time.time_ns()}/dev.json")


def test_training_input_errors(tmp_path: Path) -> None:
    many = tiny_dataset(qa("a", "Paris"), qa("b", "France", 24))
    many["data"][0]["paragraphs"][0]["qas"][1]["answers"] *= 2
    many["data"][0]["paragraphs"] *= 3
    path = write_json(tmp_path / "many.json", many)
    with pytest.raises(SquadError, match=r"data\[0\]\.paragraphs\[0\]\.qas\[1\]\.answers has 2 answers; .*"
                                         r"keep only the first answer"):  # fmt: skip
        read_squad_examples(path, is_training=True)
    assert len(read_squad_examples(path, is_training=False)[0]) == 6  # evaluation takes any answers

    cases = {
        "outside": (qa("a", "France", 30), r"answers\[0\] \(answer_start=30.* 31-character context"),
        "negative": (qa("a", "Paris", -1), r"answer_start=-1"),
        "empty": (qa("a", "", 3), r"not a non-empty span"),
        "no text": ({"id": "a", "question": "?", "answers": [{"answer_start": 0}]}, r"answers\[0\] has no 'text'"),
        "bool offset": (qa("a", "Paris", True), r"answer_start must be int, got bool"),
    }  # fmt: skip
    for name, (entry, pattern) in cases.items():
        path = write_json(tmp_path / f"{name}.json", tiny_dataset(entry))
        with pytest.raises(SquadError, match=pattern):
            read_squad_examples(path, is_training=True)
    # SQuAD 1.1 data read as 2.0 lacks is_impossible.
    v1 = tiny_dataset(
        {"id": "a", "question": "?", "answers": [{"text": "Paris", "answer_start": 0}]}
    )
    with pytest.raises(
        SquadError, match=r"qas\[0\] has no 'is_impossible'.*version_2_with_negative=False"
    ):
        read_squad_examples(
            write_json(tmp_path / "v1.json", v1), True, version_2_with_negative=True
        )


def test_feature_settings_are_checked(tokenizer: FullTokenizer) -> None:
    examples = [SquadExample("q", "why?", ["because"])]
    with pytest.raises(
        SquadError, match=r"max_seq_length \(67\) must be greater than max_query_length \(64\) \+ 3"
    ):
        convert_examples_to_features(examples, tokenizer, 67, 128, 64, False)
    with pytest.raises(SquadError, match="doc_stride must be at least 1"):
        convert_examples_to_features(examples, tokenizer, 384, 0, 64, False)
    with pytest.raises(SquadError, match=r"'q' has no answer position.*is_training=True"):
        convert_examples_to_features(examples, tokenizer, 384, 128, 64, True)


# ----------------------------------------------------------------- the original's helpers


def answer_tokens(features: list[InputFeatures]) -> list[str]:
    [feature] = features
    assert feature.start_position is not None and feature.end_position is not None
    return feature.tokens[feature.start_position : feature.end_position + 1]


def test_improve_answer_span_and_max_context(tokenizer: FullTokenizer) -> None:
    # The original's own examples: "(1895-1943)." holds the answer 1895 ...
    words = ["The", "leader", "was", "John", "Smith", "(1895-1943)."]
    example = SquadExample("q", "When was he born?", words, "1895", 5, 5)
    assert answer_tokens(convert_examples_to_features([example], tokenizer, 32, 8, 16, True)) == [
        "1895"
    ]
    # ... while "Japan" inside "Japanese" keeps the whole word.
    example = SquadExample("q", "Who?", ["The", "Japanese", "industry"], "Japan", 1, 1)
    assert answer_tokens(convert_examples_to_features([example], tokenizer, 32, 8, 16, True)) == [
        "japanese"
    ]

    # "bought" is in span B (4 left, 0 right) and span C (1 left, 3 right): C is its max context.
    spans = [squad._DocSpan(0, 5), squad._DocSpan(3, 5), squad._DocSpan(6, 5)]
    bought = 7
    assert [squad._check_is_max_context(spans, i, bought) for i in range(3)] == [False, False, True]


def test_windows_and_out_of_span_answers(tokenizer: FullTokenizer) -> None:
    words = [f"w{i}" for i in range(40)]
    example = SquadExample("q", "which?", words, "w3", 3, 3)
    max_seq_length, doc_stride = 24, 7
    features = convert_examples_to_features(
        [example], tokenizer, max_seq_length, doc_stride, 8, True
    )
    word_tokens = [tokenizer.tokenize(w) for w in words]
    num_doc_tokens = sum(map(len, word_tokens))
    first_doc = len(tokenizer.tokenize("which?")) + 2  # after [CLS] which ? [SEP]
    window = max_seq_length - first_doc - 1
    assert len(features) == math.ceil((num_doc_tokens - window) / doc_stride) + 1
    assert [f.unique_id for f in features] == list(range(1000000000, 1000000000 + len(features)))
    assert [f.doc_span_index for f in features] == list(range(len(features)))
    tok_start = sum(map(len, word_tokens[:3]))
    tok_end = tok_start + len(word_tokens[3]) - 1
    num_inside = 0
    for f in features:
        span_start, span_length = f.doc_span_index * doc_stride, len(f.tokens) - first_doc - 1
        assert next(iter(f.token_to_orig_map)) == first_doc
        if span_start <= tok_start and tok_end < span_start + span_length:
            num_inside += 1
            expected = (tok_start - span_start + first_doc, tok_end - span_start + first_doc)
            assert f.tokens[expected[0] : expected[1] + 1] == word_tokens[3]
        else:  # windows without the whole answer point at [CLS]
            expected = (0, 0)
        assert (f.start_position, f.end_position) == expected
    assert 0 < num_inside < len(features)
    # Every document token is the max context of exactly one window.
    assert sum(sum(f.token_is_max_context.values()) for f in features) == num_doc_tokens


def test_get_final_text() -> None:
    assert get_final_text("steve smith", "Steve Smith's", True) == "Steve Smith"
    assert get_final_text("1895", "(1895-1943).", True) == "1895"
    assert get_final_text("cafe", "Café!", True) == "Café"  # accents stripped by BasicTokenizer
    assert get_final_text("cafe", "Café", False) == "Café"  # not found uncased: whole text
    assert get_final_text("xyz", "Steve", True) == "Steve"


def test_basic_tokenization_word_by_word_is_exact() -> None:
    # write_predictions runs BasicTokenizer per document word and joins the tokens (see there);
    # words here hold what BasicTokenizer treats specially: U+00A0 and U+2028 (whitespace to it
    # but not to run_squad's split), control and format characters, CJK, a final sigma, accents.
    words = [
        "Ab\u00a0cd.",
        "x\u2028y",
        "\u200b",
        "a\x00b",
        "日本語",
        "ΟΔΟΣ",
        "Café's",
        "(1895-1943).",
    ]
    for do_lower_case in (True, False):
        joined = basic_tokenize(" ".join(words), do_lower_case)
        assert joined == [t for w in words for t in basic_tokenize(w, do_lower_case)]
        orig_text = " ".join(words)
        for pred_text in ("cd", "日 本", "οδος", "cafe", "1895", "nothing"):
            assert get_final_text(pred_text, orig_text, do_lower_case, joined) == get_final_text(
                pred_text, orig_text, do_lower_case
            )


def test_null_only_nbest_and_featureless_examples(tokenizer: FullTokenizer) -> None:
    # Where the original crashes (v2: an n-best of only the null answer; an example without
    # features), its own "empty" nonce stands in for the missing non-null answer.
    examples = [SquadExample("a", "who?", ["Paris", "is", "nice"]), SquadExample("b", "who?", [])]
    features = convert_examples_to_features(examples, tokenizer, 16, 8, 8, is_training=False)
    assert [f.example_index for f in features] == [0]
    logits = [0.0] * 16
    logits[0] = 10.0
    result = SquadResult(features[0].unique_id, np.array(logits, dtype=np.float32), logits)
    preds, nbest, null_odds = write_predictions(
        examples, features, [result], 1, 30, True, True, 0.0
    )
    assert [e["text"] for e in nbest["a"]] == ["", "empty"]
    assert preds == {"a": "", "b": ""} and null_odds == {"a": 20.0, "b": 1000000.0}
    preds, nbest, null_odds = write_predictions(examples, features, [result], 20, 30, True, False)
    assert preds == {"a": "Paris", "b": "empty"} and null_odds == {}
    assert all(isinstance(e["start_logit"], float) for e in nbest["a"])
    with pytest.raises(SquadError, match="no result for feature 1000000000"):
        write_predictions(examples, features, [], 20, 30, True, True)
