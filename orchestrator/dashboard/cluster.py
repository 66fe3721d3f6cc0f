"""The cluster as the dashboard shows it: hosts with their accelerators, which job holds them, free
and used, dead nodes.

Sources, best first: the controller's node view (its nodes and the gangs it booked on them), then
Ray's `ray.nodes()` when this process is connected to Ray (totals only: Ray does not say which job
holds what), else nothing, with a message saying why. Dead nodes come from `ray.nodes()` (entries
with Alive false) when Ray is initialised, and from runs booked on nodes the controller no longer sees.
"""

from __future__ import annotations

import logging
from typing import Any

from orchestrator.queue import Node

log = logging.getLogger("bertfleet.dashboard")

ACCELERATOR_RESOURCES = ("GPU", "TPU-host", "TPU")


def _accelerators(total: dict[str, float], free: dict[str, float] | None) -> list[dict[str, Any]]:
    out = []
    for resource in ACCELERATOR_RESOURCES:
        if total.get(resource, 0) > 0:
            used = None if free is None else round(total[resource] - free.get(resource, 0.0), 6)
            out.append({"resource": resource, "total": total[resource], "used": used})
    return out


def _accelerator_type(total: dict[str, float]) -> str | None:
    return next((key.split(":", 1)[1] for key in total if key.startswith("accelerator_type:")), None)


def _entry(name: str, total: dict[str, float], free: dict[str, float] | None, alive: bool) -> dict[str, Any]:
    return {"name": name, "alive": alive, "accelerator_type": _accelerator_type(total),
            "cpus": total.get("CPU", 0.0), "accelerators": _accelerators(total, free), "jobs": [],
            "total": total, "free": free}


def _ray_nodes() -> list[dict[str, Any]] | None:
    """ray.nodes() when Ray is initialised in this process, else None (never starts Ray)."""
    try:
        import ray
    except ImportError:
        return None
    if not ray.is_initialized():
        return None
    try:
        return list(ray.nodes())
    except Exception:
        log.warning("ray.nodes() failed", exc_info=True)
        return None


def _ray_name(node: dict[str, Any]) -> str:
    # the same naming as orchestrator.controller.ray_nodes, so the two views agree
    return node.get("NodeManagerAddress", node["NodeID"]) + f"/{node['NodeID'][:8]}"


def cluster_view(controller: Any | None, job_names: dict[str, str] | None = None) -> dict[str, Any]:
    """{"source": "controller"|"ray"|"none", "message": str|None, "nodes": [...]}, each node
    {name, alive, accelerator_type, cpus, accelerators: [{resource, total, used}], jobs: [{id, name,
    workers}], total, free}.

    Args:
        controller: an orchestrator.controller.Controller (or None).
        job_names: job id -> name, for the holders' labels.
    """
    names = job_names or {}
    ray_nodes = _ray_nodes()
    if controller is not None:
        try:
            nodes: list[Node] = controller._free_nodes()  # totals, and free net of the gangs it booked
            runs = dict(controller._runs)
        except Exception as err:
            log.warning("the controller's node view failed", exc_info=True)
            return {"source": "none", "message": f"the controller's node view failed: {err}", "nodes": []}
        out = {node.name: _entry(node.name, dict(node.total), dict(node.free), True) for node in nodes}
        for job_id, run in runs.items():
            for node_name in sorted(set(run.node_names)):
                entry = out.setdefault(node_name, _entry(node_name, {}, None, False))  # booked on a gone node
                entry["jobs"].append({"id": job_id, "name": names.get(job_id, job_id),
                                      "workers": run.node_names.count(node_name)})
        for node in ray_nodes or []:
            if not node.get("Alive") and _ray_name(node) not in out:
                out[_ray_name(node)] = _entry(_ray_name(node), dict(node.get("Resources") or {}), None, False)
        return {"source": "controller", "message": None if out else "the controller sees no nodes",
                "nodes": list(out.values())}
    if ray_nodes is not None:
        return {"source": "ray", "message": "no controller in this process: totals from ray.nodes(); which job "
                "holds what is unknown", "nodes": [_entry(_ray_name(n), dict(n.get("Resources") or {}), None,
                                                          bool(n.get("Alive"))) for n in ray_nodes]}
    return {"source": "none", "message": "no controller and no Ray connection in the API process, so there are "
            "no nodes to show (run `bertfleet serve` with --controller on the Ray head)", "nodes": []}
