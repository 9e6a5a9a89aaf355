"""evaluator.stats against frozen vectors (data, from scipy and numerical integration), against
scipy and independent implementations on random inputs, and its invariants as properties."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import integrate
from scipy import stats as sps

from evaluator.stats import (
    ArmStats,
    SequentialResult,
    fixed_horizon_t_test,
    holm,
    sequential_rho,
    sequential_test,
    srm_test,
    thompson_weights,
    wilson_interval,
)
from tests.vectors import generate_stats

REPO = Path(__file__).resolve().parents[2]
VECTORS = REPO / "tests" / "vectors" / "stats_v1.json"
# The expected values come from numerical integration and scipy, checked against the closed forms
# to 1e-9 relative (generate_stats.TOLERANCE), and are kept to 12 significant digits: the code
# under test can be held to that 1e-9, not to float64 rounding.
REL = 1e-9
# Float statistics throughout: `make test-numeric` reruns them on other numpy/OpenBLAS kernels.
pytestmark = pytest.mark.numeric


def close(got: float, expected: float | str) -> bool:
    """``expected`` may be "inf", "-inf" or "nan" (JSON has no non-finite numbers)."""
    want = float(expected)
    if math.isnan(want):
        return math.isnan(got)
    if math.isinf(want):
        return got == want
    return math.isclose(got, want, rel_tol=REL, abs_tol=1e-15)


def arm(d: dict[str, Any]) -> ArmStats:
    return ArmStats(d["n"], d["total"], d["total_sq"])


# --- frozen vectors ---------------------------------------------------------------------------


def check_sequential(case: dict[str, Any]) -> None:
    assert close(sequential_rho(case["alpha"], case["tuning_n"]), case["rho"])
    res = sequential_test(
        arm(case["control"]), arm(case["treatment"]), case["alpha"], case["tuning_n"]
    )
    assert close(res.effect, case["effect"])
    assert close(res.ci[0], case["ci"][0]) and close(res.ci[1], case["ci"][1])
    assert close(res.relative_lift, case["relative_lift"])
    assert close(res.lift_ci[0], case["lift_ci"][0]) and close(res.lift_ci[1], case["lift_ci"][1])
    assert close(res.p_value, case["p_value"])
    assert res.significant is case["significant"]
    assert res.n == case["n"] and res.alpha == case["alpha"]


def check_welch(case: dict[str, Any]) -> None:
    effect, p, ci = fixed_horizon_t_test(
        arm(case["control"]), arm(case["treatment"]), case["alpha"]
    )
    assert close(effect, case["effect"])
    assert close(p, case["p_value"])
    assert close(ci[0], case["ci"][0]) and close(ci[1], case["ci"][1])


def check_srm(case: dict[str, Any]) -> None:
    res = srm_test(case["observed"], case["weights"], case["threshold"])
    assert close(res.chi2, case["chi2"])
    assert close(res.p_value, case["p_value"])
    assert res.mismatch is case["mismatch"]
    assert list(res.expected) == list(case["expected"])
    assert all(close(res.expected[a], e) for a, e in case["expected"].items())
    assert {a: res.observed[a] for a in case["observed"]} == case["observed"]


def check_holm(case: dict[str, Any]) -> None:
    got = holm(case["p_values"])
    assert list(got) == list(case["adjusted"])
    assert all(close(got[k], v) for k, v in case["adjusted"].items())


def check_wilson(case: dict[str, Any]) -> None:
    lo, hi = wilson_interval(case["successes"], case["n"], case["confidence"])
    assert close(lo, case["low"]) and close(hi, case["high"])


SECTIONS: dict[str, Callable[[dict[str, Any]], None]] = {
    "sequential": check_sequential,
    "welch": check_welch,
    "srm": check_srm,
    "holm": check_holm,
    "wilson": check_wilson,
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every case in the vector file becomes one test id, e.g. ``sequential-3``."""
    if "vector" in metafunc.fixturenames:
        data = json.loads(VECTORS.read_text(encoding="utf-8"))
        params = [(section, case) for section in SECTIONS for case in data[section]]
        ids = [f"{section}-{i}" for section in SECTIONS for i in range(len(data[section]))]
        metafunc.parametrize("vector", params, ids=ids)


def test_vector(vector: tuple[str, dict[str, Any]]) -> None:
    section, case = vector
    SECTIONS[section](case)


def test_vector_file_has_every_section() -> None:
    data = json.loads(VECTORS.read_text(encoding="utf-8"))
    assert data["spec_version"] == 1 and data["spec"].startswith("stats v1")
    assert set(data) == {"spec", "spec_version", *SECTIONS}
    for section in SECTIONS:
        assert 8 <= len(data[section]) <= 20, section


def test_vector_file_is_what_the_generator_writes_today() -> None:
    # --check compares within what the computation allows (generate_stats.differences): the
    # arms' Σx² is an OpenBLAS dot whose last bits vary by CPU; the file stays frozen.
    done = subprocess.run(
        [sys.executable, "-m", "tests.vectors.generate_stats", "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_vectors_cover_the_edge_cases() -> None:
    data = json.loads(VECTORS.read_text(encoding="utf-8"))
    seq = data["sequential"]
    assert any(c["significant"] for c in seq) and any(not c["significant"] for c in seq)
    assert any(c["ci"][0] == "-inf" and c["n"] > 0 for c in seq)  # degenerate, not empty
    assert any(c["control"]["n"] != c["treatment"]["n"] for c in seq)
    assert any(min(c["control"]["n"], c["treatment"]["n"]) <= 2 for c in seq)
    assert any(c["relative_lift"] == "nan" for c in seq)
    assert len({c["alpha"] for c in seq}) >= 3 and len({c["tuning_n"] for c in seq}) >= 2
    assert any(c["ci"][0] == "-inf" for c in data["welch"])
    assert any(len(c["observed"]) >= 3 for c in data["srm"])
    assert any(c["chi2"] == "inf" for c in data["srm"])
    assert {c["mismatch"] for c in data["srm"]} == {True, False}
    assert any(c["successes"] in (0, c["n"]) and c["n"] > 0 for c in data["wilson"])


def test_the_generator_refuses_to_write_when_numerics_disagree() -> None:
    with pytest.raises(SystemExit):
        generate_stats.agree("demo", 1.0, 1.0 + 1e-6)


# --- ArmStats -----------------------------------------------------------------------------------

values = st.lists(st.floats(-1e3, 1e3, allow_nan=False), max_size=30)


@settings(max_examples=200, deadline=None)
@given(values, values, values)
def test_add_matches_from_values_of_the_concatenation(
    a: list[float], b: list[float], c: list[float]
) -> None:
    x, y, z = (ArmStats.from_values(v) for v in (a, b, c))
    whole = ArmStats.from_values(a + b + c)
    for merged in ((x + y) + z, x + (y + z)):
        assert merged.n == whole.n
        assert math.isclose(merged.total, whole.total, rel_tol=1e-9, abs_tol=1e-9)
        assert math.isclose(merged.total_sq, whole.total_sq, rel_tol=1e-9, abs_tol=1e-9)
    assert x + ArmStats.empty() == x == ArmStats.empty() + x


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-1000, 1000), max_size=40))
def test_mean_and_variance_match_numpy(ints: list[int]) -> None:
    # Integer data: the sums are exact, so the only error is rounding in Σx² − (Σx)²/n, a few
    # ulps of Σx²: the price of working from sums, which is all SQL hands us.
    s = ArmStats.from_values(np.array(ints, dtype=float))
    assert s.n == len(ints)
    assert s.mean == pytest.approx(np.mean(ints) if ints else 0.0, abs=1e-12)
    expected = float(np.var(ints, ddof=1)) if len(ints) >= 2 else 0.0
    slack = 1e-14 * s.total_sq / max(1, s.n - 1)
    assert s.variance == pytest.approx(expected, rel=1e-12, abs=slack)


def test_arm_stats_edges() -> None:
    assert ArmStats.empty() == ArmStats(0, 0.0, 0.0)
    assert ArmStats.empty().mean == 0.0 and ArmStats.empty().variance == 0.0
    assert ArmStats(1, 5.0, 25.0).variance == 0.0
    # Σx² a hair below (Σx)²/n, as float sums of near-constant data produce: clamped, not < 0.
    assert ArmStats(3, 0.3, 0.03 - 1e-17).variance == 0.0
    assert ArmStats.from_values([]) == ArmStats.empty()
    assert ArmStats.from_values(np.array([1.0, 2.0, 3.0])) == ArmStats(3, 6.0, 14.0)
    with pytest.raises(ValueError, match="n must be >= 0"):
        ArmStats(-1, 0.0, 0.0)
    with pytest.raises(ValueError, match="finite"):
        ArmStats(2, math.nan, 1.0)
    with pytest.raises(ValueError, match="1-D"):
        ArmStats.from_values(np.zeros((2, 2)))
    with pytest.raises(TypeError):
        ArmStats.empty() + 1  # type: ignore[operator]


# --- sequential test ----------------------------------------------------------------------------


@st.composite
def arm_stats(draw: st.DrawFn) -> ArmStats:
    """Either a binary arm from counts (up to 10⁶ users) or a small continuous sample."""
    if draw(st.booleans()):
        n = draw(st.integers(0, 1_000_000))
        k = draw(st.integers(0, n))
        return ArmStats(n, float(k), float(k))
    return ArmStats.from_values(draw(st.lists(st.floats(-100, 100), max_size=50)))


alphas = st.floats(0.001, 0.5)
tunings = st.floats(10.0, 1e6)


@settings(max_examples=500, deadline=None)
@given(arm_stats(), arm_stats(), alphas, tunings)
def test_sequential_invariants(c: ArmStats, t: ArmStats, alpha: float, tuning_n: float) -> None:
    res = sequential_test(c, t, alpha, tuning_n)
    assert res.n == c.n + t.n and res.alpha == alpha
    assert res.effect == t.mean - c.mean
    assert 0.0 <= res.p_value <= 1.0
    assert res.significant == (res.p_value <= alpha)
    lo, hi = res.ci
    assert lo <= res.effect <= hi
    if res.lift_ci != (-math.inf, math.inf):
        assert res.lift_ci[0] <= res.relative_lift <= res.lift_ci[1]
    if c.mean == 0.0:
        assert math.isnan(res.relative_lift)
    else:
        assert res.relative_lift == pytest.approx(res.effect / c.mean)
    # p ≤ α ⇔ 0 ∉ ci, away from the boundary itself where rounding may pick either side.
    radius = (hi - lo) / 2.0
    if math.isfinite(radius) and abs(abs(res.effect) - radius) > 1e-9 * radius:
        assert res.significant == (abs(res.effect) > radius)
    # Swapping the arms mirrors the effect and leaves the evidence unchanged.
    swapped = sequential_test(t, c, alpha, tuning_n)
    assert swapped.effect == -res.effect
    assert swapped.p_value == pytest.approx(res.p_value, rel=1e-9)


@settings(max_examples=150, deadline=None)
@given(
    st.integers(2, 100_000),
    st.integers(2, 100_000),
    st.floats(0.01, 10.0),
    st.floats(-3.0, 3.0),
    alphas,
)
def test_sequential_matches_the_integrated_mixture(
    n_c: int, n_t: int, sd: float, z: float, alpha: float
) -> None:
    """The closed form against the generator's numerical integral of the Gaussian mixture."""
    c = ArmStats(n_c, 0.0, sd * sd * (n_c - 1))  # mean 0, variance sd²
    se = sd * math.sqrt(1.0 / n_c + 1.0 / n_t)
    mean_t = z * se * 3.0
    t = ArmStats(n_t, mean_t * n_t, sd * sd * (n_t - 1) + mean_t * mean_t * n_t)
    res = sequential_test(c, t, alpha)
    n = n_c + n_t
    sigma2 = n * (c.variance / n_c + t.variance / n_t)
    rho2 = sequential_rho(alpha, 5000.0) ** 2
    log_m = generate_stats.log_mixture_numeric(res.effect, sigma2, n, rho2)
    assert res.p_value == pytest.approx(min(1.0, math.exp(-log_m)), rel=1e-9)
    radius = generate_stats.radius_numeric(sigma2, n, rho2, alpha)
    assert res.ci[1] - res.effect == pytest.approx(radius, rel=1e-9)


def test_sequential_degenerate_inputs_never_raise() -> None:
    unbounded = (-math.inf, math.inf)
    binary = ArmStats(1000, 300.0, 300.0)
    for c, t in [
        (ArmStats.empty(), ArmStats.empty()),
        (ArmStats(1, 1.0, 1.0), binary),
        (binary, ArmStats(1, 0.0, 0.0)),
        (ArmStats(50, 50.0, 50.0), ArmStats(50, 50.0, 50.0)),  # both constant, same
        (ArmStats(50, 0.0, 0.0), ArmStats(50, 50.0, 50.0)),  # both constant, different
    ]:
        res = sequential_test(c, t)
        assert res.ci == unbounded and res.lift_ci == unbounded
        assert res.p_value == 1.0 and res.significant is False
        assert res.effect == t.mean - c.mean and res.n == c.n + t.n


def test_sequential_rejects_bad_parameters() -> None:
    a = ArmStats(100, 30.0, 30.0)
    for alpha in (0.0, 1.0, -0.1, 1.5, math.nan):
        with pytest.raises(ValueError, match="alpha"):
            sequential_test(a, a, alpha=alpha)
    for tuning_n in (0.0, -5.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="tuning_n"):
            sequential_test(a, a, tuning_n=tuning_n)
    with pytest.raises(ValueError, match="alpha"):
        sequential_rho(0.0, 100.0)


def test_rho_makes_the_sequence_tightest_near_tuning_n() -> None:
    # Fixed data at N = 5000; vary the N the boundary is tuned for. The closed-form ρ is one
    # fixed-point step from the exact optimum, so it lands within a hair of the best width.
    c, t = ArmStats(2500, 750.0, 750.0), ArmStats(2500, 800.0, 800.0)

    def width(tuning_n: float) -> float:
        lo, hi = sequential_test(c, t, tuning_n=tuning_n).ci
        return hi - lo

    grid = np.geomspace(500, 50_000, 401)
    widths = np.array([width(float(g)) for g in grid])
    assert 0.8 * 5000 <= grid[int(np.argmin(widths))] <= 1.25 * 5000
    assert width(5000.0) <= 1.001 * widths.min()
    assert sequential_rho(0.05, 5000.0) == pytest.approx(
        math.sqrt((-2 * math.log(0.05) + math.log(-2 * math.log(0.05) + 1)) / 5000)
    )


def test_sequential_is_wider_than_the_fixed_horizon_interval() -> None:
    # The price of peeking: at the same data the always-valid interval contains Welch's.
    c, t = ArmStats(4000, 1200.0, 1200.0), ArmStats(4000, 1290.0, 1290.0)
    seq = sequential_test(c, t)
    _, p, (lo, hi) = fixed_horizon_t_test(c, t)
    assert seq.ci[0] < lo < hi < seq.ci[1]
    assert seq.p_value > p


def test_p_value_falls_as_the_effect_grows() -> None:
    c = ArmStats(5000, 1500.0, 1500.0)
    ps = [
        sequential_test(c, ArmStats(5000, float(k), float(k))).p_value
        for k in range(1500, 1800, 10)
    ]
    assert ps[0] == 1.0
    assert all(a >= b for a, b in itertools.pairwise(ps))
    assert ps[-1] < 1e-6


def test_result_is_frozen() -> None:
    res = sequential_test(ArmStats(10, 3.0, 3.0), ArmStats(10, 4.0, 4.0))
    assert isinstance(res, SequentialResult)
    with pytest.raises(AttributeError):
        res.p_value = 0.0  # type: ignore[misc]


# --- Welch --------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(arm_stats(), arm_stats(), alphas)
def test_welch_matches_scipy_from_stats(c: ArmStats, t: ArmStats, alpha: float) -> None:
    effect, p, (lo, hi) = fixed_horizon_t_test(c, t, alpha)
    assert effect == t.mean - c.mean
    se2 = (c.variance / c.n if c.n else 0.0) + (t.variance / t.n if t.n else 0.0)
    if c.n < 2 or t.n < 2 or se2 == 0.0:
        assert p == 1.0 and (lo, hi) == (-math.inf, math.inf)
        return
    # scipy squares the variances for ν, which underflows below ~1e-154; ours does not.
    assume(all(v == 0.0 or v > 1e-100 for v in (c.variance, t.variance)))
    ref = sps.ttest_ind_from_stats(
        t.mean, math.sqrt(t.variance), t.n, c.mean, math.sqrt(c.variance), c.n, equal_var=False
    )
    assert p == pytest.approx(float(ref.pvalue), rel=1e-9, abs=1e-300)
    assert lo <= effect <= hi
    assert (p <= alpha) == (lo > 0 or hi < 0) or math.isclose(p, alpha, rel_tol=1e-9)


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")  # scipy, on a constant arm
@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(-50, 50), min_size=2, max_size=40),
    st.lists(st.integers(-50, 50), min_size=2, max_size=40),
    alphas,
)
def test_welch_interval_matches_scipy_on_raw_data(c: list[int], t: list[int], alpha: float) -> None:
    assume(np.var(c) + np.var(t) > 0)
    _, p, (lo, hi) = fixed_horizon_t_test(ArmStats.from_values(c), ArmStats.from_values(t), alpha)
    ref = sps.ttest_ind(np.array(t, float), np.array(c, float), equal_var=False)
    ref_lo, ref_hi = ref.confidence_interval(1.0 - alpha)
    assert p == pytest.approx(float(ref.pvalue), rel=1e-9)
    assert lo == pytest.approx(float(ref_lo), rel=1e-9, abs=1e-12)
    assert hi == pytest.approx(float(ref_hi), rel=1e-9, abs=1e-12)


# --- SRM ----------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 100_000), st.floats(0.5, 100.0)), min_size=2, max_size=6))
def test_srm_matches_scipy_chisquare(arms: list[tuple[int, float]]) -> None:
    observed = {f"arm{i}": o for i, (o, _) in enumerate(arms)}
    weights = {f"arm{i}": w for i, (_, w) in enumerate(arms)}
    assume(sum(observed.values()) > 0)
    res = srm_test(observed, weights)
    total = sum(observed.values())
    f_exp = [total * w / sum(weights.values()) for w in weights.values()]
    ref = sps.chisquare(list(observed.values()), f_exp)
    assert res.chi2 == pytest.approx(float(ref.statistic), rel=1e-9, abs=1e-9)
    assert res.p_value == pytest.approx(float(ref.pvalue), rel=1e-7, abs=1e-300)
    assert res.mismatch == (res.p_value < 0.001)
    assert sum(res.expected.values()) == pytest.approx(total)


def test_srm_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="threshold"):
        srm_test({"a": 1}, {"a": 1.0}, threshold=0.0)
    with pytest.raises(ValueError, match=">= 0"):
        srm_test({"a": 1}, {"a": -1.0, "b": 2.0})
    with pytest.raises(ValueError, match=">= 0"):
        srm_test({"a": -1}, {"a": 1.0})
    with pytest.raises(ValueError, match="positive sum"):
        srm_test({"a": 0}, {"a": 0.0})


def test_srm_detects_a_real_split_bug() -> None:
    # A 52/48 split of 20,000 users served as 50/50 is the classic SRM.
    assert srm_test({"a": 10_400, "b": 9_600}, {"a": 50, "b": 50}).mismatch
    assert not srm_test({"a": 10_040, "b": 9_960}, {"a": 50, "b": 50}).mismatch


# --- Holm ---------------------------------------------------------------------------------------


def test_holm_textbook_example() -> None:
    # Wikipedia, "Holm–Bonferroni method": at α = 0.05 H4 and H1 are rejected, H2 and H3 not.
    got = holm({"H1": 0.01, "H2": 0.04, "H3": 0.03, "H4": 0.005})
    assert got == pytest.approx({"H1": 0.03, "H2": 0.06, "H3": 0.06, "H4": 0.02})
    assert {k for k, v in got.items() if v <= 0.05} == {"H1", "H4"}


pvalue_maps = st.dictionaries(
    st.text("abcdefgh", min_size=1, max_size=3), st.floats(0.0, 1.0), max_size=12
)


@settings(max_examples=300, deadline=None)
@given(pvalue_maps)
def test_holm_properties(p: dict[str, float]) -> None:
    adj = holm(p)
    assert list(adj) == list(p)
    reference = generate_stats.holm_reference(p)
    for k in p:
        assert p[k] <= adj[k] <= 1.0
        assert adj[k] == pytest.approx(reference[k], rel=1e-12, abs=0.0)
        assert adj[k] <= min(1.0, len(p) * p[k]) + 1e-15  # never worse than Bonferroni
    for a in p:
        for b in p:
            if p[a] <= p[b]:
                assert adj[a] <= adj[b]


def test_holm_rejects_bad_p_values() -> None:
    for bad in (-0.1, 1.1, math.nan):
        with pytest.raises(ValueError, match="must be in"):
            holm({"a": 0.1, "b": bad})
    assert holm({}) == {}


# --- Wilson and the guardrail -------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 10_000_000), st.data(), st.floats(0.5, 0.9999))
def test_wilson_matches_scipy(n: int, data: st.DataObject, confidence: float) -> None:
    k = data.draw(st.integers(0, n))
    lo, hi = wilson_interval(k, n, confidence)
    ref = sps.binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    assert lo == pytest.approx(ref.low, rel=1e-9, abs=1e-14)
    assert hi == pytest.approx(ref.high, rel=1e-9, abs=1e-14)
    assert 0.0 <= lo <= k / n <= hi <= 1.0


def test_wilson_edges_and_validation() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 50)[0] == 0.0 and wilson_interval(50, 50)[1] == 1.0
    narrow, wide = wilson_interval(30, 100, 0.8), wilson_interval(30, 100, 0.99)
    assert wide[0] < narrow[0] < narrow[1] < wide[1]
    for args in [(-1, 10), (11, 10), (0, -1)]:
        with pytest.raises(ValueError, match="successes"):
            wilson_interval(*args)
    for confidence in (0.0, 1.0):
        with pytest.raises(ValueError, match="confidence"):
            wilson_interval(1, 2, confidence)


# --- Thompson -----------------------------------------------------------------------------------


@st.composite
def arm_maps(draw: st.DrawFn) -> dict[str, ArmStats]:
    k = draw(st.integers(1, 6))
    arms = {}
    for i in range(k):
        n = draw(st.integers(0, 10_000))
        successes = draw(st.integers(0, n))
        arms[f"m{i}"] = ArmStats(n, float(successes), float(successes))
    return arms


def assert_valid_split(weights: dict[str, float], floor: float) -> None:
    cents = [round(w * 100) for w in weights.values()]
    assert all(
        w * 100 == pytest.approx(c, abs=1e-9) for w, c in zip(weights.values(), cents, strict=True)
    )
    assert sum(cents) == 10_000  # exactly 100.00 %: whole gateway buckets
    assert math.fsum(weights.values()) == pytest.approx(100.0, abs=1e-9)
    assert min(cents) >= math.floor(floor * 100 + 1e-9)


@settings(max_examples=150, deadline=None)
@given(arm_maps(), st.floats(0.0, 1.0), st.integers(0, 2**32 - 1), st.booleans())
def test_thompson_split_is_valid_and_deterministic(
    arms: dict[str, ArmStats], floor_share: float, seed: int, binary: bool
) -> None:
    floor = floor_share * 100.0 / len(arms)
    weights = thompson_weights(arms, floor, np.random.default_rng(seed), draws=500, binary=binary)
    assert list(weights) == list(arms)
    assert_valid_split(weights, floor)
    again = thompson_weights(arms, floor, np.random.default_rng(seed), draws=500, binary=binary)
    assert again == weights


def test_thompson_matches_the_exact_probability_of_being_best() -> None:
    a, b = ArmStats(200, 60.0, 60.0), ArmStats(200, 70.0, 70.0)
    # P(p_b > p_a) for independent Beta posteriors, integrated exactly.
    beta_a, beta_b = sps.beta(61, 141), sps.beta(71, 131)
    exact, _ = integrate.quad(lambda x: beta_b.pdf(x) * beta_a.cdf(x), 0.0, 1.0, epsabs=1e-12)
    weights = thompson_weights({"a": a, "b": b}, 0.0, np.random.default_rng(1), draws=200_000)
    # Monte Carlo standard error ≈ 0.001; allow 4 of them plus the 0.01 % rounding.
    assert weights["b"] / 100.0 == pytest.approx(exact, abs=0.0042)
    floored = thompson_weights({"a": a, "b": b}, 10.0, np.random.default_rng(1), draws=200_000)
    assert floored["b"] == pytest.approx(10.0 + 80.0 * exact, abs=0.35)


def test_thompson_behaviour() -> None:
    rng = np.random.default_rng(5)
    clear = {"a": ArmStats(5000, 1500.0, 1500.0), "b": ArmStats(5000, 1800.0, 1800.0)}
    assert thompson_weights(clear, 5.0, rng) == {"a": 5.0, "b": 95.0}
    same = {k: ArmStats(1000, 300.0, 300.0) for k in "abc"}
    assert all(abs(w - 100 / 3) < 2.0 for w in thompson_weights(same, 0.0, rng).values())
    # All floor: one spare hundredth, to the arm that won most draws.
    assert sorted(thompson_weights(same, 100 / 3, rng).values()) == [33.33, 33.33, 33.34]
    assert thompson_weights({"only": ArmStats.empty()}, 0.0, rng) == {"only": 100.0}


def test_thompson_continuous_metrics() -> None:
    rng = np.random.default_rng(9)
    arms = {
        "low": ArmStats.from_values(rng.normal(10.0, 2.0, 400)),
        "high": ArmStats.from_values(rng.normal(11.0, 2.0, 400)),
    }
    weights = thompson_weights(arms, 1.0, rng, binary=False)
    assert weights["high"] > 98.0
    # An arm with no data is explored (wide prior), not starved.
    arms["new"] = ArmStats.empty()
    weights = thompson_weights(arms, 0.0, rng, binary=False)
    assert 30.0 < weights["new"] < 70.0
    # Constant, equal arms tie in every draw: ties split evenly rather than favouring the first.
    flat = {"x": ArmStats(10, 10.0, 10.0), "y": ArmStats(10, 10.0, 10.0)}
    assert thompson_weights(flat, 0.0, rng, draws=100, binary=False) == {"x": 50.0, "y": 50.0}


def test_thompson_respects_the_floor_when_it_is_awkward() -> None:
    # Seven arms, floor 14.28 %: rounding each arm to 0.01 and fixing the residue on the largest
    # arm would push that arm under the floor; the largest-remainder split cannot.
    arms = {f"a{i}": ArmStats(100, float(10 + i), float(10 + i)) for i in range(7)}
    for seed in range(20):
        assert_valid_split(
            thompson_weights(arms, 14.28, np.random.default_rng(seed), draws=50), 14.28
        )


def test_thompson_rejects_bad_input() -> None:
    rng = np.random.default_rng(0)
    two = {"a": ArmStats(10, 1.0, 1.0), "b": ArmStats(10, 2.0, 2.0)}
    for floor in (-1.0, 50.01, math.nan, math.inf):
        with pytest.raises(ValueError, match="floor"):
            thompson_weights(two, floor, rng)
    with pytest.raises(ValueError, match="at least one arm"):
        thompson_weights({}, 0.0, rng)
    with pytest.raises(ValueError, match="draws"):
        thompson_weights(two, 0.0, rng, draws=0)
    with pytest.raises(ValueError, match="total <= n"):
        thompson_weights({"a": ArmStats(10, 11.0, 11.0)}, 0.0, rng)


# -- one arm's mean: the dashboard's and the report's confidence sequence ------------------------
def test_mean_confidence_sequence_is_the_normal_mixture_radius_around_the_mean() -> None:
    from evaluator.stats import _radius, mean_confidence_sequence, sequential_rho

    rng = np.random.default_rng(7)
    x = rng.random(500) < 0.3
    n = np.arange(1, 501)
    total, sumsq = np.cumsum(x), np.cumsum(x * x)
    lo, hi = mean_confidence_sequence(n, total, sumsq, 0.05)
    rho2 = sequential_rho(0.05, 5000.0) ** 2
    for i in (1, 9, 99, 499):
        k = i + 1
        mean, var = x[:k].mean(), x[:k].var(ddof=1)
        if var == 0:
            assert math.isnan(lo[i]) and math.isnan(hi[i])
            continue
        r = _radius(float(var), k, rho2, 0.05)
        assert lo[i] == pytest.approx(mean - r, rel=1e-9, abs=1e-12)
        assert hi[i] == pytest.approx(mean + r, rel=1e-9, abs=1e-12)
    assert math.isnan(lo[0]) and math.isnan(hi[0])  # n = 1: no variance estimate
    # No variance (every row the same): unbounded, not a zero-width interval.
    lo, hi = mean_confidence_sequence(np.array([10]), np.array([10.0]), np.array([10.0]))
    assert math.isnan(lo[0]) and math.isnan(hi[0])
    with pytest.raises(ValueError):
        mean_confidence_sequence(n, total, sumsq, 1.5)


def test_mean_confidence_sequence_covers_at_every_look(capsys: pytest.CaptureFixture[str]) -> None:
    """Seeded: 400 arms of 5,000 Bernoulli(0.3) rows, looked at every 50 rows (100 looks, as the
    dashboard redraws while traffic flows). The share of arms whose interval ever misses the
    true mean stays at most alpha; a fixed-n 95 % interval looked at the same way misses far
    more often (why the dashboard draws the sequence, not it)."""
    from evaluator.simulate import clopper_pearson
    from evaluator.stats import mean_confidence_sequence

    rng = np.random.default_rng(2026)
    p, alpha, arms, rows = 0.3, 0.05, 400, 5000
    x = (rng.random((arms, rows)) < p).astype(np.float64)
    looks = np.arange(49, rows, 50)
    total = np.cumsum(x, axis=1)[:, looks]
    n = np.broadcast_to(looks + 1.0, total.shape)
    lo, hi = mean_confidence_sequence(n, total, total, alpha)  # x² = x for 0/1 rows
    missed = ((lo > p) | (hi < p)).any(axis=1)
    mean = total / n
    z = sps.norm.ppf(1 - alpha / 2)
    half = z * np.sqrt(mean * (1 - mean) / n)
    naive = ((mean - half > p) | (mean + half < p)).any(axis=1)
    k = int(missed.sum())
    low, high = clopper_pearson(k, arms)
    with capsys.disabled():
        print(f"\nper-arm CS: missed the mean at some look in {k}/{arms} arms (≤ {high:.3f} at "
              f"95 %); a fixed-n 95 % CI in {int(naive.sum())}/{arms}")  # fmt: skip
    assert low <= alpha and k / arms <= alpha
    assert naive.sum() > 3 * max(k, 1)
