"""Sentence(-pair) classification data: GLUE/XNLI tasks, configurable readers, features, metrics.

What the original run_classifier.py's processors do, with the file layout made data instead of code:
- `TaskSpec`: a task's labels, whether it is regression, which metrics GLUE reports for it, and
  the GLUE-release layout of each split (`GlueFile`: file name + `TableFormat`). `TASKS` holds CoLA,
  SST-2, MRPC, STS-B, QQP, MNLI (+ `mnli-mm`), QNLI, RTE, WNLI and XNLI; the layouts of the tasks the
  original has (CoLA, MNLI, MRPC, XNLI) are its processors' column for column, the others GLUE's.
- `TableFormat`: how one file is laid out (TSV/CSV/JSON Lines, header or not, which column holds
  what, by index or header name). `read_examples` reads any file through fsspec with one;
  `SHARED_LAYOUTS` has the formats of the differently laid-out copies in ../shared/data.
- `convert_examples_to_arrays`: `[CLS] A [SEP] (B [SEP])` features with the original's names.
- `compute_metrics` and the metrics it uses (numpy only), and the original's two output files.

Labels stay strings (as the original's `get_labels()`) until `convert_examples_to_arrays` maps them
to their index in the task's label list; unlabeled (test) examples carry `label=None`.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO, Any, Literal

import fsspec
import numpy as np

from jobs.data.pretraining import DataError
from models.tokenization import FullTokenizer

Column = int | str  # a 0-based index (negative counts from the end) or a header / JSON key name
Label = str | float


@dataclasses.dataclass(frozen=True)
class InputExample:
    """One example, as the original's `InputExample`.

    Attributes:
        guid: unique id, "<split>-<row index or id column>".
        text_a: the first (or only) sentence.
        text_b: the second sentence of a pair task; None for single-sentence tasks.
        label: a label of the task's label list (classification), a float (regression), or None
            for unlabeled (test) data.
    """

    guid: str
    text_a: str
    text_b: str | None = None
    label: Label | None = None


# --------------------------------------------------------------------------------------------------
# File layouts
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TableFormat:
    """How one data file is laid out.

    Attributes:
        delimiter: field separator of a delimited file ("\\t" for TSV, "," for CSV).
        has_header: the first row names the columns (and is not an example).
        text_a_column: column of the first sentence.
        text_b_column: column of the second sentence; None for single-sentence files.
        label_column: column of the label; None for unlabeled (test) files.
        guid_column: column whose value names the example ("<split>-<value>"); None: the row index
            (counting the header, as the original's `enumerate(lines)`).
        quoting: a `csv.QUOTE_*` constant; None means QUOTE_NONE for TSV (the original's
            `_read_tsv` reads with quotechar=None: GLUE TSVs have unbalanced `"` inside sentences)
            and QUOTE_MINIMAL for any other delimiter.
        file_format: "delimited" (TSV/CSV) or "jsonl" (one JSON object per line, columns are keys;
            or one JSON array per line, columns are indexes).
        label_aliases: raw label -> label of the task's list (XNLI's "contradictory").
        filter_column: keep only rows whose value in this column equals `filter_value` (XNLI's
            language column); None keeps every row.
        filter_value: see `filter_column`.

    Columns are int indexes (negative ones count from the end, like the original's `line[-1]`) or
    names: header names for a delimited file with `has_header`, keys for JSON Lines.
    """

    delimiter: str = "\t"
    has_header: bool = False
    text_a_column: Column = 0
    text_b_column: Column | None = None
    label_column: Column | None = None
    guid_column: Column | None = None
    quoting: int | None = None
    file_format: Literal["delimited", "jsonl"] = "delimited"
    label_aliases: Mapping[str, str] = dataclasses.field(default_factory=dict, hash=False)
    filter_column: Column | None = None
    filter_value: str | None = None

    def __post_init__(self) -> None:
        if self.file_format not in ("delimited", "jsonl"):
            raise DataError(f"TableFormat.file_format is {self.file_format!r}; use 'delimited' "
                            "(TSV/CSV) or 'jsonl'")  # fmt: skip
        if self.file_format == "delimited" and len(self.delimiter) != 1:
            raise DataError(f"TableFormat.delimiter must be one character, got {self.delimiter!r}")
        if self.file_format == "jsonl" and self.has_header:
            raise DataError("TableFormat.has_header must be False for JSON Lines: keys name the "
                            "columns")  # fmt: skip
        if (self.filter_column is None) != (self.filter_value is None):
            raise DataError("TableFormat.filter_column and filter_value go together: set both "
                            "or neither")  # fmt: skip
        for role, column in self.columns().items():
            if isinstance(column, bool) or not isinstance(column, int | str) or column == "":
                raise DataError(f"TableFormat.{role} is {column!r}; use a column index or a name")
            if (isinstance(column, str) and self.file_format == "delimited"
                    and not self.has_header):  # fmt: skip
                raise DataError(f"TableFormat.{role} names column {column!r} but the file has no "
                                "header; use a 0-based index or set has_header=True")  # fmt: skip

    def columns(self) -> dict[str, Column]:
        """Returns:
        role ("text_a_column", ...) -> column, for the roles this format uses.
        """
        roles = ("text_a_column", "text_b_column", "label_column", "guid_column", "filter_column")
        return {r: getattr(self, r) for r in roles if getattr(self, r) is not None}

    def csv_quoting(self) -> int:
        """Returns:
        The `csv.QUOTE_*` mode to read with (see `quoting`).
        """
        if self.quoting is not None:
            return self.quoting
        return csv.QUOTE_NONE if self.delimiter == "\t" else csv.QUOTE_MINIMAL


def _tsv(
    text_a: Column, text_b: Column | None = None, label: Column | None = None, *,
    header: bool = True, guid: Column | None = None, **kwargs: Any,
) -> TableFormat:  # fmt: skip
    return TableFormat(delimiter="\t", has_header=header, text_a_column=text_a,
                       text_b_column=text_b, label_column=label, guid_column=guid, **kwargs)  # fmt: skip


# The copies in ../shared/data (see its README): SentEval-style CoLA/SST-2 and the raw MSRP file.
SHARED_LAYOUTS: dict[str, TableFormat] = {
    "cola": _tsv(0, label=1, header=False),  # sentence<TAB>label
    "sst2": _tsv(1, label=0, header=False),  # label<TAB>sentence
    # Quality<TAB>#1 ID<TAB>#2 ID<TAB>#1 String<TAB>#2 String, with a header row (and a BOM).
    "mrpc_msr": _tsv("#1 String", "#2 String", "Quality"),
}


# --------------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GlueFile:
    """One split of a task as the GLUE (or XNLI) release ships it.

    Attributes:
        file_name: path relative to the task's data dir ("train.tsv", "dev_matched.tsv", ...).
        fmt: its layout.
    """

    file_name: str
    fmt: TableFormat


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """A sentence(-pair) classification or regression task.

    Attributes:
        name: canonical lower-case name ("cola", "sst2", "mnli-mm", ...).
        label_list: the labels, in the order of the classifier's outputs (the original's
            `get_labels()`); empty for regression.
        is_regression: labels are floats (STS-B) and the model has one output.
        metrics: the metrics GLUE reports, by `METRICS` name; `compute_metrics` prefixes "eval_".
        splits: split name ("train", "dev", "test", ...) -> its file in the release.
    """

    name: str
    label_list: tuple[str, ...]
    is_regression: bool
    metrics: tuple[str, ...]
    splits: Mapping[str, GlueFile] = dataclasses.field(hash=False)

    def split(self, split: str) -> GlueFile:
        """Args:
          split: a split name of this task.

        Returns:
          Its file name and layout.

        Raises:
          DataError: the task has no such split.
        """
        try:
            return self.splits[split]
        except KeyError:
            raise DataError(f"task {self.name!r} has no split {split!r}; it has "
                            f"{sorted(self.splits)}") from None  # fmt: skip

    @property
    def num_labels(self) -> int:
        """Outputs of the classifier head: 1 for regression, else the number of labels."""
        return 1 if self.is_regression else len(self.label_list)


def _glue_task(
    name: str, labels: Sequence[str], metrics: Sequence[str], train: TableFormat, test: TableFormat,
    dev: TableFormat | None = None, is_regression: bool = False,
) -> TaskSpec:  # fmt: skip
    files = {"train": GlueFile("train.tsv", train), "dev": GlueFile("dev.tsv", dev or train),
             "test": GlueFile("test.tsv", test)}  # fmt: skip
    return TaskSpec(name, tuple(labels), is_regression, tuple(metrics), files)


_NLI_LABELS = ("contradiction", "entailment", "neutral")
_RTE_LABELS = ("entailment", "not_entailment")


def _mnli_task(name: str, evaluation: Literal["matched", "mismatched"]) -> TaskSpec:
    # The original: guid = line[0], text_a = line[8], text_b = line[9], label = line[-1] (train has
    # one annotator label before gold_label, dev five).
    labeled, unlabeled = _tsv(8, 9, -1, guid=0), _tsv(8, 9, guid=0)
    files = {"train": GlueFile("train.tsv", labeled),
             "dev": GlueFile(f"dev_{evaluation}.tsv", labeled),
             "test": GlueFile(f"test_{evaluation}.tsv", unlabeled)}  # fmt: skip
    if name == "mnli":
        for kind in ("matched", "mismatched"):
            files[f"dev_{kind}"] = GlueFile(f"dev_{kind}.tsv", labeled)
            files[f"test_{kind}"] = GlueFile(f"test_{kind}.tsv", unlabeled)
    return TaskSpec(name, _NLI_LABELS, False, ("accuracy",), files)


def xnli_task(language: str = "zh") -> TaskSpec:
    """XNLI for one language, as the original's XnliProcessor (which hard-codes "zh").

    Train is the machine-translated MultiNLI (`multinli/multinli.train.<language>.tsv`:
    premise, hypo, label, with a header; "contradictory" means "contradiction"); dev and test are
    `xnli.dev.tsv` / `xnli.test.tsv`, all languages in one file, filtered on column 0.

    Args:
      language: XNLI language code ("ar", "de", "zh", ...).

    Returns:
      The task, named "xnli" ("xnli-<language>" for a language other than "zh").
    """
    train = _tsv(0, 1, 2, label_aliases={"contradictory": "contradiction"})
    evaluation = _tsv(6, 7, 1, filter_column=0, filter_value=language)
    files = {"train": GlueFile(f"multinli/multinli.train.{language}.tsv", train),
             "dev": GlueFile("xnli.dev.tsv", evaluation),
             "test": GlueFile("xnli.test.tsv", evaluation)}  # fmt: skip
    name = "xnli" if language == "zh" else f"xnli-{language}"
    return TaskSpec(name, _NLI_LABELS, False, ("accuracy",), files)


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        # The original's ColaProcessor: train/dev have no header (source, label, original label,
        # sentence); test has one (index, sentence).
        _glue_task("cola", ("0", "1"), ("accuracy", "mcc"), _tsv(3, label=1, header=False), _tsv(1)),
        _glue_task("sst2", ("0", "1"), ("accuracy",), _tsv(0, label=1), _tsv(1)),
        # The original's MrpcProcessor; test has an index column where train has Quality.
        _glue_task("mrpc", ("0", "1"), ("accuracy", "f1"), _tsv(3, 4, 0), _tsv(3, 4)),
        _glue_task("stsb", (), ("pearson", "spearmanr"), _tsv(7, 8, -1, guid=0), _tsv(7, 8, guid=0),
                   is_regression=True),
        _glue_task("qqp", ("0", "1"), ("accuracy", "f1"), _tsv(3, 4, 5, guid=0), _tsv(1, 2, guid=0)),
        _mnli_task("mnli", "matched"),
        _mnli_task("mnli-mm", "mismatched"),
        _glue_task("qnli", _RTE_LABELS, ("accuracy",), _tsv(1, 2, -1, guid=0), _tsv(1, 2, guid=0)),
        _glue_task("rte", _RTE_LABELS, ("accuracy",), _tsv(1, 2, -1, guid=0), _tsv(1, 2, guid=0)),
        _glue_task("wnli", ("0", "1"), ("accuracy",), _tsv(1, 2, -1, guid=0), _tsv(1, 2, guid=0)),
        xnli_task("zh"),
    )
}


def _task_key(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


_TASK_KEYS = {_task_key(name): spec for name, spec in TASKS.items()}


def get_task(task: str | TaskSpec) -> TaskSpec:
    """Looks a task up by name, ignoring case, "-" and "_" ("SST-2", "sts_b", "MNLI-MM" all work).

    Args:
      task: a task name, or a TaskSpec (returned as is).

    Returns:
      The task.

    Raises:
      DataError: no such task.
    """
    if isinstance(task, TaskSpec):
        return task
    try:
        return _TASK_KEYS[_task_key(task)]
    except KeyError:
        raise DataError(f"unknown task {task!r}; known tasks: {sorted(TASKS)} (or build a "
                        "TaskSpec)") from None  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------

_ROLE_NAMES = {"text_a_column": "text_a", "text_b_column": "text_b", "label_column": "the label",
               "guid_column": "the guid", "filter_column": "the filter"}  # fmt: skip


def _iter_delimited(f: IO[str], fmt: TableFormat, url: str) -> Iterator[tuple[int, int, list[str]]]:
    """(row index, line number, fields) of every row, blank ones included (as `[]`)."""
    reader = csv.reader(f, delimiter=fmt.delimiter, quoting=fmt.csv_quoting())  # type: ignore[arg-type]
    index = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:  # e.g. a field over csv.field_size_limit(), a bad quote
            raise DataError(f"{url}: line {reader.line_num + 1}: {err}; check the TableFormat's "
                            "delimiter and quoting") from None  # fmt: skip
        yield index, reader.line_num, row
        index += 1


def _iter_jsonl(f: IO[str], url: str) -> Iterator[tuple[int, int, list[Any] | dict[str, Any]]]:
    for index, line in enumerate(f):
        if not line.strip():
            yield index, index + 1, []
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{url}: line {index + 1} is not valid JSON ({err.msg}, column "
                            f"{err.colno}); write one JSON object per line") from None  # fmt: skip
        if not isinstance(row, dict | list):
            raise DataError(f"{url}: line {index + 1} holds a JSON {type(row).__name__}; each line "
                            "must be a JSON object (or array)")  # fmt: skip
        yield index, index + 1, row


def _resolve_columns(fmt: TableFormat, header: list[str], url: str, line: int) -> dict[str, int]:
    """Role -> int index, with names looked up in the header row."""
    resolved: dict[str, int] = {}
    for role, column in fmt.columns().items():
        if isinstance(column, int):
            resolved[role] = column
        elif column in header:
            resolved[role] = header.index(column)
        else:
            raise DataError(f"{url}: line {line} (the header) has no column {column!r} for "
                            f"{_ROLE_NAMES[role]}; its columns are {header}")  # fmt: skip
    return resolved


def _cell(row: list[Any] | dict[str, Any], column: Column, role: str, url: str, line: int,
          fmt: TableFormat) -> Any:  # fmt: skip
    """The value of `column` in `row`, or a DataError naming the file, line and column."""
    if isinstance(row, dict):
        if isinstance(column, int):
            raise DataError(f"{url}: line {line} is a JSON object, but {_ROLE_NAMES[role]} is "
                            f"column {column}; name JSON columns by key")  # fmt: skip
        if column not in row:
            raise DataError(f"{url}: line {line} has no key {column!r} for {_ROLE_NAMES[role]}; "
                            f"its keys are {sorted(row)}")  # fmt: skip
        return row[column]
    if isinstance(column, str):
        raise DataError(f"{url}: line {line} is a JSON array, but {_ROLE_NAMES[role]} is column "
                        f"{column!r}; index JSON arrays by position")  # fmt: skip
    if not -len(row) <= column < len(row):
        named = fmt.columns()[role]
        shown = f"column {column}" + (f" ({named!r})" if isinstance(named, str) else "")
        raise DataError(f"{url}: line {line} has {len(row)} columns, but {_ROLE_NAMES[role]} is "
                        f"{shown}; check the file's delimiter ({fmt.delimiter!r}) and the "
                        "TableFormat's columns")  # fmt: skip
    return row[column]


def _parse_label(raw: Any, spec: TaskSpec, fmt: TableFormat, url: str, line: int) -> Label:
    if spec.is_regression:
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise DataError(f"{url}: line {line}: label {raw!r} is not a number, and task "
                            f"{spec.name!r} is a regression task") from None  # fmt: skip
        if not math.isfinite(value):
            raise DataError(f"{url}: line {line}: label {raw!r} is not a finite number")
        return value
    label = raw if isinstance(raw, str) else json.dumps(raw)  # JSON 1 -> "1", true -> "true"
    label = fmt.label_aliases.get(label, label)
    if label not in spec.label_list:
        raise DataError(f"{url}: line {line}: label {label!r} is not one of "
                        f"{list(spec.label_list)} (task {spec.name!r}); fix the file or the "
                        "TableFormat's label column")  # fmt: skip
    return label


def _text(value: Any, role: str, url: str, line: int) -> str:
    if not isinstance(value, str):
        raise DataError(f"{url}: line {line}: {_ROLE_NAMES[role]} is {value!r}, not a string")
    return value


def read_examples(
    url: str, task: str | TaskSpec, fmt: TableFormat | None = None, split: str = "train"
) -> list[InputExample]:
    """Reads one data file into examples.

    The file is opened through fsspec (local paths, gs://, s3://, memory://; ".gz" etc. are
    decompressed by extension) as UTF-8, a leading BOM dropped. Blank lines are skipped.

    Args:
      url: the file.
      task: the task (or its name): its labels validate the label column, and a regression
        task's labels are parsed as floats.
      fmt: the file's layout; None: the task's GLUE-release layout of `split`.
      split: the split's name: prefixes guids ("train-0", ...) and picks the default layout.

    Returns:
      The examples, in file order.

    Raises:
      DataError: the file does not exist, is not UTF-8, is empty (or has only a header, or no row
        passes the format's filter), a row has too few columns, a header lacks a named column, a
        label is not in the task's label list (or, for regression, not a number).
    """
    spec = get_task(task)
    fmt = fmt if fmt is not None else spec.split(split).fmt
    try:
        with fsspec.open(url, "rt", compression="infer", encoding="utf-8-sig", newline="") as f:
            return _read_rows(f, url, spec, fmt, split)
    except FileNotFoundError:
        raise DataError(f"data file {url!r} does not exist; check the data dir and the task's "
                        "file names (TaskSpec.splits)") from None  # fmt: skip
    except IsADirectoryError:
        raise DataError(f"data file {url!r} is a directory; name the file (or use "
                        "read_task_split for a GLUE task directory)") from None  # fmt: skip
    except UnicodeDecodeError as err:
        raise DataError(f"{url} is not valid UTF-8 ({err.reason}: {err.object[err.start:err.start + 4]!r}); "
                        "re-encode the file as UTF-8") from None  # fmt: skip


def _read_rows(f: IO[str], url: str, spec: TaskSpec, fmt: TableFormat, split: str) -> list[InputExample]:
    rows = _iter_jsonl(f, url) if fmt.file_format == "jsonl" else _iter_delimited(f, fmt, url)
    columns: Mapping[str, Column] | None = None if fmt.has_header else fmt.columns()
    examples: list[InputExample] = []
    num_rows = 0
    for index, line, row in rows:
        if not row:
            continue
        if columns is None:  # this is the header row (only delimited files have one)
            assert isinstance(row, list), "TableFormat forbids has_header for JSON Lines"
            columns = _resolve_columns(fmt, row, url, line)
            continue
        num_rows += 1
        # role -> the row's value, for the roles the format uses.
        cells = {role: _cell(row, column, role, url, line, fmt) for role, column in columns.items()}
        if "filter_column" in cells and cells["filter_column"] != fmt.filter_value:
            continue
        text_b = cells.get("text_b_column")
        examples.append(InputExample(
            guid=f"{split}-{cells.get('guid_column', index)}",
            text_a=_text(cells["text_a_column"], "text_a_column", url, line),
            text_b=None if text_b is None else _text(text_b, "text_b_column", url, line),
            label=(_parse_label(cells["label_column"], spec, fmt, url, line)
                   if "label_column" in cells else None),
        ))  # fmt: skip
    if not num_rows:
        what = "only a header row" if columns is not None and fmt.has_header else "no rows"
        raise DataError(f"{url} has {what}; expected {split} examples of task {spec.name!r}")
    if not examples:
        raise DataError(f"{url}: none of its {num_rows} rows has {fmt.filter_value!r} in column "
                        f"{fmt.filter_column!r} (the format's filter)")  # fmt: skip
    return examples


def read_task_split(data_dir: str, task: str | TaskSpec, split: str = "train") -> list[InputExample]:
    """Reads a split of a task from a directory laid out like the GLUE (or XNLI) release.

    Args:
      data_dir: the task's directory ("glue_data/MRPC", "gs://bucket/glue/MNLI", ...).
      task: the task or its name.
      split: "train", "dev", "test" (MNLI also has dev_matched, dev_mismatched, ...).

    Returns:
      The examples, as `read_examples` returns them.

    Raises:
      DataError: unknown task or split, or anything `read_examples` raises.
    """
    spec = get_task(task)
    file = spec.split(split)
    return read_examples(_join(data_dir, file.file_name), spec, file.fmt, split)


def split_holdout(
    examples: Sequence[InputExample], fraction: float, seed: int
) -> tuple[list[InputExample], list[InputExample]]:
    """Splits off a seeded, deterministic held-out set (e.g. MRPC's dev set from its train file).

    Each example's rank is a BLAKE2b hash of (seed, its position), so the split depends only on the
    seed and the number of examples: not on the Python or numpy version, nor the platform.

    Args:
      examples: all examples.
      fraction: share of examples held out, in (0, 1); rounded, and at least one on each side.
      seed: any int; the same seed gives the same split.

    Returns:
      (kept, held out): disjoint, together all examples, each in the input's order.

    Raises:
      DataError: fraction outside (0, 1), or fewer than two examples.
    """
    if not 0.0 < fraction < 1.0:
        raise DataError(f"holdout fraction must be in (0, 1), got {fraction}")
    num_examples = len(examples)
    if num_examples < 2:
        raise DataError(f"cannot hold out part of {num_examples} example(s); need at least 2")
    num_held_out = min(num_examples - 1, max(1, round(num_examples * fraction)))

    def rank(index: int) -> bytes:
        return hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=16).digest()

    held_out = set(sorted(range(num_examples), key=rank)[:num_held_out])
    kept = [ex for i, ex in enumerate(examples) if i not in held_out]
    return kept, [ex for i, ex in enumerate(examples) if i in held_out]


# --------------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------------


def convert_examples_to_arrays(
    examples: Sequence[InputExample],
    label_list: Sequence[str],
    tokenizer: FullTokenizer,
    max_seq_length: int,
    is_regression: bool = False,
) -> dict[str, np.ndarray]:
    """Encodes examples as the original's `convert_examples_to_features`, all at once.

    Shapes: N examples, T = max_seq_length. Pairs are truncated longest-first as the original;
    unlabeled examples get the first label (0.0 for regression) as the original's test sets do.

    Args:
      examples: the examples.
      label_list: the task's labels; label i is class i.
      tokenizer: the WordPiece tokenizer of the checkpoint.
      max_seq_length: T.
      is_regression: labels are floats.

    Returns:
      "input_ids", "input_mask", "segment_ids": int64 [N, T]; "label_ids": int64 [N] (float32
      [N] for regression).

    Raises:
      DataError: a label not in `label_list`, or (regression) not a number.
      ValueError: max_seq_length too small for [CLS]/[SEP] (from the tokenizer).
    """
    label_map = {label: i for i, label in enumerate(label_list)}
    labels: list[int | float] = []
    for ex in examples:
        if is_regression:
            try:
                labels.append(0.0 if ex.label is None else float(ex.label))
            except (TypeError, ValueError):
                raise DataError(f"example {ex.guid}: label {ex.label!r} is not a number") from None
        elif ex.label is None:
            labels.append(0)
        elif ex.label in label_map:
            labels.append(label_map[ex.label])
        else:
            raise DataError(f"example {ex.guid}: label {ex.label!r} is not one of "
                            f"{list(label_list)}")  # fmt: skip
    texts_b = [ex.text_b for ex in examples]
    batch = tokenizer.encode_batch(
        [ex.text_a for ex in examples],
        texts_b if any(text is not None for text in texts_b) else None,
        max_seq_length=max_seq_length,
    )
    return {
        "input_ids": batch.input_ids,
        "input_mask": batch.input_mask,
        "segment_ids": batch.segment_ids,
        "label_ids": np.asarray(labels, dtype=np.float32 if is_regression else np.int64),
    }


# --------------------------------------------------------------------------------------------------
# Metrics (as GLUE computes them with sklearn / scipy; numpy only)
# --------------------------------------------------------------------------------------------------


def _pair(predictions: Any, labels: Any, dtype: Any = None) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(predictions, dtype=dtype).reshape(-1)
    y = np.asarray(labels, dtype=dtype).reshape(-1)
    if p.shape != y.shape or p.size == 0:
        raise ValueError(f"need equally many predictions and labels, at least one: got "
                         f"{p.size} and {y.size}")  # fmt: skip
    return p, y


def accuracy(predictions: Any, labels: Any) -> float:
    """Args:
      predictions: [N] predicted classes.
      labels: [N] true classes.

    Returns:
      The fraction of predictions equal to their label.
    """
    p, y = _pair(predictions, labels)
    return float(np.mean(p == y))


def f1_score(predictions: Any, labels: Any, positive: int = 1) -> float:
    """Binary F1 of the positive class (sklearn's `f1_score(average="binary")`).

    Args:
      predictions: [N] predicted classes.
      labels: [N] true classes.
      positive: the positive class.

    Returns:
      2 TP / (2 TP + FP + FN); 0.0 when there are no positives at all (sklearn's zero_division).
    """
    p, y = _pair(predictions, labels)
    tp = int(np.sum((p == positive) & (y == positive)))
    fp = int(np.sum((p == positive) & (y != positive)))
    fn = int(np.sum((p != positive) & (y == positive)))
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def matthews_corrcoef(predictions: Any, labels: Any) -> float:
    """Matthews correlation coefficient, multi-class form (as sklearn's `matthews_corrcoef`).

    Args:
      predictions: [N] predicted classes.
      labels: [N] true classes.

    Returns:
      MCC in [-1, 1]; 0.0 when it is undefined (all labels or all predictions one class).
    """
    p, y = _pair(predictions, labels)
    _, codes = np.unique(np.concatenate([y, p]), return_inverse=True)
    num_classes = int(codes.max()) + 1
    true_counts = np.bincount(codes[: y.size], minlength=num_classes).astype(np.float64)
    pred_counts = np.bincount(codes[y.size :], minlength=num_classes).astype(np.float64)
    n = float(y.size)
    correct = float(np.sum(p == y))
    cov_yp = correct * n - true_counts @ pred_counts
    cov_pp = n * n - pred_counts @ pred_counts
    cov_yy = n * n - true_counts @ true_counts
    if cov_pp * cov_yy == 0:
        return 0.0
    return float(cov_yp / math.sqrt(cov_yy * cov_pp))


def pearson(predictions: Any, labels: Any) -> float:
    """Pearson correlation (scipy's `pearsonr(...)[0]`).

    Args:
      predictions: [N] predicted values.
      labels: [N] true values.

    Returns:
      r in [-1, 1]; NaN when either side is constant.
    """
    p, y = _pair(predictions, labels, np.float64)
    pc, yc = p - p.mean(), y - y.mean()
    denominator = math.sqrt(float(pc @ pc) * float(yc @ yc))
    if denominator == 0.0:
        return float("nan")
    return float(np.clip(float(pc @ yc) / denominator, -1.0, 1.0))


def average_ranks(values: Any) -> np.ndarray:
    """1-based ranks, ties sharing their average rank (scipy's `rankdata(method="average")`).

    Args:
      values: [N] numbers.

    Returns:
      [N] float64 ranks.
    """
    x = np.asarray(values).reshape(-1)
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    starts_group = np.concatenate([[True], sorted_x[1:] != sorted_x[:-1]])
    group = np.cumsum(starts_group) - 1  # tie group of each sorted position
    bounds = np.concatenate([np.flatnonzero(starts_group), [x.size]])
    # Positions bounds[g] .. bounds[g+1]-1 (0-based) share the mean of ranks bounds[g]+1 .. bounds[g+1].
    group_rank = (bounds[:-1] + 1 + bounds[1:]) / 2.0
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = group_rank[group]
    return ranks


def spearman(predictions: Any, labels: Any) -> float:
    """Spearman rank correlation (scipy's `spearmanr(...)[0]`): Pearson of average ranks.

    Args:
      predictions: [N] predicted values.
      labels: [N] true values.

    Returns:
      rho in [-1, 1]; NaN when either side is constant.
    """
    p, y = _pair(predictions, labels)
    return pearson(average_ranks(p), average_ranks(y))


METRICS: dict[str, Callable[[Any, Any], float]] = {
    "accuracy": accuracy, "f1": f1_score, "mcc": matthews_corrcoef, "pearson": pearson,
    "spearmanr": spearman,
}  # fmt: skip


def compute_metrics(task: str | TaskSpec, predictions: Any, labels: Any) -> dict[str, float]:
    """The metrics GLUE reports for a task.

    Args:
      task: the task or its name.
      predictions: classification: [N] class ids, or [N, C] logits/probabilities (argmax is
        taken); regression: [N] or [N, 1] values.
      labels: [N] label ids (classification) or values (regression).

    Returns:
      "eval_accuracy" (classification), plus "eval_f1" (MRPC, QQP), "eval_mcc" (CoLA);
      "eval_pearson" and "eval_spearmanr" for STS-B. Values are Python floats.

    Raises:
      DataError: unknown task.
      ValueError: predictions and labels differ in number, or there are none.
    """
    spec = get_task(task)
    p = np.asarray(predictions)
    if spec.is_regression:
        if p.ndim == 2 and p.shape[1] == 1:
            p = p[:, 0]
    elif p.ndim == 2:
        p = p.argmax(axis=-1)
    return {f"eval_{name}": METRICS[name](p, labels) for name in spec.metrics}


# --------------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------------


def _join(directory: str, name: str) -> str:
    return directory + name if directory.endswith("/") else f"{directory}/{name}"
