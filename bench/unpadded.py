"""Unpadded (packed) fine-tuning steps vs padded batches, on the real lengths of GLUE and SQuAD data.

A train step (forward, backward, AdamW) of the classification head on SST-2 and MRPC and of the
span head on SQuAD 2.0, batch 32 drawn from the shared data's real examples, three ways:
  padded    every batch at max_seq_length (what the original and transformers' run_glue do)
  dynamic   each batch cut to its longest sequence (our default, data.dynamic_padding)
  unpadded  cut, then padding dropped inside the model (model.unpad_inputs): projections and
            feed-forward layers see real tokens only; attention is varlen (FlashAttention through
            nested tensors) on GPU and runs on a padded copy of q/k/v on CPU
Throughput counts real tokens only. Target (issue 5): unpadded >= 1.5x padded on such data.
The classification losses of the three are checked equal (dropout off) before timing. The span
loss is not comparable: as in the original, its cross-entropy runs over every position of the
batch, padding included, so a shorter batch (or zeros at padding) changes its denominator.

On CPU: fp32, a 6-layer/384 (MiniLM-sized) model. On a GPU: bf16 autocast, bert-base.

Usage: python bench/unpadded.py [--steps 5] [--batch 32] [--size L-6_H-384]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from jobs.data.dataset import trim_batch
from jobs.data.glue import SHARED_LAYOUTS, convert_examples_to_arrays, read_examples
from jobs.data.squad import (
    convert_examples_to_features,
    features_to_arrays,
    read_squad_examples,
)
from models import (
    BertConfig,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    FullTokenizer,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def datasets(tokenizer: FullTokenizer) -> dict[str, tuple[dict[str, np.ndarray], int]]:
    """name -> (arrays of every example at max_seq_length, max_seq_length)."""
    out = {}
    for name, task, file, layout in (("sst2", "sst-2", "sst2_train.tsv", "sst2"),
                                     ("mrpc", "mrpc", "msr_paraphrase_train.txt", "mrpc_msr")):
        examples = read_examples(str(DATA / file), task, SHARED_LAYOUTS[layout])
        out[name] = (convert_examples_to_arrays(examples, ["0", "1"], tokenizer, 128), 128)
    # Its windows' lengths are what matter here; targets are [CLS] (no answer) for all.
    examples, _ = read_squad_examples(DATA / "squad2_normans_complexity.json", is_training=False)
    arrays = features_to_arrays(convert_examples_to_features(examples, tokenizer, 384, 128, 64, is_training=False))
    arrays["start_positions"] = arrays["end_positions"] = np.zeros(len(arrays["input_ids"]), np.int64)
    out["squad2"] = (arrays, 384)
    return out


def batches(arrays: dict[str, np.ndarray], batch: int, count: int, device: torch.device, squad: bool):
    """`count` seeded random batches of model inputs at max_seq_length."""
    rng = np.random.default_rng(0)
    n = len(arrays["input_ids"])
    for _ in range(count):
        take = rng.choice(n, batch, replace=False)
        x = {"input_ids": arrays["input_ids"][take], "token_type_ids": arrays["segment_ids"][take],
             "attention_mask": arrays["input_mask"][take]}
        if squad:
            x |= {"start_positions": arrays["start_positions"][take], "end_positions": arrays["end_positions"][take]}
        else:
            x["labels"] = arrays["label_ids"][take]
        yield {k: torch.as_tensor(v).to(device) for k, v in x.items()}


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, unpad: bool, x: dict[str, torch.Tensor]) -> float:
    model.set_unpadding(unpad)
    device = x["input_ids"].device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        loss = model(**x).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()  # a host sync: the step has finished when it is timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", default=None, help="named size (default: L-6_H-384 on CPU, base on GPU)")
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    size = args.size or ("base" if gpu else "L-6_H-384")
    tokenizer = FullTokenizer(str(DATA / "uncased_vocab.txt"))
    name = torch.cuda.get_device_name() if gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"# {name}; {size}; batch {args.batch}; {'bf16 autocast' if gpu else 'fp32'}; median of {args.steps} steps")
    print(f"{'data':7} {'T':>4} {'mean len':>8} {'mode':9} {'step s':>8} {'real tok/s':>11} "
          f"{'vs padded':>9} {'vs dynamic':>10} {'loss':>9}")
    for data, (arrays, seq) in datasets(tokenizer).items():
        squad = data.startswith("squad")
        config = BertConfig.named(size, vocab_size=30522, hidden_act="gelu", max_position_embeddings=512,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        torch.manual_seed(0)
        model = (BertForQuestionAnswering(config) if squad else BertForSequenceClassification(config, 2)).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=gpu)
        inputs = list(batches(arrays, args.batch, args.steps + 1, device, squad))
        modes = {"padded": (False, inputs), "dynamic": (False, [trim_batch(x, "attention_mask") for x in inputs]),
                 "unpadded": (True, [trim_batch(x, "attention_mask") for x in inputs])}
        real_tokens = [int(x["attention_mask"].sum()) for x in inputs]

        # The same weights give the same loss every way (checked before any update).
        with torch.no_grad():
            checks = {}
            for mode, (unpad, xs) in modes.items():
                model.set_unpadding(unpad)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=gpu):
                    checks[mode] = model(**xs[0]).loss.item()
        if not squad and max(checks.values()) - min(checks.values()) > 1e-3 * abs(checks["padded"]):
            raise SystemExit(f"{data}: the losses differ between modes: {checks}")
        times: dict[str, list[float]] = {mode: [] for mode in modes}
        for i in range(args.steps + 1):
            for mode, (unpad, xs) in modes.items():  # alternating, so load falls on all alike
                start = time.perf_counter()
                train_step(model, optimizer, unpad, xs[i])
                if i:  # step 0 warms up
                    times[mode].append(time.perf_counter() - start)
        tokens = statistics.mean(real_tokens[1:])
        median = {mode: statistics.median(t) for mode, t in times.items()}
        for mode in modes:
            print(f"{data:7} {seq:4} {tokens / args.batch:8.1f} {mode:9} {median[mode]:8.3f} "
                  f"{tokens / median[mode]:11.0f} {median['padded'] / median[mode]:8.2f}x "
                  f"{median['dynamic'] / median[mode]:9.2f}x {checks[mode]:9.5f}")


if __name__ == "__main__":
    main()
