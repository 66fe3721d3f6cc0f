"""SQuAD 1.1 / 2.0 data: everything google-research/bert's run_squad.py does around the model.

Ported statement for statement from the original, and tested against its outputs
(../shared/fixtures/squad):

* `read_squad_examples`: the SQuAD JSON -> `SquadExample`s (whitespace words, answer word span).
* `convert_examples_to_features`: examples -> `InputFeatures` (WordPiece, sliding doc windows,
  max-context flags, answer token positions); `features_to_arrays` stacks them for a trainer.
* `write_predictions`: per-feature logits (`SquadResult`) -> predictions, n-best lists and null
  odds, as the original's predictions.json / nbest_predictions.json / null_odds.json;
  `write_prediction_files` writes those files byte for byte as the original does.
* `evaluate_v1` / `evaluate_v2`: the official evaluate-v1.1.py / evaluate-v2.0.py metrics.

Where this module differs from the original, it is only where the original crashes or stays
silent:

* Malformed input (missing file, invalid JSON, missing/mistyped fields, answer offsets outside the
  context, training questions without exactly one answer) raises `SquadError` naming the file and
  the JSON path (e.g. ``data[0].paragraphs[2].qas[5].answers``) and the fix, where the original
  raises a bare KeyError/IndexError or reads garbage through a negative index.
* Training answers whose text cannot be found in the document are skipped exactly as the original
  skips them, and are also counted in `ReadReport` instead of only being logged.
* `write_predictions` with version_2_with_negative: where the n-best list holds no non-null entry
  (the original dereferences None there), the original's own "empty" nonce is appended; an example
  with no features (an empty context) no longer indexes an empty list. Every other input gives the
  original's output exactly.
* `evaluate_v2` raises `SquadError` for missing predictions or null odds where the official script
  raises KeyError, and leaves out the precision-recall plots.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import os
import re
import string
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import fsspec
import numpy as np

from models.tokenization import CLS_TOKEN, SEP_TOKEN, FullTokenizer, basic_tokenize

log = logging.getLogger(__name__)

# The original numbers features from here (a TFRecord int64 feature, "unique_ids").
FIRST_UNIQUE_ID = 1000000000
# Examples tokenized per call into the Rust tokenizer: bounds memory on SQuAD-train-sized inputs.
_EXAMPLES_PER_CHUNK = 2048


class SquadError(ValueError):
    """Unusable SQuAD input or settings; the message names the file / JSON path and the fix."""


# --------------------------------------------------------------------------------------------------
# Data classes
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class SquadExample:
    """One question about one paragraph, as the original's `SquadExample`.

    For unanswerable (SQuAD 2.0) training examples the positions are -1 and the text is "";
    for evaluation examples (is_training=False) all three stay None and is_impossible False.
    """

    qas_id: str
    question_text: str
    doc_tokens: list[str]  # the paragraph split on whitespace; shared by its questions' examples
    orig_answer_text: str | None = None
    start_position: int | None = None  # index into doc_tokens of the answer's first word
    end_position: int | None = None  # index into doc_tokens of the answer's last word
    is_impossible: bool = False


@dataclasses.dataclass
class InputFeatures:
    """One window of one example, as the original's `InputFeatures` (lists of length T)."""

    unique_id: int
    example_index: int
    doc_span_index: int
    tokens: list[str]  # [CLS] query [SEP] doc window [SEP], unpadded
    token_to_orig_map: dict[int, int]  # position in tokens -> index into example.doc_tokens
    token_is_max_context: dict[int, bool]  # position in tokens -> this window is its best context
    input_ids: list[int]  # [T], 0-padded
    input_mask: list[int]  # [T], 1 on real tokens
    segment_ids: list[int]  # [T], 0 for [CLS] query [SEP], 1 for the window and its [SEP]
    start_position: int | None = None  # training only: answer start in tokens (0: none here)
    end_position: int | None = None
    is_impossible: bool = False


# A feature's logits, [T]: a list of floats or a 1-D numpy array (taken as Python floats).
Logits = Sequence[float] | np.ndarray


@dataclasses.dataclass
class SquadResult:
    """The model's output for one feature (the original's `RawResult`)."""

    unique_id: int
    start_logits: Logits  # [T]
    end_logits: Logits  # [T]


class ResultLike(Protocol):
    """Anything shaped like `SquadResult` (the original's RawResult namedtuple works too)."""

    @property
    def unique_id(self) -> int: ...
    @property
    def start_logits(self) -> Logits: ...
    @property
    def end_logits(self) -> Logits: ...


@dataclasses.dataclass
class ReadReport:
    """What `read_squad_examples` read, and what it left out."""

    source: str
    num_questions: int = 0  # every question in the file
    num_examples: int = 0  # the examples returned
    # Training answers whose text is not in the document at answer_start (after whitespace
    # cleanup); the original logs "Could not find answer" and drops the question.
    unalignable_qas_ids: list[str] = dataclasses.field(default_factory=list)

    @property
    def num_unalignable(self) -> int:
        """How many questions were dropped because their answer could not be aligned."""
        return len(self.unalignable_qas_ids)


class _DocSpan(NamedTuple):
    start: int
    length: int


# --------------------------------------------------------------------------------------------------
# Reading the JSON
# --------------------------------------------------------------------------------------------------


def load_squad_json(path_or_url: str | os.PathLike[str]) -> dict[str, Any]:
    """Loads a SQuAD-format JSON file through fsspec (local paths, gs://, s3://, memory://).

    Args:
      path_or_url: the file.

    Returns:
      The parsed JSON object; its "data" is a list of articles.

    Raises:
      SquadError: the file is missing or unreadable, is not UTF-8 JSON, or is not an object with a
        "data" list.
    """
    source = os.fspath(path_or_url)
    try:
        with fsspec.open(source, "r", encoding="utf-8") as reader:
            text = reader.read()
    except FileNotFoundError:
        raise SquadError(
            f"SQuAD file {source!r} does not exist; pass the path or URL of a SQuAD JSON file "
            "(e.g. train-v2.0.json / dev-v2.0.json)"
        ) from None
    except UnicodeDecodeError as err:
        raise SquadError(
            f"SQuAD file {source!r} is not UTF-8 ({err}); re-save it as UTF-8 JSON"
        ) from None
    except OSError as err:
        raise SquadError(
            f"cannot read SQuAD file {source!r} ({err}); check the path and access"
        ) from err
    try:
        input_json = json.loads(text)
    except json.JSONDecodeError as err:
        raise SquadError(
            f"SQuAD file {source!r} is not valid JSON: {err.msg} at line {err.lineno}, column "
            f"{err.colno}; fix the file there (it must be one JSON object with a 'data' list)"
        ) from None
    if not isinstance(input_json, dict):
        raise SquadError(
            f"SQuAD file {source!r} is not a JSON object with a 'data' list (it holds a "
            f'{type(input_json).__name__}); a SQuAD file is {{"version": ..., "data": [...]}}'
        )
    _articles_of(input_json, source)
    return input_json


def _articles_of(dataset: Any, source: str) -> list[Any]:
    """The article list of a SQuAD JSON object (or the list itself, as the official scripts take)."""
    if isinstance(dataset, Mapping):
        if "data" not in dataset:
            raise SquadError(
                f"{source}: the JSON object has no 'data' key (keys: {sorted(dataset)[:10]}); a SQuAD "
                'file is {"version": ..., "data": [{"title": ..., "paragraphs": [...]}]}'
            )
        dataset = dataset["data"]
        where = "data"
    else:
        where = "dataset"
    if not isinstance(dataset, list):
        raise SquadError(
            f"{source}: {where} must be a list of articles, got {type(dataset).__name__}; a SQuAD "
            'file is {"version": ..., "data": [{"title": ..., "paragraphs": [...]}]}'
        )
    return dataset


def _get(
    obj: Any, key: str, kind: type | tuple[type, ...], path: str, source: str, fix: str
) -> Any:
    """obj[key], checked to exist and be of `kind`; `path` names obj in the error."""
    if not isinstance(obj, Mapping):
        raise SquadError(f"{source}: {path} must be a JSON object, got {type(obj).__name__}; {fix}")
    if key not in obj:
        raise SquadError(f"{source}: {path} has no {key!r}; {fix}")
    value = obj[key]
    # bool is an int subclass: an answer_start of true is no offset.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise SquadError(
            f"{source}: {path}.{key} must be {names}, got {type(value).__name__} {value!r:.60}; {fix}"
        )
    return value


_LAYOUT = (
    'each article is {"paragraphs": [{"context": str, "qas": [{"id": str, "question": '
    'str, "answers": [{"text": str, "answer_start": int}], "is_impossible": bool}]}]}'
)


def _is_whitespace(char: str) -> bool:
    # The original's own test, not str.isspace: U+202F (narrow no-break space) splits words here
    # but e.g. U+00A0 does not (BasicTokenizer splits on that one later).
    return char in (" ", "\t", "\r", "\n") or ord(char) == 0x202F


def _split_paragraph(paragraph_text: str) -> tuple[list[str], list[int]]:
    """(doc_tokens, char_to_word_offset) exactly as the original builds them.

    Leading whitespace maps to word -1, other whitespace to the word before it.
    """
    doc_tokens: list[str] = []
    char_to_word_offset: list[int] = []
    prev_is_whitespace = True
    for c in paragraph_text:
        if _is_whitespace(c):
            prev_is_whitespace = True
        else:
            if prev_is_whitespace:
                doc_tokens.append(c)
            else:
                doc_tokens[-1] += c
            prev_is_whitespace = False
        char_to_word_offset.append(len(doc_tokens) - 1)
    return doc_tokens, char_to_word_offset


def read_squad_examples(
    path_or_url: str | os.PathLike[str], is_training: bool, version_2_with_negative: bool = False
) -> tuple[list[SquadExample], ReadReport]:
    """Reads a SQuAD JSON file into examples, as the original `read_squad_examples`.

    Args:
      path_or_url: the SQuAD JSON, anywhere fsspec reads.
      is_training: read answers (exactly one per answerable question, as the SQuAD train files
        have) and locate them; answers that cannot be aligned are skipped and reported.
        For False, only ids, questions and contexts are read (answers may be absent).
      version_2_with_negative: read each question's "is_impossible" (training only, as the
        original: evaluation examples are never impossible).

    Returns:
      (examples in file order, a `ReadReport`).

    Raises:
      SquadError: see `load_squad_json`; or a malformed article/paragraph/question/answer (the
        message names its JSON path), a training question without exactly one answer, or an
        answer offset outside its context.
    """
    source = os.fspath(path_or_url)
    articles = _articles_of(load_squad_json(source), source)
    report = ReadReport(source=source)
    examples: list[SquadExample] = []
    for a, entry in enumerate(articles):
        entry_path = f"data[{a}]"
        paragraphs = _get(entry, "paragraphs", list, entry_path, source, _LAYOUT)
        for p, paragraph in enumerate(paragraphs):
            paragraph_path = f"{entry_path}.paragraphs[{p}]"
            paragraph_text = _get(paragraph, "context", str, paragraph_path, source, _LAYOUT)
            qas = _get(paragraph, "qas", list, paragraph_path, source, _LAYOUT)
            doc_tokens, char_to_word_offset = _split_paragraph(paragraph_text)
            for q, qa in enumerate(qas):
                qa_path = f"{paragraph_path}.qas[{q}]"
                qas_id = _get(qa, "id", str, qa_path, source, _LAYOUT)
                question_text = _get(qa, "question", str, qa_path, source, _LAYOUT)
                report.num_questions += 1
                start_position: int | None = None
                end_position: int | None = None
                orig_answer_text: str | None = None
                is_impossible = False
                if is_training:
                    if version_2_with_negative:
                        # (0/1 work too: the original only tests its truth.)
                        is_impossible = bool(_get(
                            qa, "is_impossible", (bool, int), qa_path, source,
                            "SQuAD 2.0 training data marks every question; for SQuAD 1.1 data "
                            "pass version_2_with_negative=False",
                        ))  # fmt: skip
                    if not is_impossible:
                        answers = _get(qa, "answers", list, qa_path, source, _LAYOUT)
                        if len(answers) != 1:
                            # The original: "For training, each question should have exactly 1
                            # answer." (dev files have several; keep the first to train on them).
                            raise SquadError(
                                f"{source}: {qa_path}.answers has {len(answers)} answers; for "
                                "training each answerable question needs exactly 1 answer (as in "
                                "the SQuAD train files): keep only the first answer, or read the "
                                "file with is_training=False"
                            )
                        answer_path = f"{qa_path}.answers[0]"
                        orig_answer_text = _get(
                            answers[0], "text", str, answer_path, source, _LAYOUT
                        )
                        answer_offset = _get(
                            answers[0], "answer_start", int, answer_path, source, _LAYOUT
                        )
                        answer_length = len(orig_answer_text)
                        if (
                            answer_length == 0
                            or answer_offset < 0
                            or answer_offset + answer_length > len(paragraph_text)
                        ):
                            raise SquadError(
                                f"{source}: {answer_path} (answer_start={answer_offset}, text "
                                f"{orig_answer_text!r:.60}) is not a non-empty span of the "
                                f"{len(paragraph_text)}-character context; answer_start is the "
                                "0-based character offset of the text in the context"
                            )
                        start_position = char_to_word_offset[answer_offset]
                        end_position = char_to_word_offset[answer_offset + answer_length - 1]
                        # Only add answers whose text can be recovered from the document; the
                        # original blames "weird Unicode stuff" and drops the example, so in
                        # training mode not every question becomes an example.
                        actual_text = " ".join(doc_tokens[start_position : end_position + 1])
                        # The original's whitespace_tokenize: str.split(), wider than
                        # _is_whitespace above.
                        cleaned_answer_text = " ".join(orig_answer_text.strip().split())
                        if actual_text.find(cleaned_answer_text) == -1:
                            log.warning(
                                "Could not find answer: '%s' vs. '%s' (%s, %s)",
                                actual_text, cleaned_answer_text, qas_id, qa_path,
                            )  # fmt: skip
                            report.unalignable_qas_ids.append(qas_id)
                            continue
                    else:
                        start_position = -1
                        end_position = -1
                        orig_answer_text = ""
                examples.append(
                    SquadExample(
                        qas_id=qas_id,
                        question_text=question_text,
                        doc_tokens=doc_tokens,
                        orig_answer_text=orig_answer_text,
                        start_position=start_position,
                        end_position=end_position,
                        is_impossible=is_impossible,
                    )
                )
    report.num_examples = len(examples)
    if report.unalignable_qas_ids:
        log.warning(
            "%s: skipped %d of %d training questions whose answer text is not in the document",
            source, report.num_unalignable, report.num_questions,
        )  # fmt: skip
    return examples, report


# --------------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------------


def _improve_answer_span(
    doc_tokens: Sequence[str], input_start: int, input_end: int, tok_answer_text: str
) -> tuple[int, int]:
    """The smallest token sub-span of [input_start, input_end] that spells the answer.

    The annotation is character based and projected to whole words, so "(1895-1943)." may stand
    for the answer "1895"; WordPiece splits it into "( 1895 - 1943 ) .", where "1895" can be
    matched exactly. If no sub-span matches (the answer "Japan" inside the word "Japanese"), the
    word span stays.

    Args:
      doc_tokens: the document's WordPiece tokens.
      input_start: first token of the answer's words.
      input_end: last token of the answer's words.
      tok_answer_text: " ".join(tokenizer.tokenize(orig_answer_text)) (the original tokenizes
        inside this function; here the caller does it, in one batch).

    Returns:
      (start, end) token indexes, inclusive.
    """
    for new_start in range(input_start, input_end + 1):
        for new_end in range(input_end, new_start - 1, -1):
            text_span = " ".join(doc_tokens[new_start : (new_end + 1)])
            if text_span == tok_answer_text:
                return new_start, new_end
    return input_start, input_end


def _check_is_max_context(
    doc_spans: Sequence[_DocSpan], cur_span_index: int, position: int
) -> bool:
    """Whether span `cur_span_index` is the 'max context' window for token `position`.

    With sliding windows a token appears in several spans; its score in a span is the *minimum* of
    its left and right context, plus 0.01 * span length to break ties towards longer spans. The
    first span with the highest score wins.
    """
    best_score: float | None = None
    best_span_index: int | None = None
    for span_index, doc_span in enumerate(doc_spans):
        end = doc_span.start + doc_span.length - 1
        if position < doc_span.start:
            continue
        if position > end:
            continue
        num_left_context = position - doc_span.start
        num_right_context = end - position
        score = min(num_left_context, num_right_context) + 0.01 * doc_span.length
        if best_score is None or score > best_score:
            best_score = score
            best_span_index = span_index
    return cur_span_index == best_span_index


def _check_feature_settings(max_seq_length: int, doc_stride: int, max_query_length: int) -> None:
    # The original's validate_flags_or_throw, plus doc_stride, where 0 loops forever.
    if max_seq_length <= max_query_length + 3:
        raise SquadError(
            f"max_seq_length ({max_seq_length}) must be greater than max_query_length "
            f"({max_query_length}) + 3, to leave room for [CLS], two [SEP] and the document; the "
            "original uses 384 and 64"
        )
    if doc_stride < 1:
        raise SquadError(f"doc_stride must be at least 1, got {doc_stride}; the original uses 128")
    if max_query_length < 0:
        raise SquadError(
            f"max_query_length must be >= 0, got {max_query_length}; the original uses 64"
        )


def iter_features(
    examples: Sequence[SquadExample],
    tokenizer: FullTokenizer,
    max_seq_length: int,
    doc_stride: int,
    max_query_length: int,
    is_training: bool,
) -> Iterator[InputFeatures]:
    """`convert_examples_to_features`, one feature at a time (for inputs too big for a list).

    Args and Raises: see `convert_examples_to_features`.

    Yields:
      `InputFeatures` in the original's order, unique_id counting up from 1000000000.
    """
    _check_feature_settings(max_seq_length, doc_stride, max_query_length)
    unique_id = FIRST_UNIQUE_ID
    for chunk_start in range(0, len(examples), _EXAMPLES_PER_CHUNK):
        chunk = examples[chunk_start : chunk_start + _EXAMPLES_PER_CHUNK]
        for offset, (example, query_tokens, doc, tok_answer_text) in enumerate(
            _tokenize_chunk(chunk, tokenizer, is_training)
        ):
            for feature in _example_features(
                example, chunk_start + offset, unique_id, query_tokens, doc, tok_answer_text,
                tokenizer, max_seq_length, doc_stride, max_query_length, is_training,
            ):  # fmt: skip
                yield feature
                unique_id += 1


class _TokenizedDoc(NamedTuple):
    all_doc_tokens: list[str]
    tok_to_orig_index: list[int]
    orig_to_tok_index: list[int]


def _tokenize_chunk(
    chunk: Sequence[SquadExample], tokenizer: FullTokenizer, is_training: bool
) -> Iterator[tuple[SquadExample, list[str], _TokenizedDoc, str | None]]:
    """Everything the original tokenizes per example, in three batched calls.

    The original tokenizes each question, each document word (again for every question about the
    same paragraph) and each training answer with `tokenize`; `tokenize_batch` returns exactly
    what `tokenize` would for each text, so batching changes nothing but the speed. Documents are
    tokenized once per `doc_tokens` list (the examples of one paragraph share it).
    """
    query_tokens = tokenizer.tokenize_batch([example.question_text for example in chunk])
    doc_index: dict[int, int] = {}
    docs: list[list[str]] = []
    for example in chunk:
        if id(example.doc_tokens) not in doc_index:
            doc_index[id(example.doc_tokens)] = len(docs)
            docs.append(example.doc_tokens)
    word_tokens = iter(tokenizer.tokenize_batch([word for doc in docs for word in doc]))
    tokenized_docs: list[_TokenizedDoc] = []
    for doc in docs:
        tokenized = _TokenizedDoc([], [], [])
        for i in range(len(doc)):
            tokenized.orig_to_tok_index.append(len(tokenized.all_doc_tokens))
            sub_tokens = next(word_tokens)
            tokenized.tok_to_orig_index.extend([i] * len(sub_tokens))
            tokenized.all_doc_tokens.extend(sub_tokens)
        tokenized_docs.append(tokenized)
    answer_at = [i for i, example in enumerate(chunk) if is_training and not example.is_impossible]
    answer_texts: list[str | None] = [None] * len(chunk)
    answer_tokens = tokenizer.tokenize_batch([chunk[i].orig_answer_text or "" for i in answer_at])
    for i, tokens in zip(answer_at, answer_tokens, strict=True):
        answer_texts[i] = " ".join(tokens)
    for i, example in enumerate(chunk):
        tokenized_doc = tokenized_docs[doc_index[id(example.doc_tokens)]]
        yield example, query_tokens[i], tokenized_doc, answer_texts[i]


def _example_features(
    example: SquadExample,
    example_index: int,
    first_unique_id: int,
    query_tokens: list[str],
    doc: _TokenizedDoc,
    tok_answer_text: str | None,
    tokenizer: FullTokenizer,
    max_seq_length: int,
    doc_stride: int,
    max_query_length: int,
    is_training: bool,
) -> Iterator[InputFeatures]:
    """The original's loop body for one example: its doc spans, each as one `InputFeatures`."""
    if len(query_tokens) > max_query_length:
        query_tokens = query_tokens[0:max_query_length]
    all_doc_tokens, tok_to_orig_index, orig_to_tok_index = doc

    tok_start_position: int | None = None
    tok_end_position: int | None = None
    if is_training and example.is_impossible:
        tok_start_position = -1
        tok_end_position = -1
    if is_training and not example.is_impossible:
        if example.start_position is None or example.end_position is None:
            raise SquadError(
                f"example {example.qas_id!r} has no answer position, so it cannot be trained on; "
                "read the file with read_squad_examples(..., is_training=True)"
            )
        assert tok_answer_text is not None
        tok_start_position = orig_to_tok_index[example.start_position]
        if example.end_position < len(example.doc_tokens) - 1:
            tok_end_position = orig_to_tok_index[example.end_position + 1] - 1
        else:
            tok_end_position = len(all_doc_tokens) - 1
        tok_start_position, tok_end_position = _improve_answer_span(
            all_doc_tokens, tok_start_position, tok_end_position, tok_answer_text
        )

    # The -3 accounts for [CLS], [SEP] and [SEP].
    max_tokens_for_doc = max_seq_length - len(query_tokens) - 3

    # Documents longer than that are covered by windows of up to max_tokens_for_doc tokens, each
    # starting doc_stride tokens after the previous one.
    doc_spans: list[_DocSpan] = []
    start_offset = 0
    while start_offset < len(all_doc_tokens):
        length = len(all_doc_tokens) - start_offset
        length = min(length, max_tokens_for_doc)
        doc_spans.append(_DocSpan(start=start_offset, length=length))
        if start_offset + length == len(all_doc_tokens):
            break
        start_offset += min(length, doc_stride)

    for doc_span_index, doc_span in enumerate(doc_spans):
        tokens = [CLS_TOKEN, *query_tokens, SEP_TOKEN]
        segment_ids = [0] * len(tokens)
        token_to_orig_map: dict[int, int] = {}
        token_is_max_context: dict[int, bool] = {}
        for i in range(doc_span.length):
            split_token_index = doc_span.start + i
            token_to_orig_map[len(tokens)] = tok_to_orig_index[split_token_index]
            token_is_max_context[len(tokens)] = _check_is_max_context(
                doc_spans, doc_span_index, split_token_index
            )
            tokens.append(all_doc_tokens[split_token_index])
            segment_ids.append(1)
        tokens.append(SEP_TOKEN)
        segment_ids.append(1)

        input_ids = tokenizer.convert_tokens_to_ids(tokens)
        # 1 for real tokens, 0 for padding: only real tokens are attended to.
        input_mask = [1] * len(input_ids)
        num_padding = max_seq_length - len(input_ids)
        input_ids += [0] * num_padding
        input_mask += [0] * num_padding
        segment_ids += [0] * num_padding
        assert len(input_ids) == len(input_mask) == len(segment_ids) == max_seq_length, (
            f"example {example.qas_id}: a window of {len(tokens)} tokens exceeds max_seq_length "
            f"{max_seq_length}"
        )

        start_position: int | None = None
        end_position: int | None = None
        if is_training and not example.is_impossible:
            assert tok_start_position is not None and tok_end_position is not None
            # A window that does not contain the whole answer is trained to point at [CLS].
            doc_start = doc_span.start
            doc_end = doc_span.start + doc_span.length - 1
            if not (tok_start_position >= doc_start and tok_end_position <= doc_end):
                start_position = 0
                end_position = 0
            else:
                doc_offset = len(query_tokens) + 2
                start_position = tok_start_position - doc_start + doc_offset
                end_position = tok_end_position - doc_start + doc_offset
        if is_training and example.is_impossible:
            start_position = 0
            end_position = 0

        yield InputFeatures(
            unique_id=first_unique_id + doc_span_index,
            example_index=example_index,
            doc_span_index=doc_span_index,
            tokens=tokens,
            token_to_orig_map=token_to_orig_map,
            token_is_max_context=token_is_max_context,
            input_ids=input_ids,
            input_mask=input_mask,
            segment_ids=segment_ids,
            start_position=start_position,
            end_position=end_position,
            is_impossible=example.is_impossible,
        )


def convert_examples_to_features(
    examples: Sequence[SquadExample],
    tokenizer: FullTokenizer,
    max_seq_length: int,
    doc_stride: int,
    max_query_length: int,
    is_training: bool,
) -> list[InputFeatures]:
    """Examples -> model inputs, as the original `convert_examples_to_features`.

    Each example becomes one feature per document window: `[CLS] question [SEP] window [SEP]`,
    the question cut to max_query_length tokens, windows of up to
    max_seq_length - len(question) - 3 tokens, doc_stride tokens apart.

    Args:
      examples: from `read_squad_examples`, in order (example_index counts them).
      tokenizer: the checkpoint's WordPiece tokenizer.
      max_seq_length: T.
      doc_stride: tokens between the starts of consecutive windows.
      max_query_length: question tokens kept.
      is_training: fill start/end positions (0/0 for windows without the answer and for
        impossible questions).

    Returns:
      The features, unique_id counting up from 1000000000.

    Raises:
      SquadError: max_seq_length <= max_query_length + 3, doc_stride < 1, or is_training with
        an answerable example that has no answer position (read with is_training=False).
    """
    return list(
        iter_features(
            examples, tokenizer, max_seq_length, doc_stride, max_query_length, is_training
        )
    )


def features_to_arrays(features: Sequence[InputFeatures]) -> dict[str, np.ndarray]:
    """Stacks features into the arrays the original writes to its TFRecords (int64).

    Args:
      features: from `convert_examples_to_features`, all of one max_seq_length T.

    Returns:
      "unique_ids" [N], "input_ids" / "input_mask" / "segment_ids" [N, T], and, when every feature
      has positions (training features), "start_positions" / "end_positions" [N]. N = 0 gives
      [0, 0] sequence arrays.

    Raises:
      ValueError: features of different lengths, or only some of them with positions.
    """
    num_features = len(features)
    seq_length = len(features[0].input_ids) if features else 0
    arrays: dict[str, np.ndarray] = {
        "unique_ids": np.array([f.unique_id for f in features], dtype=np.int64).reshape(
            num_features
        )
    }
    for name in ("input_ids", "input_mask", "segment_ids"):
        rows = [getattr(f, name) for f in features]
        if any(len(row) != seq_length for row in rows):
            raise ValueError(
                f"features have {name} of different lengths; build them all with one max_seq_length"
            )
        arrays[name] = np.array(rows, dtype=np.int64).reshape(num_features, seq_length)
    with_positions = [f.start_position is not None and f.end_position is not None for f in features]
    if any(with_positions) and not all(with_positions):
        raise ValueError(
            "only some features have start/end positions; do not mix training features "
            "(is_training=True) with evaluation features"
        )
    if features and all(with_positions):
        arrays["start_positions"] = np.array([f.start_position for f in features], dtype=np.int64)
        arrays["end_positions"] = np.array([f.end_position for f in features], dtype=np.int64)
    return arrays


# --------------------------------------------------------------------------------------------------
# Predictions
# --------------------------------------------------------------------------------------------------


class _PrelimPrediction(NamedTuple):
    feature_index: int
    start_index: int
    end_index: int
    start_logit: float
    end_logit: float


class _NbestPrediction(NamedTuple):
    text: str
    start_logit: float
    end_logit: float


def _get_best_indexes(logits: Sequence[float], n_best_size: int) -> list[int]:
    """Indexes of the n_best_size largest logits, best first (ties: lower index first)."""
    index_and_score = sorted(enumerate(logits), key=lambda x: x[1], reverse=True)
    return [index for index, _ in index_and_score[:n_best_size]]


def _compute_softmax(scores: Sequence[float]) -> list[float]:
    """Softmax in plain Python floats, summed in the original's order (for identical digits)."""
    if not scores:
        return []
    max_score = max(scores)
    exp_scores = []
    total_sum = 0.0
    for score in scores:
        x = math.exp(score - max_score)
        exp_scores.append(x)
        total_sum += x
    return [score / total_sum for score in exp_scores]


def _strip_spaces(text: str) -> tuple[str, dict[int, int]]:
    ns_chars: list[str] = []
    ns_to_s_map: dict[int, int] = {}
    for i, c in enumerate(text):
        if c == " ":
            continue
        ns_to_s_map[len(ns_chars)] = i
        ns_chars.append(c)
    return "".join(ns_chars), ns_to_s_map


def get_final_text(
    pred_text: str,
    orig_text: str,
    do_lower_case: bool,
    basic_tokens: Sequence[str] | None = None,
) -> str:
    """Projects a de-tokenized prediction back onto the original text, as the original does.

    `orig_text` (the whitespace words the predicted tokens came from) may hold more than the
    prediction: for pred_text "steve smith" and orig_text "Steve Smith's" the answer is "Steve
    Smith". `orig_text` is run through BasicTokenizer; if, spaces removed, it has as many
    characters as orig_text, characters are aligned one to one and the prediction's span is cut
    out of orig_text. Whenever that heuristic fails, orig_text is returned whole.

    Args:
      pred_text: the predicted WordPieces joined, "##" removed.
      orig_text: the predicted words of the document, joined by single spaces.
      do_lower_case: the tokenizer's setting.
      basic_tokens: BasicTokenizer's tokens of orig_text, when the caller has them already.

    Returns:
      The answer text.
    """
    if basic_tokens is None:
        basic_tokens = basic_tokenize(orig_text, do_lower_case)
    tok_text = " ".join(basic_tokens)
    start_position = tok_text.find(pred_text)
    if start_position == -1:
        log.debug("Unable to find text: '%s' in '%s'", pred_text, orig_text)
        return orig_text
    end_position = start_position + len(pred_text) - 1

    orig_ns_text, orig_ns_to_s_map = _strip_spaces(orig_text)
    tok_ns_text, tok_ns_to_s_map = _strip_spaces(tok_text)
    if len(orig_ns_text) != len(tok_ns_text):
        log.debug(
            "Length not equal after stripping spaces: '%s' vs '%s'", orig_ns_text, tok_ns_text
        )
        return orig_text

    tok_s_to_ns_map = {tok_index: i for i, tok_index in tok_ns_to_s_map.items()}

    orig_start_position = None
    if start_position in tok_s_to_ns_map:
        ns_start_position = tok_s_to_ns_map[start_position]
        if ns_start_position in orig_ns_to_s_map:
            orig_start_position = orig_ns_to_s_map[ns_start_position]
    if orig_start_position is None:
        log.debug("Couldn't map start position")
        return orig_text

    orig_end_position = None
    if end_position in tok_s_to_ns_map:
        ns_end_position = tok_s_to_ns_map[end_position]
        if ns_end_position in orig_ns_to_s_map:
            orig_end_position = orig_ns_to_s_map[ns_end_position]
    if orig_end_position is None:
        log.debug("Couldn't map end position")
        return orig_text

    return orig_text[orig_start_position : (orig_end_position + 1)]


def write_predictions(
    all_examples: Sequence[SquadExample],
    all_features: Sequence[InputFeatures],
    all_results: Iterable[ResultLike],
    n_best_size: int,
    max_answer_length: int,
    do_lower_case: bool,
    version_2_with_negative: bool = False,
    null_score_diff_threshold: float = 0.0,
) -> tuple[
    OrderedDict[str, str], OrderedDict[str, list[OrderedDict[str, Any]]], OrderedDict[str, float]
]:
    """Logits -> answers, as the original `write_predictions` (without the file writing).

    For each example, the n_best_size best start and end logits of each of its windows form
    candidate spans (inside the window's document part, start in its max-context window, length
    <= max_answer_length), ranked by start + end logit and de-tokenized with `get_final_text`.
    With version_2_with_negative, the null answer scores the lowest [CLS] start + end logit over
    the windows, and "" is predicted when that score minus the best non-null span's score exceeds
    null_score_diff_threshold.

    Args:
      all_examples: the examples, in the order features' example_index refers to.
      all_features: their features (`convert_examples_to_features`, is_training=False).
      all_results: one result per feature (unique_id, start_logits [T], end_logits [T]); any
        float sequence (lists, numpy arrays) works: values are taken as Python floats.
      n_best_size: candidates kept per example.
      max_answer_length: longest answer, in tokens.
      do_lower_case: the tokenizer's setting (for `get_final_text`).
      version_2_with_negative: SQuAD 2.0: consider the null answer.
      null_score_diff_threshold: predict "" above this null-minus-best score.

    Returns:
      (predictions: qas_id -> answer text; nbest: qas_id -> list of {"text", "probability",
      "start_logit", "end_logit"}; null_odds: qas_id -> null score minus best non-null score,
      empty unless version_2_with_negative), all in example order.

    Raises:
      SquadError: a feature has no result.
    """
    example_index_to_features: dict[int, list[InputFeatures]] = collections.defaultdict(list)
    for feature in all_features:
        example_index_to_features[feature.example_index].append(feature)

    # Python floats, as the original's `float(x) for x in result[...].flat`.
    unique_id_to_result: dict[int, tuple[list[float], list[float]]] = {}
    for result in all_results:
        unique_id_to_result[int(result.unique_id)] = (
            [float(x) for x in result.start_logits],
            [float(x) for x in result.end_logits],
        )

    # BasicTokenizer splits its input on whitespace first and then treats each word on its own,
    # so the tokens of " ".join(words) are the words' tokens in order. The n-best spans of an
    # example overlap, so tokenizing each distinct word once (not each span) gives the same
    # tokens in a fraction of the time (the original spends most of write_predictions there).
    word_basic_tokens: dict[str, list[str]] = {}

    def basic_tokens_of(words: Sequence[str]) -> list[str]:
        tokens: list[str] = []
        for word in words:
            if word not in word_basic_tokens:
                word_basic_tokens[word] = basic_tokenize(word, do_lower_case)
            tokens += word_basic_tokens[word]
        return tokens

    all_predictions: OrderedDict[str, str] = OrderedDict()
    all_nbest_json: OrderedDict[str, list[OrderedDict[str, Any]]] = OrderedDict()
    scores_diff_json: OrderedDict[str, float] = OrderedDict()

    for example_index, example in enumerate(all_examples):
        features = example_index_to_features[example_index]

        prelim_predictions: list[_PrelimPrediction] = []
        # The minimum null score (start + end logit at [CLS]) over the example's windows.
        score_null = 1000000.0  # large and positive (an int in the original; same arithmetic)
        min_null_feature_index = 0
        null_start_logit = 0.0
        null_end_logit = 0.0
        for feature_index, feature in enumerate(features):
            if feature.unique_id not in unique_id_to_result:
                raise SquadError(
                    f"no result for feature {feature.unique_id} (example {example.qas_id!r}); "
                    "pass one result per feature, with the feature's unique_id"
                )
            start_logits, end_logits = unique_id_to_result[feature.unique_id]
            start_indexes = _get_best_indexes(start_logits, n_best_size)
            end_indexes = _get_best_indexes(end_logits, n_best_size)
            if version_2_with_negative:
                feature_null_score = start_logits[0] + end_logits[0]
                if feature_null_score < score_null:
                    score_null = feature_null_score
                    min_null_feature_index = feature_index
                    null_start_logit = start_logits[0]
                    null_end_logit = end_logits[0]
            for start_index in start_indexes:
                for end_index in end_indexes:
                    # Spans in the question, in padding, or outside the max-context window are
                    # thrown out.
                    if start_index >= len(feature.tokens):
                        continue
                    if end_index >= len(feature.tokens):
                        continue
                    if start_index not in feature.token_to_orig_map:
                        continue
                    if end_index not in feature.token_to_orig_map:
                        continue
                    if not feature.token_is_max_context.get(start_index, False):
                        continue
                    if end_index < start_index:
                        continue
                    length = end_index - start_index + 1
                    if length > max_answer_length:
                        continue
                    prelim_predictions.append(
                        _PrelimPrediction(
                            feature_index=feature_index,
                            start_index=start_index,
                            end_index=end_index,
                            start_logit=start_logits[start_index],
                            end_logit=end_logits[end_index],
                        )
                    )

        if version_2_with_negative:
            prelim_predictions.append(
                _PrelimPrediction(
                    feature_index=min_null_feature_index,
                    start_index=0,
                    end_index=0,
                    start_logit=null_start_logit,
                    end_logit=null_end_logit,
                )
            )
        # A stable sort: equal scores keep the order above (windows, then start, then end rank).
        prelim_predictions = sorted(
            prelim_predictions, key=lambda x: x.start_logit + x.end_logit, reverse=True
        )

        seen_predictions: dict[str, bool] = {}
        nbest: list[_NbestPrediction] = []
        for pred in prelim_predictions:
            if len(nbest) >= n_best_size:
                break
            if pred.start_index > 0:  # a non-null prediction
                # (The original looks the feature up before this test, which fails for an example
                # without features; only non-null predictions need it.)
                feature = features[pred.feature_index]
                tok_tokens = feature.tokens[pred.start_index : (pred.end_index + 1)]
                orig_doc_start = feature.token_to_orig_map[pred.start_index]
                orig_doc_end = feature.token_to_orig_map[pred.end_index]
                orig_tokens = example.doc_tokens[orig_doc_start : (orig_doc_end + 1)]
                tok_text = " ".join(tok_tokens)
                # De-tokenize WordPieces that have been split off.
                tok_text = tok_text.replace(" ##", "")
                tok_text = tok_text.replace("##", "")
                # Clean whitespace.
                tok_text = tok_text.strip()
                tok_text = " ".join(tok_text.split())
                orig_text = " ".join(orig_tokens)
                final_text = get_final_text(
                    tok_text, orig_text, do_lower_case, basic_tokens_of(orig_tokens)
                )
                if final_text in seen_predictions:
                    continue
                seen_predictions[final_text] = True
            else:
                final_text = ""
                seen_predictions[final_text] = True
            nbest.append(
                _NbestPrediction(
                    text=final_text, start_logit=pred.start_logit, end_logit=pred.end_logit
                )
            )

        # If the null answer did not make the n-best, it is added anyway.
        if version_2_with_negative and "" not in seen_predictions:
            nbest.append(
                _NbestPrediction(text="", start_logit=null_start_logit, end_logit=null_end_logit)
            )
        # In rare cases there is no valid prediction: a nonce one avoids failure. (With
        # version_2_with_negative the original only checks for an empty list and then crashes on
        # a list holding nothing but the null answer; the same nonce covers that case.)
        if not nbest or (version_2_with_negative and not any(entry.text for entry in nbest)):
            nbest.append(_NbestPrediction(text="empty", start_logit=0.0, end_logit=0.0))

        total_scores = []
        best_non_null_entry: _NbestPrediction | None = None
        for entry in nbest:
            total_scores.append(entry.start_logit + entry.end_logit)
            if best_non_null_entry is None and entry.text:
                best_non_null_entry = entry
        probs = _compute_softmax(total_scores)

        nbest_json: list[OrderedDict[str, Any]] = []
        for i, entry in enumerate(nbest):
            output: OrderedDict[str, Any] = OrderedDict()
            output["text"] = entry.text
            output["probability"] = probs[i]
            output["start_logit"] = entry.start_logit
            output["end_logit"] = entry.end_logit
            nbest_json.append(output)

        if not version_2_with_negative:
            all_predictions[example.qas_id] = nbest_json[0]["text"]
        else:
            assert best_non_null_entry is not None
            # Predict "" iff the null score minus the best non-null score exceeds the threshold.
            score_diff = (
                score_null - best_non_null_entry.start_logit - best_non_null_entry.end_logit
            )
            scores_diff_json[example.qas_id] = score_diff
            if score_diff > null_score_diff_threshold:
                all_predictions[example.qas_id] = ""
            else:
                all_predictions[example.qas_id] = best_non_null_entry.text
        all_nbest_json[example.qas_id] = nbest_json

    return all_predictions, all_nbest_json, scores_diff_json


def write_prediction_files(
    output_dir: str | os.PathLike[str],
    predictions: Mapping[str, str],
    nbest: Mapping[str, Any],
    null_odds: Mapping[str, float] | None = None,
) -> dict[str, str]:
    """Writes predictions.json, nbest_predictions.json and null_odds.json as the original does.

    Same text as the original: `json.dumps(obj, indent=4) + "\\n"`, so the files are
    byte-identical to the original's for the same values.

    Args:
      output_dir: a directory, anywhere fsspec writes (created if missing).
      predictions: from `write_predictions`.
      nbest: from `write_predictions`.
      null_odds: from `write_predictions`; None (SQuAD 1.1) writes no null_odds.json, as the
        original without version_2_with_negative.

    Returns:
      file name -> the URL/path it was written to.
    """
    fs, root = fsspec.core.url_to_fs(os.fspath(output_dir))
    fs.makedirs(root, exist_ok=True)
    base = os.fspath(output_dir).rstrip("/")
    contents: dict[str, Mapping[str, Any]] = {
        "predictions.json": predictions,
        "nbest_predictions.json": nbest,
    }
    if null_odds is not None:
        contents["null_odds.json"] = null_odds
    written: dict[str, str] = {}
    for name, obj in contents.items():
        with fs.open(f"{root.rstrip('/')}/{name}", "w", encoding="utf-8") as writer:
            writer.write(json.dumps(obj, indent=4) + "\n")
        written[name] = f"{base}/{name}"
    return written


# --------------------------------------------------------------------------------------------------
# Official evaluation
# --------------------------------------------------------------------------------------------------


def normalize_answer(s: str) -> str:
    """Lower-cases, removes punctuation, articles and extra whitespace (both official scripts)."""

    def remove_articles(text: str) -> str:
        return re.sub(r"\b(a|an|the)\b", " ", text, flags=re.UNICODE)

    def white_space_fix(text: str) -> str:
        return " ".join(text.split())

    def remove_punc(text: str) -> str:
        exclude = set(string.punctuation)  # ASCII punctuation only, as the official scripts
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def _f1_v1(prediction: str, ground_truth: str) -> float:
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    common = collections.Counter(prediction_tokens) & collections.Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def _exact_v1(prediction: str, ground_truth: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def _iter_qas(dataset: Any, source: str) -> Iterator[tuple[str, dict[str, Any], list[Any]]]:
    """(JSON path, qa, answers) for every question, checked for the fields evaluation reads."""
    for a, article in enumerate(_articles_of(dataset, source)):
        for p, paragraph in enumerate(
            _get(article, "paragraphs", list, f"data[{a}]", source, _LAYOUT)
        ):
            paragraph_path = f"data[{a}].paragraphs[{p}]"
            for q, qa in enumerate(_get(paragraph, "qas", list, paragraph_path, source, _LAYOUT)):
                qa_path = f"{paragraph_path}.qas[{q}]"
                _get(qa, "id", str, qa_path, source, _LAYOUT)
                answers = _get(qa, "answers", list, qa_path, source, _LAYOUT)
                for i, answer in enumerate(answers):
                    _get(answer, "text", str, f"{qa_path}.answers[{i}]", source, _LAYOUT)
                yield qa_path, qa, answers


def evaluate_v1(dataset: Any, predictions: Mapping[str, str]) -> OrderedDict[str, float]:
    """The official evaluate-v1.1.py `evaluate`: exact match and F1 over all questions, in %.

    A question without a prediction scores 0 (logged, as the script prints it); each prediction
    is scored against its best-matching gold answer.

    Args:
      dataset: the SQuAD JSON object, or its "data" list (what the script passes).
      predictions: qas_id -> answer text (predictions.json).

    Returns:
      {"exact_match": %, "f1": %}.

    Raises:
      SquadError: the dataset is malformed or has no questions.
    """
    f1 = exact_match = 0.0
    total = 0
    for _, qa, answers in _iter_qas(dataset, "dataset"):
        total += 1
        if qa["id"] not in predictions:
            log.warning("Unanswered question %s will receive score 0.", qa["id"])
            continue
        ground_truths = [answer["text"] for answer in answers]
        if not ground_truths:
            raise SquadError(
                f"dataset: question {qa['id']!r} has no answers; SQuAD 1.1 evaluation needs at "
                "least one gold answer per question (use evaluate_v2 for SQuAD 2.0 data)"
            )
        prediction = predictions[qa["id"]]
        exact_match += max(_exact_v1(prediction, gt) for gt in ground_truths)
        f1 += max(_f1_v1(prediction, gt) for gt in ground_truths)
    if total == 0:
        raise SquadError(
            "dataset: no questions to evaluate; pass the SQuAD JSON the predictions are for"
        )
    return OrderedDict([("exact_match", 100.0 * exact_match / total), ("f1", 100.0 * f1 / total)])


def _get_tokens(s: str) -> list[str]:
    if not s:
        return []
    return normalize_answer(s).split()


def _compute_exact(a_gold: str, a_pred: str) -> int:
    return int(normalize_answer(a_gold) == normalize_answer(a_pred))


def _compute_f1(a_gold: str, a_pred: str) -> float:
    gold_toks = _get_tokens(a_gold)
    pred_toks = _get_tokens(a_pred)
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        # If either is no-answer, then F1 is 1 if they agree, 0 otherwise.
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(pred_toks)
    recall = 1.0 * num_same / len(gold_toks)
    return (2 * precision * recall) / (precision + recall)


def _make_eval_dict(
    exact_scores: Mapping[str, float],
    f1_scores: Mapping[str, float],
    qid_list: list[str] | None = None,
) -> OrderedDict[str, float]:
    if not qid_list:
        total = len(exact_scores)
        return OrderedDict(
            [
                ("exact", 100.0 * sum(exact_scores.values()) / total),
                ("f1", 100.0 * sum(f1_scores.values()) / total),
                ("total", total),
            ]
        )
    total = len(qid_list)
    return OrderedDict(
        [
            ("exact", 100.0 * sum(exact_scores[k] for k in qid_list) / total),
            ("f1", 100.0 * sum(f1_scores[k] for k in qid_list) / total),
            ("total", total),
        ]
    )


def _find_best_thresh(
    preds: Mapping[str, str],
    scores: Mapping[str, float],
    na_probs: Mapping[str, float],
    qid_to_has_ans: Mapping[str, bool],
) -> tuple[float, float]:
    # Sweep the threshold up through the sorted null odds: start from "everything predicted
    # unanswerable" (all NoAns right) and add each question's change as it flips to answered.
    num_no_ans = sum(1 for k in qid_to_has_ans if not qid_to_has_ans[k])
    cur_score: float = num_no_ans
    best_score = cur_score
    best_thresh = 0.0
    qid_list = sorted(na_probs, key=lambda k: na_probs[k])  # stable: ties keep na_probs' order
    for qid in qid_list:
        if qid not in scores:
            continue
        if qid_to_has_ans[qid]:
            diff = scores[qid]
        else:
            diff = -1 if preds[qid] else 0
        cur_score += diff
        if cur_score > best_score:
            best_score = cur_score
            best_thresh = na_probs[qid]
    return 100.0 * best_score / len(scores), best_thresh


def evaluate_v2(
    dataset: Any,
    predictions: Mapping[str, str],
    na_probs: Mapping[str, float] | None = None,
    na_prob_thresh: float = 1.0,
) -> OrderedDict[str, float]:
    """The official evaluate-v2.0.py: exact / F1 in %, overall, HasAns_* and NoAns_*.

    As the script: a question whose na_probs value exceeds na_prob_thresh counts as predicted
    unanswerable; without na_probs every value is 0.0. With na_probs (e.g. null_odds.json, which
    the script accepts in place of probabilities) it also reports the best achievable exact / F1
    over thresholds and those thresholds (best_exact, best_exact_thresh, best_f1,
    best_f1_thresh). The precision-recall plots (--out-image-dir) are not reproduced.

    Args:
      dataset: the SQuAD JSON object, or its "data" list (what the script passes).
      predictions: qas_id -> answer text, "" for no answer (predictions.json).
      na_probs: qas_id -> no-answer probability or score (the script's --na-prob-file).
      na_prob_thresh: the script's --na-prob-thresh (default 1.0, as there).

    Returns:
      An OrderedDict with the script's keys in its order: exact, f1, total, HasAns_exact,
      HasAns_f1, HasAns_total, NoAns_exact, NoAns_f1, NoAns_total (the HasAns/NoAns groups only
      when the dataset has such questions), then the best_* keys when na_probs is given.

    Raises:
      SquadError: the dataset is malformed or empty, or a question has no prediction or no
        na_probs entry (the script fails with a KeyError there).
    """
    qid_to_has_ans: dict[str, bool] = {}
    gold: dict[str, list[str]] = {}
    for _, qa, answers in _iter_qas(dataset, "dataset"):
        qid_to_has_ans[qa["id"]] = bool(answers)
        gold[qa["id"]] = [a["text"] for a in answers if normalize_answer(a["text"])]
    if not qid_to_has_ans:
        raise SquadError(
            "dataset: no questions to evaluate; pass the SQuAD JSON the predictions are for"
        )
    missing = [qid for qid in qid_to_has_ans if qid not in predictions]
    if missing:
        raise SquadError(
            f"no prediction for {len(missing)} of {len(qid_to_has_ans)} questions (e.g. "
            f'{missing[:3]}); SQuAD 2.0 evaluation needs one per question, "" for no answer'
        )
    if na_probs is not None:
        missing = [qid for qid in qid_to_has_ans if qid not in na_probs]
        if missing:
            raise SquadError(
                f"na_probs has no value for {len(missing)} questions (e.g. {missing[:3]}); pass "
                "the null_odds written with these predictions"
            )
    probs: Mapping[str, float] = na_probs if na_probs is not None else {k: 0.0 for k in predictions}
    has_ans_qids = [k for k, v in qid_to_has_ans.items() if v]
    no_ans_qids = [k for k, v in qid_to_has_ans.items() if not v]

    # get_raw_scores: the best score over gold answers; unanswerable questions have gold [""].
    exact_raw: dict[str, float] = {}
    f1_raw: dict[str, float] = {}
    for qid in qid_to_has_ans:
        gold_answers = gold[qid] or [""]
        a_pred = predictions[qid]
        exact_raw[qid] = max(_compute_exact(a, a_pred) for a in gold_answers)
        f1_raw[qid] = max(_compute_f1(a, a_pred) for a in gold_answers)

    def apply_no_ans_threshold(scores: Mapping[str, float]) -> dict[str, float]:
        return {
            qid: float(not qid_to_has_ans[qid]) if probs[qid] > na_prob_thresh else s
            for qid, s in scores.items()
        }

    exact_thresh = apply_no_ans_threshold(exact_raw)
    f1_thresh = apply_no_ans_threshold(f1_raw)
    out_eval = _make_eval_dict(exact_thresh, f1_thresh)
    for prefix, qids in (("HasAns", has_ans_qids), ("NoAns", no_ans_qids)):
        if qids:
            for k, v in _make_eval_dict(exact_thresh, f1_thresh, qid_list=qids).items():
                out_eval[f"{prefix}_{k}"] = v
    if na_probs is not None:
        best_exact, exact_best_thresh = _find_best_thresh(
            predictions, exact_raw, na_probs, qid_to_has_ans
        )
        best_f1, f1_best_thresh = _find_best_thresh(predictions, f1_raw, na_probs, qid_to_has_ans)
        out_eval["best_exact"] = best_exact
        out_eval["best_exact_thresh"] = exact_best_thresh
        out_eval["best_f1"] = best_f1
        out_eval["best_f1_thresh"] = f1_best_thresh
    return out_eval
