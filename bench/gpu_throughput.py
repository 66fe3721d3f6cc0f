"""bf16 pretraining-step throughput and MFU on one GPU: ours through the DDP and DeepSpeed ZeRO-2
backends (the trainer's step: autocast, backward, clip, fused AdamW, schedule) beside
transformers.BertForPreTraining with SDPA, same weights and inputs, in one run (issues 2 and 5).

Inputs are pretraining batches at full length (create_pretraining fills instances to
max_seq_length but for short_seq_prob of them), masked_lm_prob 0.15: 20 masked positions at seq
128, 76 at 512. MFU counts useful FLOPs on real tokens only, issue 5's way: per real token
6 x N_nonembedding + 12 x L x H x S (attention scores), plus the MLM head at the masked positions
only, 6 x (H x H + H x V) each; the same count for both sides (the peer computes the vocabulary head
at every position: work it does, not useful FLOPs), so the MFU ratio is the throughput ratio.
Peak: the GPU's dense bf16 FLOP/s from cluster/resources.py (H100/H200: 989 TFLOP/s).

Targets (issue 5, one H100): bert-large seq 128 >= 50% MFU and >= 1.5x transformers; bert-base
>= 2x transformers.

Usage: python bench/gpu_throughput.py [--sizes base,large] [--seqs 128,512] [--sides ddp,zero2,peer]
       [--steps 20] [--device cuda]
On a GPU machine without the project installed (deepspeed's wheels carried where it lacks them):
    PYTHONPATH=. PYTHONUNBUFFERED=1 python bench/gpu_throughput.py 2>&1 | tee gpu_throughput.txt
`--device cpu --sizes tiny --seqs 32 --batch 4 --precision fp32` checks the script itself anywhere.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time
import warnings

import torch

from cluster.resources import peak_flops
from models import BertConfig, BertForPreTraining
from models.checkpoints import write_hf_directory

# (size, seq) -> micro-batch: large enough to fill an 80 GB GPU's compute, small enough for its memory.
BATCH = {("base", 128): 256, ("base", 512): 64, ("large", 128): 128, ("large", 512): 32}


def masked_positions(seq: int) -> int:
    """create_pretraining's max_predictions_per_seq for masked_lm_prob 0.15."""
    return max(1, round(0.15 * seq))


def pretraining_batch(batch: int, seq: int, vocab_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    masked = masked_positions(seq)
    types = (torch.arange(seq)[None] >= seq // 2).long().expand(batch, seq)
    positions = torch.stack([torch.randperm(seq - 2, generator=g)[:masked].sort().values + 1 for _ in range(batch)])
    x = {"input_ids": torch.randint(1000, vocab_size, (batch, seq), generator=g),
         "token_type_ids": types.contiguous(), "attention_mask": torch.ones(batch, seq, dtype=torch.long),
         "masked_lm_positions": positions, "masked_lm_ids": torch.randint(1000, vocab_size, (batch, masked), generator=g),
         "masked_lm_weights": torch.ones(batch, masked), "next_sentence_labels": torch.randint(0, 2, (batch,), generator=g)}
    return {k: v.to(device) for k, v in x.items()}


def hf_batch(x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    labels = torch.full_like(x["input_ids"], -100).scatter_(1, x["masked_lm_positions"], x["masked_lm_ids"])
    return {"input_ids": x["input_ids"], "token_type_ids": x["token_type_ids"], "attention_mask": x["attention_mask"],
            "labels": labels, "next_sentence_label": x["next_sentence_labels"]}


def flops_per_step(config: BertConfig, x: dict[str, torch.Tensor]) -> float:
    layers, hidden, inner, seq = (config.num_hidden_layers, config.hidden_size, config.intermediate_size,
                                  x["input_ids"].shape[1])
    nonembedding = layers * (4 * hidden * hidden + 2 * hidden * inner)
    real_tokens = float(x["attention_mask"].sum())
    masked = float(x["masked_lm_weights"].sum())
    return real_tokens * (6 * nonembedding + 12 * layers * hidden * seq) + masked * 6 * (hidden * hidden
                                                                                        + hidden * config.vocab_size)


def _spec(size: str, seq: int, batch: int, backend: str, precision: str):
    from jobs.spec import parse_spec

    return parse_spec({
        "kind": "pretrain", "model": {"size": size},
        "data": {"train_file": "unused.tfrecord", "max_seq_length": seq, "max_predictions_per_seq": masked_positions(seq)},
        "training": {"train_batch_size": batch, "num_train_steps": 10 ** 6, "num_warmup_steps": 0,
                     "learning_rate": 1e-4, "optimizer": "adamw", "precision": precision},
        "output": {"output_dir": tempfile.mkdtemp(prefix="bench-")},
        "resources": {"backend": backend, "deepspeed": {"zero_stage": 2}},
        "logging": {"wandb": False},
    })


def _init_process_group(device: torch.device) -> None:
    """A one-process group, as Ray Train would make it, so the DDP and DeepSpeed backends build."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)


def our_step(side: str, model: BertForPreTraining, spec, device: torch.device, x: dict[str, torch.Tensor]):
    """The trainer's optimizer step (one micro-batch) through the named backend."""
    from jobs.backends.ddp import DDPBackend
    from jobs.optim import build_optimizer, build_schedule

    _init_process_group(device)
    if side == "zero2":
        from jobs.backends.deepspeed import DeepSpeedBackend

        backend = DeepSpeedBackend(spec)
    else:
        backend = DDPBackend(device)
    optimizer = build_optimizer(model, spec.training)
    schedule = build_schedule(optimizer, 0, spec.training.num_train_steps)
    train_model = backend.prepare(model, optimizer, schedule, spec.training.precision)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(spec.training.precision)

    def step() -> torch.Tensor:
        with backend.micro_step_context(True), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = train_model(**x).loss
            backend.backward(loss)
        backend.optimizer_step(1.0)
        return loss
    return step


def peer_step(model, device: torch.device, x: dict[str, torch.Tensor], precision: str):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, eps=1e-6, fused=device.type == "cuda")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = model(**x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss
    return step


def seconds_per_step(step, steps: int, device: torch.device) -> tuple[float, float]:
    """(median seconds per step over `steps` timed steps after 3 warm-up ones, last loss)."""
    for _ in range(3):
        loss = step()
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), float(loss.detach())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="base,large")
    parser.add_argument("--seqs", default="128,512")
    parser.add_argument("--sides", default="ddp,zero2,peer")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, help="micro-batch for every run (default: per size and seq)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"])
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        name = torch.cuda.get_device_name(device)
        peak = next((peak_flops(t) for t in ("H200", "H100", "A100", "L4", "A10G", "V100") if t in name.upper()), None)
    else:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        name, peak = "cpu", None
    import transformers

    print(f"{name}; torch {torch.__version__}, transformers {transformers.__version__}; {args.precision}, "
          f"median of {args.steps} steps; peak {peak / 1e12 if peak else float('nan'):.0f} TFLOP/s", flush=True)
    header = (f"{'model':<6} {'seq':>4} {'batch':>5} {'side':<6} {'ms/step':>8} {'seq/s':>8} {'tokens/s':>10} "
              f"{'MFU':>6} {'vs peer':>7} {'loss':>8}")
    print(header, flush=True)
    for size in args.sizes.split(","):
        for seq in (int(s) for s in args.seqs.split(",")):
            batch = args.batch or BATCH.get((size, seq), 8)
            config = BertConfig.named(size, vocab_size=30522, hidden_act="gelu", hidden_dropout_prob=0.1,
                                      attention_probs_dropout_prob=0.1)
            x = pretraining_batch(batch, seq, config.vocab_size, device)
            flops = flops_per_step(config, x)
            results = {}
            for side in args.sides.split(","):
                torch.manual_seed(0)
                model = BertForPreTraining(config)
                if side == "peer":
                    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        write_hf_directory(model, tmp)
                        model = transformers.BertForPreTraining.from_pretrained(tmp, attn_implementation="sdpa")
                    step = peer_step(model.to(device).train(), device, hf_batch(x), args.precision)
                else:
                    spec = _spec(size, seq, batch, "deepspeed" if side == "zero2" else "ddp", args.precision)
                    step = our_step(side, model.to(device).train(), spec, device, x)
                try:
                    results[side] = seconds_per_step(step, args.steps, device)
                except torch.OutOfMemoryError:
                    print(f"{size:<6} {seq:>4} {batch:>5} {side:<6} out of memory", flush=True)
                del step, model
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            for side, (seconds, loss) in results.items():
                mfu = flops / seconds / peak if peak else float("nan")
                versus = results["peer"][0] / seconds if "peer" in results else float("nan")
                print(f"{size:<6} {seq:>4} {batch:>5} {side:<6} {seconds * 1e3:>8.1f} {batch / seconds:>8.1f} "
                      f"{float(x['attention_mask'].sum()) / seconds:>10.0f} {mfu:>6.1%} {versus:>6.2f}x "
                      f"{loss:>8.4f}", flush=True)
    print("targets (one H100): large seq 128 MFU >= 50% and >= 1.5x peer; base >= 2x peer", flush=True)


if __name__ == "__main__":
    main()
