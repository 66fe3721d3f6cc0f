"""Fixtures for the control-plane tests: a store on an SQLite file and a clock the test moves.
Nothing here starts Ray."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fleet_fixtures import FakeClock

from orchestrator.store import Store


@pytest.fixture()
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture()
def store(tmp_path: Path, clock: FakeClock) -> Iterator[Store]:
    store = Store(tmp_path / "jobs.db", clock=clock)
    yield store
    store.close()
