"""cluster/resources.py: node kinds <-> Ray resources, aligned with orchestrator/queue.py's bundles."""

from __future__ import annotations

import pytest

from cluster.resources import (
    NODE_KINDS,
    bundle_for,
    node_kind_of,
    num_hosts_of_slice,
    peak_flops,
    ray_resources,
    workers_per_node,
)
from orchestrator.queue import ACCELERATOR_TYPE_SHARE


@pytest.mark.parametrize("kind", NODE_KINDS.values(), ids=lambda k: k.name)
def test_kinds_round_trip_and_bundles_follow_the_queue(kind):
    resources = ray_resources(kind)
    assert node_kind_of(resources) == kind
    bundle = bundle_for(kind)
    assert bundle[f"accelerator_type:{kind.accelerator_type}"] == ACCELERATOR_TYPE_SHARE
    if kind.accelerator == "gpu":
        assert bundle == {"CPU": 1.0, "GPU": 1.0, f"accelerator_type:{kind.accelerator_type}": ACCELERATOR_TYPE_SHARE}
        assert workers_per_node(kind) == kind.num_devices  # one worker per GPU
    else:
        assert bundle == {"CPU": 1.0, "TPU-host": 1.0, f"accelerator_type:{kind.accelerator_type}": ACCELERATOR_TYPE_SHARE}
        assert workers_per_node(kind) == 1  # one worker drives the whole host


def test_cpu_nodes_and_unknown_labels_have_no_kind():
    assert node_kind_of({"CPU": 8.0}) is None
    assert node_kind_of({"CPU": 8.0, "GPU": 1.0, "accelerator_type:T4": 1.0}) is None


def test_pod_slices_and_peaks():
    assert num_hosts_of_slice("v4", "v4-8") == 1 and num_hosts_of_slice("v4", "v4-32") == 4
    assert num_hosts_of_slice("v5p", "v5p-32") == 4 and num_hosts_of_slice("v5e", "v5litepod-16") == 4
    with pytest.raises(ValueError, match="TPU slice"):
        num_hosts_of_slice("v9", "v9-8")
    assert peak_flops("a100") == 312e12 and peak_flops("H100") == 989e12 and peak_flops(None) is None
