"""DDP backend: torch DistributedDataParallel over the process group Ray Train (or torchrun) set
up; gloo on CPU, NCCL on GPU. Replicas are identical, so rank 0's state is the checkpoint."""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from jobs.backends import LocalBackend, ProcessGroupCollectives


class DDPBackend(ProcessGroupCollectives, LocalBackend):
    name = "ddp"

    def __init__(self, device: torch.device | None = None):
        if not dist.is_initialized():
            raise RuntimeError("the DDP backend needs an initialised torch.distributed process group "
                               "(start the job through Ray Train or torchrun)")
        if device is None and torch.cuda.is_available():
            device = torch.device("cuda", torch.cuda.current_device())
        super().__init__(device)
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()

    def prepare(self, model: nn.Module, optimizer, scheduler, precision: str) -> nn.Module:
        super().prepare(model, optimizer, scheduler, precision)
        self.ddp: DistributedDataParallel | None = None
        if self.world_size == 1:
            return model  # nothing to synchronise: DDP's hooks and buckets would be pure overhead
        # Every rank starts from rank 0's weights (DDP broadcasts them at construction).
        self.ddp = DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        return self.ddp

    def micro_step_context(self, is_last: bool) -> contextlib.AbstractContextManager:
        # Gradients are all-reduced once per optimizer step, on the last micro-batch.
        return contextlib.nullcontext() if is_last or self.ddp is None else self.ddp.no_sync()

