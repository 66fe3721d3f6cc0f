"""CPU train step (forward, backward, AdamW) of our BertForPreTraining vs transformers', same weights
and inputs: batch 32, seq 128, 20 masked positions. Target: ours takes at most 0.5x the peer's time.

Usage: python bench/train_step.py [--sizes mini,L-6_H-384] [--steps 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings

import torch
import transformers

from models import BertConfig, BertForPreTraining
from models.checkpoints import write_hf_directory

BATCH, SEQ, MASKED = 32, 128, 20


def _inputs(vocab_size: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, vocab_size, (BATCH, SEQ), generator=g)
    lengths = torch.randint(SEQ // 2, SEQ + 1, (BATCH,), generator=g)
    mask = (torch.arange(SEQ)[None] < lengths[:, None]).long()
    types = (torch.arange(SEQ)[None] >= lengths[:, None] // 2).long() * mask
    positions = torch.stack([torch.randperm(int(n), generator=g)[:MASKED].sort().values for n in lengths])
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask, "masked_lm_positions": positions,
            "masked_lm_ids": torch.randint(1000, vocab_size, (BATCH, MASKED), generator=g),
            "next_sentence_labels": torch.randint(0, 2, (BATCH,), generator=g)}


def _hf_labels(x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    labels = torch.full_like(x["input_ids"], -100)
    labels.scatter_(1, x["masked_lm_positions"], x["masked_lm_ids"])
    return {"input_ids": x["input_ids"], "token_type_ids": x["token_type_ids"],
            "attention_mask": x["attention_mask"], "labels": labels, "next_sentence_label": x["next_sentence_labels"]}


def _time_steps(steps, num_steps: int) -> list[float]:
    """Median seconds per step of each step function. Their steps alternate, so load from other
    processes on the machine falls on both sides alike and the ratio stays meaningful."""
    for step in steps:
        step()  # warm-up
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(num_steps):
        for step, record in zip(steps, times):
            start = time.perf_counter()
            step()
            record.append(time.perf_counter() - start)
    return [statistics.median(record) for record in times]


def bench(size: str, num_steps: int) -> tuple[float, float, float, float]:
    config = BertConfig.named(size, vocab_size=30522, hidden_act="gelu")
    torch.manual_seed(0)
    ours = BertForPreTraining(config)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_hf_directory(ours, tmp)
        theirs = transformers.BertForPreTraining.from_pretrained(tmp, attn_implementation="sdpa")
    x = _inputs(config.vocab_size)
    hf_x = _hf_labels(x)
    ours.eval(), theirs.eval()
    with torch.no_grad():
        loss_ours = ours(**x).loss.item()
        loss_theirs = theirs(**hf_x).loss.item()
    ours.train(), theirs.train()

    def stepper(model, inputs):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step():
            optimizer.zero_grad(set_to_none=True)
            model(**inputs).loss.backward()
            optimizer.step()
        return step

    t_ours, t_theirs = _time_steps([stepper(ours, x), stepper(theirs, hf_x)], num_steps)
    return t_ours, t_theirs, loss_ours, loss_theirs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="mini,L-6_H-384")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {torch.get_num_threads()}; "
          f"batch {BATCH}, seq {SEQ}, {MASKED} masked positions, AdamW, fp32, median of {args.steps} alternating steps")
    print(f"{'model':<12} {'ours s/step':>12} {'transformers':>13} {'ratio':>7} {'loss ours':>10} {'loss peer':>10}")
    for size in args.sizes.split(","):
        t_ours, t_theirs, l_ours, l_theirs = bench(size, args.steps)
        print(f"{size:<12} {t_ours:>12.3f} {t_theirs:>13.3f} {t_ours / t_theirs:>6.2f}x {l_ours:>10.5f} {l_theirs:>10.5f}")


if __name__ == "__main__":
    main()
