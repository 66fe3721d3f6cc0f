"""cluster/configs: the Ray cluster-launcher YAMLs load, use only fields Ray's own schema knows
(ray/autoscaler/ray-schema.json, through Ray's validate_config and prepare_config), and declare the
resources the scheduler (orchestrator/queue.py) asks for; the Grafana dashboard only queries
metrics orchestrator/metrics.py exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from cluster.resources import (
    NODE_KINDS,
    NodeKind,
    bundle_for,
    job_spec_for,
    num_hosts_of_slice,
    ray_resources,
)
from orchestrator.metrics import EXPORTED
from orchestrator.queue import Gang, gang_of, place

CONFIGS = Path(__file__).resolve().parents[2] / "cluster" / "configs"
YAMLS = sorted(CONFIGS.glob("*.yaml"))


def load(path: Path) -> dict[str, Any]:
    with open(path) as f:
        return yaml.safe_load(f)


def kind_of(node_type: str) -> NodeKind:
    names = [name for name in NODE_KINDS if node_type == name or node_type.startswith(name + "_")]
    assert len(names) == 1, f"node type {node_type!r} must be named after one of {sorted(NODE_KINDS)}"
    return NODE_KINDS[names[0]]


def worker_types(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: t for name, t in config["available_node_types"].items() if name != config["head_node_type"]}


def test_there_are_gpu_and_tpu_configs():
    assert {p.name for p in YAMLS} == {"gcp-gpu.yaml", "gcp-tpu.yaml"}
    kinds = {kind_of(name).name for p in YAMLS for name in worker_types(load(p))}
    assert kinds == set(NODE_KINDS)  # every node kind has a node type (A100, H100, v4, v5e, v5p)


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_only_real_cluster_launcher_fields(path: Path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load(path)
    schema_path = Path(__import__("ray.autoscaler", fromlist=["x"]).__file__).parent / "ray-schema.json"
    jsonschema.validate(config, json.loads(schema_path.read_text()))  # additionalProperties: false throughout
    validate_config(prepare_config(config))  # merged with Ray's defaults, then checked, as `ray up` does
    assert config["provider"]["type"] == "gcp"


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_node_configs_are_gce_vms_or_tpu_vms_ray_accepts(path: Path):
    # Ray's GCP provider tells a TPU VM (acceleratorType) from a Compute VM (machineType) by these keys
    # and checks TPU types with TPUAcceleratorManager (its gcp/config.py needs googleapiclient to import).
    from ray._private.accelerators import TPUAcceleratorManager

    for name, node_type in load(path)["available_node_types"].items():
        node = node_type["node_config"]
        assert ("acceleratorType" in node) != ("machineType" in node), name
        if "acceleratorType" in node:
            assert TPUAcceleratorManager.is_valid_tpu_accelerator_type(node["acceleratorType"]), name
            assert node["runtimeVersion"] and node["schedulingConfig"] == {"preemptible": True}, name
        else:
            if name != "head":
                assert node["scheduling"]["provisioningModel"] == "SPOT", name


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_resources_are_what_the_scheduler_asks_for(path: Path):
    config = load(path)
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # the controller's node: never preempted, never runs job work
    assert "scheduling" not in head["node_config"]
    for name, node_type in worker_types(config).items():
        kind = kind_of(name)
        assert node_type["resources"] == ray_resources(kind), name
        if kind.accelerator == "gpu":
            assert node_type["node_config"]["machineType"] == kind.machine_type, name
            hosts = 1
        else:
            accelerator = node_type["node_config"]["acceleratorType"]
            hosts = num_hosts_of_slice(kind.accelerator_type, accelerator)
            assert hosts == 1 or name.endswith("_" + accelerator.rpartition("-")[2]), name
        # a gang that fills `hosts` such nodes is placed on exactly them; one more host does not fit
        nodes = [dict(node_type["resources"]) for _ in range(hosts)]
        if hosts == 1:
            gang = gang_of(job_spec_for(kind))
        else:
            # a pod slice: jobs/spec.py refuses multi-host XLA for now (see README, "Not done yet"), so
            # the gang is the one such a job would ask for: one worker per host, each holding a host
            with pytest.raises(ValueError, match="runs on one host"):
                job_spec_for(kind, num_hosts=hosts)
            gang = Gang(bundle_for(kind), hosts)
        assert place(gang, nodes) is not None, name
        assert place(Gang(gang.bundle, gang.num_workers + 1), nodes) is None, name


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_setup_installs_bertfleet_and_the_head_runs_the_controller(path: Path):
    config = load(path)
    assert config["file_mounts"] == {"/home/ubuntu/bertfleet": "."}
    installs = " ".join(config.get("setup_commands", []) + config.get("head_setup_commands", []))
    assert "pip install -q -e /home/ubuntu/bertfleet" in installs
    for name, node_type in worker_types(config).items():
        commands = " ".join(node_type.get("worker_setup_commands", config.get("worker_setup_commands", [])))
        extra = "[deepspeed]" if kind_of(name).accelerator == "gpu" else "[xla]"
        assert f"/home/ubuntu/bertfleet{extra}" in commands, name
    head = " ".join(config["head_start_ray_commands"])
    assert "bertfleet serve --host 127.0.0.1" in head and "BERTFLEET_TOKEN=$(gcloud secrets" in head
    assert "RAY_AUTH_MODE=token" in head and "RAY_AUTH_MODE=token" in " ".join(config["worker_start_ray_commands"])


def grafana_exprs(dashboard: dict[str, Any]) -> list[str]:
    panels = list(dashboard["panels"])
    for panel in list(panels):
        panels += panel.get("panels", [])  # rows
    return [target["expr"] for panel in panels for target in panel.get("targets", [])]


def test_grafana_dashboard_queries_only_exported_metrics():
    dashboard = json.loads((CONFIGS / "grafana_dashboard.json").read_text())
    assert dashboard["title"] and dashboard["uid"] and isinstance(dashboard["schemaVersion"], int)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert {"type", "title", "gridPos", "datasource"} <= set(panel), panel.get("title")
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"} and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
    exprs = grafana_exprs(dashboard)
    assert len(exprs) >= 8
    used = set()
    for expr in exprs:
        names = set(re.findall(r"\bbertfleet_[a-z_]+\b", expr))
        assert names, f"{expr!r} queries no bertfleet metric"
        assert names <= set(EXPORTED), f"{expr!r} queries {names - set(EXPORTED)}, which /metrics does not export"
        used |= names
    assert {"bertfleet_jobs", "bertfleet_job_tokens_per_second", "bertfleet_job_mfu_ratio",
            "bertfleet_accelerators_in_use", "bertfleet_job_preemptions_total",
            "bertfleet_job_seconds_since_checkpoint"} <= used
