"""PSI and the anytime-valid drift test of evaluator.stats (``psi``, ``sequential_drift``):
known values recomputed by hand (``math.lgamma``), edge cases (empty bins, no rows, identical
distributions) and the validity argument's inequality checked on data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evaluator.stats import PSI_ACT, PSI_WARN, psi, sequential_drift, sequential_srm

pytestmark = pytest.mark.numeric


def test_psi_of_a_known_pair() -> None:
    # p = (0.5, 0.5), q = (0.8, 0.2): 0.3·ln 1.6 + (−0.3)·ln 0.4
    want = 0.3 * math.log(1.6) - 0.3 * math.log(0.4)
    assert psi([50, 50], [80, 20]) == pytest.approx(want, rel=1e-12)
    assert psi([50, 50], [80, 20]) == pytest.approx(psi([80, 20], [50, 50]), rel=1e-12)


def test_psi_of_identical_shares_is_zero() -> None:
    assert psi([10, 20, 30, 40], [10, 20, 30, 40]) == 0.0
    assert psi([10, 20, 30, 40], [100, 200, 300, 400]) == pytest.approx(0.0, abs=1e-15)


def test_psi_floors_empty_bins() -> None:
    eps = 1e-4
    got = psi([100, 0], [50, 50], eps)
    want = (0.5 - 1.0) * math.log(0.5 / 1.0) + (0.5 - eps) * math.log(0.5 / eps)
    assert got == pytest.approx(want, rel=1e-12)
    assert math.isfinite(psi([0, 10, 0], [10, 0, 0]))
    # A larger floor gives a smaller index for the same empty bin.
    assert psi([100, 0], [50, 50], 1e-2) < got


def test_psi_without_rows_is_zero() -> None:
    assert psi([0, 0, 0], [5, 1, 0]) == 0.0
    assert psi([5, 1, 0], [0, 0, 0]) == 0.0


def test_psi_thresholds_are_the_conventional_bands() -> None:
    assert (PSI_WARN, PSI_ACT) == (0.1, 0.25)


@pytest.mark.parametrize(
    ("ref", "cur", "eps"),
    [([1, 2], [1], 1e-4), ([1], [1], 1e-4), ([1, -1], [1, 1], 1e-4), ([1, 1], [1, 1], 0.0)],
)
def test_psi_refuses_bad_input(ref: list[int], cur: list[int], eps: float) -> None:
    with pytest.raises(ValueError):
        psi(ref, cur, eps)


def _log_dm(prior: list[float], counts: list[int]) -> float:
    a = sum(prior)
    n = sum(counts)
    return (
        math.lgamma(a)
        - math.lgamma(a + n)
        + sum(math.lgamma(p + x) - math.lgamma(p) for p, x in zip(prior, counts, strict=True))
    )


def _by_hand(ref: list[int], cur: list[int], a: float) -> float:
    k, n_ref, n = len(ref), sum(ref), sum(cur)
    theta = [(r + 1) / (n_ref + k) for r in ref]
    pooled = [r + x for r, x in zip(ref, cur, strict=True)]
    log_sup = sum(c * math.log(c / (n_ref + n)) for c in pooled if c > 0)
    return _log_dm([1.0] * k, ref) + _log_dm([a * t for t in theta], cur) - log_sup


@pytest.mark.parametrize(
    ("ref", "cur", "a"),
    [
        ([30, 50, 20], [10, 12, 9], 100.0),
        ([30, 0, 20], [0, 40, 1], 10.0),  # empty bins on either side
        ([500, 500], [620, 380], 100.0),
        ([7, 3, 0, 0, 1], [0, 0, 0, 0, 0], 50.0),
    ],
)
def test_sequential_drift_matches_the_closed_form(ref: list[int], cur: list[int], a: float) -> None:
    res = sequential_drift(ref, cur, 0.01, a)
    assert res.log_e == pytest.approx(_by_hand(ref, cur, a), rel=1e-10, abs=1e-9)
    assert res.p_value == pytest.approx(min(1.0, math.exp(-res.log_e)), rel=1e-12)
    assert res.drift == (res.p_value <= 0.01)
    assert (res.reference_rows, res.current_rows) == (sum(ref), sum(cur))


def test_sequential_drift_starts_at_or_below_one() -> None:
    for ref in ([100] * 10, [1, 0], [500, 300, 200], [0, 0, 3]):
        res = sequential_drift(ref, [0] * len(ref))
        assert res.log_e <= 1e-12
        assert res.p_value == 1.0 and not res.drift


def test_sequential_drift_identical_shares_are_no_evidence() -> None:
    res = sequential_drift([100] * 10, [100] * 10)
    assert res.log_e < 0.0 and res.p_value == 1.0 and not res.drift


def test_sequential_drift_without_reference_is_no_evidence() -> None:
    res = sequential_drift([0, 0, 0], [10, 20, 30])
    assert (res.log_e, res.p_value, res.drift) == (0.0, 1.0, False)


def test_sequential_drift_finds_a_large_shift() -> None:
    res = sequential_drift([500, 500], [900, 100], 0.01)
    assert res.drift and res.p_value < 1e-10


def test_sequential_drift_is_below_the_martingale_of_the_true_shares() -> None:
    # The validity argument: E <= DM(r; 1)·DM(x; A·θ̂)/L(r, x; p) for every p, here the true one.
    rng = np.random.default_rng(7)
    p = np.array([0.2, 0.3, 0.5])
    ref = rng.multinomial(300, p)
    for n in (0, 10, 100, 1000):
        cur = rng.multinomial(n, p)
        res = sequential_drift(ref.tolist(), cur.tolist(), 0.01, 100.0)
        theta = (ref + 1.0) / (300 + 3)
        log_m = (
            _log_dm([1.0] * 3, ref.tolist())
            + _log_dm((100.0 * theta).tolist(), cur.tolist())
            - float(np.sum((ref + cur) * np.log(p)))
        )
        assert res.log_e <= log_m + 1e-9


def test_the_shared_mixture_keeps_sequential_srm_unchanged() -> None:
    # sequential_srm's log BF recomputed by hand through the same closed form.
    counts, weights = {"a": 480, "b": 520}, {"a": 1.0, "b": 1.0}
    got = sequential_srm([(counts, weights)], 0.01, 10_000.0).log_bayes_factor
    want = _log_dm([5000.0, 5000.0], [480, 520]) - 1000 * math.log(0.5)
    assert got == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize(
    ("ref", "cur", "alpha", "a"),
    [([1, 2], [1, 2, 3], 0.01, 100.0), ([1, 2], [1, 2], 0.0, 100.0), ([1, 2], [1, 2], 0.01, 0.0)],
)
def test_sequential_drift_refuses_bad_input(
    ref: list[int], cur: list[int], alpha: float, a: float
) -> None:
    with pytest.raises(ValueError):
        sequential_drift(ref, cur, alpha, a)
