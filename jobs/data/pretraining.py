"""Pretraining data: the original create_pretraining_data.py algorithm, and the same at corpus scale.

Two modes, one algorithm:
- exact (`chunk_documents=None`): the original, step for step. Every document is held in memory,
  one `random.Random(random_seed)` drives everything in the original order, so the output is
  record-for-record what the original writes (tested against its TFRecords).
- chunked (`chunk_documents=N`): the corpus is streamed in chunks of N documents; each chunk is
  processed by the same code with its own RNG seeded by (random_seed, chunk index) and written to
  its own output shard. Random next sentences come from the same chunk. Memory is bounded by the
  chunk size times the number of workers, not by the corpus, and the output does not depend on the
  number of worker processes.

Input is the original's format: one sentence per line, blank lines between documents. With
`split_sentences=True`, lines are paragraphs and a real segmenter (sentencex) splits them.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import random
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

import fsspec
import numpy as np

from jobs.data.tfrecord import expand_urls, write_examples
from models.tokenization import FullTokenizer

log = logging.getLogger(__name__)

Document = list[list[str]]  # sentences of WordPiece tokens


class DataError(ValueError):
    """Input data that cannot be used; the message names the file, line or record and the fix."""


@dataclasses.dataclass(frozen=True)
class PretrainingDataConfig:
    """The original script's flags (same names, same defaults).

    Attributes:
        max_seq_length: tokens per instance, [CLS] and both [SEP] included.
        max_predictions_per_seq: masked positions per instance (padded with zeros).
        masked_lm_prob: fraction of tokens to mask.
        random_seed: seed of the one RNG (exact mode) or of every chunk's RNG (chunked mode).
        dupe_factor: times each document is used, with different masks.
        short_seq_prob: probability of a shorter target length (to reduce pretrain/fine-tune mismatch).
        do_whole_word_mask: mask all WordPieces of a word together.
        lazy_shuffle: draw masking candidates with a lazy Fisher-Yates shuffle that stops once
            enough are masked: the same uniform distribution with ~5x fewer RNG draws, but not the
            original's RNG sequence. Chunked mode turns it on; exact mode must not.
    """

    max_seq_length: int = 128
    max_predictions_per_seq: int = 20
    masked_lm_prob: float = 0.15
    random_seed: int = 12345
    dupe_factor: int = 10
    short_seq_prob: float = 0.1
    do_whole_word_mask: bool = False
    lazy_shuffle: bool = False

    def __post_init__(self) -> None:
        if self.max_seq_length < 5:
            raise DataError(f"max_seq_length must be at least 5, got {self.max_seq_length}")
        if not 0.0 < self.masked_lm_prob < 1.0:
            raise DataError(f"masked_lm_prob must be in (0, 1), got {self.masked_lm_prob}")
        if self.max_predictions_per_seq < 1 or self.dupe_factor < 1:
            raise DataError("max_predictions_per_seq and dupe_factor must be at least 1")


@dataclasses.dataclass
class TrainingInstance:
    """One sentence pair, masked (the original's TrainingInstance)."""

    tokens: list[str]
    segment_ids: list[int]
    masked_lm_positions: list[int]
    masked_lm_labels: list[str]
    is_random_next: bool


@dataclasses.dataclass
class CreationStats:
    """Counts reported by create_pretraining_data (and printed by the CLI)."""

    num_documents: int = 0
    num_empty_documents: int = 0
    num_sentences: int = 0
    num_instances: int = 0
    empty_files: list[str] = dataclasses.field(default_factory=list)
    output_files: list[str] = dataclasses.field(default_factory=list)

    def add(self, other: CreationStats) -> None:
        self.num_documents += other.num_documents
        self.num_empty_documents += other.num_empty_documents
        self.num_sentences += other.num_sentences
        self.num_instances += other.num_instances
        self.empty_files += other.empty_files
        self.output_files += other.output_files


MaskedLmInstance = collections.namedtuple("MaskedLmInstance", ["index", "label"])


# ---- reading ------------------------------------------------------------------------------

def iter_lines(url: str) -> Iterator[tuple[int, str]]:
    """Yields (line number, text) of a UTF-8 file through fsspec, streaming.

    Raises:
        DataError: a line that is not valid UTF-8 (the file, line and byte offset are named).
    """
    offset = 0
    with fsspec.open(url, "rb", compression="infer") as f:
        for number, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{url}: line {number} is not valid UTF-8 (byte {offset + err.start} of the file: "
                                f"{raw[err.start:err.start + 4]!r}); re-encode the file as UTF-8") from None
            offset += len(raw)
            yield number, text


def iter_raw_documents(urls: Sequence[str], split_sentences: bool = False,
                       stats: CreationStats | None = None) -> Iterator[list[str]]:
    """Yields documents as lists of sentence strings: blank lines separate documents.

    Documents with no text are counted in `stats.num_empty_documents`, files with none in
    `stats.empty_files`; neither is passed on.
    """
    stats = stats if stats is not None else CreationStats()
    segment = _segmenter() if split_sentences else None
    for url in urls:
        document: list[str] = []
        seen_text = False
        for _, line in iter_lines(url):
            line = line.strip()
            if not line:
                if document:
                    yield document
                elif seen_text:
                    stats.num_empty_documents += 1
                document = []
                continue
            seen_text = True
            document.extend(segment(line) if segment else [line])
        if document:
            yield document
        if not seen_text:
            stats.empty_files.append(url)
            log.warning("%s holds no text", url)


def _segmenter():
    # sentencex: a maintained rule-based segmenter (Wikimedia) with no model download.
    from sentencex import segment

    return lambda text: [s.strip() for s in segment("en", text) if s.strip()]


def tokenize_documents(raw_documents: Iterable[list[str]], tokenizer: FullTokenizer,
                       stats: CreationStats) -> list[Document]:
    """Tokenizes sentences; documents whose sentences all tokenize to nothing are dropped and counted."""
    documents = []
    for raw in raw_documents:
        document = [tokens for tokens in tokenizer.tokenize_batch(raw) if tokens]
        stats.num_sentences += len(document)
        if document:
            documents.append(document)
        else:
            stats.num_empty_documents += 1
    stats.num_documents += len(documents)
    return documents


def read_original_documents(urls: Sequence[str], tokenizer: FullTokenizer,
                            stats: CreationStats | None = None) -> list[Document]:
    """Reads documents exactly as the original does: a blank line starts a new document, sentences
    that tokenize to nothing are dropped, then documents left empty are dropped. Those that had
    text but no tokens are counted in `stats.num_empty_documents`, files without tokens in
    `stats.empty_files`."""
    stats = stats if stats is not None else CreationStats()
    all_documents: list[Document] = [[]]
    had_text = [False]
    for url in urls:
        tokens_before = sum(len(d) for d in all_documents[-1:])
        num_documents_before = len(all_documents)
        for _, line in iter_lines(url):
            line = line.strip()
            if not line:
                all_documents.append([])
                had_text.append(False)
                continue  # the original tokenizes the empty line too, which gives no tokens
            had_text[-1] = True
            tokens = tokenizer.tokenize(line)
            if tokens:
                all_documents[-1].append(tokens)
        new_sentences = sum(len(d) for d in all_documents[num_documents_before - 1:]) - tokens_before
        if new_sentences == 0:
            stats.empty_files.append(url)
            log.warning("%s holds no text", url)
    documents = [d for d in all_documents if d]
    stats.num_empty_documents += sum(1 for d, text in zip(all_documents, had_text) if text and not d)
    stats.num_documents += len(documents)
    stats.num_sentences += sum(len(d) for d in documents)
    return documents


# ---- the original algorithm ---------------------------------------------------------------

def create_training_instances(documents: list[Document], vocab_words: list[str], config: PretrainingDataConfig,
                              rng: random.Random) -> list[TrainingInstance]:
    """The original's create_training_instances after reading: shuffle documents, make
    `dupe_factor` passes over them, shuffle the instances. Consumes `rng` in the original order."""
    rng.shuffle(documents)
    instances = []
    for _ in range(config.dupe_factor):
        for document_index in range(len(documents)):
            instances.extend(create_instances_from_document(documents, document_index, vocab_words, config, rng))
    rng.shuffle(instances)
    return instances


def create_instances_from_document(all_documents: list[Document], document_index: int, vocab_words: list[str],
                                   config: PretrainingDataConfig, rng: random.Random) -> list[TrainingInstance]:
    """Splits one document into sentence-pair instances (the original, statement for statement)."""
    document = all_documents[document_index]
    max_num_tokens = config.max_seq_length - 3  # [CLS], [SEP], [SEP]
    target_seq_length = max_num_tokens
    if rng.random() < config.short_seq_prob:
        target_seq_length = rng.randint(2, max_num_tokens)
    instances = []
    current_chunk: list[list[str]] = []
    current_length = 0
    i = 0
    while i < len(document):
        segment = document[i]
        current_chunk.append(segment)
        current_length += len(segment)
        if i == len(document) - 1 or current_length >= target_seq_length:
            if current_chunk:
                a_end = rng.randint(1, len(current_chunk) - 1) if len(current_chunk) >= 2 else 1
                tokens_a = [t for chunk in current_chunk[:a_end] for t in chunk]
                tokens_b: list[str] = []
                if len(current_chunk) == 1 or rng.random() < 0.5:
                    is_random_next = True
                    target_b_length = target_seq_length - len(tokens_a)
                    # Ten tries at a different document; a one-document corpus falls back to itself.
                    for _ in range(10):
                        random_document_index = rng.randint(0, len(all_documents) - 1)
                        if random_document_index != document_index:
                            break
                    random_document = all_documents[random_document_index]
                    random_start = rng.randint(0, len(random_document) - 1)
                    for j in range(random_start, len(random_document)):
                        tokens_b.extend(random_document[j])
                        if len(tokens_b) >= target_b_length:
                            break
                    # The unused segments go back, so they are not wasted.
                    i -= len(current_chunk) - a_end
                else:
                    is_random_next = False
                    for j in range(a_end, len(current_chunk)):
                        tokens_b.extend(current_chunk[j])
                truncate_seq_pair(tokens_a, tokens_b, max_num_tokens, rng)
                assert tokens_a and tokens_b, "both segments must keep at least one token"
                tokens = ["[CLS]", *tokens_a, "[SEP]", *tokens_b, "[SEP]"]
                segment_ids = [0] * (len(tokens_a) + 2) + [1] * (len(tokens_b) + 1)
                tokens, positions, labels = create_masked_lm_predictions(tokens, vocab_words, config, rng)
                instances.append(TrainingInstance(tokens, segment_ids, positions, labels, is_random_next))
            current_chunk = []
            current_length = 0
        i += 1
    return instances


def create_masked_lm_predictions(tokens: list[str], vocab_words: list[str], config: PretrainingDataConfig,
                                 rng: random.Random) -> tuple[list[str], list[int], list[str]]:
    """Masks ~masked_lm_prob of the tokens: 80% [MASK], 10% kept, 10% a random word.

    Returns:
        (masked tokens, sorted masked positions, the original tokens at those positions).
    """
    cand_indexes: list[list[int]] = []
    for i, token in enumerate(tokens):
        if token in ("[CLS]", "[SEP]"):
            continue
        if config.do_whole_word_mask and cand_indexes and token.startswith("##"):
            cand_indexes[-1].append(i)
        else:
            cand_indexes.append([i])
    if config.lazy_shuffle:
        candidates: Iterable[list[int]] = _lazy_shuffled(cand_indexes, rng)
    else:
        rng.shuffle(cand_indexes)
        candidates = cand_indexes
    output_tokens = list(tokens)
    num_to_predict = min(config.max_predictions_per_seq, max(1, int(round(len(tokens) * config.masked_lm_prob))))
    masked_lms = []
    covered: set[int] = set()
    for index_set in candidates:
        if len(masked_lms) >= num_to_predict:
            break
        # A whole word that would overshoot the budget is skipped, not split.
        if len(masked_lms) + len(index_set) > num_to_predict:
            continue
        if any(index in covered for index in index_set):
            continue
        for index in index_set:
            covered.add(index)
            if rng.random() < 0.8:
                masked_token = "[MASK]"
            elif rng.random() < 0.5:
                masked_token = tokens[index]
            else:
                masked_token = vocab_words[rng.randint(0, len(vocab_words) - 1)]
            output_tokens[index] = masked_token
            masked_lms.append(MaskedLmInstance(index=index, label=tokens[index]))
    masked_lms.sort(key=lambda m: m.index)
    return output_tokens, [m.index for m in masked_lms], [m.label for m in masked_lms]


def _lazy_shuffled(items: list[list[int]], rng: random.Random) -> Iterator[list[int]]:
    """Yields `items` in uniformly random order, drawing one random number per item yielded."""
    for i in range(len(items)):
        j = rng.randrange(i, len(items))
        items[i], items[j] = items[j], items[i]
        yield items[i]


def truncate_seq_pair(tokens_a: list[str], tokens_b: list[str], max_num_tokens: int, rng: random.Random) -> None:
    """Truncates the longer list one token at a time, from the front or back at random, in place."""
    while len(tokens_a) + len(tokens_b) > max_num_tokens:
        trunc_tokens = tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
        assert trunc_tokens, "cannot truncate an empty segment"
        if rng.random() < 0.5:
            del trunc_tokens[0]
        else:
            trunc_tokens.pop()


def instance_to_example(instance: TrainingInstance, tokenizer: FullTokenizer,
                        config: PretrainingDataConfig) -> dict[str, np.ndarray]:
    """The original's features, padded: int64 arrays and a float32 `masked_lm_weights` (numpy, so
    the encoder writes them without per-value type checks)."""
    input_ids = tokenizer.convert_tokens_to_ids(instance.tokens)
    assert len(input_ids) <= config.max_seq_length
    n, p = len(input_ids), len(instance.masked_lm_positions)
    example = {name: np.zeros(config.max_seq_length, np.int64) for name in ("input_ids", "input_mask", "segment_ids")}
    example["input_ids"][:n] = input_ids
    example["input_mask"][:n] = 1
    example["segment_ids"][:n] = instance.segment_ids
    for name, values in (("masked_lm_positions", instance.masked_lm_positions),
                         ("masked_lm_ids", tokenizer.convert_tokens_to_ids(instance.masked_lm_labels))):
        example[name] = np.zeros(config.max_predictions_per_seq, np.int64)
        example[name][:p] = values
    example["masked_lm_weights"] = np.zeros(config.max_predictions_per_seq, np.float32)
    example["masked_lm_weights"][:p] = 1.0
    example["next_sentence_labels"] = np.array([int(instance.is_random_next)], np.int64)
    return example


# ---- the two modes ------------------------------------------------------------------------

def expand_inputs(input_file: str) -> list[str]:
    """Comma-separated URLs or globs (the original's --input_file), each glob sorted.

    Raises:
        DataError: a pattern that matches no file.
    """
    patterns = [p.strip() for p in input_file.split(",") if p.strip()]
    if not patterns:
        raise DataError("--input_file names no file")
    try:
        return [url for _, _, url in expand_urls(patterns)]
    except FileNotFoundError as err:
        raise DataError(f"--input_file: {err}") from None


def create_pretraining_data(input_files: Sequence[str], output_files: Sequence[str], tokenizer: FullTokenizer,
                            config: PretrainingDataConfig, chunk_documents: int | None = None,
                            num_workers: int = 1, split_sentences: bool = False,
                            progress: bool = False) -> CreationStats:
    """Creates MLM/NSP instances from text files and writes them as TFRecords.

    Args:
        input_files: text file URLs (any fsspec protocol).
        output_files: exact mode: the files instances are written to round-robin (as the
            original); chunked mode: one URL whose shards are named `URL-00000`, `URL-00001`, ...
        tokenizer: the WordPiece tokenizer (its vocab order is the random-word table).
        config: the original flags.
        chunk_documents: None for exact mode; otherwise documents per chunk (chunked mode).
        num_workers: worker processes for chunked mode.
        split_sentences: lines are paragraphs: split them into sentences first.
        progress: show a progress bar (chunked mode).

    Returns:
        CreationStats with the documents, sentences, instances and files seen and written.
    """
    stats = CreationStats()
    vocab_words = list(tokenizer.vocab.keys())
    if chunk_documents is None:
        if split_sentences:
            documents = tokenize_documents(iter_raw_documents(input_files, True, stats), tokenizer, stats)
        else:
            documents = read_original_documents(input_files, tokenizer, stats)
        instances = create_training_instances(documents, vocab_words, config, random.Random(config.random_seed))
        stats.num_instances = len(instances)
        _write_round_robin(instances, output_files, tokenizer, config)
        stats.output_files = list(output_files)
        return stats
    if len(output_files) != 1:
        raise DataError("chunked mode takes one --output_file; its shards are named OUTPUT-00000, OUTPUT-00001, ...")
    return _create_chunked(input_files, output_files[0], tokenizer, config, chunk_documents, num_workers,
                           split_sentences, progress, stats)


def _write_round_robin(instances: list[TrainingInstance], output_files: Sequence[str], tokenizer: FullTokenizer,
                       config: PretrainingDataConfig) -> None:
    for k, url in enumerate(output_files):
        write_examples(url, (instance_to_example(inst, tokenizer, config)
                             for inst in instances[k::len(output_files)]))


# Per-process state of chunked-mode workers (set once by the pool initializer).
_WORKER: dict[str, Any] = {}


def _init_worker(tokenizer: FullTokenizer, config: PretrainingDataConfig, split_sentences: bool) -> None:
    # The tokenizer arrives pickled (~30 ms) rather than rebuilt (~0.8 s of Unicode probing each).
    _WORKER.update(tokenizer=tokenizer,
                   config=dataclasses.replace(config, lazy_shuffle=True),
                   split=_segmenter() if split_sentences else None)


def _process_chunk(index: int, raw_documents: list[list[str]], output_url: str) -> CreationStats:
    tokenizer: FullTokenizer = _WORKER["tokenizer"]
    config: PretrainingDataConfig = _WORKER["config"]
    split = _WORKER["split"]
    if split:
        raw_documents = [[s for line in doc for s in split(line)] for doc in raw_documents]
    stats = CreationStats()
    documents = tokenize_documents(raw_documents, tokenizer, stats)
    # One RNG per chunk, seeded by (seed, chunk): the output does not depend on the worker count.
    rng = random.Random(config.random_seed * 1_000_003 + index)
    instances = create_training_instances(documents, list(tokenizer.vocab.keys()), config, rng)
    stats.num_instances = len(instances)
    url = f"{output_url}-{index:05d}"
    write_examples(url, (instance_to_example(inst, tokenizer, config) for inst in instances))
    stats.output_files.append(url)
    return stats


def _create_chunked(input_files: Sequence[str], output_url: str, tokenizer: FullTokenizer,
                    config: PretrainingDataConfig, chunk_documents: int, num_workers: int, split_sentences: bool,
                    progress: bool, stats: CreationStats) -> CreationStats:
    from rich.progress import Progress

    def chunks() -> Iterator[list[list[str]]]:
        chunk: list[list[str]] = []
        for document in iter_raw_documents(input_files, False, stats):
            chunk.append(document)
            if len(chunk) == chunk_documents:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    init_args = (tokenizer, config, split_sentences)
    # At most 2 chunks per worker are in flight, so memory stays bounded however large the corpus.
    window = 2 * num_workers
    with ProcessPoolExecutor(num_workers, initializer=_init_worker, initargs=init_args) as pool, \
            Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("creating instances", total=None)
        pending: collections.deque[Future[CreationStats]] = collections.deque()
        for index, chunk in enumerate(chunks()):
            pending.append(pool.submit(_process_chunk, index, chunk, output_url))
            while len(pending) >= window:
                _collect(pending.popleft().result(), stats, bar, task)
        while pending:
            _collect(pending.popleft().result(), stats, bar, task)
    return stats


def _collect(chunk_stats: CreationStats, stats: CreationStats, bar: Any, task: Any) -> None:
    empty_files = list(stats.empty_files)  # counted by the reader in this process
    stats.add(chunk_stats)
    stats.empty_files = empty_files
    bar.update(task, advance=chunk_stats.num_instances,
               description=f"{stats.num_instances} instances, {len(stats.output_files)} shards")
