"""Fixtures for load-test tests: a fake server, a tiny holdout store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from loadtest.features import HOLDOUT_FILE
from tests.loadtest.fakes import FakeServer


@pytest.fixture
def fake_server() -> Iterator[FakeServer]:
    server = FakeServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def label_store(tmp_path: Path) -> Path:
    """A store holding only a holdout: 50 random rows of 30 features, labels 0, 1, 0, 1, …"""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 30))
    np.savez(tmp_path / HOLDOUT_FILE, X=X, y=np.arange(50, dtype=np.int64) % 2)
    return tmp_path
