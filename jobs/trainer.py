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

from jobs.backends import LocalBackend
from jobs.checkpoint import CheckpointStore, rng_state, set_rng_state
from jobs.logging import MetricsLogger
from jobs.optim import build_optimizer, build_schedule
from jobs.spec import JobSpec

log = logging.getLogger("bertfleet")

@dataclasses.dataclass
class StepContext:
    """What a step_fn may need beyond its micro-batch: for losses whose exact global-batch mean needs
    a denominator over the whole step (the masked-LM loss is weighted by masked_lm_weights).

    Attributes:
        batches: this worker's micro-batches of the optimizer step.
        world_size: data-parallel workers (gradients are averaged over them).
        sum_over_workers: sums a tensor over the workers.
    """

    batches: list[dict[str, torch.Tensor]]
    world_size: int
    sum_over_workers: Callable[[torch.Tensor], torch.Tensor]


StepFn = Callable[[nn.Module, dict[str, torch.Tensor], StepContext], tuple[torch.Tensor, dict[str, float]]]
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
    """fit() stopped early on request (preemption), after committing a checkpoint."""


class Trainer:
    """Runs optimizer steps until `num_train_steps`.

    Args:
        spec: the resolved job spec (training and output sections are used).
        model: the model, on the backend's device.
        loader: yields this worker's micro-batches (spec.batch[0] examples each).
        step_fn: computes the loss of one micro-batch.
        num_train_steps: optimizer steps in the whole run.
        num_warmup_steps: linear warmup steps.
        eval_fn: called every eval_every_steps and at the end; returns metrics.
        should_stop: polled after each step; True on any rank makes every rank checkpoint and stop
            (preemption; fit() raises StopTraining).
        backend: how the model is wrapped and stepped (default: one local process).
    """

    spec: JobSpec
    model: nn.Module
    backend: LocalBackend
    loader: ResumableIterable
    store: CheckpointStore
    logger: MetricsLogger
    global_step: int

    def __init__(self, spec: JobSpec, model: nn.Module, loader: ResumableIterable, step_fn: StepFn,
                 num_train_steps: int, num_warmup_steps: int, eval_fn: EvalFn | None = None,
                 should_stop: Callable[[], bool] | None = None, backend: LocalBackend | None = None):
        self.spec = spec
        self.model = model
        self.loader = loader
        self.step_fn = step_fn
        self.eval_fn = eval_fn
        self.should_stop = should_stop or (lambda: False)
        self.num_train_steps = num_train_steps
        self.backend = backend or LocalBackend()
        optimizer = build_optimizer(model, spec.training)
        scheduler = build_schedule(optimizer, num_warmup_steps, num_train_steps)
        self.train_model = self.backend.prepare(model, optimizer, scheduler, spec.training.precision)
        self.store = CheckpointStore(spec.output.output_dir, keep=spec.output.keep_checkpoints)
        self.global_step = 0
        self.resumed_from: int | None = None
        self._last_eval: tuple[int, dict[str, float]] | None = None
        self.logger = MetricsLogger(spec, spec.output.output_dir, enabled=self.backend.is_main)

    # ---- state ------------------------------------------------------------------------------

    def save_checkpoint(self) -> str:
        """Every rank writes its shards (if the backend has any), then rank 0 writes state.pt and
        commits; barriers keep a rank from committing what another is still writing."""
        backend, step = self.backend, self.global_step
        if backend.is_main:
            self.store.begin(step)
        backend.barrier()
        directory = self.store.directory(step)
        backend.save_shards(directory)
        backend.barrier()
        if backend.is_main:
            state = {"backend": backend.state_dict(), "step": step, "rng": rng_state(),
                     "data": self.loader.state_dict(), "wandb_run_id": self.logger.run_id}
            self.store.write(directory, state, self.spec.to_json())
            self.store.commit(directory, step)
            self.logger.log({"checkpoint/step": step}, step)
            self.logger.flush()  # the metrics up to a committed checkpoint are never lost with it
        backend.barrier()
        return directory

    def restore(self) -> bool:
        """Loads the newest committed checkpoint, if any. Returns whether it resumed."""
        step = self.store.latest()
        self.backend.barrier()  # every rank sees the same newest checkpoint
        if step is None:
            return False
        state = self.store.load(step)
        assert state is not None
        self.backend.load_state_dict(state["backend"])
        self.backend.load_shards(self.store.directory(step))
        self.loader.load_state_dict(state["data"])
        set_rng_state(state["rng"])
        self.global_step = self.resumed_from = state["step"]
        if self.backend.is_main:
            self.logger.run_id = state.get("wandb_run_id")
            self.logger.resume()
        log.info("resumed from the checkpoint of step %d", self.global_step)
        return True

    # ---- the loop ---------------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager:
        precision = self.spec.training.precision
        if precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(self.backend.device.type, dtype=dtype)

    def fit(self) -> TrainResult:
        """Trains from the current step (0, or a restored checkpoint's) to num_train_steps."""
        try:
            return self._fit()
        finally:  # also when stopped or failed: what was logged reaches an object store's metrics.jsonl
            self.logger.flush()

    def _fit(self) -> TrainResult:
        training, backend = self.spec.training, self.backend
        accumulation = self.spec.batch[1]
        start = time.perf_counter()
        window_start, window_examples, window_tokens = time.perf_counter(), 0, 0
        loss_sum: torch.Tensor | float = 0.0
        last_loss = float("nan")
        self.model.train()
        batches = iter(self.loader)
        while self.global_step < self.num_train_steps:
            step_batches = [backend.to_device(next(batches)) for _ in range(accumulation)]
            context = StepContext(step_batches, backend.world_size, backend.sum)
            for index, batch in enumerate(step_batches):
                with backend.micro_step_context(index == accumulation - 1), self._autocast():
                    loss, _ = self.step_fn(self.train_model, batch, context)
                    # The micro-batch mean over the accumulation count is the global-batch mean.
                    backend.backward(loss / accumulation)
                loss_sum += loss.detach()
                window_examples += next(iter(batch.values())).shape[0] * backend.world_size
                if "input_mask" in batch:
                    window_tokens += batch["input_mask"].sum() * backend.world_size
            grad_norm = backend.optimizer_step(training.max_grad_norm)
            self.global_step += 1
            if self.global_step % training.log_every_steps == 0 or self.global_step == self.num_train_steps:
                # The one host sync of a logging step: the loss averaged over workers.
                last_loss = float(backend.mean(torch.as_tensor(loss_sum, dtype=torch.float32))) / accumulation
                seconds = time.perf_counter() - window_start
                self._log_progress(last_loss, grad_norm, window_examples / seconds, float(window_tokens) / seconds)
                window_start, window_examples, window_tokens = time.perf_counter(), 0, 0
            loss_sum = 0.0
            if self.eval_fn and training.eval_every_steps and self.global_step % training.eval_every_steps == 0:
                self.evaluate()
            # A notice may reach one worker only (SIGTERM to one host): every rank stops at the same
            # step, or the others would wait forever in the checkpoint's barriers.
            stop = backend.any_rank(self.should_stop())
            if self.global_step % self.spec.output.save_checkpoints_steps == 0 or stop:
                self.save_checkpoint()
                if stop and self.global_step < self.num_train_steps:
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

    def _log_progress(self, loss: float, grad_norm: torch.Tensor | float, examples_per_s: float,
                      tokens_per_s: float) -> None:
        lr = self.backend.learning_rate()
        remaining = (self.num_train_steps - self.global_step) * self.spec.training.train_batch_size / max(examples_per_s, 1e-9)
        self.logger.log({"train/loss": loss, "train/learning_rate": lr, "train/grad_norm": float(grad_norm),
                         "train/examples_per_s": examples_per_s, "train/tokens_per_s": tokens_per_s},
                        self.global_step)
        if self.backend.is_main:
            log.info("step %d/%d  loss %.4f  lr %.2e  %.1f ex/s  ETA %ds", self.global_step, self.num_train_steps,
                     loss, lr, examples_per_s, int(remaining))
