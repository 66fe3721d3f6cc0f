"""torch-xla backend: TPU hosts (and XLA's CPU and CUDA devices) through PJRT.

This is the only file that imports torch_xla. It adapts the device, the step, checkpoint I/O and
the RNG; the trainer's loop is unchanged.

Device. PJRT_DEVICE comes from resources.xla.pjrt_device unless the environment already sets it
(the environment wins, with a warning when they differ); torch_xla's own choice at import time is
turned off (PJRT_SELECT_DEFAULT_DEVICE=0) so it cannot pass for the environment's. One process drives one XLA device and is
one data-parallel replica: rank and world size are PJRT's global ordinal and world size (1 in a
single process; one per process when several are started, e.g. by torch_xla's launcher).

SPMD (resources.xla.spmd: the TPU-host layout, one worker driving every chip of its host). The
process is one logical replica over a 1-D mesh of all its devices: each training batch is sharded
along its batch dimension (`to_device`), the model and optimizer stay replicated, and XLA's SPMD
partitioner inserts the gradient all-reduce; the loop, the losses and the checkpoints are those of
one device (world size 1), so the micro-batch must divide by the device count. Multi-host SPMD
(one mesh over every host of a pod slice) is not implemented: it raises, and job specs with more
than one XLA worker are refused when they are validated (jobs/spec.py). Without spmd, a worker
on a host of several devices trains on the first one only (it warns).

On the cluster the controller places an XLA job on one TPU host (a `TPU-host` bundle: the whole
host) and runs it on a one-worker Ray Train group like every backend (tests/xla/test_xla_fleet.py
drives that on a simulated TPU host whose chips are XLA's CPU devices).

The step is one graph. torch-xla records ops lazily and compiles and runs them at a sync, so
`optimizer_step` ends with `torch_xla.sync()` and nothing before it reads a value on the host:
the forward and backward of every micro-batch, the gradient all-reduce, clipping, the update and
the learning rate all land in one graph per optimizer step. Static shapes keep that graph's hash
(and so its compiled executable) the same from step to step: training batches are always full
(PretrainingBatches with repeat=True, ArrayLoader with drop_last), sequences are padded to
max_seq_length, the masked-LM loss gathers a fixed P positions and weights them (no boolean
masking), and Python scalars such as the learning rate are uploaded as data, not baked into the
graph (a warmup starting at lr 0 compiles nothing extra). A run compiles four graphs in its first
steps and then none (tests/xla checks it): the first step (the optimizer creates its moments), the
steady step, the small graph averaging the logged loss, and the step after a log (the trainer's
token counter restarts from a Python 0, so that step's graph adds one tensor fewer).

Host syncs. At a logging step the trainer reads the loss through `mean` and its token count (two
transfers, after the step's sync). `optimizer_step` returns the gradient norm as a float because the trainer logs it as
a number: that is one 4-byte transfer per step, after the sync, so the step's graph is unchanged,
but the host waits for the device to finish the step before tracing the next one (no overlap of
tracing and execution). Returning the lazy tensor would remove that wait once the trainer
converts the norm only when it logs it.

Gradients and clipping. `xm.optimizer_step(optimizer)` is `xm.reduce_gradients(optimizer)` (the
mean over replicas, a no-op with one) followed by `optimizer.step()`; it is called here as those
two halves so that clipping sees the all-reduced gradients and so clips by the global norm, as the
DDP and DeepSpeed backends do.

Checkpoints. `state_dict` moves every tensor to the CPU in one batched transfer (what `xm.save`
does), so rank 0's state.pt is device-independent and committed by the trainer's CheckpointStore
as for every backend; it adds XLA's RNG seed, which drives dropout on the device (torch's CPU RNG,
saved by the trainer, does not). Every sync advances that seed, so `state_dict` adds no sync of its
own (optimizer_step's has run) and `load_state_dict` syncs the uploaded weights and moments first
and sets the seed after: an interrupted and resumed run ends bitwise equal to an uninterrupted one,
dropout included, and reuses its compiled graphs.

Precision. bf16 runs the trainer's autocast on the "xla" device type (XLA's autocast: matmuls in
bfloat16, reductions and the losses in float32). fp16 warns: TPUs have no fp16 arithmetic, and
the loss scaler reads its found-inf flag on the host before every update.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import torch
from torch import nn

from jobs.backends import LocalBackend
from jobs.spec import JobSpec

# Importing torch_xla picks a PJRT device by itself (TPU when it finds one, else CPU) unless told
# not to; here the spec's resources.xla.pjrt_device picks it, when XlaBackend is constructed.
os.environ.setdefault("PJRT_SELECT_DEFAULT_DEVICE", "0")
import torch_xla
import torch_xla.core.xla_model as xm
import torch_xla.runtime as xr

log = logging.getLogger("bertfleet")


def _set_pjrt_device(wanted: str) -> None:
    """PJRT_DEVICE from the spec unless the environment chose one (read when the runtime starts)."""
    current = os.environ.get("PJRT_DEVICE")
    if current is None:
        xr.set_device_type(wanted)
    elif current != wanted:
        warnings.warn(f"PJRT_DEVICE={current} from the environment overrides resources.xla.pjrt_device "
                      f"{wanted}", stacklevel=3)


def _init_compile_cache(path: str, pjrt_device: str) -> None:
    """Turns on XLA's persistent compilation cache, which must happen before the first compile."""
    if torch_xla._XLAC._xla_computation_cache_is_initialized():
        active = os.environ.get("XLA_PERSISTENT_CACHE_PATH")
        if active != path:
            warnings.warn(f"resources.xla.compile_cache_dir {path} is ignored: this process already compiled "
                          f"with {'cache ' + active if active else 'no persistent cache'}; the cache can only be "
                          "chosen before the first XLA computation", stacklevel=3)
        return
    if "://" in path:
        warnings.warn(f"resources.xla.compile_cache_dir {path}: XLA's cache is a local directory; use a path on "
                      "the host's disk", stacklevel=3)
        return
    if pjrt_device == "CPU":
        warnings.warn("resources.xla.compile_cache_dir: the CPU PJRT client writes the cache but cannot load "
                      "executables from it, so only TPU and CUDA runs start faster from it", stacklevel=3)
    os.makedirs(path, exist_ok=True)
    xr.initialize_cache(path, readonly=False)


def _warn_ineffective(spec: JobSpec) -> None:
    """Warns about settings that would silently do nothing (or cost a sync) on XLA."""
    if spec.training.precision == "fp16":
        warnings.warn("training.precision fp16 on XLA: TPUs compute in bfloat16, not float16, and fp16 loss "
                      "scaling reads the found-inf flag on the host before every update (a sync per step); "
                      "use precision bf16", stacklevel=3)
    if spec.model.unpad_inputs:
        warnings.warn("model.unpad_inputs is ignored on XLA: a packed batch changes shape every step and "
                      "each new shape compiles again", stacklevel=3)
    if spec.model.gradient_checkpointing:
        warnings.warn("model.gradient_checkpointing saves no memory on XLA: the compiler merges "
                      "torch.utils.checkpoint's recomputation back into the forward pass", stacklevel=3)


class XlaBackend(LocalBackend):
    """One XLA device per process, data parallel over processes through PJRT; or (spmd) one process
    over all its host's devices.

    Args:
        spec: the resolved job spec (resources.xla, training.precision and training.seed are used).
    """

    name = "xla"

    def __init__(self, spec: JobSpec):
        settings = spec.resources.xla
        _set_pjrt_device(settings.pjrt_device)
        if settings.compile_cache_dir:
            _init_compile_cache(settings.compile_cache_dir, os.environ["PJRT_DEVICE"])
        _warn_ineffective(spec)
        self.mesh = None
        if settings.spmd:
            xr.use_spmd()  # before the first device tensor: SPMD's one virtual device stands for them all
        super().__init__(torch_xla.device())
        if settings.spmd:
            import numpy as np
            import torch_xla.distributed.spmd as xs

            if xr.process_count() > 1:
                raise RuntimeError(f"resources.xla.spmd over {xr.process_count()} hosts is not implemented "
                                   "(one mesh per host only); use spmd: false, one worker per chip")
            devices = xr.global_runtime_device_count()
            micro = spec.batch[0]
            if micro % devices:
                raise ValueError(f"resources.xla.spmd: the micro-batch of {micro} does not divide over this host's "
                                 f"{devices} XLA devices; make train_batch_size / gradient_accumulation_steps a "
                                 f"multiple of {devices}")
            self.mesh = xs.Mesh(np.arange(devices), (devices,), ("data",))
            self.rank, self.world_size = 0, 1
            self.layout = (f"SPMD over this host's {devices} devices (micro-batch {micro}: {micro // devices} rows "
                           "each)")
        else:
            self.rank = xr.global_ordinal()
            self.world_size = xr.world_size()
            self.layout = f"device {self.device}, replica {self.rank} of {self.world_size}"
            local = xr.addressable_runtime_device_count()
            if self.world_size == 1 and local > 1:
                warnings.warn(f"resources.xla.spmd is off: this worker trains on 1 of its host's {local} XLA devices; "
                              "set xla.spmd: true to shard each batch over all of them", stacklevel=2)
        self.seed = spec.training.seed

    # ---- wrapping and stepping ----------------------------------------------------------------

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """SPMD: each tensor sharded along its batch dimension over the mesh's devices."""
        batch = super().to_device(batch)
        if self.mesh is not None:
            import torch_xla.distributed.spmd as xs

            for value in batch.values():
                xs.mark_sharding(value, self.mesh, ("data",) + (None,) * (value.dim() - 1))
        return batch

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                scheduler: torch.optim.lr_scheduler.LRScheduler, precision: str) -> nn.Module:
        assert all(p.device.type == "xla" for p in model.parameters()), \
            "XlaBackend.prepare: build the model on backend.device before the optimizer"
        super().prepare(model, optimizer, scheduler, precision)
        log.info("xla: PJRT %s, %s", xr.device_type(), self.layout)  # in run_job: job.log has it
        # torch.manual_seed does not reach XLA's generator (it drives dropout on the device).
        xm.set_rng_state(self.seed, str(self.device))
        return model

    def optimizer_step(self, max_grad_norm: float | None) -> float:
        """All-reduce, unscale (fp16), clip, step, schedule, zero, then run the step's graph.

        Returns:
            The global gradient norm before clipping (a transfer after the sync; see the module doc).
        """
        xm.reduce_gradients(self.optimizer)  # first half of xm.optimizer_step: mean over replicas
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm else float("inf"))
        self.scaler.step(self.optimizer)  # second half: optimizer.step() (fp16: after a found-inf check)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        # The one sync of a step: compile (first time) and run the step's graph asynchronously.
        torch_xla.sync()
        return float(norm)

    # ---- state --------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Weights, optimizer, schedule, scaler and the XLA RNG seed, every tensor on the CPU."""
        # No torch_xla.sync() here: optimizer_step ended with one, and every sync also advances
        # XLA's RNG seed, so a checkpoint would change the dropout masks of the steps after it.
        state = super().state_dict()
        state["xla_rng"] = xm.get_rng_state(str(self.device))
        return xm._maybe_convert_to_cpu(state)  # one batched device-to-host transfer, as xm.save

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Loads a CPU state (from any backend's checkpoint) into the XLA device's tensors."""
        super().load_state_dict(state)  # parameters copy in place; optimizer moments follow their params
        torch_xla.sync()  # uploads land as device data, so the next step's graph is the usual one
        if "xla_rng" in state:  # after the sync, which would advance it
            xm.set_rng_state(int(state["xla_rng"]), str(self.device))

    # ---- collectives --------------------------------------------------------------------------

    def barrier(self) -> None:
        if self.world_size > 1:
            xm.rendezvous("bertfleet.barrier")

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum over replicas, lazily inside the current graph (no host sync)."""
        value = torch.as_tensor(value).to(self.device)
        if self.world_size == 1:
            return value
        return xm.all_reduce(xm.REDUCE_SUM, value)
