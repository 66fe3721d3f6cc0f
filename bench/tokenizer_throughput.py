"""Tokenizer throughput on WikiText-2 (validation): ours vs transformers' fast BERT vs the original.

Tokenizes every line of the file and reports MB/s (UTF-8 bytes of input per second, best of
`--repeats` runs), for:

* `FullTokenizer.tokenize_batch` (ours: Rust batch path, risky texts routed to Python),
* `FullTokenizer.tokenize` line by line,
* transformers' `BertTokenizerFast`: every public path (batch `__call__` for tokens, batch
  `__call__` for ids only, `tokenize` line by line); the fastest is the peer,
* `ReferenceTokenizer` (the pure-Python port of the original algorithm).

It also reports on how many lines each one's tokens equal the original's (ours must be 100%).
Targets: ours >= 1.0x the fastest peer path and >= 3x pure Python.

Run from the repository root:  python -m bench.tokenizer_throughput
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a file: make `models` importable
    sys.path.insert(0, str(REPO_ROOT))

from models.tokenization import FullTokenizer, ReferenceTokenizer  # noqa: E402

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def best_time_s(fn: Callable[[], object], repeats: int) -> float:
    """Args:
      fn: the work to time.
      repeats: how many runs.

    Returns:
      The fastest run's wall time in seconds (the least disturbed by other load on the machine).
    """
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def stock_bert_tokenizer(vocab_file: Path):
    """transformers' BertTokenizerFast on `vocab_file`, whichever major version is installed.

    Args:
      vocab_file: BERT vocab.txt.

    Returns:
      The tokenizer (lower-casing).
    """
    from transformers import BertTokenizerFast  # type: ignore[attr-defined]  # lazy export

    # transformers >= 5 takes `vocab=` and silently ignores `vocab_file=` (a 5-token vocab).
    if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters:
        tokenizer = BertTokenizerFast(vocab=str(vocab_file), do_lower_case=True)
    else:
        tokenizer = BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True)
    num_vocab_lines = sum(1 for _ in vocab_file.open(encoding="utf-8"))
    assert len(tokenizer.get_vocab()) == num_vocab_lines, "BertTokenizerFast did not load the vocab"
    return tokenizer


def main() -> int:
    """Returns:
    The process exit status: 1 if our tokens differ from the original on any line.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "wikitext2_valid.txt")
    parser.add_argument("--vocab", type=Path, default=SHARED_DATA / "uncased_vocab.txt")
    parser.add_argument("--repeats", type=int, default=5, help="runs per fast contender")
    args = parser.parse_args()

    lines = args.data.read_text(encoding="utf-8").split("\n")
    num_mb = sum(len(line.encode("utf-8")) for line in lines) / 1e6

    start = time.perf_counter()
    ours = FullTokenizer(args.vocab, do_lower_case=True)
    build_s = time.perf_counter() - start
    reference = ReferenceTokenizer(ours.vocab, do_lower_case=True)
    peer = stock_bert_tokenizer(args.vocab)

    expected = [reference.tokenize(line) for line in lines]
    num_routed = sum(ours.routes_to_reference(line) for line in lines)

    def peer_call_tokens() -> list[list[str]]:
        return [enc.tokens for enc in peer(lines, add_special_tokens=False).encodings]

    def peer_call_ids() -> list[list[int]]:
        return peer(lines, add_special_tokens=False)["input_ids"]

    def peer_tokenize() -> list[list[str]]:
        return [peer.tokenize(line) for line in lines]

    rows: list[tuple[str, float, str]] = []  # (contender, MB/s, agreement with the original)

    def measure(name: str, fn: Callable[[], list], repeats: int, compare: bool = True) -> float:
        mbps = num_mb / best_time_s(fn, repeats)
        agreement = "n/a (ids)"
        if compare:
            fraction = sum(a == b for a, b in zip(fn(), expected, strict=True)) / len(lines)
            agreement = f"{100 * fraction:.2f}%"
            agreements[name] = fraction
        rows.append((name, mbps, agreement))
        return mbps

    agreements: dict[str, float] = {}
    ours_mbps = measure(
        "ours: FullTokenizer.tokenize_batch", lambda: ours.tokenize_batch(lines), args.repeats
    )
    measure(
        "ours: FullTokenizer.tokenize per line",
        lambda: [ours.tokenize(line) for line in lines],
        args.repeats,
    )
    peer_mbps = max(
        measure("peer: BertTokenizerFast __call__ -> tokens", peer_call_tokens, args.repeats),
        measure("peer: BertTokenizerFast __call__ -> ids", peer_call_ids, args.repeats, False),
        measure("peer: BertTokenizerFast.tokenize per line", peer_tokenize, args.repeats),
    )
    # The oracle itself: agreement is 100% by definition, so don't tokenize a third time.
    python_mbps = measure(
        "pure Python: ReferenceTokenizer",
        lambda: [reference.tokenize(line) for line in lines],
        2,
        False,
    )
    rows[-1] = (*rows[-1][:2], "(the original)")
    ours_agreement = min(v for k, v in agreements.items() if k.startswith("ours"))

    print(f"data: {args.data} ({len(lines)} lines, {num_mb:.3f} MB); vocab: {args.vocab}")
    print(
        f"cpu cores: {os.cpu_count()}, "
        f"RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS', 'unset')}; "
        f"FullTokenizer build: {build_s:.2f} s (one-time Unicode probe); "
        f"lines routed to pure Python: {num_routed}"
    )
    print()
    print(f"| {'contender':<42} | {'MB/s':>6} | {'ours / it':>9} | {'same as original':>16} |")
    print(f"| {'-' * 42} | {'-' * 5}: | {'-' * 8}: | {'-' * 15}: |")
    for name, mbps, agreement in rows:
        print(f"| {name:<42} | {mbps:>6.2f} | {ours_mbps / mbps:>8.2f}x | {agreement:>16} |")
    print()
    print(
        f"ours (tokenize_batch) / fastest peer path: {ours_mbps / peer_mbps:.2f}x "
        "(target >= 1.0x); "
        f"ours / pure Python: {ours_mbps / python_mbps:.2f}x (target >= 3x); "
        f"ours == original on {100 * ours_agreement:.2f}% of lines (must be 100%)"
    )
    return 0 if ours_agreement == 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
