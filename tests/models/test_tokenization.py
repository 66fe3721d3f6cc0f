"""Parity of models/tokenization.py with google-research/bert's tokenization.py.

The oracle is twofold: `tokenizer_reference.jsonl`, made by the original code, and
`ReferenceTokenizer`, the port of that code which the fast path is fuzzed against.
"""

from __future__ import annotations

import ast
import functools
import inspect
import json
import random
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from models.tokenization import (
    FullTokenizer,
    ReferenceTokenizer,
    _risky_code_points,
    _unicode_census,
    basic_tokenize,
    load_vocab,
    truncated_pair_lengths,
    wordpiece_tokenize,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
VOCAB_FILE = SHARED / "data" / "uncased_vocab.txt"
REFERENCE_FILE = SHARED / "fixtures" / "tokenizer_reference.jsonl"
SQUAD_DIR = SHARED / "fixtures" / "squad"
SQUAD_DATA = SHARED / "data" / "squad2_normans_complexity.json"
MODULE_FILE = Path(__file__).resolve().parents[2] / "models" / "tokenization.py"


@pytest.fixture(scope="module")
def uncased() -> FullTokenizer:
    return FullTokenizer(VOCAB_FILE, do_lower_case=True)


@pytest.fixture(scope="module")
def cased() -> FullTokenizer:
    return FullTokenizer(VOCAB_FILE, do_lower_case=False)


@pytest.fixture(scope="module", params=[True, False], ids=["uncased", "cased"])
def tokenizer(request: pytest.FixtureRequest, uncased: FullTokenizer, cased: FullTokenizer):
    return uncased if request.param else cased


def _reference_of(tok: FullTokenizer) -> ReferenceTokenizer:
    return ReferenceTokenizer(tok.vocab, tok.do_lower_case)


def _raw_rust_tokens(tok: FullTokenizer, texts: list[str]) -> list[list[str]]:
    """The Rust pipeline without the routing: what FullTokenizer would say if it trusted Rust."""
    encodings = tok._rust.encode_batch(texts, add_special_tokens=False)
    return [encoding.tokens for encoding in encodings]


def _raw_rust_words(tok: FullTokenizer, text: str) -> list[str]:
    """Rust's normalizer + pre-tokenizer only: the words WordPiece would see (no [UNK] masking)."""
    normalized = tok._rust.normalizer.normalize_str(text)
    return [word for word, _ in tok._rust.pre_tokenizer.pre_tokenize_str(normalized)]


# --------------------------------------------------------------------------------------------------
# The original's outputs
# --------------------------------------------------------------------------------------------------


def _reference_rows() -> list[dict]:
    with REFERENCE_FILE.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("casing", ["uncased", "cased"])
def test_fast_path_matches_original_outputs(casing: str, uncased, cased) -> None:
    tok = uncased if casing == "uncased" else cased
    rows = _reference_rows()
    assert len(rows) >= 70
    texts = [row["text"] for row in rows]
    batched = tok.tokenize_batch(texts)
    for row, batch_tokens in zip(rows, batched, strict=True):
        tokens = tok.tokenize(row["text"])
        assert tokens == row[f"{casing}_tokens"], row["text"]
        assert batch_tokens == tokens, row["text"]
        assert tok.convert_tokens_to_ids(tokens) == row[f"{casing}_ids"], row["text"]
        assert tok.convert_ids_to_tokens(row[f"{casing}_ids"]) == tokens, row["text"]
    # The rows exercise the Rust path, not just the fallback.
    assert sum(not tok.routes_to_reference(text) for text in texts) == len(texts)


@pytest.mark.parametrize("casing", ["uncased", "cased"])
def test_reference_port_matches_original_outputs(casing: str) -> None:
    vocab = load_vocab(VOCAB_FILE)
    reference = ReferenceTokenizer(vocab, do_lower_case=casing == "uncased")
    for row in _reference_rows():
        tokens = reference.tokenize(row["text"])
        assert tokens == row[f"{casing}_tokens"], row["text"]
        assert [vocab[t] for t in tokens] == row[f"{casing}_ids"], row["text"]


def test_reference_pieces() -> None:
    vocab = {t: i for i, t in enumerate(["[UNK]", "un", "##aff", "##able", "runn", "##ing"])}
    assert wordpiece_tokenize("unaffable running", vocab) == [
        "un",
        "##aff",
        "##able",
        "runn",
        "##ing",
    ]
    assert wordpiece_tokenize("unaffablex", vocab) == ["[UNK]"]
    assert wordpiece_tokenize("un" * 101, {**vocab, "##un": 6}) == ["[UNK]"]  # 202 chars
    assert wordpiece_tokenize("un" * 100, {**vocab, "##un": 6}) == ["un"] + ["##un"] * 99
    assert basic_tokenize(" Héllo,\u00a0WORLD\u4e2d!\x00 ", do_lower_case=True) == [
        "hello",
        ",",
        "world",
        "\u4e2d",
        "!",
    ]
    assert basic_tokenize("Héllo", do_lower_case=False) == ["Héllo"]


# --------------------------------------------------------------------------------------------------
# Divergences between the Rust pipeline and the original, and the routing around them
# --------------------------------------------------------------------------------------------------

# One example per kind of divergence found (see the module docstring).
DIVERGENT_TEXTS = [
    "ΟΔΟΣ ΣΑΣ",  # final sigma: Python lower() gives ς at word end, Rust σ
    "a\ue000b",  # private use: kept by the original, dropped by Rust
    "x\U0002b820y",  # U+2B820-2B91F: CJK for the original, not for Rust (range typo)
    "wait\u2e43 what",  # punctuation newer than Rust's tables
    "a\u166db",  # Po -> So since Unicode 12: punctuation to Rust only
    "a\u0898b",  # Mn newer than Rust's tables: stripped by the original only
    "a\u0890b",  # Cf newer than Rust's tables: dropped by the original only
    "x\u0378y",  # unassigned
    # Spacing marks whose combining class Rust's NFD tables lack (U+1715, Unicode 14): the
    # original reorders them after U+1D165 (ccc 9 < 216), Rust leaves them in place.
    "x\U0001d165\u1715y",
]


def test_known_divergences_are_routed(uncased: FullTokenizer) -> None:
    reference = _reference_of(uncased)
    raw = _raw_rust_tokens(uncased, DIVERGENT_TEXTS)
    num_divergent = 0
    for text, raw_tokens in zip(DIVERGENT_TEXTS, raw, strict=True):
        assert uncased.tokenize(text) == reference.tokenize(text), text
        words_differ = _raw_rust_words(uncased, text) != basic_tokenize(text)
        if raw_tokens != reference.tokenize(text) or words_differ:
            num_divergent += 1
            assert uncased.routes_to_reference(text), text
    # The installed tokenizers still differs on most of these; else this test proves nothing.
    assert num_divergent >= 6
    # Lone surrogates cannot even be handed to Rust; the original takes them.
    assert uncased.tokenize("a\ud800b") == reference.tokenize("a\ud800b") == ["[UNK]"]


def test_common_text_stays_on_fast_path(uncased: FullTokenizer, cased: FullTokenizer) -> None:
    texts = [
        "Café résumé naïve façade",
        "中文字符测试，句号。",
        "日本語のテキストです",
        "Русский текст, ёлка",
        "Ελληνικά κείμενα",  # Greek without capital sigma
        "emoji 😀🚀 test — “quotes” …",
        "İstanbul ß ﬁ Ⅻ ①",
    ]
    for tok in (uncased, cased):
        assert not any(tok.routes_to_reference(t) for t in texts)
    assert cased.routes_to_reference("ΟΔΟΣ") is False  # final sigma only matters when lower-casing
    assert uncased.routes_to_reference("ΟΔΟΣ") is True


@pytest.mark.parametrize("do_lower_case", [True, False], ids=["uncased", "cased"])
def test_risky_set_is_small_and_complete(do_lower_case: bool) -> None:
    census = _unicode_census()
    ranges = _risky_code_points(do_lower_case)
    unassigned = sum(hi - lo + 1 for lo, hi in census.unassigned_ranges)
    risky = sum(hi - lo + 1 for lo, hi in ranges)
    # Beyond unassigned/private/surrogate code points, only a few hundred characters are routed.
    assert 0 < risky - unassigned < 2000
    for cp in (0x2B820, 0x2B91F, 0xE000, 0x2E43, 0x166D):
        assert any(lo <= cp <= hi for lo, hi in ranges), hex(cp)
    assert all(lo >= 0x80 for lo, _ in ranges)


def _every_assigned_char_check(tok: FullTokenizer, chars: list[str]) -> int:
    """Rust words == original words for each char in a few contexts; returns #chars on fast path."""
    num_fast = 0
    for char in chars:
        # Word start, doubled inside a word, after a space, next to punctuation.
        text = f"{char}Ab{char}{char}y {char}.{char}"
        if tok.routes_to_reference(text):
            continue
        num_fast += 1
        assert _raw_rust_words(tok, text) == basic_tokenize(text, tok.do_lower_case), hex(ord(char))
    return num_fast


def test_every_bmp_char_agrees_or_is_routed(tokenizer: FullTokenizer) -> None:
    # Checked through a different route than the probe that built the routing table: the real
    # normalizer + pre-tokenizer against the reference basic_tokenize, in other contexts.
    chars = [c for c in _unicode_census().assigned if ord(c) <= 0xFFFF]
    assert _every_assigned_char_check(tokenizer, chars) > 0.9 * len(chars)


def test_sampled_astral_chars_agree_or_are_routed(tokenizer: FullTokenizer) -> None:
    astral = [c for c in _unicode_census().assigned if ord(c) > 0xFFFF]
    chars = astral[::7] + [chr(cp) for cp in range(0x2B800, 0x2B940)]
    assert _every_assigned_char_check(tokenizer, chars) > 0.5 * len(chars)


# -- fuzzing (a plain seeded generator: hypothesis is not a dependency) ---------------------------


def _chars(lo: int, hi: int) -> list[str]:
    return [chr(cp) for cp in range(lo, hi + 1)]


FUZZ_POOLS: dict[str, list[str]] = {
    "ascii": list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") * 3
    + list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"),
    "latin": _chars(0xC0, 0x24F) + _chars(0x300, 0x36F) + _chars(0x1E00, 0x1EFF),
    "greek": _chars(0x370, 0x3FF) + list("ΣΣς"),
    "cyrillic": _chars(0x400, 0x4FF),
    "cjk": _chars(0x4E00, 0x4E80)
    + _chars(0x3400, 0x3420)
    + _chars(0x20000, 0x20020)
    + _chars(0xF900, 0xFAFF)
    + _chars(0x2B800, 0x2B940)
    + _chars(0x2F800, 0x2F820),
    "kana_hangul": _chars(0x3040, 0x30FF) + _chars(0xAC00, 0xAC40) + _chars(0x1100, 0x11FF),
    "punctuation": _chars(0x2010, 0x205E)
    + _chars(0x2E00, 0x2E5D)
    + _chars(0x3000, 0x303F)
    + _chars(0xFF01, 0xFF5E)
    + list("¡¿«»§¶·"),
    "control": _chars(0, 0x1F)
    + _chars(0x7F, 0x9F)
    + _chars(0x200B, 0x200F)
    + _chars(0x2060, 0x2064)
    + ["\ufeff", "\ufffd", "\xad"],
    "whitespace": _chars(9, 13)
    + _chars(0x1C, 0x1F)
    + _chars(0x2000, 0x200A)
    + [" ", "\x85", "\xa0", "\u1680", "\u2028", "\u2029", "\u202f", "\u205f", "\u3000"],
    "symbols": _chars(0x1F300, 0x1F64F) + _chars(0x2200, 0x22FF) + _chars(0x1D400, 0x1D4FF),
    "special": list("İßﬁﬂǅǈ\u0345\u212b\u2126\u1734\u1715\u302e\U0001193d\U00016ff0")
    + _chars(0x1D165, 0x1D172),
    "newer": _chars(0x2E43, 0x2E5D)
    + _chars(0x898, 0x8A0)
    + _chars(0x1AB0, 0x1ACE)
    + _chars(0xA7C0, 0xA7DC),
    "private_unassigned_surrogate": list("\ue000\U000f0000\u0378\U000e0080\ud800\udfff"),
}
FUZZ_WORDS = "[CLS] [SEP] [MASK] [UNK] [PAD] ##ing [unused0] ΟΔΟΣ naïve İstanbul".split()
RISKY_POOLS = ("newer", "private_unassigned_surrogate")


def _long_word(rng: random.Random) -> str:
    length = rng.choice([99, 100, 101, 102, 150, 199, 200, 201, 202, 250])
    return rng.choice(
        [
            "a" * length,
            "".join(rng.choice("abcdefghij") for _ in range(length)),
            "é" * length,  # 1 char each; 2 after NFD
            "e\u0301" * (length // 2),
        ]
    )


def _fuzz_text(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(1, 10)):
        roll = rng.random()
        if roll < 0.08:
            parts.append(rng.choice(FUZZ_WORDS))
        elif roll < 0.12:
            parts.append(_long_word(rng))
        elif roll < 0.14:
            parts.append(chr(rng.randrange(0x110000)))  # anything at all
        else:
            pool = rng.choice(list(FUZZ_POOLS))
            if pool in RISKY_POOLS and rng.random() < 0.7:
                pool = "ascii"
            parts.append("".join(rng.choice(FUZZ_POOLS[pool]) for _ in range(rng.randint(1, 8))))
        parts.append(rng.choice(["", " ", " ", "  ", "\t", "\n", "\u3000", "\xa0"]))
    return "".join(parts)


def test_fuzz_fast_path_equals_reference(tokenizer: FullTokenizer) -> None:
    rng = random.Random(20181011)
    texts = [_fuzz_text(rng) for _ in range(3000)]
    reference = _reference_of(tokenizer)
    expected = [reference.tokenize(text) for text in texts]
    assert tokenizer.tokenize_batch(texts) == expected
    fast = [i for i, text in enumerate(texts) if not tokenizer.routes_to_reference(text)]
    # The Rust output itself, where it is trusted, equals the original...
    raw = _raw_rust_tokens(tokenizer, [texts[i] for i in fast])
    mismatches = [texts[i] for i, tokens in zip(fast, raw, strict=True) if tokens != expected[i]]
    assert mismatches == []
    # Words too, before WordPiece's [UNK] can hide a difference in characters.
    do_lower_case = tokenizer.do_lower_case
    mismatches = [
        texts[i]
        for i in fast
        if _raw_rust_words(tokenizer, texts[i]) != basic_tokenize(texts[i], do_lower_case)
    ]
    assert mismatches == []
    # ... on enough texts for this to mean something, and the ids agree too.
    assert len(fast) > 0.3 * len(texts)
    sample = fast[:300]
    encodings = tokenizer._rust.encode_batch([texts[i] for i in sample], add_special_tokens=False)
    for i, encoding in zip(sample, encodings, strict=True):
        assert encoding.ids == tokenizer.convert_tokens_to_ids(expected[i])


def _stock_bert_tokenizer(transformers):
    # transformers >= 5 takes the vocab as `vocab=` and silently ignores `vocab_file=` (leaving a
    # 5-token vocab); 4.x takes `vocab_file=`.
    cls = transformers.BertTokenizerFast
    if "vocab" in inspect.signature(cls.__init__).parameters:
        return cls(vocab=str(VOCAB_FILE), do_lower_case=True)
    return cls(vocab_file=str(VOCAB_FILE), do_lower_case=True)


def test_hf_stock_bert_config_differs() -> None:
    # Why the pipeline is built by hand: the stock config (transformers' BertTokenizerFast)
    # has a 100-char word limit and treats "[CLS]" in text as a special token.
    transformers = pytest.importorskip("transformers")
    stock = _stock_bert_tokenizer(transformers)
    assert len(stock.get_vocab()) == 30522
    ours = FullTokenizer(VOCAB_FILE)
    word = "ab" * 75
    assert stock.tokenize(word) == ["[UNK]"]
    assert ours.tokenize(word) == ["aba", *["##ba"] * 73, "##b"]
    assert stock.tokenize("[CLS] hello") == ["[CLS]", "hello"]
    assert ours.tokenize("[CLS] hello") == ["[", "cl", "##s", "]", "hello"]


# --------------------------------------------------------------------------------------------------
# Encoding: run_classifier.py's layout
# --------------------------------------------------------------------------------------------------


def _truncate_seq_pair(tokens_a: list, tokens_b: list, max_length: int) -> None:
    """Verbatim from the original run_classifier.py."""
    while True:
        total_length = len(tokens_a) + len(tokens_b)
        if total_length <= max_length:
            break
        if len(tokens_a) > len(tokens_b):
            tokens_a.pop()
        else:
            tokens_b.pop()


def _original_features(
    tokenize: Callable[[str], list[str]],
    vocab: dict[str, int],
    text_a: str,
    text_b: str | None,
    max_seq_length: int,
) -> tuple[list[str], list[int], list[int], list[int]]:
    """The original convert_single_example, minus the label."""
    tokens_a = tokenize(text_a)
    tokens_b = None
    if text_b:
        tokens_b = tokenize(text_b)
    if tokens_b:
        _truncate_seq_pair(tokens_a, tokens_b, max_seq_length - 3)
    elif len(tokens_a) > max_seq_length - 2:
        tokens_a = tokens_a[0 : (max_seq_length - 2)]
    tokens = ["[CLS]", *tokens_a, "[SEP]"]
    segment_ids = [0] * len(tokens)
    if tokens_b:
        tokens += [*tokens_b, "[SEP]"]
        segment_ids += [1] * (len(tokens_b) + 1)
    input_ids = [vocab[t] for t in tokens]
    input_mask = [1] * len(input_ids)
    while len(input_ids) < max_seq_length:
        input_ids.append(0)
        input_mask.append(0)
        segment_ids.append(0)
    return tokens, input_ids, input_mask, segment_ids


def test_truncated_pair_lengths_equals_original_loop() -> None:
    for len_a in range(0, 25):
        for len_b in range(0, 25):
            for max_length in range(0, 52):
                tokens_a, tokens_b = list(range(len_a)), list(range(len_b))
                _truncate_seq_pair(tokens_a, tokens_b, max_length)
                assert truncated_pair_lengths(len_a, len_b, max_length) == (
                    len(tokens_a),
                    len(tokens_b),
                ), (len_a, len_b, max_length)


def test_encode_batch_matches_original_layout(uncased: FullTokenizer) -> None:
    rng = random.Random(7)
    words = ["the", "Normans", "unaffable", "naïve", "中文", ",", "ΟΔΟΣ", "x" * 150]
    texts_a, texts_b = [], []
    for _ in range(200):
        texts_a.append(" ".join(rng.choices(words, k=rng.randint(0, 12))))
        text_b = " ".join(rng.choices(words, k=rng.randint(0, 12)))
        texts_b.append(rng.choice([None, "", "   ", text_b]))
    reference_tokenize = functools.cache(_reference_of(uncased).tokenize)
    for max_seq_length in (3, 4, 5, 8, 16, 64):
        batch = uncased.encode_batch(texts_a, texts_b, max_seq_length=max_seq_length)
        assert batch.input_ids.shape == (200, max_seq_length)
        assert batch.input_ids.dtype == np.int64
        for row, (text_a, text_b) in enumerate(zip(texts_a, texts_b, strict=True)):
            tokens, input_ids, input_mask, segment_ids = _original_features(
                lambda text: list(reference_tokenize(text)),
                uncased.vocab,
                text_a,
                text_b,
                max_seq_length,
            )
            assert batch.input_ids[row].tolist() == input_ids, (text_a, text_b)
            assert batch.input_mask[row].tolist() == input_mask
            assert batch.segment_ids[row].tolist() == segment_ids
            if row < 20:
                single = uncased.encode(text_a, text_b, max_seq_length=max_seq_length)
                assert single.tokens == tokens
                assert single.input_ids.tolist() == input_ids
                assert single.token_type_ids.tolist() == segment_ids
                assert single.attention_mask.tolist() == input_mask


def test_encode_layout_by_hand(uncased: FullTokenizer) -> None:
    enc = uncased.encode("Hello world", "the second one", max_seq_length=10)
    assert enc.tokens == ["[CLS]", "hello", "world", "[SEP]", "the", "second", "one", "[SEP]"]
    assert enc.input_ids.tolist() == [101, 7592, 2088, 102, 1996, 2117, 2028, 102, 0, 0]
    assert enc.token_type_ids.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 0, 0]
    assert enc.attention_mask.tolist() == [1] * 8 + [0, 0]
    # Pair truncation: pop from the longer side, B on ties.
    enc = uncased.encode("a b c d e", "v w x", max_seq_length=8)
    assert enc.tokens == ["[CLS]", "a", "b", "c", "[SEP]", "v", "w", "[SEP]"]
    # Single segment: cut to max_seq_length - 2.
    enc = uncased.encode("a b c d e", max_seq_length=5)
    assert enc.tokens == ["[CLS]", "a", "b", "c", "[SEP]"]
    # A second segment with no tokens is no second segment (no extra [SEP]).
    assert uncased.encode("a", " \t ", max_seq_length=5).tokens == ["[CLS]", "a", "[SEP]"]
    empty = uncased.encode_batch([], max_seq_length=7)
    assert empty.input_ids.shape == (0, 7)


def test_encode_rejects_bad_arguments(uncased: FullTokenizer) -> None:
    with pytest.raises(ValueError, match="max_seq_length=2"):
        uncased.encode("a", "b", max_seq_length=2)
    with pytest.raises(ValueError, match="max_seq_length=1"):
        uncased.encode("a", max_seq_length=1)
    with pytest.raises(ValueError, match="texts_b has 1 entries"):
        uncased.encode_batch(["a", "b"], ["c"])


# --------------------------------------------------------------------------------------------------
# Alignment: run_squad.py's doc tokens
# --------------------------------------------------------------------------------------------------


def _squad_doc_tokens(paragraph_text: str) -> list[str]:
    """run_squad.py's whitespace split of a paragraph."""
    doc_tokens: list[str] = []
    prev_is_whitespace = True
    for c in paragraph_text:
        if c in (" ", "\t", "\r", "\n") or ord(c) == 0x202F:
            prev_is_whitespace = True
        else:
            if prev_is_whitespace:
                doc_tokens.append(c)
            else:
                doc_tokens[-1] += c
            prev_is_whitespace = False
    return doc_tokens


def test_alignment_matches_original_squad_features(uncased: FullTokenizer) -> None:
    with SQUAD_DATA.open(encoding="utf-8") as f:
        data = json.load(f)["data"]
    examples = [
        (qa["question"], paragraph["context"])
        for article in data
        for paragraph in article["paragraphs"]
        for qa in paragraph["qas"]
    ]
    aligned: dict[str, tuple[list[str], list[int], list[int]]] = {}
    num_checked = 0
    with (SQUAD_DIR / "eval_features.jsonl").open(encoding="utf-8") as f:
        for line in f:
            feature = json.loads(line)
            question, context = examples[feature["example_index"]]
            if context not in aligned:
                aligned[context] = uncased.tokenize_with_alignment(_squad_doc_tokens(context))
            doc_tokens, _, tok_to_orig = aligned[context]
            query = uncased.tokenize(question)[:64]
            start = 128 * feature["doc_span_index"]
            length = len(feature["tokens"]) - len(query) - 3
            expected = ["[CLS]", *query, "[SEP]", *doc_tokens[start : start + length], "[SEP]"]
            assert feature["tokens"] == expected
            to_orig = [feature["token_to_orig_map"][str(len(query) + 2 + j)] for j in range(length)]
            assert to_orig == tok_to_orig[start : start + length]
            num_checked += 1
    assert num_checked > 600


def test_alignment_maps_both_ways(uncased: FullTokenizer) -> None:
    words = ["Johanson's", "\u200b", "house,", "ΟΔΟΣ", "unaffable"]
    tokens, orig_to_tok, tok_to_orig = uncased.tokenize_with_alignment(words)
    # "ος": the original's word-final sigma (routed to the reference: Rust would give "οσ").
    assert tokens == "johan ##son ' s house , ο ##δ ##ος una ##ffa ##ble".split()
    assert orig_to_tok == [0, 4, 4, 6, 9]  # the token-less word points at the next word's start
    assert tok_to_orig == [0, 0, 0, 0, 2, 2, 3, 3, 3, 4, 4, 4]


# --------------------------------------------------------------------------------------------------
# Vocabulary files
# --------------------------------------------------------------------------------------------------


def _write_vocab(tmp_path: Path, content: str | bytes) -> Path:
    path = tmp_path / "vocab.txt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_bytes(content.encode("utf-8"))
    return path


def test_vocab_duplicates_map_to_last_line(tmp_path: Path) -> None:
    path = _write_vocab(tmp_path, "[PAD]\n[UNK]\nfoo\n##bar\nfoo\nbaz\r\n  qux  \n")
    vocab = load_vocab(path)
    assert list(vocab) == ["[PAD]", "[UNK]", "foo", "##bar", "baz", "qux"]  # first position...
    assert vocab["foo"] == 4  # ...last line's id
    assert vocab["baz"] == 5 and vocab["qux"] == 6  # "\r" and spaces stripped
    tok = FullTokenizer(path)
    assert tok.vocab == vocab
    assert 2 not in tok.inv_vocab and tok.inv_vocab[4] == "foo"
    assert tok.tokenize("foobar FOO nope") == ["foo", "##bar", "foo", "[UNK]"]
    assert tok.convert_tokens_to_ids(tok.tokenize("foobar")) == [4, 3]


def test_missing_vocab_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "vocab.txt"
    with pytest.raises(FileNotFoundError, match="nope/vocab.txt"):
        FullTokenizer(missing)


def test_unreadable_vocab_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=str(tmp_path)):
        FullTokenizer(tmp_path)  # a directory
    bad = _write_vocab(tmp_path, b"[UNK]\n\xff\xfe\n")
    with pytest.raises(ValueError, match="UTF-8"):
        FullTokenizer(bad)


def test_vocab_without_unk(tmp_path: Path) -> None:
    path = _write_vocab(tmp_path, "[PAD]\n[CLS]\n[SEP]\nhello\n")
    with pytest.raises(ValueError, match=r"vocab\.txt.*\[UNK\]"):
        FullTokenizer(path)
    with pytest.raises(ValueError, match=r"\[UNK\]"):
        FullTokenizer(_write_vocab(tmp_path, ""))


def test_vocab_without_cls_fails_only_when_encoding(tmp_path: Path) -> None:
    tok = FullTokenizer(_write_vocab(tmp_path, "[UNK]\nhello\n"))
    assert tok.tokenize("hello there") == ["hello", "[UNK]"]
    with pytest.raises(ValueError, match=r"\[CLS\]"):
        tok.encode("hello")
    with pytest.raises(KeyError):
        tok.convert_tokens_to_ids(["absent"])


# --------------------------------------------------------------------------------------------------
# Package boundaries
# --------------------------------------------------------------------------------------------------


def test_module_imports_only_allowed_packages() -> None:
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    third_party = roots - set(sys.stdlib_module_names) - {"__future__"}
    assert third_party <= {"torch", "numpy", "tokenizers"}, third_party
    assert "tokenizers" in third_party
