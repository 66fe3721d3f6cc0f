"""Backends: how a model and optimizer are wrapped, stepped and checkpointed on N workers.

The trainer calls only this interface, so one loop serves every backend. `LocalBackend` is the
single-process one; ddp.py, deepspeed.py and xla.py each wrap their library (and are the only
files that import it). A backend never sees tasks or data; the trainer never names a backend.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn


class LocalBackend:
    """One process, one device: the model as it is, torch's optimizer step, fp16 loss scaling."""

    name = "local"

    def __init__(self, device: torch.device | None = None):
        self.rank = 0
        self.world_size = 1
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ---- wrapping and stepping ----------------------------------------------------------------

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                scheduler: torch.optim.lr_scheduler.LRScheduler, precision: str) -> nn.Module:
        """Takes ownership of the model, optimizer and schedule; returns the module to call."""
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "fp16")
        return model

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A training batch on this backend's device (XLA SPMD also shards it over the devices)."""
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def micro_step_context(self, is_last: bool) -> contextlib.AbstractContextManager:
        """Wraps the forward/backward of one micro-batch (DDP skips the all-reduce unless last)."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def optimizer_step(self, max_grad_norm: float | None) -> torch.Tensor | float:
        """Unscale, clip, step, schedule, zero; returns the gradient norm before clipping, as a
        tensor (reading it would be a host sync; the trainer does that only when it logs)."""
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.grad is not None]
        # The norm in float64: a float32 sum over a 30k x H embedding gradient drifts (~1e-4 relative).
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad, dtype=torch.float64)
                                                     for p in params]))
        torch.nn.utils.clip_grads_with_norm_(params, max_grad_norm if max_grad_norm else float("inf"), norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm.detach()

    def learning_rate(self) -> float:
        return self.scheduler.get_last_lr()[0]

    # ---- state --------------------------------------------------------------------------------

    def unwrapped(self) -> nn.Module:
        return self.model

    def state_dict(self) -> dict[str, Any]:
        """Everything the backend owns, for rank 0's state.pt (sharded backends save shards instead)."""
        return {"model": self.unwrapped().state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.unwrapped().load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])

    def gathered_model(self, model: nn.Module | None = None) -> contextlib.AbstractContextManager:
        """A block in which `model` holds its full weights on every rank; every rank must enter it
        (ZeRO-3 gathers its partitions). Yields the module."""
        return contextlib.nullcontext(model if model is not None else self.unwrapped())

    def save_shards(self, directory: str) -> None:
        """Writes per-rank files into an uncommitted checkpoint directory (none for local/DDP)."""

    def load_shards(self, directory: str) -> None:
        """Reads what save_shards wrote."""

    # ---- collectives --------------------------------------------------------------------------

    def barrier(self) -> None:
        """Waits for every rank (no-op with one)."""

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum of a tensor over ranks."""
        return value

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a tensor over ranks."""
        return self.sum(value) / self.world_size

    def any_rank(self, flag: bool) -> bool:
        """Whether `flag` is true on any rank. Decisions that start collectives (stop and checkpoint
        on a preemption notice that reached one worker) must be the same on every rank, or the others
        wait forever in the next collective. No collective with one rank; with several, a host sync
        (backends whose `sum` runs on an accelerator override this to stay off the device)."""
        if self.world_size == 1:
            return flag
        return bool(self.sum(torch.tensor([1.0 if flag else 0.0])).item() > 0)

    def shutdown(self) -> None:
        """Releases process groups or engines."""


_host_group: tuple[Any, Any] | None = None  # (the default process group, its gloo twin)


def any_rank_on_host(flag: bool) -> bool:
    """`flag` OR-ed over the torch.distributed ranks with a CPU tensor, for `any_rank` on every step.

    An NCCL all-reduce read on the host would make the host wait for the GPU's whole queue every
    step; a gloo all-reduce waits only for the other ranks' hosts. It goes through the default group
    when that has gloo (CPU jobs, "cpu:gloo,cuda:nccl"), else through a gloo group made on the first
    call (a collective call, fine here: every rank reaches the same step).
    """
    import torch.distributed as dist

    global _host_group
    group = None
    if "gloo" not in str(dist.get_backend()):
        if _host_group is None or _host_group[0] is not dist.group.WORLD:
            _host_group = (dist.group.WORLD, dist.new_group(backend="gloo"))
        group = _host_group[1]
    value = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=group)
    return bool(value.item() > 0)


class ProcessGroupCollectives:
    """barrier / sum / any_rank over torch.distributed's default group, for the backends whose
    workers form one (DDP, DeepSpeed); mixed in before LocalBackend."""

    device: torch.device
    world_size: int

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        value = value.detach().clone().to(self.device)
        dist.all_reduce(value)
        return value

    def any_rank(self, flag: bool) -> bool:
        return flag if self.world_size == 1 else any_rank_on_host(flag)


def make_backend(name: str, spec: Any = None) -> LocalBackend:
    """The backend a spec names, imported only when used (each wraps one optional library).

    Args:
        name: "local", "ddp", "deepspeed" or "xla".
        spec: the JobSpec, for backends with settings of their own.
    """
    if name == "local":
        return LocalBackend()
    if name == "ddp":
        from jobs.backends.ddp import DDPBackend

        return DDPBackend()
    if name == "deepspeed":
        from jobs.backends.deepspeed import DeepSpeedBackend

        return DeepSpeedBackend(spec)
    if name == "xla":
        from jobs.backends.xla import XlaBackend

        return XlaBackend(spec)
    raise ValueError(f"unknown backend {name!r}; use local, ddp, deepspeed or xla")
