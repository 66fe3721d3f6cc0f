"""Pretrains a bert-tiny from scratch on WikiText-2 (valid) and Tiny Shakespeare and plots its curve.

1. Corpora -> the original's input format (one sentence per line, blank line between documents):
   WikiText-2 as bench/create_pretraining.py's make_corpus (a document per article, sentences split
   with sentencex); Tiny Shakespeare split on blank lines into speeches, each speech one paragraph
   line ("Speaker: text"), 40 speeches a document, split into sentences by the creation step
   (`split_sentences`). The last 5% of each corpus' documents are held out for eval.
2. TFRecords with `jobs.data.pretraining.create_pretraining_data` (chunked mode), named as the
   spec's `data.train_file` / `data.eval_file` globs expect (`<dir>/train-*`, `<dir>/eval-*`).
3. The spec (examples/pretrain_tiny_corpora.yaml) runs in this process from a clean output dir.
4. train/loss and eval/masked_lm_accuracy (and next_sentence_accuracy) from the run's
   metrics.jsonl -> bench/pretrain_tiny_loss.png.

Usage: python bench/pretrain_curve.py [--spec examples/pretrain_tiny_corpora.yaml] [--set training.num_train_steps=300]
       python bench/pretrain_curve.py --plot_only
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(Path(__file__).resolve().parent))

SPEECHES_PER_DOCUMENT = 40
EVAL_FRACTION = 0.05


def shakespeare_documents() -> list[list[str]]:
    """Speeches (blank-line-separated blocks) as one paragraph line each, grouped into documents."""
    text = (SHARED / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    speeches = []
    for block in text.split("\n\n"):
        lines = [line.strip() for line in block.splitlines() if line.strip()]
        if len(lines) >= 2 and lines[0].endswith(":"):  # "First Citizen:" then the speech
            speeches.append(f"{lines[0]} {' '.join(lines[1:])}")
        elif lines:
            speeches.append(" ".join(lines))
    return [speeches[i:i + SPEECHES_PER_DOCUMENT] for i in range(0, len(speeches), SPEECHES_PER_DOCUMENT)]


def wikitext_documents(workdir: Path) -> list[list[str]]:
    """WikiText-2 valid, one sentence per line, a document per article (make_corpus)."""
    from create_pretraining import make_corpus

    path = workdir / "wikitext.txt"
    make_corpus(path, copies=1)
    documents, document = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            document.append(line.strip())
        elif document:
            documents.append(document)
            document = []
    if document:
        documents.append(document)
    return documents


def write_documents(path: Path, documents: list[list[str]]) -> None:
    path.write_text("\n\n".join("\n".join(d) for d in documents) + "\n", encoding="utf-8")


def create_data(spec, data_dir: Path) -> None:
    """Writes train-{wiki,shakespeare}-NNNNN and eval-{wiki,shakespeare}-NNNNN TFRecords to data_dir."""
    from jobs.data.pretraining import PretrainingDataConfig, create_pretraining_data
    from jobs.tasks.base import vocab_file
    from models.tokenization import FullTokenizer

    data_dir.mkdir(parents=True, exist_ok=True)
    corpus_dir = data_dir / "corpus"
    corpus_dir.mkdir(exist_ok=True)
    tokenizer = FullTokenizer(vocab_file(spec), do_lower_case=spec.model.do_lower_case)
    config = PretrainingDataConfig(max_seq_length=spec.data.max_seq_length,
                                   max_predictions_per_seq=spec.data.max_predictions_per_seq,
                                   masked_lm_prob=spec.data.masked_lm_prob, dupe_factor=5, random_seed=12345)
    corpora = {"wiki": (wikitext_documents(corpus_dir), False), "shakespeare": (shakespeare_documents(), True)}
    for name, (documents, split_sentences) in corpora.items():
        num_eval = max(1, round(len(documents) * EVAL_FRACTION))
        for split, part in (("train", documents[:-num_eval]), ("eval", documents[-num_eval:])):
            text_file = corpus_dir / f"{split}-{name}.txt"
            write_documents(text_file, part)
            start = time.perf_counter()
            stats = create_pretraining_data([str(text_file)], [str(data_dir / f"{split}-{name}")], tokenizer, config,
                                            chunk_documents=64, num_workers=2, split_sentences=split_sentences)
            print(f"{split}-{name}: {len(part)} documents, {stats.num_instances} instances "
                  f"({time.perf_counter() - start:.1f}s)", flush=True)


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot(metrics: list[dict], png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(m["step"], m["train/loss"]) for m in metrics if "train/loss" in m]
    evals = [m for m in metrics if "eval/masked_lm_accuracy" in m]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=110)
    ax_loss.plot(*zip(*train), label="train/loss (MLM + NSP)", color="tab:blue")
    if evals:
        ax_loss.plot([m["step"] for m in evals], [m["eval/loss"] for m in evals], "o-", label="eval/loss",
                     color="tab:orange")
    ax_loss.set(xlabel="optimizer step", ylabel="loss", title="loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    if evals:
        steps = [m["step"] for m in evals]
        ax_acc.plot(steps, [m["eval/masked_lm_accuracy"] for m in evals], "o-", label="eval/masked_lm_accuracy")
        ax_acc.plot(steps, [m["eval/next_sentence_accuracy"] for m in evals], "s--",
                    label="eval/next_sentence_accuracy")
        ax_acc.set(xlabel="optimizer step", ylabel="accuracy", title="held-out eval", ylim=(0, 1))
        ax_acc.grid(alpha=0.3)
        ax_acc.legend()
    else:
        ax_acc.set_axis_off()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default=str(ROOT / "examples" / "pretrain_tiny_corpora.yaml"))
    parser.add_argument("--set", action="append", default=[], help="section.key=value override of the spec")
    parser.add_argument("--png", default=str(ROOT / "bench" / "pretrain_tiny_loss.png"))
    parser.add_argument("--recreate_data", action="store_true", help="rewrite the TFRecords even if present")
    parser.add_argument("--plot_only", action="store_true", help="plot the existing run's metrics.jsonl")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    from jobs.runner import run_job
    from jobs.spec import load_spec

    spec = load_spec(args.spec, args.set)
    output_dir = Path(spec.output.output_dir)
    train_glob, eval_glob = Path(spec.data.train_file or ""), Path(spec.data.eval_file or "")
    assert train_glob.name == "train-*" and eval_glob == train_glob.parent / "eval-*", \
        f"the spec's data files must be <dir>/train-* and <dir>/eval-*, got {train_glob} and {eval_glob}"
    if not args.plot_only:
        data_dir = train_glob.parent
        if args.recreate_data or not list(data_dir.glob("train-*")):
            shutil.rmtree(data_dir, ignore_errors=True)
            create_data(spec, data_dir)
        # A fresh run: an old checkpoint would be resumed, old metrics appended to.
        shutil.rmtree(output_dir / "checkpoints", ignore_errors=True)
        (output_dir / "metrics.jsonl").unlink(missing_ok=True)
        start = time.perf_counter()
        metrics = run_job(spec)
        print(f"pretraining: {spec.training.num_train_steps} steps in {time.perf_counter() - start:.0f}s; "
              f"final eval: {json.dumps(metrics)}", flush=True)
    records = read_metrics(output_dir / "metrics.jsonl")
    training = spec.training
    title = (f"bert-tiny (L2/H128) from scratch on WikiText-2 valid + Tiny Shakespeare: batch "
             f"{training.train_batch_size}, seq {spec.data.max_seq_length}, lr {training.learning_rate:g} "
             f"({training.optimizer})")
    plot(records, Path(args.png), title)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
