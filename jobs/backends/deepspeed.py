"""DeepSpeed backend: ZeRO stages 0-3 (and CPU offload) around the trainer's own optimizer and
schedule, over the process group Ray Train (or torchrun) set up; gloo on CPU, NCCL on GPU.

This is the only file that imports deepspeed, and only once a backend is built: DeepSpeed picks its
accelerator at its first lookup, after `DS_ACCELERATOR` is set from resources.accelerator. It adapts
three things and nothing else:

Stepping. The trainer divides each micro-batch loss by the accumulation count itself and calls
`optimizer_step` once per optimizer step. The engine is configured with the same accumulation
count (DeepSpeed checks micro x accumulation x workers = train_batch_size), and:
- `backward` calls `engine.backward(loss, scale_wrt_gas=False)`, so DeepSpeed does not divide a
  second time: the gradients are LocalBackend's (the sum of loss / accumulation), averaged over
  workers by ZeRO's reduction as by DDP's.
- `micro_step_context(is_last)` sets the engine's accumulation boundary explicitly (DeepSpeed's
  `set_gradient_accumulation_boundary`), so ZeRO reduces at the trainer's last micro-batch, and
- `optimizer_step` calls `engine.step()` once, at that boundary: clip (gradient_clipping =
  training.max_grad_norm, torch's clip_grad_norm_ formula), optimizer step, LR schedule step, zero
  grads. It returns DeepSpeed's global norm before clipping (summed in float64 over every rank's
  partition; ZeRO-0 fp32 keeps none, so there it is taken here, as LocalBackend does).
  The alternative, engine.step() after every micro-batch with DeepSpeed counting to the boundary,
  would keep a second accumulation counter in step with the trainer's (and with every resume); the
  explicit boundary has no state of its own.

Precision. fp32 trains fp32 weights. bf16/fp16 turn on DeepSpeed's own mixed precision (16-bit
weights, fp32 masters in the optimizer partitions, fp16 dynamic loss scaling inside
`engine.backward`), so no torch GradScaler is used here: loss scaling is never applied twice.

Checkpoints. `save_shards` has every rank write its shards with `engine.save_checkpoint(directory,
tag="ds", save_latest=False)` into the trainer's uncommitted checkpoint directory; the trainer's
COMMITTED marker is the commit (DeepSpeed's `latest` file is not written). `state_dict` (rank 0's
state.pt) holds no tensors, only the layout the shards were written with (world size, ZeRO stage,
precision). A resume with the same layout loads the shards as they are (bitwise). A different world
size (or stage, or precision) goes through DeepSpeed's universal checkpoint: rank 0 of each node
converts the shards (`ds_to_universal`) into a node-local scratch directory, never into the
committed checkpoint, and every rank loads it with `load_universal`, restoring the fp32 masters,
Adam moments and step, the LR schedule and DeepSpeed's counters. ZeRO-0 keeps the whole
optimizer in rank 0's file and resumes on any world size as saved.

Layout of one checkpoint written by this backend:
    step-00001000/ds/mp_rank_00_model_states.pt   module (ZeRO-0/1/2 only), schedule, counters;
                                                  ZeRO-0: the whole optimizer
    step-00001000/ds/[bf16_]zero_pp_rank_{r}_mp_rank_00_optim_states.pt   rank r's fp32 masters, moments
    step-00001000/ds/zero_pp_rank_{r}_mp_rank_00_model_states.pt          (ZeRO-3) rank r's module file
    step-00001000/zero_to_fp32.py, zero_to_torch.py   DeepSpeed's offline consolidation scripts
    step-00001000/state.pt, spec.json, COMMITTED      the trainer's, as for every backend
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import torch
import torch.distributed as dist
from fsspec.implementations.local import LocalFileSystem
from torch import nn

from jobs.backends import LocalBackend, ProcessGroupCollectives
from jobs.spec import JobSpec, SpecError

log = logging.getLogger("bertfleet")

TAG = "ds"  # DeepSpeed's checkpoint tag: the sub-directory of the trainer's checkpoint directory

# Settings of the DeepSpeed config that the spec owns (key paths): overriding them would
# desynchronise DeepSpeed from the trainer's data loader (batch), autocast (precision) or checkpoint
# layout (stage), or replace the trainer's optimizer and schedule.
_SPEC_OWNED = {("train_batch_size",): "training.train_batch_size",
               ("train_micro_batch_size_per_gpu",): "training.micro_batch_size",
               ("gradient_accumulation_steps",): "training.gradient_accumulation_steps",
               ("optimizer",): "training.optimizer", ("scheduler",): "training.learning_rate and warmup",
               ("bf16", "enabled"): "training.precision", ("fp16", "enabled"): "training.precision",
               ("zero_optimization", "stage"): "resources.deepspeed.zero_stage"}


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`base` with `override` merged in, recursively for nested mappings (override wins)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def deepspeed_config(spec: JobSpec, on_cpu: bool) -> dict[str, Any]:
    """The DeepSpeed config of a job: resources.deepspeed, the batch, precision and clipping of
    the spec, then resources.deepspeed.config_override merged over it.

    Args:
        spec: the resolved job spec.
        on_cpu: whether DeepSpeed's accelerator is the CPU (no pinned memory to offload into).

    Raises:
        SpecError: config_override sets a key the spec owns (batch sizes, optimizer, scheduler).
    """
    ds, training = spec.resources.deepspeed, spec.training
    micro, accumulation = spec.batch
    for path, field in _SPEC_OWNED.items():
        node: Any = ds.config_override
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None:
            raise SpecError(f"resources.deepspeed.config_override.{'.'.join(path)}: the spec owns this setting; "
                            f"set {field} instead (the trainer follows the spec)")
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.zero_stage >= 2:
        zero["overlap_comm"] = ds.overlap_comm
    if ds.offload_optimizer and ds.zero_stage >= 1:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": not on_cpu}
    if ds.offload_parameters and ds.zero_stage == 3:
        zero["offload_param"] = {"device": "cpu", "pin_memory": not on_cpu}
    config: dict[str, Any] = {
        "train_batch_size": training.train_batch_size,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": training.max_grad_norm or 0.0,
        "zero_optimization": zero,
        "bf16": {"enabled": training.precision == "bf16"},
        # Dynamic loss scaling, as torch's GradScaler in LocalBackend (initial scale 2**16).
        "fp16": {"enabled": training.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        # The trainer's optimizer (BertAdam, LAMB, AdamW) is a client optimizer: ZeRO wraps it.
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,  # the trainer logs progress; DeepSpeed's own report is noise
        "wall_clock_breakdown": False,
    }
    return deep_merge(config, ds.config_override)


def ineffective_settings(spec: JobSpec) -> list[str]:
    """The DeepSpeed settings of `spec` that would silently do nothing at its ZeRO stage, each with
    the fix (the backend warns with them)."""
    ds, found = spec.resources.deepspeed, []
    if ds.offload_parameters and ds.zero_stage != 3:
        found.append(f"resources.deepspeed.offload_parameters does nothing at zero_stage {ds.zero_stage}: only "
                     "ZeRO-3 partitions (and so can offload) parameters; set zero_stage 3 or drop it")
    if ds.offload_optimizer and ds.zero_stage == 0:
        found.append("resources.deepspeed.offload_optimizer does nothing at zero_stage 0: offload needs ZeRO "
                     "partitioned optimizer states; set zero_stage 1-3 or drop it")
    # overlap_comm (default on) only matters to ZeRO-2/3; it is not reported at stages 0/1, where an
    # explicit `true` cannot be told from the default once the spec has crossed a process boundary.
    return found


class DeepSpeedBackend(ProcessGroupCollectives, LocalBackend):
    """A DeepSpeed engine around the trainer's model, optimizer and schedule.

    Args:
        spec: the job spec (resources.deepspeed, batch, precision, clipping).
    """

    name = "deepspeed"
    engine: Any  # deepspeed.DeepSpeedEngine

    def __init__(self, spec: JobSpec):
        if not dist.is_initialized():
            raise RuntimeError("the DeepSpeed backend needs an initialised torch.distributed process group "
                               "(start the job through Ray Train, `bertfleet run` with backend deepspeed)")
        super().__init__(_accelerator_device(spec.resources.accelerator))
        self.spec = spec
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.zero_stage = spec.resources.deepspeed.zero_stage
        self._on_cpu = self.device.type == "cpu"
        self._saved: dict[str, Any] | None = None
        self._warned_clip = False
        for message in ineffective_settings(spec):
            warnings.warn(message, stacklevel=2)

    # ---- wrapping and stepping ----------------------------------------------------------------

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                scheduler: torch.optim.lr_scheduler.LRScheduler, precision: str) -> nn.Module:
        """Builds the engine (ZeRO-3 partitions the already-built model's parameters here)."""
        assert precision == self.spec.training.precision, "prepare() takes the spec's precision"
        from deepspeed.accelerator import get_accelerator

        if precision == "fp16" and not get_accelerator().is_fp16_supported():
            raise SpecError(f"training.precision: DeepSpeed has no fp16 on {get_accelerator().device_name()}; "
                            "use bf16 or fp32")
        self.config = deepspeed_config(self.spec, self._on_cpu)
        self.clip = float(self.config.get("gradient_clipping") or 0.0)
        # Without ZeRO or 16-bit weights DeepSpeed clips with its own clip_grad_norm_ but keeps no
        # norm to report; there the norm is taken (and clipped) here and DeepSpeed's clipping is off.
        self._norm_here = self.zero_stage == 0 and precision == "fp32"
        if self._norm_here:
            self.config["gradient_clipping"] = 0.0
        import deepspeed

        self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                    config=self.config, dist_init_required=False)
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        return self.engine

    def micro_step_context(self, is_last: bool) -> contextlib.AbstractContextManager:
        # The boundary decides when ZeRO reduces gradients and when engine.step() really steps.
        self.engine.set_gradient_accumulation_boundary(is_last)
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        # The trainer already divided by the accumulation count (see the module docstring).
        self.engine.backward(loss, scale_wrt_gas=False)

    def optimizer_step(self, max_grad_norm: float | None) -> torch.Tensor | float:
        """Clip, step, schedule, zero grads (one engine.step()); returns the global gradient norm
        before clipping, as DeepSpeed keeps it (a tensor: reading it is left to the trainer's
        logging), inf on an fp16 overflow (when the step and the schedule are skipped)."""
        if (max_grad_norm or 0.0) != self.clip and not self._warned_clip:
            warnings.warn(f"DeepSpeed clips at gradient_clipping {self.clip} fixed at prepare(); "
                          f"max_grad_norm {max_grad_norm} of this call is ignored", stacklevel=2)
            self._warned_clip = True
        norm = None
        if self._norm_here:
            params = [p for p in self.model.parameters() if p.grad is not None]
            norm = torch.nn.utils.clip_grad_norm_(params, self.clip or float("inf"))
        assert self.engine.is_gradient_accumulation_boundary(), "optimizer_step() after a non-last micro-batch"
        self.engine.step()
        if norm is None:
            norm = self.engine.get_global_grad_norm()
        if norm is None:
            return float("nan")
        return norm.detach() if isinstance(norm, torch.Tensor) else float(norm)

    def learning_rate(self) -> float:
        return self.engine.lr_scheduler.get_last_lr()[0]

    # ---- state --------------------------------------------------------------------------------

    def unwrapped(self) -> nn.Module:
        """The module (under ZeRO-3 its parameters are partitions: see `gathered_model`)."""
        return self.engine.module

    @contextlib.contextmanager
    def gathered_model(self, model: nn.Module | None = None) -> Iterator[nn.Module]:
        """`model` (default: the engine's module) holding its full weights inside the block, e.g.
        for an export.

        Collective: every rank must enter it. ZeRO-3 all-gathers the partitions (and re-partitions
        on exit, discarding changes); other stages, or a model never given to prepare(), hold full
        weights already. The weights are the training dtype's (fp32 under fp32; 16-bit under
        bf16/fp16: full_state_dict() has the fp32 masters).
        """
        import deepspeed

        module = model if model is not None else self.engine.module
        partitioned = [p for p in module.parameters() if hasattr(p, "ds_id")]
        if partitioned:
            with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None):
                yield module
        else:
            yield module

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The module's full fp32 weights (the optimizer's masters), on CPU, on every rank.

        Collective under ZeRO-3. Uses DeepSpeed's fp32 master copies where there are any (ZeRO
        1-3, 16-bit training), so bf16/fp16 runs export fp32 weights, as LocalBackend's do.
        """
        from deepspeed.utils import safe_get_full_fp32_param

        state: dict[str, torch.Tensor] = {}
        with self.gathered_model() as module:
            for name, value in module.state_dict(keep_vars=True).items():
                master = safe_get_full_fp32_param(value) if isinstance(value, nn.Parameter) else None
                tensor = (master if master is not None else value).detach()
                state[name] = (tensor.float() if tensor.is_floating_point() else tensor).cpu().clone()
        return state

    def state_dict(self) -> dict[str, Any]:
        """No tensors: weights, optimizer and schedule are in the shards. What is here tells a
        resume whether the shards fit the workers it runs on."""
        import deepspeed

        return {"deepspeed": {"tag": TAG, "world_size": self.world_size, "zero_stage": self.zero_stage,
                              "precision": self.spec.training.precision, "version": deepspeed.__version__}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "deepspeed" not in state:
            raise SpecError("resources.backend: the checkpoint to resume was written by another backend "
                            f"(its state holds {sorted(state)}); resume it with that backend, or start a new run "
                            "from its exported weights (model.init_checkpoint)")
        self._saved = state["deepspeed"]

    def save_shards(self, directory: str) -> None:
        """Every rank writes its DeepSpeed shards into `directory`/ds (collective)."""
        # UNIVERSAL_CHECKPOINT_INFO marks the checkpoint convertible to the universal format.
        from deepspeed.checkpoint.constants import (
            UNIVERSAL_CHECKPOINT_INFO,
            UNIVERSAL_CHECKPOINT_VERSION_KEY,
            UNIVERSAL_CHECKPOINT_VERSION_VALUE,
        )

        client_state = {UNIVERSAL_CHECKPOINT_INFO: {UNIVERSAL_CHECKPOINT_VERSION_KEY:
                                                    UNIVERSAL_CHECKPOINT_VERSION_VALUE}}
        fs, path = fsspec.core.url_to_fs(directory)
        if isinstance(fs, LocalFileSystem):
            self.engine.save_checkpoint(path, tag=TAG, client_state=client_state, save_latest=False)
            return
        # Object stores: DeepSpeed writes local files; each rank uploads what it wrote.
        with tempfile.TemporaryDirectory(prefix="bertfleet-ds-") as scratch:
            self.engine.save_checkpoint(scratch, tag=TAG, client_state=client_state, save_latest=False)
            fs.put(f"{scratch}/{TAG}/", f"{path}/{TAG}", recursive=True)

    def load_shards(self, directory: str) -> None:
        """Restores weights, optimizer and schedule from `directory`/ds (collective): as saved when
        the checkpoint's world size, ZeRO stage and precision are this run's (or both are ZeRO-0,
        whose rank-0 file holds the whole optimizer), else through the universal format."""
        assert self._saved is not None, "load_state_dict() comes before load_shards()"
        saved, precision = self._saved, self.spec.training.precision
        same_layout = saved["zero_stage"] == self.zero_stage and saved["precision"] == precision and (
            saved["world_size"] == self.world_size or self.zero_stage == 0)
        with self._local_copy(directory) as local:
            if same_layout:
                loaded, _ = self.engine.load_checkpoint(local, tag=TAG)
                if loaded is None:
                    raise FileNotFoundError(f"no DeepSpeed shards under {directory}/{TAG}")
                return
            if saved["zero_stage"] == 0:
                raise SpecError(f"resources.deepspeed.zero_stage: the checkpoint in {directory} was written with "
                                f"ZeRO-0 ({saved['precision']}); resume it with zero_stage 0 and precision "
                                f"{saved['precision']} (DeepSpeed converts only ZeRO-1/2/3 checkpoints)")
            log.warning("resuming a checkpoint of %d workers (ZeRO-%d, %s) on %d workers (ZeRO-%d, %s) through "
                        "DeepSpeed's universal checkpoint", saved["world_size"], saved["zero_stage"],
                        saved["precision"], self.world_size, self.zero_stage, precision)
            self._load_universal(local)

    # ---- universal checkpoints ----------------------------------------------------------------

    def _load_universal(self, local: str) -> None:
        """Converts the shards under `local`/ds once per node and loads the result."""
        scratch = Path(tempfile.gettempdir()) / f"bertfleet-ds-universal-{self._shared_token()}"
        if _local_rank() == 0:
            _to_universal(f"{local}/{TAG}", str(scratch / TAG))
        dist.barrier()
        try:
            # DeepSpeed reads this flag when loading (not when building the engine), so a resume
            # decides it here, after it has seen which topology wrote the checkpoint.
            self.engine._config.load_universal_checkpoint = True
            loaded, _ = self.engine.load_checkpoint(str(scratch), tag=TAG)
            if loaded is None:
                raise FileNotFoundError(f"the universal checkpoint converted from {local}/{TAG} did not load")
            if self.zero_stage == 3:
                self._restore_group_hyperparameters(scratch / TAG)
        finally:
            self.engine._config.load_universal_checkpoint = False
            dist.barrier()
            if _local_rank() == 0:
                shutil.rmtree(scratch, ignore_errors=True)

    def _restore_group_hyperparameters(self, universal: Path) -> None:
        """DeepSpeed's ZeRO-3 universal loader gives every parameter group the first group's
        hyperparameters, so the no-decay group (LayerNorm, biases) would get weight decay. The
        saved per-group values (weight_decay, lr, betas, eps) are put back."""
        from deepspeed.checkpoint.constants import OPTIMIZER_STATE_DICT

        state = torch.load(universal / "zero" / "optimizer_state.pt", map_location="cpu", weights_only=False)
        saved_groups = state[OPTIMIZER_STATE_DICT]["param_groups"]
        groups = self.optimizer.param_groups
        assert len(saved_groups) == len(groups), \
            f"the checkpoint has {len(saved_groups)} optimizer parameter groups, the optimizer {len(groups)}"
        for group, saved in zip(groups, saved_groups):
            group.update({k: v for k, v in saved.items() if k != "params"})

    def _shared_token(self) -> str:
        """A name every rank agrees on (rank 0's), for a node-local scratch directory."""
        token = [uuid.uuid4().hex if self.rank == 0 else None]
        dist.broadcast_object_list(token, src=0)
        return str(token[0])

    @contextlib.contextmanager
    def _local_copy(self, directory: str) -> Iterator[str]:
        """`directory` itself when local, else a local copy of its ds/ sub-directory."""
        fs, path = fsspec.core.url_to_fs(directory)
        if isinstance(fs, LocalFileSystem):
            yield path
            return
        with tempfile.TemporaryDirectory(prefix="bertfleet-ds-") as scratch:
            fs.get(f"{path}/{TAG}/", f"{scratch}/{TAG}", recursive=True)
            yield scratch

    # ---- collectives --------------------------------------------------------------------------


    def shutdown(self) -> None:
        """Releases the engine (hooks, ZeRO buffers); the process group stays with Ray Train."""
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.destroy()
            self.engine = None


def _accelerator_device(accelerator: str) -> torch.device:
    """This worker's device, after pointing DeepSpeed at the spec's accelerator.

    DeepSpeed picks its accelerator once, at the first lookup, from DS_ACCELERATOR or by probing;
    a CPU job sets DS_ACCELERATOR=cpu first, so a CPU job on a machine with GPUs stays on the CPU.

    Raises:
        RuntimeError: DeepSpeed already runs on another accelerator than resources.accelerator.
    """
    if accelerator == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.accelerator import get_accelerator

    name = get_accelerator().device_name()
    if (accelerator == "cpu") != (name == "cpu"):
        raise RuntimeError(f"resources.accelerator is {accelerator} but DeepSpeed runs on {name!r} "
                           f"(DS_ACCELERATOR={os.environ.get('DS_ACCELERATOR')!r}); make them agree")
    return torch.device(get_accelerator().current_device_name())


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def _to_universal(source: str, target: str) -> None:
    """DeepSpeed's ds_to_universal, in this process (one worker: no fork under gloo's threads)."""
    from deepspeed.checkpoint import ds_to_universal

    shutil.rmtree(target, ignore_errors=True)
    args = argparse.Namespace(input_folder=source, output_folder=target, num_extract_workers=1,
                              num_merge_workers=1, keep_temp_folder=False, strict=True, inject_missing_state=True)
    ds_to_universal.main(args)

