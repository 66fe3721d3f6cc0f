"""The one training loop every job uses: gradient accumulation, clipping, autocast, periodic eval,
atomic checkpoints with exact resume, metrics.

The loop knows nothing about tasks or distribution: a task hands it a model, a resumable loader
and a `step_fn(model, batch) -> (loss, metrics)`; a backend (later) wraps the model and optimizer.
Resume restores weights, optimizer, schedule, step, every RNG and the data cursor, so an
interrupted-and-resumed CPU fp32 run ends bitwise equal to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch
from torch import nn

from jobs.checkpoint import CheckpointStore, rng_state, set_rng_state
from jobs.logging import MetricsLogger
from jobs.optim import build_optimizer, build_schedule
from jobs.spec import JobSpec

log = logging.getLogger("bertfleet")

# step_fn(model, micro_batch, step_batches) -> (loss, metrics). `step_batches` holds every
# micro-batch of the optimizer step, for losses whose exact global-batch mean needs a denominator
# over all of them (the masked-LM loss is weighted by masked_lm_weights).
StepFn = Callable[[nn.Module, dict[str, torch.Tensor], list[dict[str, torch.Tensor]]],
                  tuple[torch.Tensor, dict[str, float]]]
EvalFn = Callable[[nn.Module, int], dict[str, float]]


class ResumableIterable(Protocol):
    """What the trainer needs from a data loader: batches, and a cursor to save and restore."""

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclasses.dataclass
class TrainResult:
    global_step: int
    loss: float
    resumed_from: int | None
    seconds: float


class StopTraining(Exception):
    """Raised by a `should_stop` hook's owner to end fit() after a checkpoint (preemption)."""


class Trainer:
    """Runs optimizer steps until `num_train_steps`.

    Args:
        spec: the resolved job spec (training and output sections are used).
        model: the model, already on `device`.
        loader: yields micro-batches (spec.training.micro_batch_size examples each).
        step_fn: computes the loss of one micro-batch.
        num_train_steps: optimizer steps in the whole run.
        num_warmup_steps: linear warmup steps.
        eval_fn: called every eval_every_steps and at the end; returns metrics.
        should_stop: polled after each step; True makes fit() checkpoint and return (preemption).
    """

    spec: JobSpec
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loader: ResumableIterable
    store: CheckpointStore
    logger: MetricsLogger
    global_step: int

    def __init__(self, spec: JobSpec, model: nn.Module, loader: ResumableIterable, step_fn: StepFn,
                 num_train_steps: int, num_warmup_steps: int, eval_fn: EvalFn | None = None,
                 should_stop: Callable[[], bool] | None = None, logger: MetricsLogger | None = None):
        self.spec = spec
        self.model = model
        self.loader = loader
        self.step_fn = step_fn
        self.eval_fn = eval_fn
        self.should_stop = should_stop or (lambda: False)
        self.num_train_steps = num_train_steps
        self.optimizer = build_optimizer(model, spec.training)
        self.scheduler = build_schedule(self.optimizer, num_warmup_steps, num_train_steps)
        self.store = CheckpointStore(spec.output.output_dir, keep=spec.output.keep_checkpoints)
        self.global_step = 0
        self.resumed_from: int | None = None
        self._last_eval: tuple[int, dict[str, float]] | None = None
        self.logger = logger or MetricsLogger(spec, spec.output.output_dir)
        self.device = next(model.parameters()).device
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=spec.training.precision == "fp16")

    # ---- state ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "step": self.global_step, "rng": rng_state(), "data": self.loader.state_dict(),
                "wandb_run_id": self.logger.run_id}

    def save_checkpoint(self) -> str:
        url = self.store.save(self.global_step, self.state_dict(), self.spec.to_json())
        self.logger.log({"checkpoint/step": self.global_step}, self.global_step)
        return url

    def restore(self) -> bool:
        """Loads the newest committed checkpoint, if any. Returns whether it resumed."""
        state = self.store.load()
        if state is None:
            return False
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.loader.load_state_dict(state["data"])
        set_rng_state(state["rng"])
        self.global_step = self.resumed_from = state["step"]
        self.logger.resume()
        log.info("resumed from the checkpoint of step %d", self.global_step)
        return True

    # ---- the loop ---------------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager:
        precision = self.spec.training.precision
        if precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _optimizer_step(self) -> float:
        """Unscale, clip, step, schedule; returns the gradient norm before clipping."""
        self.scaler.unscale_(self.optimizer)
        max_norm = self.spec.training.max_grad_norm
        params = [p for p in self.model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm else float("inf"))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(grad_norm)

    def fit(self) -> TrainResult:
        """Trains from the current step (0, or a restored checkpoint's) to num_train_steps."""
        training = self.spec.training
        accumulation = training.gradient_accumulation_steps
        start = time.perf_counter()
        window_start, window_examples, window_tokens = time.perf_counter(), 0, 0
        loss_sum, last_loss = 0.0, float("nan")
        self.model.train()
        batches = iter(self.loader)
        while self.global_step < self.num_train_steps:
            step_batches = [{k: v.to(self.device, non_blocking=True) for k, v in next(batches).items()}
                            for _ in range(accumulation)]
            for batch in step_batches:
                with self._autocast():
                    loss, _ = self.step_fn(self.model, batch, step_batches)
                # The micro-batch mean over the accumulation count is the global-batch mean.
                self.scaler.scale(loss / accumulation).backward()
                loss_sum += loss.detach()
                window_examples += next(iter(batch.values())).shape[0]
                if "input_mask" in batch:
                    window_tokens += batch["input_mask"].sum()
            grad_norm = self._optimizer_step()
            self.global_step += 1
            last_loss = float(loss_sum) / accumulation  # the one host sync per optimizer step
            loss_sum = 0.0
            if self.global_step % training.log_every_steps == 0 or self.global_step == self.num_train_steps:
                seconds = time.perf_counter() - window_start
                self._log_progress(last_loss, grad_norm, window_examples / seconds, float(window_tokens) / seconds)
                window_start, window_examples, window_tokens = time.perf_counter(), 0, 0
            if self.eval_fn and training.eval_every_steps and self.global_step % training.eval_every_steps == 0:
                self.evaluate()
            if self.global_step % self.spec.output.save_checkpoints_steps == 0 or self.should_stop():
                self.save_checkpoint()
                if self.should_stop() and self.global_step < self.num_train_steps:
                    log.warning("stopping at step %d on request (checkpoint committed)", self.global_step)
                    raise StopTraining(self.global_step)
        if self.store.latest() != self.global_step:
            self.save_checkpoint()
        return TrainResult(self.global_step, last_loss, self.resumed_from, time.perf_counter() - start)

    def evaluate(self) -> dict[str, float]:
        """Runs eval_fn once per step: a second call at the same step returns the same metrics."""
        assert self.eval_fn is not None, "evaluate() needs an eval_fn"
        if self._last_eval is not None and self._last_eval[0] == self.global_step:
            return self._last_eval[1]
        self.model.eval()
        with torch.no_grad(), self._autocast():
            metrics = self.eval_fn(self.model, self.global_step)
        self.model.train()
        self.logger.log({f"eval/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))},
                        self.global_step)
        self._last_eval = (self.global_step, metrics)
        return metrics

    def _log_progress(self, loss: float, grad_norm: float, examples_per_s: float, tokens_per_s: float) -> None:
        lr = self.scheduler.get_last_lr()[0]
        remaining = (self.num_train_steps - self.global_step) * self.spec.training.train_batch_size / max(examples_per_s, 1e-9)
        self.logger.log({"train/loss": loss, "train/learning_rate": lr, "train/grad_norm": grad_norm,
                         "train/examples_per_s": examples_per_s, "train/tokens_per_s": tokens_per_s},
                        self.global_step)
        log.info("step %d/%d  loss %.4f  lr %.2e  %.1f ex/s  ETA %ds", self.global_step, self.num_train_steps,
                 loss, lr, examples_per_s, int(remaining))
