"""The anytime-valid tests of evaluator.stats — the rate limit (``rate_limit_test``,
``rate_rows_needed``), the sequential sample-ratio check (``sequential_srm``), the difference of
two rates (``rate_difference_test``) and the stratified sequential test — against independent
references (numerical integration, closed forms recomputed with ``math.lgamma``, scipy's
distributions), their invariants, and seeded simulations of their validity (Ville) and power."""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Mapping, Sequence

import numpy as np
import pytest
from scipy import stats as sps

from evaluator.stats import (
    ArmStats,
    SequentialResult,
    _rate_prior,
    rate_difference_test,
    rate_limit_test,
    rate_rows_needed,
    sequential_rho,
    sequential_srm,
    sequential_test,
    stratified_sequential_test,
)
from tests.vectors.generate_anytime import (
    agresti_caffo_sigma2,
    lgamma_terms,
    log_e_quad,
    rising_factorial_log_bf,
)

# Float statistics throughout: `make test-numeric` reruns them on other numpy/OpenBLAS kernels.
pytestmark = pytest.mark.numeric

# Closed forms recomputed another way agree to rounding of sums of lgamma values of up to ~1e5
# (1e-11 absolute); 1e-9 leaves a margin of 100. Quadrature reports errors below 1e-12.
REL = 1e-9
QUAD_REL = 1e-8


def seq_fields_close(got: SequentialResult, want: SequentialResult, rel: float) -> None:
    """Every field of two SequentialResults, floats within ``rel`` (nan equal to nan)."""

    def close(a: float, b: float) -> bool:
        if math.isnan(b):
            return math.isnan(a)
        if math.isinf(b):
            return a == b
        return math.isclose(a, b, rel_tol=rel, abs_tol=1e-15)

    assert close(got.effect, want.effect), (got.effect, want.effect)
    assert close(got.ci[0], want.ci[0]) and close(got.ci[1], want.ci[1]), (got.ci, want.ci)
    assert close(got.relative_lift, want.relative_lift)
    assert close(got.lift_ci[0], want.lift_ci[0]) and close(got.lift_ci[1], want.lift_ci[1])
    assert close(got.p_value, want.p_value), (got.p_value, want.p_value)
    assert got.significant is want.significant
    assert got.n == want.n and got.alpha == want.alpha


def half_width(res: SequentialResult) -> float:
    return (res.ci[1] - res.ci[0]) / 2.0


def mixture_radius(sigma2: float, n: int, alpha: float, tuning_n: float = 5000.0) -> float:
    """The normal-mixture half-width of ``sequential_test``'s docstring."""
    rho2 = sequential_rho(alpha, tuning_n) ** 2
    return math.sqrt(
        sigma2
        * 2.0
        * (n * rho2 + 1.0)
        / (n * n * rho2)
        * math.log(math.sqrt(n * rho2 + 1.0) / alpha)
    )


def mixture_p(
    effect: float, sigma2: float, n: int, alpha: float, tuning_n: float = 5000.0
) -> float:
    """p = min(1, 1/M) of ``sequential_test``'s docstring."""
    rho2 = sequential_rho(alpha, tuning_n) ** 2
    log_m = n * n * rho2 * effect**2 / (2.0 * sigma2 * (n * rho2 + 1.0)) - 0.5 * math.log(
        n * rho2 + 1.0
    )
    return min(1.0, math.exp(-log_m))


# --- rate_limit_test --------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [0.001, 0.01, 0.05, 0.2, 0.3, 0.9])
def test_rate_prior_is_the_documented_beta(limit: float) -> None:
    """The reference (generate_anytime.log_e_quad) restates the prior: pin ``_rate_prior`` to
    that formula, its docstring's: mean min(3·limit, (1 + limit)/2) and a + b = max(2, 1/limit)."""
    a, b = _rate_prior(limit)
    assert math.isclose(a + b, max(2.0, 1.0 / limit), rel_tol=1e-12)
    assert math.isclose(a / (a + b), min(3.0 * limit, 0.5 * (1.0 + limit)), rel_tol=1e-12)
    assert a > 0.0 and b > 0.0


RATE_CASES = [
    (0, 10, 0.01),
    (1, 1, 0.01),
    (3, 100, 0.01),
    (9, 300, 0.01),
    (20, 20, 0.05),
    (50, 1000, 0.03),
    (5, 2000, 0.001),
    (0, 2000, 0.01),
    (40, 2000, 0.01),
]


@pytest.mark.parametrize(("k", "n", "limit"), RATE_CASES)
def test_rate_limit_e_value_matches_the_integrated_mixture(k: int, n: int, limit: float) -> None:
    want = log_e_quad(k, n, limit)
    for alpha in (0.001, 0.01, 0.05, 0.2):
        res = rate_limit_test(k, n, limit, alpha)
        assert math.isclose(res.log_e, want, rel_tol=QUAD_REL, abs_tol=1e-10), (res.log_e, want)
        assert math.isclose(res.p_value, min(1.0, math.exp(-want)), rel_tol=QUAD_REL * 10)
        assert math.isclose(res.p_value, min(1.0, math.exp(-res.log_e)), rel_tol=1e-12)
        assert res.breach is (res.p_value <= alpha)
        assert (res.failures, res.n, res.limit, res.alpha) == (k, n, limit, alpha)


def test_rate_limit_cases_cover_both_outcomes() -> None:
    """The grid above holds e-values below and above 1 and both breaching and not."""
    outcomes = {rate_limit_test(k, n, limit, 0.01).breach for k, n, limit in RATE_CASES}
    signs = {rate_limit_test(k, n, limit).log_e > 0 for k, n, limit in RATE_CASES}
    assert outcomes == {True, False} and signs == {True, False}


def first_breach(n: int, limit: float, alpha: float) -> int:
    """The fewest failures in n rows that breach, by a plain scan up from 0 (n + 1: not even
    n of n) — not the bisection evaluator.stats uses."""
    k = 0
    while k <= n and not rate_limit_test(k, n, limit, alpha).breach:
        k += 1
    return k


@functools.lru_cache(maxsize=8)
def breach_thresholds(limit: float, alpha: float, rows: int) -> np.ndarray:
    """k*(n) for n = 1..rows (index n − 1)."""
    return np.array([first_breach(n, limit, alpha) for n in range(1, rows + 1)], dtype=np.int64)


def share_ever_breaching(p: float, limit: float, alpha: float, seed: int) -> float:
    """400 Bernoulli(p) paths of 2000 rows, tested after every row."""
    rows = 2000
    failures = np.cumsum(np.random.default_rng(seed).random((400, rows)) < p, axis=1)
    return float(np.mean(np.any(failures >= breach_thresholds(limit, alpha, rows), axis=1)))


@pytest.mark.parametrize(("p", "seed"), [(0.01, 11), (0.008, 12)])
def test_rate_limit_is_valid_at_every_look(p: float, seed: int) -> None:
    """Under H0 (p ≤ limit) the share of paths that ever breach is at most α (Ville); 0.08 is
    α = 0.05 plus three binomial standard errors of 400 paths."""
    assert share_ever_breaching(p, 0.01, 0.05, seed) <= 0.08


def test_rate_limit_thresholds_are_what_the_test_says() -> None:
    """The vectorised thresholds: k* − 1 failures do not breach, k* do (spot checks)."""
    k = breach_thresholds(0.01, 0.05, 2000)
    for n in (1, 2, 3, 10, 57, 100, 999, 2000):
        kn = int(k[n - 1])
        if kn <= n:
            assert rate_limit_test(kn, n, 0.01, 0.05).breach
        if kn >= 1:
            assert not rate_limit_test(kn - 1, n, 0.01, 0.05).breach
    assert k[-1] <= 2000 and np.all(np.diff(k) >= 0)


def test_rate_limit_catches_three_times_the_limit() -> None:
    assert share_ever_breaching(0.03, 0.01, 0.01, 13) >= 0.95


@pytest.mark.parametrize("n", [1, 10, 100, 500, 2000])
def test_rate_limit_is_monotone_in_failures(n: int) -> None:
    """More failures in the same rows: a strictly larger e-value, so once breaching always."""
    results = [rate_limit_test(k, n, 0.01, 0.01) for k in range(n + 1)]
    log_e = np.array([r.log_e for r in results])
    assert np.all(np.diff(log_e) > 0)
    breach = [r.breach for r in results]
    assert breach == sorted(breach)  # False … False True … True


def test_one_early_error_does_not_breach() -> None:
    """One error in the first request must not roll a canary back."""
    for alpha in (0.01, 0.05):
        res = rate_limit_test(1, 1, 0.01, alpha)
        assert not res.breach and res.p_value > 0.2


def test_rate_limit_edges() -> None:
    for res in (
        rate_limit_test(0, 0, 0.01),
        rate_limit_test(5, 10, 0.0),
        rate_limit_test(5, 10, 1.0),
        rate_limit_test(10, 10, 0.0, 0.5),
    ):
        assert res.p_value == 1.0 and not res.breach


@pytest.mark.parametrize(
    ("k", "n", "limit", "alpha"),
    [
        (11, 10, 0.01, 0.01),
        (-1, 10, 0.01, 0.01),
        (0, -1, 0.01, 0.01),
        (1, 10, -0.01, 0.01),
        (1, 10, 1.01, 0.01),
        (1, 10, math.nan, 0.01),
        (1, 10, 0.01, 0.0),
        (1, 10, 0.01, 1.0),
        (1, 10, 0.01, -0.5),
        (1, 10, 0.01, math.nan),
    ],
)
def test_rate_limit_rejects_bad_arguments(k: int, n: int, limit: float, alpha: float) -> None:
    with pytest.raises(ValueError):
        rate_limit_test(k, n, limit, alpha)


# --- rate_rows_needed -------------------------------------------------------------------------


def power_at(n: int, limit: float, alpha: float, times: float, k: int | None = None) -> float:
    """P(Bin(n, times·limit) ≥ k*(n)), k*(n) by a scan (from ``k`` if given)."""
    k = first_breach_scan(n, limit, alpha, 0 if k is None else k)
    return 0.0 if k > n else float(sps.binom.sf(k - 1, n, times * limit))


def first_breach_scan(n: int, limit: float, alpha: float, start: int = 0) -> int:
    """k*(n) by walking from ``start`` down then up (n + 1: none)."""
    k = min(start, n + 1)
    while k > 0 and rate_limit_test(k - 1, n, limit, alpha).breach:
        k -= 1
    while k <= n and not rate_limit_test(k, n, limit, alpha).breach:
        k += 1
    return k


def test_rows_needed_known_value() -> None:
    n = rate_rows_needed(0.01, 0.01, 3.0, 0.9)
    assert abs(n - 936) <= 0.02 * 936


def test_rows_needed_is_near_minimal_for_the_known_case() -> None:
    """Nowhere at or below 0.95 n does a single look reach the power (the power of one look is a
    sawtooth in n, so this is checked at every n)."""
    limit, alpha, times, power = 0.01, 0.01, 3.0, 0.9
    n = rate_rows_needed(limit, alpha, times, power)
    k = 0
    for m in range(1, int(0.95 * n) + 1):
        k = first_breach_scan(m, limit, alpha, k)
        if k <= m:
            assert float(sps.binom.sf(k - 1, m, times * limit)) < power, m


@pytest.mark.parametrize(
    ("limit", "alpha", "times", "power"),
    [
        (0.01, 0.01, 3.0, 0.9),
        (0.001, 0.01, 3.0, 0.9),
        (0.05, 0.05, 2.0, 0.8),
        (0.02, 0.001, 4.0, 0.95),
    ],
)
def test_rows_needed_reaches_the_power(
    limit: float, alpha: float, times: float, power: float
) -> None:
    n = rate_rows_needed(limit, alpha, times, power)
    assert power_at(n, limit, alpha, times) >= power
    assert power_at(int(0.9 * n), limit, alpha, times) < power


@pytest.mark.parametrize(
    ("limit", "alpha", "times"),
    [
        (0.0, 0.01, 3.0),
        (1.0, 0.01, 3.0),
        (-0.1, 0.01, 3.0),
        (0.5, 0.01, 2.0),
        (0.4, 0.01, 3.0),
        (0.01, 0.0, 3.0),
        (0.01, 1.0, 3.0),
    ],
)
def test_rows_needed_rejects_bad_input(limit: float, alpha: float, times: float) -> None:
    with pytest.raises(ValueError):
        rate_rows_needed(limit, alpha, times, 0.9)


def test_rows_needed_refuses_a_rate_it_cannot_catch() -> None:
    """A rate at or below the limit is breached with probability ≤ α at any one look."""
    for times in (1.0, 0.5):
        with pytest.raises(ValueError):
            rate_rows_needed(0.01, 0.01, times, 0.9)
    for power in (0.0, -1.0, 1.0, 1.5, math.nan):
        with pytest.raises(ValueError):
            rate_rows_needed(0.01, 0.01, 3.0, power)


# --- sequential_srm ---------------------------------------------------------------------------


HALF = {"a": 50.0, "b": 50.0}
ONE_IN_100 = {"a": 1.0, "b": 99.0}
THIRDS = {"a": 34.0, "b": 33.0, "c": 33.0}
SRM_CASES: list[tuple[dict[str, int], dict[str, float]]] = [
    ({"a": 480, "b": 520}, HALF),
    ({"a": 5000, "b": 5000}, HALF),
    ({"a": 0, "b": 7}, HALF),
    ({"a": 9000, "b": 11000}, HALF),
    ({"a": 30, "b": 970}, ONE_IN_100),
    ({"a": 0, "b": 2000}, ONE_IN_100),
    ({"a": 10, "b": 990}, ONE_IN_100),
    ({"a": 340, "b": 330, "c": 330}, THIRDS),
    ({"a": 3500, "b": 3200, "c": 3300}, THIRDS),
    ({"a": 1, "b": 0, "c": 0}, THIRDS),
]


@pytest.mark.parametrize(("counts", "weights"), SRM_CASES)
@pytest.mark.parametrize("concentration", [100.0, 10_000.0, 1e6])
def test_srm_bayes_factor_matches_the_closed_form(
    counts: dict[str, int], weights: dict[str, float], concentration: float
) -> None:
    res = sequential_srm([(counts, weights)], 0.01, concentration)
    terms = lgamma_terms(counts, weights, concentration)
    want = math.fsum(terms)
    # lgamma values of up to ~1e7 (A = 1e6) cancel to a log BF near 0: each carries half an ulp
    # of itself, so the absolute agreement is a few ulps of their sum, not of the result.
    cancel = 4.0 * sys.float_info.epsilon * math.fsum(abs(t) for t in terms)
    for reference in (want, rising_factorial_log_bf(counts, weights, concentration)):
        assert math.isclose(res.log_bayes_factor, reference, rel_tol=REL, abs_tol=cancel), (
            res.log_bayes_factor,
            reference,
            cancel,
        )
    assert math.isclose(res.p_value, min(1.0, math.exp(-want)), rel_tol=1e-8)
    assert res.mismatch is (res.p_value <= 0.01)
    n = sum(counts.values())
    assert res.observed == counts
    s = sum(weights.values())
    for arm, w in weights.items():
        assert math.isclose(res.expected[arm], n * w / s, rel_tol=1e-12)


@pytest.mark.parametrize(("counts", "weights"), [c for c in SRM_CASES if len(c[1]) == 2])
def test_srm_two_arms_is_the_beta_binomial_likelihood_ratio(
    counts: dict[str, int], weights: dict[str, float]
) -> None:
    """Dirichlet-multinomial over multinomial for two arms: beta-binomial over binomial (the
    binomial coefficients cancel)."""
    a = 10_000.0
    s = weights["a"] + weights["b"]
    t1, t2 = weights["a"] / s, weights["b"] / s
    x1, n = counts["a"], counts["a"] + counts["b"]
    want = float(sps.betabinom.logpmf(x1, n, a * t1, a * t2) - sps.binom.logpmf(x1, n, t1))
    got = sequential_srm([(counts, weights)], 0.01, a).log_bayes_factor
    assert math.isclose(got, want, rel_tol=REL, abs_tol=1e-9), (got, want)


def test_srm_multiplies_over_splits() -> None:
    s1 = ({"a": 480, "b": 520}, HALF)
    s2 = ({"a": 100, "b": 900}, {"a": 10.0, "b": 90.0})
    s3 = ({"a": 400, "b": 310, "c": 290}, THIRDS)
    whole = sequential_srm([s1, s2, s3])
    parts = [sequential_srm([s]).log_bayes_factor for s in (s1, s2, s3)]
    assert math.isclose(whole.log_bayes_factor, math.fsum(parts), rel_tol=1e-12, abs_tol=1e-12)
    assert math.isclose(
        sequential_srm([s1, s2]).log_bayes_factor, parts[0] + parts[1], rel_tol=1e-12
    )
    # observed / expected are the current (last) split's
    assert whole.observed == s3[0]
    assert math.isclose(whole.expected["a"], 340.0) and math.isclose(whole.expected["c"], 330.0)
    # Evidence of several splits adds up: none of these alone is a mismatch, together they are.
    skew = ({"a": 5200, "b": 4800}, HALF)
    alone = sequential_srm([skew], 0.01)
    together = sequential_srm([skew] * 4, 0.01)
    assert not alone.mismatch and together.mismatch
    assert math.isclose(together.log_bayes_factor, 4 * alone.log_bayes_factor, rel_tol=1e-12)


def test_srm_rows_in_a_zero_weight_arm_are_a_mismatch() -> None:
    for splits in (
        [({"a": 10, "b": 10, "c": 1}, {"a": 1.0, "b": 1.0, "c": 0.0})],
        [({"a": 10, "b": 10, "x": 1}, HALF)],  # an arm the weights do not know
        [({"a": 10, "b": 10, "c": 1}, {"a": 1.0, "b": 1.0, "c": 0.0}), ({"a": 5, "b": 5}, HALF)],
    ):
        res = sequential_srm(splits)
        assert res.log_bayes_factor == math.inf and res.p_value == 0.0 and res.mismatch
    # ... but a zero-weight arm without rows changes nothing
    with_zero = sequential_srm([({"a": 480, "b": 520, "c": 0}, {"a": 1.0, "b": 1.0, "c": 0.0})])
    without = sequential_srm([({"a": 480, "b": 520}, HALF)])
    assert math.isclose(with_zero.log_bayes_factor, without.log_bayes_factor, rel_tol=1e-12)


def test_srm_without_rows_is_no_evidence() -> None:
    no_rows: list[list[tuple[dict[str, int], dict[str, float]]]] = [
        [],
        [({"a": 0, "b": 0}, HALF)],
        [({}, THIRDS)],
    ]
    for splits in no_rows:
        res = sequential_srm(splits)
        assert res.log_bayes_factor == 0.0 and res.p_value == 1.0 and not res.mismatch


LOOKS = np.arange(100, 20_001, 100)  # 100 rows per look up to 20,000


def mismatches(x1: int, n: int, alpha: float, concentration: float) -> bool:
    return sequential_srm([({"a": x1, "b": n - x1}, HALF)], alpha, concentration).mismatch


@functools.lru_cache(maxsize=8)
def srm_thresholds(alpha: float, concentration: float) -> np.ndarray:
    """Per look, the smallest |x_a − n/2| that mismatches under a 50/50 split (n + 1: none)."""
    out = []
    for n in (int(n) for n in LOOKS):
        half = n // 2
        if not mismatches(0, n, alpha, concentration):
            out.append(n + 1)
            continue
        lo, hi = 0, half
        while lo < hi:
            mid = (lo + hi) // 2
            if mismatches(half - mid, n, alpha, concentration):
                hi = mid
            else:
                lo = mid + 1
        out.append(lo)
    return np.array(out, dtype=np.int64)


def share_ever_mismatching(
    share_a: float, paths: int, alpha: float, concentration: float, seed: int
) -> float:
    x_a = np.cumsum(np.random.default_rng(seed).binomial(100, share_a, (paths, LOOKS.size)), axis=1)
    deviation = np.abs(x_a - LOOKS // 2)
    return float(np.mean(np.any(deviation >= srm_thresholds(alpha, concentration), axis=1)))


def test_srm_thresholds_are_what_the_test_says() -> None:
    """The vectorised check rests on the 50/50 BF being symmetric and growing with |x_a − n/2|:
    spot checks of both sides of the threshold, on both sides of n/2."""
    for concentration in (10_000.0, 1000.0):
        d = srm_thresholds(0.05, concentration)
        for i in (0, 9, 49, 120, 199):
            n = int(LOOKS[i])
            di = int(d[i])
            if di <= n // 2:
                assert mismatches(n // 2 + di, n, 0.05, concentration)
                assert mismatches(n // 2 - di, n, 0.05, concentration)
            if 1 <= di <= n // 2 + 1:
                assert not mismatches(n // 2 + di - 1, n, 0.05, concentration)
                assert not mismatches(n // 2 - di + 1, n, 0.05, concentration)
        assert d[-1] < 20_000 // 2


@pytest.mark.parametrize(("concentration", "seed"), [(10_000.0, 21), (1000.0, 22)])
def test_srm_is_valid_at_every_look(concentration: float, seed: int) -> None:
    """A/A traffic looked at every 100 rows: the share ever mismatching is at most α (0.05 plus
    about two binomial standard errors of 300 paths)."""
    assert share_ever_mismatching(0.5, 300, 0.05, concentration, seed) <= 0.08


def test_srm_catches_a_45_55_split_bug() -> None:
    assert share_ever_mismatching(0.45, 200, 0.01, 10_000.0, 23) >= 0.95


@pytest.mark.parametrize(
    ("splits", "alpha", "concentration"),
    [
        ([({"a": 1, "b": 1}, HALF)], 0.0, 1e4),
        ([({"a": 1, "b": 1}, HALF)], 1.0, 1e4),
        ([({"a": 1, "b": 1}, HALF)], 0.01, 0.0),
        ([({"a": 1, "b": 1}, HALF)], 0.01, -1.0),
        ([({"a": 1, "b": 1}, HALF)], 0.01, math.inf),
        ([({"a": 1, "b": 1}, HALF)], 0.01, math.nan),
        ([({"a": 1, "b": 1}, {"a": -1.0, "b": 2.0})], 0.01, 1e4),
        ([({"a": 1, "b": 1}, {"a": math.nan, "b": 2.0})], 0.01, 1e4),
        ([({"a": 1, "b": 1}, {"a": math.inf, "b": 2.0})], 0.01, 1e4),
        ([({"a": -1, "b": 1}, HALF)], 0.01, 1e4),
        ([({"a": 1, "b": 1}, {"a": 0.0, "b": 0.0})], 0.01, 1e4),
        ([({"a": 1, "b": 1}, HALF), ({"a": 1}, {})], 0.01, 1e4),
    ],
)
def test_srm_rejects_bad_input(
    splits: Sequence[tuple[Mapping[str, int], Mapping[str, float]]],
    alpha: float,
    concentration: float,
) -> None:
    with pytest.raises(ValueError):
        sequential_srm(splits, alpha, concentration)


# --- rate_difference_test ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("control", "treatment"),
    [
        ((3, 1000), (9, 1000)),
        ((0, 500), (2, 1500)),
        ((40, 4000), (35, 3900)),
        ((0, 1980), (20, 20)),
    ],
)
@pytest.mark.parametrize("alpha", [0.01, 0.05])
def test_rate_difference_one_stratum(
    control: tuple[int, int], treatment: tuple[int, int], alpha: float
) -> None:
    (kc, nc), (kt, nt) = control, treatment
    res = rate_difference_test([(control, treatment)], alpha)
    n = nc + nt
    pc, pt = (kc + 1) / (nc + 2), (kt + 1) / (nt + 2)
    sigma2 = n * (pc * (1 - pc) / nc + pt * (1 - pt) / nt)
    assert math.isclose(res.effect, kt / nt - kc / nc, rel_tol=1e-12, abs_tol=1e-15)
    assert math.isclose(half_width(res), mixture_radius(sigma2, n, alpha), rel_tol=REL)
    assert math.isclose(sum(res.ci) / 2.0, res.effect, rel_tol=1e-12, abs_tol=1e-15)
    assert math.isclose(res.p_value, mixture_p(res.effect, sigma2, n, alpha), rel_tol=REL)
    assert res.significant is (res.p_value <= alpha) and res.n == n and res.alpha == alpha
    # p ≤ α exactly when 0 is outside the interval
    assert res.significant is (res.ci[0] > 0.0 or res.ci[1] < 0.0)
    assert math.isnan(res.relative_lift) and res.lift_ci == (-math.inf, math.inf)


def test_rate_difference_all_against_none() -> None:
    """No failures in control, only failures in treatment: the plug-in variance would be 0; the
    Agresti–Caffo one keeps the interval finite, and it excludes 0."""
    res = rate_difference_test([((0, 1980), (20, 20))])
    assert res.effect == pytest.approx(1.0, rel=0.0, abs=1e-15)
    assert all(math.isfinite(b) for b in res.ci) and res.ci[0] > 0.0
    assert res.significant


def test_rate_difference_two_strata_uses_the_cmh_weights() -> None:
    strata = [((3, 1000), (9, 1000)), ((10, 200), (90, 1800))]
    res = rate_difference_test(strata, 0.01)
    h = [nc * nt / (nc + nt) for (_, nc), (_, nt) in strata]
    effect = sum(
        hs / sum(h) * (kt / nt - kc / nc)
        for hs, ((kc, nc), (kt, nt)) in zip(h, strata, strict=True)
    )
    sigma2 = agresti_caffo_sigma2(strata)
    assert math.isclose(res.effect, effect, rel_tol=1e-12)
    assert math.isclose(half_width(res), mixture_radius(sigma2, 4000, 0.01), rel_tol=REL)
    assert math.isclose(res.p_value, mixture_p(effect, sigma2, 4000, 0.01), rel_tol=REL)


def test_rate_difference_ignores_strata_without_rows() -> None:
    base = [((3, 1000), (9, 1000)), ((10, 200), (90, 1800))]
    padded = [((0, 0), (3, 100)), base[0], ((2, 50), (0, 0)), base[1], ((0, 0), (0, 0))]
    seq_fields_close(rate_difference_test(padded), rate_difference_test(base), 0.0)
    empty = rate_difference_test([((0, 0), (3, 100)), ((2, 50), (0, 0))])
    assert empty.p_value == 1.0 and not empty.significant and empty.n == 0
    assert empty.ci == (-math.inf, math.inf)


def test_rate_difference_rejects_bad_input() -> None:
    # Also strata the test would leave out (an arm with no rows) must be well formed.
    for strata in (
        [((5, 4), (1, 10))],
        [((1, 10), (-1, 10))],
        [((1, 10), (11, 10))],
        [((5, 0), (1, 10))],
        [((1, -3), (1, 10))],
    ):
        with pytest.raises(ValueError):
            rate_difference_test(strata)
    with pytest.raises(ValueError):
        rate_difference_test([((1, 10), (1, 10))], alpha=0.0)


# --- stratified_sequential_test ---------------------------------------------------------------


def binary(n: int, successes: int) -> ArmStats:
    """Sufficient statistics of n 0/1 values: Σx² = Σx."""
    return ArmStats(n, float(successes), float(successes))


ONE_STRATUM_CASES = [
    (ArmStats(1000, 503.0, 20_480.5), ArmStats(1200, 640.0, 25_011.0)),
    (binary(9000, 4500), binary(1000, 520)),
    (ArmStats(50, -12.5, 300.0), ArmStats(70, 8.0, 410.0)),
    (binary(2, 1), binary(3, 2)),
    (binary(1, 1), binary(10, 5)),  # control too small: unbounded
    (ArmStats(10, 5.0, 2.5), ArmStats(10, 5.0, 2.5)),  # constant arms: σ² = 0
]


@pytest.mark.parametrize(("control", "treatment"), ONE_STRATUM_CASES)
@pytest.mark.parametrize("alpha", [0.01, 0.05])
def test_one_stratum_is_sequential_test(
    control: ArmStats, treatment: ArmStats, alpha: float
) -> None:
    seq_fields_close(
        stratified_sequential_test([(control, treatment)], alpha),
        sequential_test(control, treatment, alpha),
        1e-12,
    )


def test_stratified_matches_an_independent_cmh_computation() -> None:
    strata = [
        (ArmStats(1000, 503.0, 20_480.5), ArmStats(1200, 640.0, 25_011.0)),
        (ArmStats(300, 120.0, 5_000.0), ArmStats(100, 60.0, 1_900.0)),
        (binary(2000, 700), binary(500, 190)),
    ]
    res = stratified_sequential_test(strata, 0.05)
    h = np.array([c.n * t.n / (c.n + t.n) for c, t in strata])
    w = h / h.sum()
    d = np.array([t.total / t.n - c.total / c.n for c, t in strata])

    def s2(a: ArmStats) -> float:
        return (a.total_sq - a.total**2 / a.n) / (a.n - 1)

    var = float(np.sum(w**2 * np.array([s2(t) / t.n + s2(c) / c.n for c, t in strata])))
    n = sum(c.n + t.n for c, t in strata)
    effect = float(np.dot(w, d))
    assert math.isclose(res.effect, effect, rel_tol=1e-12)
    assert math.isclose(half_width(res), mixture_radius(n * var, n, 0.05), rel_tol=REL)
    assert math.isclose(res.p_value, mixture_p(effect, n * var, n, 0.05), rel_tol=REL)
    mean_c = float(np.dot(w, [c.total / c.n for c, _ in strata]))
    assert math.isclose(res.relative_lift, effect / mean_c, rel_tol=1e-12)
    assert res.n == n


def test_stratification_removes_simpsons_paradox() -> None:
    """Within each split treatment equals control, but treatment got most traffic when the rate
    was high: the pooled test sees a large effect, the stratified one none."""
    strata = [
        (binary(9000, 4500), binary(1000, 500)),  # split 1: both 0.5
        (binary(1000, 800), binary(9000, 7200)),  # split 2: both 0.8
    ]
    stratified = stratified_sequential_test(strata, 0.05)
    assert abs(stratified.effect) < 1e-12
    assert not stratified.significant and stratified.p_value == 1.0
    assert stratified.ci[0] < 0.0 < stratified.ci[1]
    pooled = sequential_test(binary(10_000, 5300), binary(10_000, 7700), 0.05)
    assert math.isclose(pooled.effect, 0.24, rel_tol=1e-12)
    assert pooled.significant and pooled.p_value < 1e-12 and pooled.ci[0] > 0.1


def test_identical_strata_are_one_stratum_with_doubled_sums() -> None:
    """Two copies of a stratum get equal weights: the same effect as one stratum of the doubled
    sums, and the same variance but for the ddof: s² of the doubled sums is s²·2(n−1)/(2n−1)."""
    c, t = binary(1000, 300), binary(800, 280)
    two = stratified_sequential_test([(c, t), (c, t)], 0.05)
    one = stratified_sequential_test([(c + c, t + t)], 0.05)
    assert abs(two.effect - one.effect) <= 1e-12
    assert two.n == one.n == 2 * (c.n + t.n)
    var_two = (c.variance / c.n + t.variance / t.n) / 2.0
    var_one = (c + c).variance / (2 * c.n) + (t + t).variance / (2 * t.n)
    assert math.isclose(
        var_one,
        (c.variance * 2 * (c.n - 1) / (2 * c.n - 1)) / (2 * c.n)
        + (t.variance * 2 * (t.n - 1) / (2 * t.n - 1)) / (2 * t.n),
        rel_tol=1e-12,
    )
    ratio = math.sqrt(var_two / var_one)
    assert math.isclose(half_width(two), half_width(one) * ratio, rel_tol=REL)
    assert math.isclose(half_width(two), half_width(one), rel_tol=1e-3)
    assert math.isclose(two.relative_lift, one.relative_lift, rel_tol=1e-12)


def test_stratified_ignores_strata_too_small_for_a_variance() -> None:
    base = [(binary(1000, 300), binary(800, 280)), (binary(300, 10), binary(400, 20))]
    padded = [*base, (binary(1, 1), binary(50, 3)), (binary(40, 2), ArmStats.empty())]
    seq_fields_close(stratified_sequential_test(padded), stratified_sequential_test(base), 0.0)
