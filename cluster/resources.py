"""Node kinds (GPU hosts, TPU hosts of a pod slice) <-> the Ray resources they carry, and the bundles
the scheduler asks of them.

One table, `NODE_KINDS`, says what each kind of machine in cluster/configs/*.yaml is; everything else
is derived from it so the cluster-launcher YAMLs, the scheduler (orchestrator/queue.py) and the
metrics (MFU needs each chip's peak) cannot drift apart. The labels follow queue.py's bundle rules:

  GPU host   {"CPU": n, "GPU": g, "accelerator_type:<T>": 1}
  TPU host   {"CPU": n, "TPU": chips, "TPU-host": 1, "accelerator_type:<T>": 1}

A gpu job's worker asks {"CPU": 1, "GPU": 1, "accelerator_type:<T>": 0.001}; a tpu job's worker
holds a whole host: {"CPU": 1, "TPU-host": 1, "accelerator_type:<T>": 0.001}. `<T>` is the spec's
`resources.accelerator_type` exactly as written (A100, H100, v4, v5e, v5p), so the node label must
use the same spelling; Ray's own auto-detected labels (e.g. `accelerator_type:TPU-V4`) are not what
the queue asks for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from jobs.spec import JobSpec, parse_spec
from orchestrator.queue import Gang, gang_of, place


@dataclass(frozen=True)
class NodeKind:
    """One kind of machine.

    Args:
        name: the key in NODE_KINDS and the node type's name in the cluster-launcher YAMLs.
        accelerator: "gpu" or "tpu" (as in ResourcesSpec.accelerator).
        accelerator_type: the label value (as in ResourcesSpec.accelerator_type).
        num_cpus: vCPUs Ray may schedule on the host.
        num_devices: GPUs, or TPU chips, per host.
        peak_flops: dense bf16 FLOP/s of one device (GPU or TPU chip), for MFU.
        machine_type: the GCE machine type (GPU) or the TPU accelerator type of a one-host slice.
    """

    name: str
    accelerator: Literal["gpu", "tpu"]
    accelerator_type: str
    num_cpus: int
    num_devices: int
    peak_flops: float
    machine_type: str


NODE_KINDS: dict[str, NodeKind] = {k.name: k for k in (
    NodeKind("gpu_a100", "gpu", "A100", 96, 8, 312e12, "a2-highgpu-8g"),
    NodeKind("gpu_h100", "gpu", "H100", 208, 8, 989e12, "a3-highgpu-8g"),
    NodeKind("tpu_v4", "tpu", "v4", 240, 4, 275e12, "v4-8"),
    NodeKind("tpu_v5e", "tpu", "v5e", 112, 4, 197e12, "v5litepod-4"),
    NodeKind("tpu_v5p", "tpu", "v5p", 208, 4, 459e12, "v5p-8"),
)}

# Peak dense bf16 FLOP/s per device by accelerator_type, for MFU (also types with no node kind here).
PEAK_FLOPS: dict[str, float] = {k.accelerator_type.lower(): k.peak_flops for k in NODE_KINDS.values()} | {
    "v100": 125e12, "a10g": 125e12, "l4": 121e12, "h200": 989e12, "b200": 2250e12, "v6e": 918e12,
}


def peak_flops(accelerator_type: str | None) -> float | None:
    """Peak dense bf16 FLOP/s of one device of this type (any case), or None when unknown."""
    return PEAK_FLOPS.get(accelerator_type.lower()) if accelerator_type else None


def ray_resources(kind: NodeKind) -> dict[str, float]:
    """The resources a node of `kind` advertises to Ray (what its YAML node type declares)."""
    resources: dict[str, float] = {"CPU": float(kind.num_cpus)}
    if kind.accelerator == "gpu":
        resources["GPU"] = float(kind.num_devices)
    else:
        resources["TPU"] = float(kind.num_devices)
        resources["TPU-host"] = 1.0
    resources[f"accelerator_type:{kind.accelerator_type}"] = 1.0
    return resources


def node_kind_of(resources: dict[str, float]) -> NodeKind | None:
    """The node kind whose accelerator label `resources` carries (None: a CPU-only node, or a label
    no kind has)."""
    for kind in NODE_KINDS.values():
        if resources.get(f"accelerator_type:{kind.accelerator_type}", 0) > 0 and (
                resources.get("GPU" if kind.accelerator == "gpu" else "TPU-host", 0) > 0):
            return kind
    return None


def job_spec_for(kind: NodeKind, num_hosts: int = 1, output_dir: str = "/tmp/bertfleet") -> JobSpec:
    """A pretraining spec that fills `num_hosts` nodes of `kind` (every GPU, or every TPU host)."""
    backend = "ddp" if kind.accelerator == "gpu" else "xla"
    devices = kind.num_devices if kind.accelerator == "gpu" else 1
    num_workers = num_hosts * devices
    return parse_spec({"kind": "pretrain", "model": {"size": "base"}, "output": {"output_dir": output_dir},
                       "training": {"train_batch_size": 32 * num_workers},
                       "resources": {"accelerator": kind.accelerator, "accelerator_type": kind.accelerator_type,
                                     "num_hosts": num_hosts, "devices_per_host": devices, "backend": backend}})


def bundle_for(kind: NodeKind) -> dict[str, float]:
    """One worker's bundle on a node of `kind` (queue.gang_of's rule)."""
    return gang_of(job_spec_for(kind)).bundle


def workers_per_node(kind: NodeKind) -> int:
    """How many workers of a job targeting `kind` one such node holds (GPUs per host, or 1 per TPU host)."""
    gang = Gang(bundle_for(kind), 1)
    count = 0
    free = dict(ray_resources(kind))
    while place(gang, [free]) is not None:
        for key, need in gang.bundle.items():
            free[key] -= need
        count += 1
    return count


def num_hosts_of_slice(accelerator_type: str, tpu_name: str) -> int:
    """Hosts in a TPU pod slice named like `v4-32`, `v5p-64` (counting TensorCores, 2 per chip) or
    `v5litepod-16` (counting chips), given the chips per host of its node kind.

    Raises:
        ValueError: an unknown type or a malformed name.
    """
    kind = next((k for k in NODE_KINDS.values() if k.accelerator == "tpu" and k.accelerator_type == accelerator_type),
                None)
    prefix, _, size = tpu_name.rpartition("-")
    if kind is None or not size.isdigit():
        raise ValueError(f"TPU slice {tpu_name!r} of type {accelerator_type!r}: expected e.g. v4-32, v5p-64, "
                         f"v5litepod-16 with a type in {[k.accelerator_type for k in NODE_KINDS.values()]}")
    chips = int(size) if prefix.startswith("v5litepod") else int(size) // 2
    return max(1, chips // kind.num_devices)
