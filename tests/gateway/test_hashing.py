"""Hash spec v1 against frozen vectors (data), plus determinism, uniformity and independence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mmh3
import numpy as np
import pytest
from scipy import stats

from gateway.hashing import BUCKET_FUNCTIONS, NUM_BUCKETS, bucket_v1, buckets_v1, hash_v1
from tests.vectors import generate_hashing

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "hashing_v1.json"
FUNCTIONS = {"hash_v1": hash_v1, "bucket_v1": bucket_v1}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "vector" in metafunc.fixturenames:
        data = json.loads(VECTORS.read_text(encoding="utf-8"))
        params = [(name, case) for name in FUNCTIONS for case in data[name]]
        metafunc.parametrize("vector", params, ids=[f"{n}-{i}" for i, (n, _) in enumerate(params)])


def test_vector(vector: tuple[str, dict[str, Any]]) -> None:
    name, case = vector
    expected = case["hash"] if name == "hash_v1" else case["bucket"]
    assert FUNCTIONS[name](case["salt"], case["user_id"]) == expected


def test_vectors_file_matches_generator() -> None:
    assert VECTORS.read_text(encoding="utf-8") == generate_hashing.render()


def test_str_hashes_as_its_utf8_bytes() -> None:
    for key in ["a:b", "é:日本", "s:🙂"]:
        assert mmh3.hash(key, 0, False) == mmh3.hash(key.encode("utf-8"), 0, False)


def test_batch_equals_single() -> None:
    users = [f"u{i}" for i in range(3000)] + ["日本", "🙂", "a" * 256]
    got = buckets_v1("exp", users)
    assert got.tolist() == [bucket_v1("exp", u) for u in users]
    assert BUCKET_FUNCTIONS[1] is bucket_v1


def test_bounds_and_determinism() -> None:
    b = [bucket_v1("s", f"user-{i}") for i in range(20_000)]
    assert min(b) >= 0 and max(b) <= NUM_BUCKETS - 1
    assert b == [bucket_v1("s", f"user-{i}") for i in range(20_000)]


def test_uniform_over_buckets_and_groups() -> None:
    buckets = buckets_v1("uniformity", [f"user-{i}" for i in range(100_000)])
    fine = np.bincount(buckets, minlength=NUM_BUCKETS)
    assert stats.chisquare(fine).pvalue > 0.001
    coarse = np.bincount(buckets // 1000, minlength=10)
    assert stats.chisquare(coarse).pvalue > 0.001


def test_two_salts_are_independent() -> None:
    users = [f"user-{i}" for i in range(100_000)]
    a = buckets_v1("experiment-a", users) < 5000
    b = buckets_v1("experiment-b", users) < 5000
    table = np.array([[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]])
    assert stats.chi2_contingency(table).pvalue > 0.001
    assert np.all(np.abs(table / len(users) - 0.25) < 0.01)
