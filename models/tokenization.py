"""BERT WordPiece tokenization, token for token identical to google-research/bert's FullTokenizer.

Two implementations live here:

* `ReferenceTokenizer` (with `basic_tokenize` / `wordpiece_tokenize`): a verbatim-semantics port of
  the original `tokenization.py` (BasicTokenizer + WordpieceTokenizer). Slow (pure Python); it is
  the oracle for tests and the fallback for the few texts the fast path cannot be trusted with.
* `FullTokenizer`: the same algorithm run by the Rust `tokenizers` library (BertNormalizer +
  BertPreTokenizer + WordPiece), with the divergences between the two found and routed around.

Why routing is needed. The Rust pipeline is *almost* the original algorithm. Configured as below
(200-char words, no added/special tokens, no post-processor) it still differs on:

1. Unicode tables. Python's `unicodedata` (Unicode 14 on Python 3.11) decides the original's
   categories; the Rust crates use their own, older or newer, tables. Characters assigned or
   re-categorised in between (e.g. U+2E43-2E5D punctuation, U+166D CANADIAN SYLLABICS CHI SIGN
   Po->So, U+1734 Mn->Mc, U+111C9 Po->Mn, hundreds of newer Mn/Cf/Po characters, lower-case
   mappings of letters Python does not know yet) are split, dropped or stripped differently.
2. Private-use (Co) characters: the original drops only Cc/Cf, Rust drops every "other" category.
3. A typo in Rust's CJK range: it starts the U+2B820-2CEAF block at U+2B920, so U+2B820-2B91F are
   not split out as Chinese characters.
4. Final sigma: Python's `str.lower()` maps a word-final Σ to ς; Rust lower-cases char by char (σ).
5. Canonical reordering of spacing (non-Mn, so never stripped) combining marks: Rust's NFD
   tables lack the combining class of newer ones (U+1715, U+1193D, U+16FF0-1), so e.g.
   U+1D165 U+1715 stays in that order in Rust and is swapped by the original. (The original also
   lower-cases before NFD where Rust lower-cases after; per character the probe below finds that
   harmless, and spacing marks, the only thing it could reorder, are routed anyway.)
6. Lone surrogates cannot cross into Rust at all (they are not valid UTF-8).

Rather than hard-code a table that would rot with the next `tokenizers` release, `FullTokenizer`
measures the installed library once per process and casing (`_risky_code_points`, ~0.5 s on top
of a ~0.25 s shared Unicode census): it runs every assigned code point through both pipelines and
records the characters whose result differs, plus everything unassigned/private/surrogate (1-2, 6),
Σ (4) and the spacing marks that could reorder (5). A text containing any of them goes to
`ReferenceTokenizer`; everything else (all ASCII, accented Latin, CJK, Cyrillic, Greek without Σ,
emoji...) stays on the Rust path.

Encoding follows run_classifier.py: `[CLS] A [SEP] (B [SEP])`, ids padded with 0.
"""

from __future__ import annotations

import bisect
import functools
import os
import re
import unicodedata
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

UNK_TOKEN = "[UNK]"
CLS_TOKEN = "[CLS]"
SEP_TOKEN = "[SEP]"
# The original's WordpieceTokenizer default. HF's stock BERT config uses 100, which turns words of
# 101-200 characters into [UNK] where the original splits them into pieces.
MAX_INPUT_CHARS_PER_WORD = 200


# --------------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------------


def load_vocab(vocab_file: str | os.PathLike[str]) -> dict[str, int]:
    """Reads a WordPiece vocabulary the way the original `load_vocab` does.

    Each line is one token, `str.strip()`-ed; its id is its line number. Lines end at "\\n" only
    (like `tf.gfile` readline), so a stray "\\r" is stripped rather than splitting a line. A token
    that appears twice keeps its first position in the dict's order but maps to its *last* line,
    exactly as re-assigning an `OrderedDict` key does in the original.

    Args:
      vocab_file: path of a UTF-8 text file with one token per line (BERT's `vocab.txt`).

    Returns:
      token -> id, in file order.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: the file cannot be read or decoded as UTF-8.
    """
    path = Path(vocab_file)
    if not path.exists():
        raise FileNotFoundError(
            f"vocab file {str(path)!r} does not exist; pass the vocab.txt that ships with the "
            "checkpoint (one WordPiece token per line)"
        )
    vocab: dict[str, int] = {}
    try:
        with path.open("r", encoding="utf-8", newline="\n") as reader:
            for index, line in enumerate(reader):
                vocab[line.strip()] = index
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(
            f"cannot read vocab file {str(path)!r} ({err}); it must be a readable UTF-8 text file "
            "with one WordPiece token per line"
        ) from err
    return vocab


# --------------------------------------------------------------------------------------------------
# The original algorithm, ported verbatim (semantics, not style)
# --------------------------------------------------------------------------------------------------


def _is_whitespace(char: str) -> bool:
    # \t, \n, \r are Cc but count as whitespace; otherwise only category Zs (not Zl/Zp).
    if char in (" ", "\t", "\n", "\r"):
        return True
    return unicodedata.category(char) == "Zs"


def _is_control(char: str) -> bool:
    # The original's final version drops Cc and Cf only (an early version dropped all of C*:
    # Cn, Co, Cs too). Private-use and unassigned characters therefore survive as word characters.
    if char in ("\t", "\n", "\r"):
        return False
    return unicodedata.category(char) in ("Cc", "Cf")


def _is_punctuation(char: str) -> bool:
    # All non-alphanumeric ASCII counts, even "$", "^", "`" which Unicode files under S*.
    cp = ord(char)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(char).startswith("P")


# The original's "CJK character" blocks (Rust's copy has a typo: 0x2B920 for 0x2B820).
_CHINESE_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


def _is_chinese_char(cp: int) -> bool:
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


def _whitespace_tokenize(text: str) -> list[str]:
    # str.split() splits on str.isspace(), a wider set than _is_whitespace (it has U+2028/2029).
    return text.strip().split()


def _clean_text(text: str) -> str:
    output = []
    for char in text:
        cp = ord(char)
        if cp == 0 or cp == 0xFFFD or _is_control(char):
            continue
        output.append(" " if _is_whitespace(char) else char)
    return "".join(output)


def _tokenize_chinese_chars(text: str) -> str:
    return "".join(f" {char} " if _is_chinese_char(ord(char)) else char for char in text)


def _run_strip_accents(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")


def _run_split_on_punc(text: str) -> list[str]:
    output: list[list[str]] = []
    start_new_word = True
    for char in text:
        if _is_punctuation(char):
            output.append([char])
            start_new_word = True
        else:
            if start_new_word:
                output.append([])
            start_new_word = False
            output[-1].append(char)
    return ["".join(x) for x in output]


def basic_tokenize(text: str, do_lower_case: bool = True) -> list[str]:
    """The original `BasicTokenizer.tokenize`: cleaning, CJK, lower/accents, punctuation split.

    Args:
      text: raw text.
      do_lower_case: lower-case (Python `str.lower`, per whitespace word) and strip accents.

    Returns:
      The words that WordPiece then splits further.
    """
    text = _tokenize_chinese_chars(_clean_text(text))
    split_tokens: list[str] = []
    for token in _whitespace_tokenize(text):
        if do_lower_case:
            token = _run_strip_accents(token.lower())
        split_tokens.extend(_run_split_on_punc(token))
    return _whitespace_tokenize(" ".join(split_tokens))


def wordpiece_tokenize(
    text: str,
    vocab: Mapping[str, int],
    unk_token: str = UNK_TOKEN,
    max_input_chars_per_word: int = MAX_INPUT_CHARS_PER_WORD,
) -> list[str]:
    """The original `WordpieceTokenizer.tokenize`: greedy longest-match-first, "##" continuations.

    Args:
      text: one word or whitespace-separated words, already through `basic_tokenize`.
      vocab: token -> id; only membership is used.
      unk_token: emitted for a word that cannot be covered or is too long.
      max_input_chars_per_word: words with more code points than this become `unk_token`.

    Returns:
      The word pieces.
    """
    output_tokens: list[str] = []
    for token in _whitespace_tokenize(text):
        if len(token) > max_input_chars_per_word:
            output_tokens.append(unk_token)
            continue
        sub_tokens: list[str] = []
        start = 0
        while start < len(token):
            end = len(token)
            cur_substr = None
            while start < end:
                substr = token[start:end]
                if start > 0:
                    substr = "##" + substr
                if substr in vocab:
                    cur_substr = substr
                    break
                end -= 1
            if cur_substr is None:
                sub_tokens = [unk_token]
                break
            sub_tokens.append(cur_substr)
            start = end
        output_tokens.extend(sub_tokens)
    return output_tokens


class ReferenceTokenizer:
    """Pure-Python port of the original FullTokenizer's `tokenize` (the oracle; ~10x slower)."""

    def __init__(self, vocab: Mapping[str, int], do_lower_case: bool = True) -> None:
        """Args:
        vocab: token -> id, e.g. from `load_vocab`.
        do_lower_case: as the original's flag (True for uncased checkpoints).
        """
        self.vocab = vocab
        self.do_lower_case = do_lower_case

    def tokenize(self, text: str) -> list[str]:
        """Args:
          text: raw text.

        Returns:
          WordPiece tokens, exactly as the original FullTokenizer.tokenize returns them.
        """
        split_tokens: list[str] = []
        for token in basic_tokenize(text, self.do_lower_case):
            split_tokens.extend(wordpiece_tokenize(token, self.vocab))
        return split_tokens


# --------------------------------------------------------------------------------------------------
# Where the Rust pipeline may differ: measured once per process
# --------------------------------------------------------------------------------------------------

# A noncharacter (unassigned, Cn) that both pipelines pass through untouched: joins the
# per-character probes into one string so each pipeline runs once, not once per character.
_PROBE_SEP = "\U0010ffff"
# Marks a token boundary in the canonical form below; a control character, so never in any output.
_BOUNDARY = "\x01"
_BOUNDARY_RUN = re.compile(_BOUNDARY + "+")
_CAPITAL_SIGMA = "\u03a3"


def _build_rust_tokenizer(vocab: dict[str, int], do_lower_case: bool) -> Tokenizer:
    tokenizer = Tokenizer(
        models.WordPiece(
            vocab, unk_token=UNK_TOKEN, max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD
        )
    )
    tokenizer.normalizer = _build_rust_normalizer(do_lower_case)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    # Deliberately no add_special_tokens / post-processor: the original has no special tokens in
    # tokenize(), so "[CLS]" written in text is split as "[", "cls", "]".
    return tokenizer


def _build_rust_normalizer(do_lower_case: bool) -> normalizers.Normalizer:
    return normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=True,
        strip_accents=do_lower_case,
        lowercase=do_lower_case,
    )


@dataclass(frozen=True)
class _UnicodeCensus:
    """Python's view of every code point, gathered in one pass for the probes below."""

    assigned: list[str]  # every character whose category is not Cn/Co/Cs, in code point order
    unassigned_ranges: list[tuple[int, int]]  # Cn (unassigned), Co (private use), Cs (surrogates)
    mn: dict[int, None]  # nonspacing marks, as a str.translate table that deletes them
    spacing_marks: frozenset[str]  # non-Mn characters with a nonzero canonical combining class
    # Candidates for the original's predicates: only these categories can satisfy them.
    maybe_control: list[str]  # Cc, Cf
    maybe_whitespace: list[str]  # Z*, Cc (Python's str.isspace also has Cc/Zl/Zp members)
    maybe_punctuation: list[str]  # P*, and ASCII symbols


@functools.cache
def _unicode_census() -> _UnicodeCensus:
    categories = list(map(unicodedata.category, map(chr, range(0x110000))))
    unassigned = bytes(category in ("Cn", "Co", "Cs") for category in categories)
    unassigned_ranges = [(m.start(), m.end() - 1) for m in re.finditer(b"\x01+", unassigned)]
    assigned = [chr(cp) for cp, flag in enumerate(unassigned) if not flag]
    by_category: dict[str, list[str]] = {}
    for char in assigned:
        by_category.setdefault(categories[ord(char)], []).append(char)

    def of(*prefixes: str) -> list[str]:
        return [c for cat, chars in by_category.items() if cat.startswith(prefixes) for c in chars]

    return _UnicodeCensus(
        assigned=assigned,
        unassigned_ranges=unassigned_ranges,
        mn=dict.fromkeys(map(ord, by_category["Mn"])),
        spacing_marks=frozenset(c for c in of("Mc", "Me") if unicodedata.combining(c)),
        maybe_control=of("Cc", "Cf"),
        maybe_whitespace=of("Z", "Cc"),
        maybe_punctuation=of("P") + [chr(cp) for cp in range(33, 127)],
    )


def _python_word_images(census: _UnicodeCensus, do_lower_case: bool) -> list[str]:
    """Per assigned character, the original's token structure in canonical form.

    Equivalent to `basic_tokenize` on each character separately (see `_risky_code_points`), but
    done with str.translate/lower/normalize over one joined string, with the original's own
    predicates deciding each table. Whole-string lower() equals the original's per-word lower()
    except for final sigma, which is routed anyway.
    """
    clean: dict[int, str | None] = {}
    for char in census.maybe_control + census.maybe_whitespace + [chr(0), chr(0xFFFD)]:
        cp = ord(char)
        if cp == 0 or cp == 0xFFFD or _is_control(char):
            clean[cp] = None
        elif _is_whitespace(char):
            clean[cp] = " "
    for lo, hi in _CHINESE_RANGES:
        clean.update((cp, f" {chr(cp)} ") for cp in range(lo, hi + 1) if _is_chinese_char(cp))
    boundary: dict[int, str] = {}
    for char in census.maybe_whitespace:
        if char.isspace():
            boundary[ord(char)] = _BOUNDARY
    for char in census.maybe_punctuation:
        if _is_punctuation(char):
            boundary[ord(char)] = _BOUNDARY + char + _BOUNDARY
    text = _PROBE_SEP.join(census.assigned).translate(clean)
    if do_lower_case:
        text = unicodedata.normalize("NFD", text.lower()).translate(census.mn)
    return _BOUNDARY_RUN.sub(_BOUNDARY, text.translate(boundary)).split(_PROBE_SEP)


def _rust_word_images(chars: list[str], do_lower_case: bool) -> list[str] | None:
    """Per character, the Rust pipeline's token structure in canonical form (None: probe failed)."""
    normalized = _build_rust_normalizer(do_lower_case).normalize_str(_PROBE_SEP.join(chars))
    images = normalized.split(_PROBE_SEP)
    if len(images) != len(chars):
        return None
    # Classify every character the normalizer can emit: probe "x0 a x1 a x2 ..." through the
    # pre-tokenizer. A whitespace character is covered by no piece, a punctuation character is a
    # piece of its own; a word character is merged with its "a" neighbours.
    distinct = sorted(set(normalized) - {_PROBE_SEP})
    probe = "a".join(distinct)
    covered = bytearray(len(probe))
    for piece, (start, end) in pre_tokenizers.BertPreTokenizer().pre_tokenize_str(probe):
        if probe[start:end] != piece:
            return None
        covered[start:end] = (b"\x02" if end - start == 1 else b"\x01") * (end - start)
    boundary: dict[int, str] = {}
    for i, char in enumerate(distinct):
        kind = covered[2 * i]
        if kind == 0:
            boundary[ord(char)] = _BOUNDARY
        elif kind == 2:
            boundary[ord(char)] = _BOUNDARY + char + _BOUNDARY
    return _BOUNDARY_RUN.sub(_BOUNDARY, _PROBE_SEP.join(images).translate(boundary)).split(
        _PROBE_SEP
    )


def _merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return merged


def _risky_code_points(do_lower_case: bool) -> list[tuple[int, int]]:
    """Code point ranges on which the Rust pipeline may not reproduce the original.

    Both pipelines act on each character independently (up to the exceptions handled below), so
    comparing them one character at a time, in the context "a" + char + "b", finds every
    difference. A character's result is compared in a canonical form: its output characters with
    token boundaries marked (whitespace = boundary, punctuation = boundary + char + boundary,
    runs of boundaries merged), which fixes the tokens of any text it appears in.

    Routed without measuring:
      * unassigned (Cn), private-use (Co) and surrogate (Cs) code points: the original keeps Cn/Co
        as word characters while Rust's "other" drops them or knows them under a newer Unicode
        (whose combining classes could also reorder their neighbours), and surrogates cannot be
        passed to Rust.
      * Σ when lower-casing: Python's lower() is context-sensitive (final sigma), Rust's is not.
      * when lower-casing, characters whose NFD form (before or after lower-casing) holds a
        spacing (non-Mn) combining character: a per-character probe cannot see reordering, and
        Rust's NFD tables lack some of their combining classes. Mn characters need no such rule:
        both sides strip them (where they disagree on Mn, the probe sees it), and combining
        classes of characters both sides know are frozen by Unicode's stability policy.
    """
    census = _unicode_census()
    chars = census.assigned
    rust_images = _rust_word_images(chars, do_lower_case)
    if rust_images is None:
        warnings.warn(
            "could not probe the tokenizers library's BERT normalizer; every non-ASCII text will "
            "be tokenized by the (slow) pure-Python reference",
            RuntimeWarning,
            stacklevel=4,
        )
        return [(0x80, 0x10FFFF)]
    python_images = _python_word_images(census, do_lower_case)
    risky = [
        ord(c) for c, py, rs in zip(chars, python_images, rust_images, strict=True) if py != rs
    ]
    if do_lower_case:
        risky.append(ord(_CAPITAL_SIGMA))
        joined = _PROBE_SEP.join(chars)
        for forms in (joined, joined.lower()):
            decomposed = unicodedata.normalize("NFD", forms).split(_PROBE_SEP)
            risky.extend(
                ord(c)
                for c, d in zip(chars, decomposed, strict=True)
                if not census.spacing_marks.isdisjoint(d)
            )
    return _merge_ranges([*census.unassigned_ranges, *((cp, cp) for cp in risky)])


class _RiskyTextDetector:
    """Says whether a text holds a risky character, at some tens of ns per character.

    One regex character class over all ranges would be slow: CPython's `re` compiles the BMP part
    of a class to a two-level bitmap but tests astral (> U+FFFF) ranges one by one, for every
    character scanned. So the BMP ranges get their own regex, and astral characters (rare) are
    looked up by bisection in the astral ranges.
    """

    def __init__(self, ranges: list[tuple[int, int]]) -> None:
        bmp = [(lo, min(hi, 0xFFFF)) for lo, hi in ranges if lo <= 0xFFFF]
        astral = [(max(lo, 0x10000), hi) for lo, hi in ranges if hi > 0xFFFF]
        body = "".join(f"{re.escape(chr(lo))}-{re.escape(chr(hi))}" for lo, hi in bmp)
        self._bmp_search = re.compile(f"[{body}]").search if bmp else (lambda text: None)
        self._astral_findall = re.compile("[\U00010000-\U0010ffff]").findall
        self._astral_starts = [lo for lo, _ in astral]
        self._astral_ends = [hi for _, hi in astral]

    def __call__(self, text: str) -> bool:
        if self._bmp_search(text) is not None:
            return True
        for char in self._astral_findall(text):
            cp = ord(char)
            i = bisect.bisect_right(self._astral_starts, cp) - 1
            if i >= 0 and cp <= self._astral_ends[i]:
                return True
        return False


@functools.cache
def _risky_text_detector(do_lower_case: bool) -> _RiskyTextDetector:
    ranges = _risky_code_points(do_lower_case)
    # The isascii() shortcut in FullTokenizer relies on this.
    assert ranges[0][0] >= 0x80, f"ASCII character {ranges[0][0]:#x} routed to the reference"
    return _RiskyTextDetector(ranges)


# --------------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------------


def truncated_pair_lengths(len_a: int, len_b: int, max_length: int) -> tuple[int, int]:
    """The lengths the original `_truncate_seq_pair` leaves, in O(1).

    The original pops the last token of the longer list (of B on a tie) until
    len(A) + len(B) <= max_length: the longer list shrinks to the shorter one's length, then the
    two alternate B, A, B, ..., so an odd total leaves A one longer.

    Args:
      len_a: number of tokens of the first segment.
      len_b: number of tokens of the second segment.
      max_length: the budget (max_seq_length - 3 for [CLS] A [SEP] B [SEP]); >= 0.

    Returns:
      (kept tokens of A, kept tokens of B): each a prefix of the original list.
    """
    excess = len_a + len_b - max_length
    if excess <= 0:
        return len_a, len_b
    if len_a > len_b and len_a - excess >= len_b:
        return len_a - excess, len_b
    if len_b >= len_a and len_b - excess >= len_a:
        return len_a, len_b - excess
    return (max_length + 1) // 2, max_length // 2


@dataclass(frozen=True)
class Encoding:
    """One `[CLS] A [SEP] (B [SEP])` example, padded; arrays are int64 of shape [T]."""

    tokens: list[str]  # with [CLS]/[SEP], without padding
    input_ids: np.ndarray  # [T] vocab ids, 0 after the last [SEP]
    token_type_ids: np.ndarray  # [T] 0 for [CLS] A [SEP], 1 for B [SEP], 0 for padding
    attention_mask: np.ndarray  # [T] 1 on real tokens, 0 on padding

    @property
    def segment_ids(self) -> np.ndarray:
        """The original's name for `token_type_ids`."""
        return self.token_type_ids

    @property
    def input_mask(self) -> np.ndarray:
        """The original's name for `attention_mask`."""
        return self.attention_mask


@dataclass(frozen=True)
class EncodingBatch:
    """B examples laid out like `Encoding`; arrays are int64 of shape [B, T]."""

    input_ids: np.ndarray  # [B, T]
    token_type_ids: np.ndarray  # [B, T]
    attention_mask: np.ndarray  # [B, T]

    @property
    def segment_ids(self) -> np.ndarray:
        """The original's name for `token_type_ids`."""
        return self.token_type_ids

    @property
    def input_mask(self) -> np.ndarray:
        """The original's name for `attention_mask`."""
        return self.attention_mask


# --------------------------------------------------------------------------------------------------
# The tokenizer
# --------------------------------------------------------------------------------------------------


class FullTokenizer:
    """Drop-in for the original `tokenization.FullTokenizer`, run by the Rust `tokenizers` library.

    Output is identical to the original for every input: texts with characters on which the two
    could differ (see the module docstring) are tokenized by `ReferenceTokenizer` instead.
    """

    vocab: dict[str, int]  # token -> id, in file order
    inv_vocab: dict[int, str]  # id -> token
    do_lower_case: bool
    vocab_file: Path

    def __init__(self, vocab_file: str | os.PathLike[str], do_lower_case: bool = True) -> None:
        """Args:
          vocab_file: BERT's vocab.txt (one token per line, id = line number).
          do_lower_case: True for uncased checkpoints: lower-case and strip accents.

        Raises:
          FileNotFoundError: no such vocab file.
          ValueError: the vocab file is unreadable, or has no "[UNK]" token.
        """
        self.vocab_file = Path(vocab_file)
        self.vocab = load_vocab(vocab_file)
        if UNK_TOKEN not in self.vocab:
            raise ValueError(
                f"vocab file {str(self.vocab_file)!r} has no {UNK_TOKEN!r} line; WordPiece needs "
                "it for words it cannot split: use the vocab.txt of a BERT checkpoint"
            )
        self.inv_vocab = {v: k for k, v in self.vocab.items()}
        self.do_lower_case = do_lower_case
        self._reference = ReferenceTokenizer(self.vocab, do_lower_case)
        self._rust = _build_rust_tokenizer(self.vocab, do_lower_case)
        self._is_risky = _risky_text_detector(do_lower_case)

    # -- tokenize --------------------------------------------------------------------------------

    def routes_to_reference(self, text: str) -> bool:
        """Whether `text` holds a character the Rust pipeline might handle differently.

        Args:
          text: raw text.

        Returns:
          True if `tokenize` hands this text to the pure-Python reference.
        """
        # isascii() is O(1) in CPython; no ASCII character is risky (asserted when building).
        return not text.isascii() and self._is_risky(text)

    def tokenize(self, text: str) -> list[str]:
        """Args:
          text: raw text.

        Returns:
          WordPiece tokens, as the original FullTokenizer.tokenize.
        """
        return self._encode_texts([text], want_tokens=True)[0][0]

    def tokenize_batch(self, texts: Sequence[str]) -> list[list[str]]:
        """Tokenizes many texts with one call into Rust (parallel across cores).

        Args:
          texts: raw texts.

        Returns:
          One token list per text, each as `tokenize` would return it.
        """
        return [tokens for tokens, _ in self._encode_texts(texts, want_tokens=True)]

    def _encode_texts(
        self, texts: Sequence[str], want_tokens: bool
    ) -> list[tuple[list[str], list[int]]]:
        """(tokens or [], ids) per text: fast texts in one Rust batch, risky ones in Python."""
        results: list[tuple[list[str], list[int]]] = [([], [])] * len(texts)
        fast_index: list[int] = []
        fast_texts: list[str] = []
        for i, text in enumerate(texts):
            if self.routes_to_reference(text):
                tokens = self._reference.tokenize(text)
                results[i] = (tokens, self.convert_tokens_to_ids(tokens))
            else:
                fast_index.append(i)
                fast_texts.append(text)
        # encode_batch_fast skips offset tracking (~30% of the Rust time), but then leaves the
        # token strings empty: they are looked up from the ids instead, which is exact because
        # each id names exactly one token (a duplicated token keeps only its last id).
        to_token = self.inv_vocab.__getitem__
        for i, enc in zip(
            fast_index,
            self._rust.encode_batch_fast(fast_texts, add_special_tokens=False),
            strict=True,
        ):
            ids = enc.ids
            results[i] = (list(map(to_token, ids)) if want_tokens else [], ids)
        return results

    def tokenize_with_alignment(
        self, words: Sequence[str]
    ) -> tuple[list[str], list[int], list[int]]:
        """Tokenizes pre-split words and maps tokens to words, like run_squad.py's doc tokens.

        Args:
          words: whitespace-split words of a document (run_squad's `doc_tokens`).

        Returns:
          (tokens, orig_to_tok_index, tok_to_orig_index): `orig_to_tok_index[i]` is the index of
          word i's first token (for a word with no tokens: of the next word's first token), and
          `tok_to_orig_index[j]` is the word that token j came from.
        """
        tokens: list[str] = []
        orig_to_tok_index: list[int] = []
        tok_to_orig_index: list[int] = []
        for i, word_tokens in enumerate(self.tokenize_batch(words)):
            orig_to_tok_index.append(len(tokens))
            tokens.extend(word_tokens)
            tok_to_orig_index.extend([i] * len(word_tokens))
        return tokens, orig_to_tok_index, tok_to_orig_index

    # -- vocab -----------------------------------------------------------------------------------

    def convert_tokens_to_ids(self, tokens: Iterable[str]) -> list[int]:
        """Args:
          tokens: vocabulary tokens.

        Returns:
          Their ids.

        Raises:
          KeyError: a token is not in the vocabulary (as in the original).
        """
        vocab = self.vocab
        return [vocab[token] for token in tokens]

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        """Args:
          ids: vocabulary ids.

        Returns:
          Their tokens.

        Raises:
          KeyError: an id is not in the vocabulary (as in the original).
        """
        inv_vocab = self.inv_vocab
        return [inv_vocab[int(i)] for i in ids]

    # -- model inputs ----------------------------------------------------------------------------

    def encode(self, text_a: str, text_b: str | None = None, max_seq_length: int = 128) -> Encoding:
        """One example as run_classifier.py's `convert_single_example` lays it out.

        Args:
          text_a: first segment.
          text_b: optional second segment; empty or token-less counts as absent (as the original's
            `if example.text_b:` / `if tokens_b:`).
          max_seq_length: T, the padded length.

        Returns:
          An `Encoding` with arrays of shape [T].

        Raises:
          ValueError: max_seq_length too small for the layout, or the vocab lacks [CLS]/[SEP].
        """
        batch, tokens = self._encode(
            [text_a], None if text_b is None else [text_b], max_seq_length, want_tokens=True
        )
        return Encoding(
            tokens=tokens[0],
            input_ids=batch.input_ids[0],
            token_type_ids=batch.token_type_ids[0],
            attention_mask=batch.attention_mask[0],
        )

    def encode_batch(
        self,
        texts_a: Sequence[str],
        texts_b: Sequence[str | None] | None = None,
        max_seq_length: int = 128,
    ) -> EncodingBatch:
        """Many examples at once (one Rust call per segment column); layout as in `encode`.

        Args:
          texts_a: B first segments.
          texts_b: None, or B second segments (None/"" entries: single-segment examples).
          max_seq_length: T, the padded length.

        Returns:
          An `EncodingBatch` with arrays of shape [B, T].

        Raises:
          ValueError: lengths of texts_a and texts_b differ, max_seq_length too small, or the
            vocab lacks [CLS]/[SEP].
        """
        batch, _ = self._encode(texts_a, texts_b, max_seq_length, want_tokens=False)
        return batch

    def _special_ids(self) -> tuple[int, int]:
        try:
            return self.vocab[CLS_TOKEN], self.vocab[SEP_TOKEN]
        except KeyError as err:
            raise ValueError(
                f"vocab file {str(self.vocab_file)!r} has no {err.args[0]!r} token, which "
                "encode() needs; use the vocab.txt of a BERT checkpoint"
            ) from None

    def _encode(
        self,
        texts_a: Sequence[str],
        texts_b: Sequence[str | None] | None,
        max_seq_length: int,
        want_tokens: bool,
    ) -> tuple[EncodingBatch, list[list[str]]]:
        if texts_b is not None and len(texts_b) != len(texts_a):
            raise ValueError(
                f"texts_b has {len(texts_b)} entries but texts_a has {len(texts_a)}; pass one "
                "second segment (or None) per example"
            )
        min_length = 2 if texts_b is None else 3
        if max_seq_length < min_length:
            raise ValueError(
                f"max_seq_length={max_seq_length} leaves no room for [CLS]/[SEP]; use at least "
                f"{min_length}"
            )
        cls_id, sep_id = self._special_ids()
        encoded_a = self._encode_texts(texts_a, want_tokens)
        encoded_b: list[tuple[list[str], list[int]] | None] = [None] * len(texts_a)
        if texts_b is not None:
            # As the original: an empty text_b is no text_b.
            present = [(i, text) for i, text in enumerate(texts_b) if text]
            encoded = self._encode_texts([text for _, text in present], want_tokens)
            for (i, _), enc in zip(present, encoded, strict=True):
                encoded_b[i] = enc
        num_examples = len(texts_a)
        input_ids = np.zeros((num_examples, max_seq_length), dtype=np.int64)
        token_type_ids = np.zeros((num_examples, max_seq_length), dtype=np.int64)
        attention_mask = np.zeros((num_examples, max_seq_length), dtype=np.int64)
        all_tokens: list[list[str]] = []
        for row, ((tokens_a, ids_a), enc_b) in enumerate(zip(encoded_a, encoded_b, strict=True)):
            if enc_b is not None and enc_b[1]:
                tokens_b, ids_b = enc_b
                len_a, len_b = truncated_pair_lengths(len(ids_a), len(ids_b), max_seq_length - 3)
            else:
                tokens_b, ids_b = [], []
                len_a, len_b = min(len(ids_a), max_seq_length - 2), 0
            end_a = 1 + len_a
            input_ids[row, 0] = cls_id
            input_ids[row, 1:end_a] = ids_a[:len_a]
            input_ids[row, end_a] = sep_id
            length = end_a + 1
            if len_b:
                input_ids[row, length : length + len_b] = ids_b[:len_b]
                input_ids[row, length + len_b] = sep_id
                token_type_ids[row, length : length + len_b + 1] = 1
                length += len_b + 1
            attention_mask[row, :length] = 1
            if want_tokens:
                tokens = [CLS_TOKEN, *tokens_a[:len_a], SEP_TOKEN]
                if len_b:
                    tokens += [*tokens_b[:len_b], SEP_TOKEN]
                all_tokens.append(tokens)
        batch = EncodingBatch(
            input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask
        )
        return batch, all_tokens
