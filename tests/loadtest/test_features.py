"""Feature rows: the holdout reader reads what converters/demo.py writes."""

from __future__ import annotations

import numpy as np

from loadtest.features import load_holdout
from tests.conftest import DemoStore


def test_holdout_reader_matches_converters(demo_store: DemoStore) -> None:
    from converters.demo import HOLDOUT_FILE, load_demo_holdout
    from loadtest import features

    assert features.HOLDOUT_FILE == HOLDOUT_FILE
    X, y = load_holdout(demo_store.root)
    X2, y2 = load_demo_holdout(demo_store.root)
    assert X.dtype == X2.dtype and y.dtype == y2.dtype
    assert np.array_equal(X, X2) and np.array_equal(y, y2)
