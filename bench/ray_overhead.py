"""Ray overhead: the same pretraining job in-process vs on a 1-worker Ray Train group (DDP backend,
gloo), on a local Ray cluster on 127.0.0.1. Target: at most 5% slower per step.

Prints the median step throughput (from each run's metrics.jsonl, warm-up steps dropped) and the
whole-job wall time (which for Ray includes starting the worker group; the cluster itself is
started before the clock).

Usage: python bench/ray_overhead.py [--steps 60] [--size mini]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from jobs.runner import run_job
from jobs.spec import parse_spec

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def _spec(output_dir: Path, steps: int, size: str, workers_backend: str) -> object:
    return parse_spec({
        "kind": "pretrain",
        "model": {"size": size, "vocab_file": str(SHARED / "data/uncased_vocab.txt")},
        "data": {"train_file": str(SHARED / "fixtures/sample_text_wwm*.tfrecord"), "shuffle_buffer": 64},
        "training": {"train_batch_size": 16, "num_train_steps": steps, "log_every_steps": 5, "do_eval": False},
        "output": {"output_dir": str(output_dir), "save_checkpoints_steps": 10_000, "export_hf": False},
        "resources": {"backend": workers_backend},
        "logging": {"wandb": False},
    })


def _median_examples_per_s(output_dir: Path) -> float:
    rows = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["train/examples_per_s"] for r in rows if "train/examples_per_s" in r]
    return statistics.median(rates[2:])  # the first windows include warm-up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--size", default="mini")
    args = parser.parse_args()
    from cluster.local import local_ray
    from orchestrator.launch import run_on_ray

    with tempfile.TemporaryDirectory() as tmp:
        local_dir, ray_dir = Path(tmp) / "local", Path(tmp) / "ray"
        start = time.perf_counter()
        run_job(_spec(local_dir, args.steps, args.size, "local"))
        local_s = time.perf_counter() - start
        with local_ray():
            start = time.perf_counter()
            run_on_ray(_spec(ray_dir, args.steps, args.size, "ddp"))
            ray_s = time.perf_counter() - start
        local_rate, ray_rate = _median_examples_per_s(local_dir), _median_examples_per_s(ray_dir)
    print(f"pretrain {args.size}, batch 16, seq 128, {args.steps} steps, CPU")
    print(f"{'run':<28} {'examples/s (median)':>20} {'job wall s':>11}")
    print(f"{'in-process':<28} {local_rate:>20.1f} {local_s:>11.1f}")
    print(f"{'Ray Train, 1 worker (DDP)':<28} {ray_rate:>20.1f} {ray_s:>11.1f}")
    print(f"per-step slowdown on Ray: {(local_rate / ray_rate - 1) * 100:+.1f}% (target <= +5%)")


if __name__ == "__main__":
    main()
