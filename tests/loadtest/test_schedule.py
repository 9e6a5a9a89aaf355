"""Arrival schedules and user sampling: pure, seeded, checked against their definitions."""

from __future__ import annotations

import numpy as np
import pytest

from loadtest.schedule import Arrivals, UserSampler, worker_arrivals, zipf_share


def times(a: Arrivals, end: float, chunk: int = 4096) -> np.ndarray:
    parts = list(a.chunks(end, chunk))
    return np.concatenate(parts) if parts else np.empty(0)


def test_constant_spacing_is_exact() -> None:
    t = times(Arrivals(250.0, "constant"), end=4.0)
    assert len(t) == 1000
    assert t[0] == 0.0
    np.testing.assert_allclose(np.diff(t), 1 / 250.0, rtol=0, atol=1e-12)
    assert t[-1] < 4.0


def test_chunking_does_not_change_the_schedule() -> None:
    for kind in ("constant", "poisson"):
        a = Arrivals(300.0, kind, seed=7)
        small, big = times(a, 3.0, chunk=7), times(a, 3.0, chunk=100_000)
        # Poisson times restart their running sum per chunk: equal up to rounding.
        assert len(small) == len(big)
        np.testing.assert_allclose(small, big, rtol=0, atol=1e-9)


def test_constant_workers_interleave_into_one_even_stream() -> None:
    rate, n = 300.0, 3
    merged = np.sort(
        np.concatenate([times(worker_arrivals(rate, "constant", n, k), 2.0) for k in range(n)])
    )
    assert len(merged) == 600
    np.testing.assert_allclose(merged, np.arange(600) / rate, rtol=0, atol=1e-12)


def test_poisson_mean_rate_and_exponential_gaps() -> None:
    rate, end = 1000.0, 100.0
    t = times(Arrivals(rate, "poisson", seed=1), end)
    # Count ~ Poisson(100,000): sd 316, so 1% is > 3 sd.
    assert abs(len(t) / end - rate) < 0.01 * rate
    gaps = np.diff(t)
    assert gaps.min() > 0
    assert abs(gaps.mean() * rate - 1) < 0.01
    assert abs(gaps.std() / gaps.mean() - 1) < 0.02  # exponential: coefficient of variation 1


def test_poisson_workers_add_up_to_the_total_rate() -> None:
    rate, n, end = 800.0, 4, 50.0
    per = [len(times(worker_arrivals(rate, "poisson", n, k, seed=3), end)) for k in range(n)]
    assert abs(sum(per) / end - rate) < 0.02 * rate
    assert len(set(per)) == n  # independent streams, not copies


def test_zipf_top_users_dominate() -> None:
    n, s = 1000, 1.1
    users = UserSampler(n, "zipf", s, seed=5).sample(200_000)
    counts = np.bincount(users, minlength=n)
    assert counts.argmax() == 0
    top10 = np.sort(counts)[::-1][:10].sum() / counts.sum()
    expected = zipf_share(n, s, 10)
    assert abs(top10 - expected) < 0.01
    assert top10 > 0.4  # vs 1% for uniform users
    assert counts[0] > 5 * counts[9]
    uniform = np.bincount(UserSampler(n, "uniform", seed=5).sample(200_000), minlength=n)
    assert np.sort(uniform)[::-1][:10].sum() / uniform.sum() < 0.015


def test_fixed_seed_is_deterministic() -> None:
    for kind in ("constant", "poisson"):
        a, b = worker_arrivals(100.0, kind, 2, 1, seed=42), worker_arrivals(100.0, kind, 2, 1, 42)
        np.testing.assert_array_equal(times(a, 5.0), times(b, 5.0))
    u1 = UserSampler(100, "zipf", seed=42).sample(1000)
    u2 = UserSampler(100, "zipf", seed=42).sample(1000)
    np.testing.assert_array_equal(u1, u2)
    assert not np.array_equal(u1, UserSampler(100, "zipf", seed=43).sample(1000))
    p1 = times(worker_arrivals(100.0, "poisson", 1, 0, seed=1), 5.0)
    p2 = times(worker_arrivals(100.0, "poisson", 1, 0, seed=2), 5.0)
    assert len(p1) != len(p2) or not np.array_equal(p1, p2)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Arrivals(0.0),
        lambda: Arrivals(-5.0),
        lambda: Arrivals(10.0, "bursty"),
        lambda: UserSampler(0),
        lambda: UserSampler(10, "pareto"),
        lambda: UserSampler(10, "zipf", zipf_s=0.0),
        lambda: worker_arrivals(10.0, "constant", 2, 2),
    ],
)
def test_bad_parameters_are_refused(make: object) -> None:
    with pytest.raises(ValueError):
        make()  # type: ignore[operator]
