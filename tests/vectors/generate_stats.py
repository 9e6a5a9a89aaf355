"""Writes tests/vectors/stats_v1.json: frozen expected values for evaluator.stats, computed
independently of it. The sequential test's mixture martingale is integrated numerically
(scipy.integrate.quad) and its radius found by root-finding (scipy.optimize.brentq); the script
refuses to write if either disagrees with the closed form by more than 1e-9 relative. Welch, SRM
and Wilson come from scipy.stats; Holm from a direct (quadratic) reading of its definition. It
deliberately does not import evaluator.stats, the code under test.

Run: python -m tests.vectors.generate_stats [--check]

--check exits 1 if the file differs from what the script computes today by more than the
computation allows: structure, counts, labels and booleans exactly, floats within ``differences``'
tolerances (another CPU's summation order moves the last digits; the file stays frozen).
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import integrate, optimize
from scipy import stats as sps

OUT = Path(__file__).with_name("stats_v1.json")
SPEC = (
    "stats v1. Arms are (n, total=Σx, total_sq=Σx²); s² has ddof=1. "
    "sequential: d = x̄_t − x̄_c, N = n_c + n_t, σ² = N(s_c²/n_c + s_t²/n_t), "
    "ρ² = (−2lnα + ln(1 − 2lnα))/tuning_n, M = ∫ exp(θS/σ² − θ²N/(2σ²)) φ(θ; 0, ρ²σ²) dθ with "
    "S = N·d, p = min(1, 1/M), ci = d ± r where M(r) = 1/α; relative lift d/x̄_c with the same "
    "boundary at σ² = N(s_t²/(n_t x̄_c²) + x̄_t² s_c²/(n_c x̄_c⁴)); an arm with n < 2 or σ² = 0 gives "
    "ci (−inf, inf), p 1; x̄_c = 0 gives lift nan; lift_ci (−inf, inf) when its variance is not "
    "positive. welch: scipy.stats.ttest_ind(equal_var=False) p and CI at 1 − α; n < 2 or se = 0 "
    "gives p 1, CI (−inf, inf). srm: scipy.stats.chisquare over arms of weight > 0; observations "
    "on an arm of weight 0 give χ² inf, p 0; total 0 gives p 1; mismatch is p < threshold. "
    "holm: p̃_(i) = min(1, max_{j≤i} (m−j+1) p_(j)). wilson: binomtest proportion_ci "
    "method='wilson'; n = 0 gives (0, 1). Non-finite numbers are the strings inf, -inf, nan."
)
SECTIONS = ["sequential", "welch", "srm", "holm", "wilson"]
TOLERANCE = 1e-9  # closed form vs numerical integration / root-finding, relative
# --check, for a value rounded by num(): an upstream change of a few ulps can flip the 12th
# significant digit, i.e. up to 1e-11 relative (a mantissa of 1.00000000000); 2e-11 is that
# one digit with room for the binary representation of both.
ROUNDED_RTOL = 2e-11
EPS = float(np.finfo(np.float64).eps)


def num(x: float) -> float | str:
    """An expected value: 12 significant digits, so a last-bit change in scipy or the platform
    does not fail --check (the tests compare to 1e-9). JSON has no inf/nan: those become strings
    that float() reads back."""
    return float(f"{x:.12g}") if math.isfinite(x) else str(x)


def arm(values: np.ndarray) -> dict[str, Any]:
    return {"n": int(values.size), "total": float(values.sum()), "total_sq": float(values @ values)}


def mean_var(values: np.ndarray) -> tuple[float, float]:
    """From the raw values, not the sums; checked against the sums formula the code uses."""
    n = values.size
    mean = float(values.mean()) if n else 0.0
    var = float(values.var(ddof=1)) if n >= 2 else 0.0
    if n >= 2:
        s = arm(values)
        from_sums = max(0.0, (s["total_sq"] - s["total"] ** 2 / n) / (n - 1))
        if not math.isclose(var, from_sums, rel_tol=1e-11, abs_tol=1e-15):
            raise SystemExit(f"variance from sums is ill-conditioned: {var!r} vs {from_sums!r}")
    return mean, var


# --- sequential: numerical mixture ------------------------------------------------------------


def rho2_for(alpha: float, tuning_n: float) -> float:
    two_log = -2.0 * math.log(alpha)
    return (two_log + math.log(two_log + 1.0)) / tuning_n


def log_mixture_numeric(d: float, sigma2: float, n: int, rho2: float) -> float:
    """ln ∫ LR_θ(S) φ(θ; 0, τ²) dθ, S = N·d, τ² = ρ²σ², LR_θ the Gaussian likelihood ratio of
    S ~ N(Nθ, Nσ²) against S ~ N(0, Nσ²). Integrated on a log scale (M reaches e^700)."""
    s = n * d
    tau2 = rho2 * sigma2

    def log_integrand(theta: float) -> float:
        log_lr = theta * s / sigma2 - theta * theta * n / (2.0 * sigma2)
        log_prior = -theta * theta / (2.0 * tau2) - 0.5 * math.log(2.0 * math.pi * tau2)
        return log_lr + log_prior

    # Only to aim quad at the bump: the integrand's peak and width (a log-quadratic in θ).
    precision = n / sigma2 + 1.0 / tau2
    peak = (s / sigma2) / precision
    width = 1.0 / math.sqrt(precision)
    top = log_integrand(peak)
    value, error = integrate.quad(
        lambda t: math.exp(log_integrand(t) - top),
        peak - 60.0 * width,
        peak + 60.0 * width,
        points=[peak],
        epsabs=0.0,
        epsrel=1e-13,
        limit=200,
    )
    if not error < 1e-11 * value:
        raise SystemExit(f"quad did not converge: {value!r} ± {error!r}")
    return top + math.log(value)


def log_mixture_closed(d: float, sigma2: float, n: int, rho2: float) -> float:
    x = n * rho2
    return n * n * rho2 * d * d / (2.0 * sigma2 * (x + 1.0)) - 0.5 * math.log(x + 1.0)


def radius_numeric(sigma2: float, n: int, rho2: float, alpha: float) -> float:
    """The |d| at which the numerical mixture reaches 1/α."""

    def excess(r: float) -> float:
        return log_mixture_numeric(r, sigma2, n, rho2) + math.log(alpha)

    hi = math.sqrt(sigma2 / n)
    while excess(hi) < 0.0:
        hi *= 2.0
    root = optimize.brentq(excess, 0.0, hi, xtol=1e-300, rtol=4 * np.finfo(float).eps, maxiter=500)
    return float(root)


def radius_closed(sigma2: float, n: int, rho2: float, alpha: float) -> float:
    x = n * rho2
    return math.sqrt(sigma2 * 2 * (x + 1) / (n * n * rho2) * math.log(math.sqrt(x + 1) / alpha))


def agree(what: str, numeric: float, closed: float) -> None:
    if not math.isclose(numeric, closed, rel_tol=TOLERANCE, abs_tol=0.0):
        raise SystemExit(f"{what}: numerical {numeric!r} != closed form {closed!r}")


def sequential_case(
    label: str, c: np.ndarray, t: np.ndarray, alpha: float = 0.05, tuning_n: float = 5000.0
) -> dict[str, Any]:
    (mc, vc), (mt, vt) = mean_var(c), mean_var(t)
    n = c.size + t.size
    d = mt - mc
    rho2 = rho2_for(alpha, tuning_n)
    lift = d / mc if mc != 0.0 else math.nan
    ci = lift_ci = (-math.inf, math.inf)
    p = 1.0
    degenerate = c.size < 2 or t.size < 2
    sigma2 = 0.0 if degenerate else n * (vc / c.size + vt / t.size)
    if sigma2 > 0.0:
        log_m = log_mixture_numeric(d, sigma2, n, rho2)
        # M = 1/p is what is frozen, so its relative error is the test: compare on the log scale.
        if abs(log_m - log_mixture_closed(d, sigma2, n, rho2)) > TOLERANCE:
            raise SystemExit(f"{label}: ln M numerical {log_m!r} != closed form")
        p = min(1.0, math.exp(-log_m))
        r = radius_numeric(sigma2, n, rho2, alpha)
        agree(f"{label}: radius", r, radius_closed(sigma2, n, rho2, alpha))
        ci = (d - r, d + r)
        if mc != 0.0:
            v = vt / (t.size * mc**2) + mt**2 * vc / (c.size * mc**4)
            if v > 0.0:
                r_lift = radius_numeric(n * v, n, rho2, alpha)
                agree(f"{label}: lift radius", r_lift, radius_closed(n * v, n, rho2, alpha))
                lift_ci = (lift - r_lift, lift + r_lift)
    return {
        "label": label,
        "control": arm(c),
        "treatment": arm(t),
        "alpha": alpha,
        "tuning_n": tuning_n,
        "rho": num(math.sqrt(rho2)),
        "effect": num(d),
        "ci": [num(x) for x in ci],
        "relative_lift": num(lift),
        "lift_ci": [num(x) for x in lift_ci],
        "p_value": num(p),
        "significant": p <= alpha,
        "n": n,
    }


def bernoulli(n: int, k: int) -> np.ndarray:
    return np.concatenate([np.ones(k), np.zeros(n - k)])


def sequential_cases() -> list[dict[str, Any]]:
    rng = np.random.default_rng(20240601)
    normal = rng.normal
    return [
        sequential_case("binary borderline", bernoulli(1000, 300), bernoulli(1000, 340)),
        sequential_case("binary at tuning_n", bernoulli(2500, 750), bernoulli(2500, 820)),
        sequential_case("binary large", bernoulli(20000, 6000), bernoulli(20000, 6300)),
        sequential_case("binary worse", bernoulli(4000, 1300), bernoulli(4000, 1100)),
        sequential_case("binary unequal n", bernoulli(300, 60), bernoulli(900, 230)),
        sequential_case("normal unequal n", normal(10.0, 2.0, 50), normal(10.8, 3.0, 80)),
        sequential_case("normal tiny effect", normal(5.0, 1.0, 3000), normal(5.01, 1.0, 3000)),
        sequential_case("lognormal revenue", rng.lognormal(1, 1, 300), rng.lognormal(1.3, 1, 500)),
        sequential_case("huge effect", normal(0.0, 1.0, 5000) + 1.0, normal(2.0, 1.0, 5000)),
        sequential_case("tiny n", np.array([1.0, 3.0]), np.array([2.0, 5.0, 9.0])),
        sequential_case(
            "alpha 0.01, tuning 1000",
            bernoulli(800, 200),
            bernoulli(800, 260),
            alpha=0.01,
            tuning_n=1000.0,
        ),
        sequential_case("alpha 0.2", bernoulli(500, 100), bernoulli(500, 118), alpha=0.2),
        sequential_case("control mean 0", np.zeros(100), bernoulli(100, 5)),
        sequential_case("treatment constant 0", bernoulli(100, 5), np.zeros(100)),
        sequential_case("control n 1", np.array([1.0]), bernoulli(50, 20)),
        sequential_case("both empty", np.zeros(0), np.zeros(0)),
        sequential_case("both constant, different", np.zeros(40), np.ones(40)),
    ]


# --- welch ------------------------------------------------------------------------------------


def welch_case(label: str, c: np.ndarray, t: np.ndarray, alpha: float = 0.05) -> dict[str, Any]:
    (mc, vc), (mt, vt) = mean_var(c), mean_var(t)
    d = mt - mc
    p, ci = 1.0, (-math.inf, math.inf)
    if c.size >= 2 and t.size >= 2 and vc / c.size + vt / t.size > 0.0:
        with warnings.catch_warnings():
            # scipy flags a constant arm as "nearly identical data"; that case is on purpose.
            warnings.simplefilter("ignore", RuntimeWarning)
            res = sps.ttest_ind(t, c, equal_var=False)
        p = float(res.pvalue)
        lo, hi = res.confidence_interval(1.0 - alpha)
        ci = (float(lo), float(hi))
        from_stats = sps.ttest_ind_from_stats(
            mt, math.sqrt(vt), t.size, mc, math.sqrt(vc), c.size, equal_var=False
        )
        agree(f"{label}: p from stats", float(from_stats.pvalue), p)
    return {
        "label": label,
        "control": arm(c),
        "treatment": arm(t),
        "alpha": alpha,
        "effect": num(d),
        "p_value": num(p),
        "ci": [num(x) for x in ci],
    }


def welch_cases() -> list[dict[str, Any]]:
    rng = np.random.default_rng(7)
    normal = rng.normal
    return [
        welch_case("equal n, normal", normal(0.0, 1.0, 40), normal(0.5, 1.0, 40)),
        welch_case("unequal n and variance", normal(3.0, 1.0, 15), normal(3.2, 4.0, 120)),
        welch_case("tiny n", np.array([1.0, 2.0]), np.array([4.0, 7.0])),
        welch_case("binary", bernoulli(1000, 300), bernoulli(1000, 345)),
        welch_case("negative effect, alpha 0.01", normal(10, 2, 200), normal(9.4, 2, 180), 0.01),
        welch_case("alpha 0.2", normal(0.0, 1.0, 25), normal(0.1, 1.0, 30), 0.2),
        welch_case("identical samples", np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0])),
        welch_case("control constant", np.full(30, 2.0), normal(2.3, 0.5, 30)),
        welch_case("large n", normal(100.0, 15.0, 50000), normal(100.2, 15.0, 50000)),
        welch_case("lognormal", rng.lognormal(0.0, 1.5, 400), rng.lognormal(0.1, 1.5, 350)),
        welch_case("control n 1", np.array([3.0]), normal(3.0, 1.0, 10)),
        welch_case("both constant", np.full(10, 1.0), np.full(12, 2.0)),
    ]


# --- srm --------------------------------------------------------------------------------------


def srm_case(
    label: str, observed: dict[str, int], weights: dict[str, float], threshold: float = 0.001
) -> dict[str, Any]:
    arms = list(weights) + [a for a in observed if a not in weights]
    counts = [observed.get(a, 0) for a in arms]
    total = sum(counts)
    wsum = math.fsum(weights.values())
    expected = [total * weights.get(a, 0.0) / wsum for a in arms]
    if total == 0:
        chi2, p = 0.0, 1.0
    elif any(o > 0 and e == 0.0 for o, e in zip(counts, expected, strict=True)):
        chi2, p = math.inf, 0.0
    else:
        live = [(o, e) for o, e in zip(counts, expected, strict=True) if e > 0.0]
        if len(live) < 2:
            chi2, p = 0.0, 1.0
        else:
            res = sps.chisquare([o for o, _ in live], [e for _, e in live])
            chi2, p = float(res.statistic), float(res.pvalue)
    return {
        "label": label,
        "observed": observed,
        "weights": weights,
        "threshold": threshold,
        "chi2": num(chi2),
        "p_value": num(p),
        "mismatch": p < threshold,
        "expected": {a: num(e) for a, e in zip(arms, expected, strict=True)},
    }


def srm_cases() -> list[dict[str, Any]]:
    return [
        srm_case("balanced 50/50", {"a": 5000, "b": 5000}, {"a": 50.0, "b": 50.0}),
        srm_case("noise 50/50", {"a": 5060, "b": 4940}, {"a": 50.0, "b": 50.0}),
        srm_case("mismatch 50/50", {"a": 5300, "b": 4700}, {"a": 50.0, "b": 50.0}),
        srm_case("90/10 fine", {"control": 9012, "t": 988}, {"control": 90.0, "t": 10.0}),
        srm_case(
            "three arms", {"a": 3400, "b": 3290, "c": 3310}, {"a": 34.0, "b": 33.0, "c": 33.0}
        ),
        srm_case(
            "four arms, mismatch",
            {"a": 2600, "b": 2400, "c": 2500, "d": 2200},
            {"a": 25.0, "b": 25.0, "c": 25.0, "d": 25.0},
        ),
        srm_case(
            "weights not normalised", {"a": 260, "b": 240, "c": 500}, {"a": 1, "b": 1, "c": 2}
        ),
        srm_case("looser threshold", {"a": 5150, "b": 4850}, {"a": 50.0, "b": 50.0}, 0.01),
        srm_case("weight 0, no traffic", {"a": 510, "b": 490, "c": 0}, {"a": 50, "b": 50, "c": 0}),
        srm_case("weight 0 with traffic", {"a": 510, "b": 490, "c": 3}, {"a": 50, "b": 50, "c": 0}),
        srm_case("arm not configured", {"a": 500, "b": 500, "x": 1}, {"a": 50.0, "b": 50.0}),
        srm_case("arm never observed", {"a": 20}, {"a": 50.0, "b": 50.0}),
        srm_case("total 0", {"a": 0, "b": 0}, {"a": 50.0, "b": 50.0}),
        srm_case("single arm", {"a": 1234}, {"a": 100.0}),
        srm_case("tiny counts", {"a": 3, "b": 1}, {"a": 50.0, "b": 50.0}),
    ]


# --- holm -------------------------------------------------------------------------------------


def holm_reference(p: dict[str, float]) -> dict[str, float]:
    """p̃_i = min(1, max over p_j <= p_i of (m − r_j + 1) p_j), r_j = 1 + #{k: p_k < p_j}:
    the definition read directly, O(m²), independent of sort order and ties."""
    m = len(p)
    factor = {j: m - sum(1 for v in p.values() if v < pj) for j, pj in p.items()}
    return {
        i: min(1.0, max(factor[j] * pj for j, pj in p.items() if pj <= pi)) for i, pi in p.items()
    }


def holm_cases() -> list[dict[str, Any]]:
    rng = np.random.default_rng(3)
    raw: list[tuple[str, dict[str, float]]] = [
        ("empty", {}),
        ("single", {"a": 0.03}),
        # Wikipedia, "Holm–Bonferroni method", example: rejects H1 and H4 at α = 0.05.
        ("wikipedia", {"H1": 0.01, "H2": 0.04, "H3": 0.03, "H4": 0.005}),
        ("monotone step", {"a": 0.001, "b": 0.002, "c": 0.1}),
        ("ties", {"a": 0.02, "b": 0.02, "c": 0.02, "d": 0.5}),
        ("cap at 1", {"a": 0.4, "b": 0.6, "c": 0.9}),
        ("zeros and ones", {"a": 0.0, "b": 1.0, "c": 0.0}),
        ("one tiny", {"a": 1e-12, "b": 0.2}),
        ("random 10", {f"h{i}": float(v) for i, v in enumerate(rng.uniform(0, 0.2, 10))}),
        ("random 6", {f"h{i}": float(v) for i, v in enumerate(rng.uniform(0, 1, 6))}),
    ]
    cases = []
    for label, p in raw:
        adjusted = holm_reference(p)
        if label == "wikipedia":
            textbook = {"H1": 0.03, "H2": 0.06, "H3": 0.06, "H4": 0.02}
            if any(not math.isclose(adjusted[k], v, rel_tol=1e-12) for k, v in textbook.items()):
                raise SystemExit(f"holm reference disagrees with the textbook: {adjusted}")
        cases.append(
            {"label": label, "p_values": p, "adjusted": {k: num(v) for k, v in adjusted.items()}}
        )
    return cases


# --- wilson -----------------------------------------------------------------------------------


def wilson_case(k: int, n: int, confidence: float = 0.95) -> dict[str, Any]:
    if n == 0:
        lo, hi = 0.0, 1.0
    else:
        ci = sps.binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
        lo, hi = float(ci.low), float(ci.high)
    return {"successes": k, "n": n, "confidence": confidence, "low": num(lo), "high": num(hi)}


def wilson_cases() -> list[dict[str, Any]]:
    return [
        wilson_case(0, 0),
        wilson_case(0, 1),
        wilson_case(1, 1),
        wilson_case(0, 10),
        wilson_case(10, 10),
        wilson_case(5, 10),
        wilson_case(30, 100),
        wilson_case(3, 1000),
        wilson_case(500, 1000, 0.99),
        wilson_case(1, 20, 0.90),
        wilson_case(12345, 100000),
        wilson_case(2, 7, 0.5),
        wilson_case(999_999, 1_000_000, 0.999),
    ]


BUILDERS: dict[str, Callable[[], list[dict[str, Any]]]] = {
    "sequential": sequential_cases,
    "welch": welch_cases,
    "srm": srm_cases,
    "holm": holm_cases,
    "wilson": wilson_cases,
}


def build_vectors(
    spec: str, sections: Sequence[str], builders: Mapping[str, Callable[[], list[dict[str, Any]]]]
) -> dict[str, Any]:
    """A vector file's content: its spec, spec_version 1, and every section's cases."""
    data: dict[str, Any] = {"spec": spec, "spec_version": 1}
    for section in sections:
        data[section] = builders[section]()
    return data


def render_vectors(data: Mapping[str, Any], sections: Sequence[str]) -> str:
    """A vector file's exact text: one case per line, so a diff shows which vector changed."""
    lines = ["{"]
    lines.append(f' "spec": {json.dumps(data["spec"], ensure_ascii=False)},')
    lines.append(f' "spec_version": {data["spec_version"]},')
    for i, section in enumerate(sections):
        rows = [json.dumps(case, ensure_ascii=False, allow_nan=False) for case in data[section]]
        lines.append(f' "{section}": [')
        lines.append(",\n".join(f"  {row}" for row in rows))
        lines.append(" ]," if i < len(sections) - 1 else " ]")
    lines.append("}")
    return "\n".join(lines) + "\n"


def build() -> dict[str, Any]:
    return build_vectors(SPEC, SECTIONS, BUILDERS)


def render() -> str:
    return render_vectors(build(), SECTIONS)


def _sums_differ(path: str, frozen: dict[str, Any], fresh: dict[str, Any]) -> list[str]:
    """An arm's n exactly; Σx and Σx² as sums of n float64 terms. numpy sums Σx pairwise and
    Σx² (a dot product) in OpenBLAS, whose kernel and block sizes depend on the CPU. Any
    summation order is within (n − 1)·u·Σ|x| of the exact sum (u = eps/2), so two orders are
    within n·eps·Σ|x|; Σ|x²| = Σx², and Σ|x| ≤ √(n·Σx²) (Cauchy–Schwarz)."""
    if set(frozen) != set(fresh) or frozen["n"] != fresh["n"]:
        return [f"{path}: {frozen} != {fresh}"]
    n, sq = fresh["n"], fresh["total_sq"]
    bounds = {"total": n * EPS * math.sqrt(n * sq), "total_sq": n * EPS * sq}
    return [
        f"{path}.{key}: {frozen[key]!r} != {fresh[key]!r} (allowed ±{bound:.3g})"
        for key, bound in bounds.items()
        if abs(frozen[key] - fresh[key]) > bound
    ]


def differences(frozen: Any, fresh: Any, path: str = "") -> list[str]:
    """Where the frozen file and today's computation disagree beyond what the computation
    allows: keys, lengths, ints, bools and strings (labels, "inf"/"nan") exactly; an arm's sums
    within their summation bound; every other float (rounded by num(), or an input) within
    ROUNDED_RTOL."""
    if isinstance(frozen, dict) and isinstance(fresh, dict):
        if list(frozen) != list(fresh):
            return [f"{path}: keys {list(frozen)} != {list(fresh)}"]
        if set(frozen) == {"n", "total", "total_sq"}:
            return _sums_differ(path, frozen, fresh)
        return [d for k in frozen for d in differences(frozen[k], fresh[k], f"{path}.{k}")]
    if isinstance(frozen, list) and isinstance(fresh, list):
        if len(frozen) != len(fresh):
            return [f"{path}: {len(frozen)} items != {len(fresh)}"]
        return [
            d for i, (a, b) in enumerate(zip(frozen, fresh, strict=True))
            for d in differences(a, b, f"{path}[{i}]")
        ]  # fmt: skip
    if isinstance(frozen, float) and isinstance(fresh, float):
        if math.isclose(frozen, fresh, rel_tol=ROUNDED_RTOL, abs_tol=0.0):
            return []
        return [f"{path}: {frozen!r} != {fresh!r} (allowed rel {ROUNDED_RTOL:g})"]
    # Exact: ints, bools, strings, None; and a type change (1 vs 1.0, True vs 1) is a change.
    if type(frozen) is not type(fresh) or frozen != fresh:
        return [f"{path}: {frozen!r} != {fresh!r}"]
    return []


def write_or_check(out: Path, text: str, module: str, argv: Sequence[str]) -> int:
    """Write ``text`` to ``out``, or with ``--check`` compare it with the frozen file within
    what the computation allows (``differences``): 0 when it matches, else 1."""
    if "--check" in argv:
        if not out.exists():
            print(f"{out} is missing: run python -m {module}")
            return 1
        found = differences(json.loads(out.read_text(encoding="utf-8")), json.loads(text))
        if found:
            print(f"{out} is out of date: run python -m {module}")
            print("\n".join(found[:20]))
            return 1
        return 0
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}", file=sys.stderr)
    return 0


def main(argv: list[str]) -> int:
    return write_or_check(OUT, render(), "tests.vectors.generate_stats", argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
