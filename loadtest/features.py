"""The feature rows the requests carry: the demo holdout (with its true labels, which outcomes
send back) or random normal rows of ``--features`` columns."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from loadtest.schedule import worker_seed
from loadtest.settings import LoadTestSettings

RANDOM_ROWS = 1024
HOLDOUT_FILE = "demo_holdout.npz"  # converters.demo.HOLDOUT_FILE


def load_rows(settings: LoadTestSettings) -> tuple[np.ndarray, np.ndarray | None]:
    """Feature rows and their true labels (None for random rows)."""
    if settings.features:
        rng = np.random.default_rng(worker_seed(settings.seed, 0, "features"))
        return rng.standard_normal((RANDOM_ROWS, settings.features)).astype(np.float32), None
    assert settings.model_store is not None
    return load_holdout(settings.model_store)


def load_holdout(store_root: Path) -> tuple[np.ndarray, np.ndarray]:
    """The demo holdout, as ``converters.demo.load_demo_holdout`` reads it (a test keeps the two
    equal). Not imported from there: that module pulls in scikit-learn, 3 s per process."""
    with np.load(Path(store_root) / HOLDOUT_FILE) as data:
        return data["X"].astype(np.float32), data["y"].astype(np.int64)
