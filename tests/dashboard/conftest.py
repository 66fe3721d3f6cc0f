"""Fixtures for the dashboard tests: a live API over a seeded store (see dashboard_fixtures.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dashboard_fixtures import Fleet, serve_fleet


@pytest.fixture()
def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fleet]:
    yield from serve_fleet(tmp_path, monkeypatch)
