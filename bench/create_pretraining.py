"""Pretraining-instance creation on WikiText-2 (valid), converted to one sentence per line.

Ours: chunked mode (Rust-speed tokenizer, worker processes, bounded memory).
Peer: the original algorithm as the original runs it: one process, every document in memory, the
pure-Python tokenizer (ours is a statement-for-statement port of the original's; TensorFlow itself
is not installable here, and it only does the file writing).
Both write TFRecords. Peak RSS is printed for 1x and 4x the corpus (each run in its own process).

Usage: python bench/create_pretraining.py [--dupe_factor 5] [--num_workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def make_corpus(path: Path, copies: int) -> None:
    """WikiText articles -> documents (a blank line at each ' = Title = ' header), one sentence a line."""
    from sentencex import segment

    out = []
    for line in (SHARED / "data" / "wikitext2_valid.txt").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("= ") and not line.startswith("= = "):
            out.append("")
            continue
        if line.startswith("= = "):
            continue
        out += [s.strip() for s in segment("en", line) if s.strip()]
    text = "\n".join(out) + "\n"
    path.write_text(text * copies, encoding="utf-8")


def run_one(mode: str, corpus: Path, dupe_factor: int, num_workers: int) -> dict:
    from jobs.data.pretraining import PretrainingDataConfig, create_pretraining_data
    from models.tokenization import FullTokenizer

    class PurePythonTokenizer(FullTokenizer):
        def routes_to_reference(self, text: str) -> bool:
            return True

    vocab = SHARED / "data" / "uncased_vocab.txt"
    config = PretrainingDataConfig(dupe_factor=dupe_factor)
    # Built before the clock starts, on both sides: a one-time setup (the same Unicode probe).
    tokenizer = PurePythonTokenizer(vocab) if mode == "peer" else FullTokenizer(vocab)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        if mode == "peer":
            stats = create_pretraining_data([str(corpus)], [f"{tmp}/out.tfrecord"], tokenizer, config)
        else:
            # 16 WikiText articles a chunk: the 1x corpus (~60 articles) splits across the workers.
            stats = create_pretraining_data([str(corpus)], [f"{tmp}/out"], tokenizer, config,
                                            chunk_documents=16, num_workers=num_workers)
        seconds = time.perf_counter() - start
    peak_kb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return {"instances": stats.num_instances, "seconds": seconds, "peak_rss_mb": peak_kb / 1024,
            "mb": corpus.stat().st_size / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dupe_factor", type=int, default=5)
    parser.add_argument("--num_workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--one", nargs=2, metavar=("MODE", "CORPUS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], Path(args.one[1]), args.dupe_factor, args.num_workers)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        corpora = {copies: Path(tmp) / f"wiki{copies}x.txt" for copies in (1, 4)}
        for copies, path in corpora.items():
            make_corpus(path, copies)
        results = {}
        for mode, copies in (("peer", 1), ("ours", 1), ("ours", 4), ("peer", 4)):
            out = subprocess.run([sys.executable, __file__, "--one", mode, str(corpora[copies]),
                                  "--dupe_factor", str(args.dupe_factor), "--num_workers", str(args.num_workers)],
                                 check=True, capture_output=True, text=True)
            results[mode, copies] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"WikiText-2 valid, one sentence per line; dupe_factor {args.dupe_factor}, max_seq_length 128, "
          f"{os.cpu_count()} cores, ours with {args.num_workers} workers")
    print(f"{'run':<22} {'corpus MB':>9} {'instances':>10} {'inst/s':>9} {'MB/s':>6} {'peak RSS MB':>12}")
    for (mode, copies), r in results.items():
        label = f"{'ours (chunked)' if mode == 'ours' else 'original algorithm'} {copies}x"
        print(f"{label:<22} {r['mb']:>9.1f} {r['instances']:>10} {r['instances'] / r['seconds']:>9.0f} "
              f"{r['mb'] / r['seconds']:>6.2f} {r['peak_rss_mb']:>12.0f}")
    ours, peer = results["ours", 1], results["peer", 1]
    ratio = (ours["instances"] / ours["seconds"]) / (peer["instances"] / peer["seconds"])
    print(f"speed ratio ours/original (1x): {ratio:.1f}x; peak RSS growth 1x->4x: ours "
          f"{results['ours', 4]['peak_rss_mb'] / ours['peak_rss_mb']:.2f}x, original "
          f"{results['peer', 4]['peak_rss_mb'] / peer['peak_rss_mb']:.2f}x")


if __name__ == "__main__":
    main()
