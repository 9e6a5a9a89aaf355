"""Writes tests/vectors/anytime_v1.json: frozen expected values for the anytime-valid statistics
of evaluator.stats, computed independently of it. The rate limit's e-value is integrated
numerically (scipy.integrate.quad) and agreed with its closed form (betaln + log betaincc); the
sequential SRM Bayes factor is summed as rising factorials (no cancellation) and agreed with
the lgamma closed form and with scipy's beta-binomial / Dirichlet-multinomial likelihood
ratios; the rate difference is computed in exact rational arithmetic and the stratified test
from the raw values, both fed to generate_stats' integrated normal mixture and root-found
radius, agreed with the closed forms. The script refuses to write when two computations
disagree, or when a boolean outcome sits so close to its threshold that rounding could flip
it. It deliberately does not import evaluator.stats, the code under test.

Run: python -m tests.vectors.generate_anytime [--check]

--check exits 1 if the file differs from what the script computes today by more than the
computation allows (generate_stats.differences: structure, counts, labels and booleans
exactly, an arm's sums within their summation bound, other floats within ROUNDED_RTOL).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from scipy import integrate
from scipy import special as spf
from scipy import stats as sps

from tests.vectors.generate_stats import (
    EPS,
    TOLERANCE,
    agree,
    arm,
    bernoulli,
    build_vectors,
    log_mixture_closed,
    log_mixture_numeric,
    mean_var,
    num,
    radius_closed,
    radius_numeric,
    render_vectors,
    rho2_for,
    write_or_check,
)

OUT = Path(__file__).with_name("anytime_v1.json")
SPEC = " ".join(
    [
        "anytime v1. Non-finite numbers are the strings inf, -inf, nan.",
        "rate_limit: log_e = ln[∫_L^1 θ^k (1−θ)^(n−k) π(θ) dθ / (L^k (1−L)^(n−k))], π the"
        " Beta(a, b) with a + b = max(2, 1/L), a/(a + b) = min(3L, (1 + L)/2) truncated to"
        " (L, 1] and renormalised; p = min(1, e^−log_e), breach = p ≤ α; n = 0 gives log_e 0;"
        " a posterior tail S(L; a + k, b + n − k) below float64's least subnormal gives"
        " log_e −inf, p 1.",
        "srm_sequential: log BF = Σ over splits of lnΓ(A) − lnΓ(A + n) + Σ_i [lnΓ(Aθ_i + x_i) −"
        " lnΓ(Aθ_i) − x_i ln θ_i] over arms with w_i > 0, θ_i = w_i/Σw, A = concentration; rows"
        " in an arm of weight 0 or without a weight give inf; p = min(1, e^−log BF), mismatch ="
        " p ≤ α; expected = n·w_i/Σw of the last split.",
        "Boundary of rate_difference and stratified (stats v1's sequential): ρ² = (−2lnα +"
        " ln(1 − 2lnα))/tuning_n, M = ∫ exp(θS/σ² − θ²N/(2σ²)) φ(θ; 0, ρ²σ²) dθ with S = N·d,"
        " p = min(1, 1/M), ci = d ± r where M(r) = 1/α, significant = p ≤ α.",
        "rate_difference: strata with both n > 0, h = n_c n_t/(n_c + n_t), w = h/Σh, d ="
        " Σ w (k_t/n_t − k_c/n_c), σ² = N Σ w² (p̃_c(1 − p̃_c)/n_c + p̃_t(1 − p̃_t)/n_t),"
        " p̃ = (k + 1)/(n + 2), N their rows; lift nan, lift_ci (−inf, inf); no such stratum gives"
        " d 0, ci (−inf, inf), p 1, n 0.",
        "stratified: arms (n, total=Σx, total_sq=Σx²), s² ddof=1; strata with both n ≥ 2, the same"
        " w, d = Σ w (x̄_t − x̄_c), σ² = N Σ w² (s_t²/n_t + s_c²/n_c); lift d/x̄_c* with"
        " x̄* = Σ w x̄ and σ² = N(V_t/x̄_c*² + x̄_t*² V_c/x̄_c*⁴), V = Σ w² s²/n, nan when"
        " x̄_c* = 0, lift_ci (−inf, inf) unless that σ² > 0; σ² = 0 gives ci (−inf, inf), p 1;"
        " no stratum with both n ≥ 2 gives the pooled d and lift, ci (−inf, inf), p 1, n all rows.",
    ]
)
SECTIONS = ["rate_limit", "srm_sequential", "rate_difference", "stratified"]
# ln E by quadrature vs closed form, absolutely (p = e^−ln E: p's relative agreement), on top
# of the closed form's own error (rate_limit_log_atol); the quadrature holds ~1e-13.
LOG_TOLERANCE = 1e-11
LEAST_SUBNORMAL_LOG = math.log(math.ulp(0.0))  # −744.44: ln of float64's smallest positive
LEAST_NORMAL_LOG = math.log(sys.float_info.min)  # −708.40: below it betaincc loses digits
UNDECIDED = 1e-6  # a p within this relative distance of α could flip with rounding: refused


def agree_log(what: str, numeric: float, closed: float, tolerance: float = LOG_TOLERANCE) -> None:
    """A logarithm computed two ways: absolutely (its exponential relatively)."""
    if not abs(numeric - closed) <= tolerance:
        raise SystemExit(f"{what}: numerical {numeric!r} != closed form {closed!r}")


def decided(what: str, p: float, alpha: float) -> bool:
    """p ≤ α, refused when p is so near α that another rounding could decide otherwise."""
    if abs(p - alpha) <= UNDECIDED * alpha:
        raise SystemExit(f"{what}: p {p!r} is too close to alpha {alpha!r} to freeze")
    return p <= alpha


# --- rate_limit -------------------------------------------------------------------------------


def rate_prior(limit: float) -> tuple[float, float]:
    """Beta(a, b) of the rate test's prior, restated: a + b = max(2, 1/limit) and mean
    min(3·limit, (1 + limit)/2)."""
    strength = max(2.0, 1.0 / limit)
    mean = min(3.0 * limit, 0.5 * (1.0 + limit))
    return mean * strength, (1.0 - mean) * strength


def log_tail_integral(a: float, b: float, lo: float) -> float:
    """ln ∫_lo^1 t^(a−1) (1−t)^(b−1) dt by quadrature, the integrand scaled by its maximum on
    [lo, 1] so that nothing underflows (it is e^−10⁴ there for a million rows). a, b > 1: the
    integrand is then a smooth bump (or a decay from lo), and quad is aimed at it with points
    a few widths (or decay lengths) apart."""
    if not (a > 1.0 and b > 1.0 and 0.0 < lo < 1.0):
        raise SystemExit(f"log_tail_integral needs a, b > 1 and 0 < lo < 1: {a!r}, {b!r}, {lo!r}")

    def log_f(t: float) -> float:
        return (a - 1.0) * math.log(t) + (b - 1.0) * math.log1p(-t)

    peak = max((a - 1.0) / (a + b - 2.0), lo)
    width = 1.0 / math.sqrt((a - 1.0) / peak**2 + (b - 1.0) / (1.0 - peak) ** 2)
    slope = (a - 1.0) / peak - (b - 1.0) / (1.0 - peak)  # < 0 when the mode is below lo
    if slope < 0.0:
        width = min(width, -1.0 / slope)
    top = log_f(peak)
    steps = (-30, -10, -3, -1, 0, 1, 3, 10, 30, 100, 300)
    points = sorted({peak + j * width for j in steps if lo < peak + j * width < 1.0})
    value, error = integrate.quad(
        lambda t: math.exp(log_f(t) - top),
        lo,
        1.0,
        points=points or None,
        epsabs=0.0,
        epsrel=1e-13,
        limit=500,
    )
    if not (value > 0.0 and error < 1e-11 * value):
        raise SystemExit(f"quad did not converge: {value!r} ± {error!r}")
    return top + math.log(value)


def log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def log_e_quad(k: int, n: int, limit: float) -> float:
    """ln ∫_limit^1 θ^k (1−θ)^(n−k) π(θ) dθ / (limit^k (1−limit)^(n−k)), π the Beta prior
    truncated to (limit, 1] and renormalised: the ratio of two integrals of Beta kernels, both
    by quadrature (the Beta function's normalisation cancels)."""
    a, b = rate_prior(limit)
    m = n - k
    return (
        log_tail_integral(a + k, b + m, limit)
        - log_tail_integral(a, b, limit)
        - k * math.log(limit)
        - m * math.log1p(-limit)
    )


def log_e_closed(k: int, n: int, limit: float) -> float:
    """ln[B(a + k, b + m) S(limit; a + k, b + m) / (B(a, b) S(limit; a, b))] − k ln limit −
    m ln(1 − limit), S the Beta survival function (scipy's regularized incomplete beta); −inf
    when the posterior tail underflows."""
    a, b = rate_prior(limit)
    m = n - k
    tail = float(spf.betaincc(a + k, b + m, limit))
    if tail == 0.0:
        return -math.inf
    return (
        float(spf.betaln(a + k, b + m))
        + math.log(tail)
        - float(spf.betaln(a, b))
        - math.log(float(spf.betaincc(a, b, limit)))
        - k * math.log(limit)
        - m * math.log1p(-limit)
    )


def rate_limit_log_atol(k: int, n: int, limit: float) -> float:
    """What the closed form (as evaluator.stats computes it) can be expected to hold ln E to,
    absolutely: scipy's betaln(a + k, b + n − k) is a difference of lgamma values once an
    argument passes ~10⁴ (it is 3e-9 off at a million rows, 1.5e-10 at 10⁵), so 4 ulps of
    the lgamma values and of the other terms of the sum."""
    a, b = rate_prior(limit)
    m = n - k
    terms = [
        math.lgamma(a + k),
        math.lgamma(b + m),
        math.lgamma(a + b + n),
        k * math.log(limit),
        m * math.log1p(-limit),
    ]
    return 4.0 * EPS * math.fsum(abs(t) for t in terms)


def rate_limit_case(
    label: str, k: int, n: int, limit: float, alpha: float = 0.01
) -> dict[str, Any]:
    if n == 0:
        # No rows: the integrand is the prior itself, E = 1 exactly.
        agree_log(f"{label}: ln E of no rows", log_e_quad(0, 0, limit), 0.0)
        log_e = 0.0
    else:
        a, b = rate_prior(limit)
        log_e = log_e_quad(k, n, limit)
        log_tail = log_tail_integral(a + k, b + n - k, limit) - log_beta(a + k, b + n - k)
        closed = log_e_closed(k, n, limit)
        if log_tail < LEAST_SUBNORMAL_LOG:
            # The posterior's mass above the limit is not a float64: the code's documented −inf
            # (E itself is positive, e^{log_e} below 1, so p = 1 either way).
            if closed != -math.inf:
                raise SystemExit(f"{label}: tail e^{log_tail:.1f} did not underflow: {closed!r}")
            log_e = -math.inf
        elif log_tail < LEAST_NORMAL_LOG:
            raise SystemExit(f"{label}: the tail e^{log_tail:.1f} is subnormal: pick another case")
        else:
            agree_log(
                f"{label}: ln E", log_e, closed, LOG_TOLERANCE + rate_limit_log_atol(k, n, limit)
            )
    p = min(1.0, math.exp(-log_e))
    return {
        "label": label,
        "failures": k,
        "n": n,
        "limit": limit,
        "alpha": alpha,
        "log_e": num(log_e),
        "p_value": num(p),
        "breach": decided(label, p, alpha),
    }


def rate_limit_cases() -> list[dict[str, Any]]:
    return [
        rate_limit_case("one error in the first row", 1, 1, 0.01),
        rate_limit_case("one error in the first row, alpha 0.05", 1, 1, 0.01, 0.05),
        rate_limit_case("no failures in 10", 0, 10, 0.01),
        rate_limit_case("3 in 100", 3, 100, 0.01),
        rate_limit_case("9 in 300", 9, 300, 0.01),
        rate_limit_case("all of 20 fail", 20, 20, 0.05),
        rate_limit_case("first breach at 500 rows", 14, 500, 0.01),
        rate_limit_case("one failure short of it", 13, 500, 0.01),
        rate_limit_case("at the limit, 100000 rows", 1000, 100_000, 0.01),
        rate_limit_case("no rows", 0, 0, 0.01),
        rate_limit_case("a million rows, no failures", 0, 1_000_000, 0.01),
        rate_limit_case("limit 0.001", 5, 2000, 0.001),
        rate_limit_case("limit 0.001, breach", 12, 2000, 0.001),
        rate_limit_case("limit 0.2", 30, 100, 0.2, 0.05),
        rate_limit_case("limit 0.2, breach", 50, 100, 0.2, 0.001),
        rate_limit_case("limit 0.03", 50, 1000, 0.03, 0.05),
    ]


# --- srm_sequential ---------------------------------------------------------------------------


def live_arms(counts: Mapping[str, int], weights: Mapping[str, float]) -> list[str]:
    return [a for a, w in weights.items() if w > 0.0]


def lgamma_terms(counts: Mapping[str, int], weights: Mapping[str, float], a: float) -> list[float]:
    """The terms of lnΓ(A) − lnΓ(A + n) + Σ_i [lnΓ(Aθ_i + x_i) − lnΓ(Aθ_i) − x_i ln θ_i] over
    the arms of positive weight, by math.lgamma."""
    s = math.fsum(weights.values())
    n = sum(counts.values())
    terms = [math.lgamma(a), -math.lgamma(a + n)]
    for arm_name, w in weights.items():
        if w > 0.0:
            t, x = w / s, counts.get(arm_name, 0)
            terms += [math.lgamma(a * t + x), -math.lgamma(a * t), -x * math.log(t)]
    return terms


def rising_factorial_log_bf(
    counts: Mapping[str, int], weights: Mapping[str, float], a: float
) -> float:
    """The same ln BF without cancellation: Γ(c + x)/Γ(c) = Π_{j<x} (c + j), so
    ln BF = Σ_i Σ_{j<x_i} log1p(j/(Aθ_i)) − Σ_{j<n} log1p(j/A) (the ln A terms cancel)."""
    s = math.fsum(weights.values())
    terms = [
        math.log1p(j / (a * w / s))
        for arm_name, w in weights.items()
        if w > 0.0
        for j in range(counts.get(arm_name, 0))
    ]
    terms += [-math.log1p(j / a) for j in range(sum(counts.values()))]
    return math.fsum(terms)


def scipy_log_bf(counts: Mapping[str, int], weights: Mapping[str, float], a: float) -> float:
    """Dirichlet-multinomial over multinomial (beta-binomial over binomial for two arms: the
    multinomial coefficients cancel), by scipy.stats."""
    live = live_arms(counts, weights)
    s = math.fsum(weights[x] for x in live)
    theta = [weights[x] / s for x in live]
    xs = [counts.get(x, 0) for x in live]
    n = sum(xs)
    if len(live) == 2:
        return float(
            sps.betabinom.logpmf(xs[0], n, a * theta[0], a * theta[1])
            - sps.binom.logpmf(xs[0], n, theta[0])
        )
    return float(
        sps.dirichlet_multinomial.logpmf(xs, [a * t for t in theta], n)
        - sps.multinomial.logpmf(xs, n, theta)
    )


def split_is_informative(counts: Mapping[str, int], weights: Mapping[str, float]) -> bool:
    """Rows over at least two arms of positive weight: otherwise the factor is identically 1."""
    return sum(counts.values()) > 0 and len(live_arms(counts, weights)) >= 2


def split_is_impossible(counts: Mapping[str, int], weights: Mapping[str, float]) -> bool:
    """Rows in an arm the split gives no traffic: BF = ∞."""
    return any(x > 0 and weights.get(a, 0.0) == 0.0 for a, x in counts.items())


def srm_log_bf_atol(case: Mapping[str, Any]) -> float:
    """What the lgamma closed form (as evaluator.stats computes it) can be expected to hold:
    lgamma values of up to ~10⁶ cancel to a ln BF near 0, each carrying an ulp or so of
    itself, so 4 ulps of Σ|terms| absolutely, summed over the splits."""
    a = case["concentration"]
    return math.fsum(
        4.0 * EPS * math.fsum(abs(t) for t in lgamma_terms(s["observed"], s["weights"], a))
        for s in case["splits"]
        if split_is_informative(s["observed"], s["weights"])
    )


def srm_sequential_case(
    label: str,
    splits: Sequence[tuple[dict[str, int], dict[str, float]]],
    alpha: float = 0.01,
    concentration: float = 10_000.0,
) -> dict[str, Any]:
    floats = [(counts, {a: float(w) for a, w in weights.items()}) for counts, weights in splits]
    rows = [{"observed": counts, "weights": weights} for counts, weights in floats]
    atol = srm_log_bf_atol({"splits": rows, "concentration": concentration})
    parts: list[float] = []
    for i, (counts, weights) in enumerate(floats):
        if split_is_impossible(counts, weights):
            parts.append(math.inf)
        elif split_is_informative(counts, weights):
            exact = rising_factorial_log_bf(counts, weights, concentration)
            terms = lgamma_terms(counts, weights, concentration)
            bound = 4.0 * EPS * math.fsum(abs(t) for t in terms)
            agree_log(f"{label}[{i}]: lgamma", math.fsum(terms), exact, bound)
            agree_log(
                f"{label}[{i}]: scipy", scipy_log_bf(counts, weights, concentration), exact, bound
            )
            parts.append(exact)
    log_bf = math.inf if math.inf in parts else math.fsum(parts)
    p = min(1.0, math.exp(-log_bf))
    expected: dict[str, float | str] = {}
    if floats:
        counts, weights = floats[-1]
        total, weight_sum = sum(counts.values()), math.fsum(weights.values())
        arms = list(weights) + [a for a in counts if a not in weights]
        expected = {a: num(total * weights.get(a, 0.0) / weight_sum) for a in arms}
    if not (atol < 1e-7):
        raise SystemExit(f"{label}: lgamma cancellation {atol!r} is too large to test")
    return {
        "label": label,
        "splits": rows,
        "alpha": alpha,
        "concentration": concentration,
        "log_bayes_factor": num(log_bf),
        "p_value": num(p),
        "mismatch": decided(label, p, alpha),
        "expected": expected,
    }


HALF = {"a": 50.0, "b": 50.0}
ONE_IN_100 = {"a": 1.0, "b": 99.0}
THIRDS = {"a": 34.0, "b": 33.0, "c": 33.0}


def srm_sequential_cases() -> list[dict[str, Any]]:
    skew = ({"a": 5200, "b": 4800}, HALF)
    return [
        srm_sequential_case("50/50 noise", [({"a": 480, "b": 520}, HALF)]),
        srm_sequential_case("50/50 exact", [({"a": 5000, "b": 5000}, HALF)]),
        srm_sequential_case("50/50 mismatch", [({"a": 9000, "b": 11000}, HALF)]),
        srm_sequential_case("1/99 fine", [({"a": 10, "b": 990}, ONE_IN_100)]),
        srm_sequential_case("1/99, small arm tripled", [({"a": 30, "b": 970}, ONE_IN_100)]),
        srm_sequential_case("1/99 nothing in the small arm", [({"a": 0, "b": 2000}, ONE_IN_100)]),
        srm_sequential_case("three arms fine", [({"a": 340, "b": 330, "c": 330}, THIRDS)]),
        srm_sequential_case(
            "three arms mismatch", [({"a": 10500, "b": 9750, "c": 9750}, THIRDS)], alpha=0.05
        ),
        srm_sequential_case(
            "three splits",
            [
                ({"a": 480, "b": 520}, HALF),
                ({"a": 100, "b": 900}, {"a": 10.0, "b": 90.0}),
                ({"a": 400, "b": 310, "c": 290}, THIRDS),
            ],
        ),
        srm_sequential_case("one skew split", [skew]),
        srm_sequential_case("four skew splits add up", [skew] * 4),
        srm_sequential_case(
            "weight 0 with rows", [({"a": 10, "b": 10, "c": 1}, {"a": 1.0, "b": 1.0, "c": 0.0})]
        ),
        srm_sequential_case(
            "rows in an arm without weight, then a fine split",
            [({"a": 10, "b": 10, "x": 1}, HALF), ({"a": 500, "b": 500}, HALF)],
        ),
        srm_sequential_case(
            "weight 0 without rows",
            [({"a": 480, "b": 520, "c": 0}, {"a": 1.0, "b": 1.0, "c": 0.0})],
        ),
        srm_sequential_case(
            "a single-arm split carries nothing",
            [({"a": 700}, {"a": 1.0}), ({"a": 480, "b": 520}, HALF)],
        ),
        srm_sequential_case("no splits", []),
        srm_sequential_case("no rows", [({"a": 0, "b": 0}, HALF)]),
        srm_sequential_case(
            "concentration 100", [({"a": 560, "b": 440}, HALF)], alpha=0.05, concentration=100.0
        ),
        srm_sequential_case(
            "concentration 1e5, 60000 rows",
            [({"a": 20_400, "b": 19_800, "c": 19_800}, THIRDS)],
            concentration=1e5,
        ),
    ]


# --- rate_difference --------------------------------------------------------------------------

Stratum = tuple[tuple[int, int], tuple[int, int]]


def rate_difference_exact(strata: Sequence[Stratum]) -> tuple[Fraction, Fraction, int]:
    """(d, Var d̂, N) in exact rational arithmetic, over the strata with rows in both arms."""
    used = [(c, t) for c, t in strata if c[1] > 0 and t[1] > 0]
    h = [Fraction(nc * nt, nc + nt) for (_, nc), (_, nt) in used]
    h_sum = sum(h, Fraction(0))
    effect, var = Fraction(0), Fraction(0)
    for hs, ((kc, nc), (kt, nt)) in zip(h, used, strict=True):
        w = hs / h_sum
        pc, pt = Fraction(kc + 1, nc + 2), Fraction(kt + 1, nt + 2)
        effect += w * (Fraction(kt, nt) - Fraction(kc, nc))
        var += w * w * (pc * (1 - pc) / nc + pt * (1 - pt) / nt)
    return effect, var, sum(nc + nt for (_, nc), (_, nt) in used)


def agresti_caffo_sigma2(strata: Sequence[Stratum]) -> float:
    """σ² = N·Σ w_s² (p̃c(1−p̃c)/n_c + p̃t(1−p̃t)/n_t), p̃ = (k+1)/(n+2), CMH weights, over the
    strata with rows in both arms (exactly, then rounded once)."""
    _, var, n = rate_difference_exact(strata)
    return float(n * var)


def boundary(
    label: str, d: float, sigma2: float, n: int, alpha: float, tuning_n: float
) -> tuple[float, tuple[float, float], bool]:
    """(p, ci, significant) of the normal-mixture boundary: M by quadrature and r by root-finding
    (generate_stats), each agreed with its closed form."""
    rho2 = rho2_for(alpha, tuning_n)
    log_m = log_mixture_numeric(d, sigma2, n, rho2)
    agree_log(f"{label}: ln M", log_m, log_mixture_closed(d, sigma2, n, rho2), TOLERANCE)
    p = min(1.0, math.exp(-log_m))
    r = radius_numeric(sigma2, n, rho2, alpha)
    agree(f"{label}: radius", r, radius_closed(sigma2, n, rho2, alpha))
    return p, (d - r, d + r), decided(label, p, alpha)


def rate_difference_case(
    label: str, strata: Sequence[Stratum], alpha: float = 0.01, tuning_n: float = 5000.0
) -> dict[str, Any]:
    effect, var, n = rate_difference_exact(strata)
    d = float(effect)
    if n == 0:
        p, ci, significant = 1.0, (-math.inf, math.inf), False
    else:
        p, ci, significant = boundary(label, d, float(n * var), n, alpha, tuning_n)
    return {
        "label": label,
        "strata": [[list(c), list(t)] for c, t in strata],
        "alpha": alpha,
        "tuning_n": tuning_n,
        "rho": num(math.sqrt(rho2_for(alpha, tuning_n))),
        "effect": num(d),
        "ci": [num(x) for x in ci],
        "relative_lift": num(math.nan),
        "lift_ci": [num(-math.inf), num(math.inf)],
        "p_value": num(p),
        "significant": significant,
        "n": n,
    }


def rate_difference_cases() -> list[dict[str, Any]]:
    two = [((3, 1000), (9, 1000)), ((10, 200), (90, 1800))]
    return [
        rate_difference_case("one stratum", [((3, 1000), (9, 1000))]),
        rate_difference_case("one stratum, no difference", [((40, 4000), (35, 3900))]),
        rate_difference_case("none against all", [((0, 1980), (20, 20))]),
        rate_difference_case("no control failures", [((0, 500), (2, 1500))]),
        rate_difference_case("treatment better", [((55, 1000), (20, 1000))]),
        rate_difference_case("large, significant", [((1000, 100_000), (1200, 100_000))]),
        rate_difference_case("two strata", two),
        rate_difference_case(
            "four strata, a ramp",
            [
                ((12, 9500), (2, 500)),
                ((40, 9000), (9, 1000)),
                ((35, 7500), (20, 2500)),
                ((30, 5000), (41, 5000)),
            ],
        ),
        rate_difference_case(
            "strata with an empty arm are left out",
            [((0, 0), (3, 100)), two[0], ((2, 50), (0, 0)), two[1], ((0, 0), (0, 0))],
        ),
        rate_difference_case("no stratum with both arms", [((0, 0), (3, 100)), ((2, 50), (0, 0))]),
        rate_difference_case(
            "equal within splits (Simpson)",
            [((450, 9000), (50, 1000)), ((80, 1000), (720, 9000))],
        ),
        rate_difference_case(
            "alpha 0.05, tuning 1000", [((20, 800), (38, 800))], alpha=0.05, tuning_n=1000.0
        ),
    ]


# --- stratified -------------------------------------------------------------------------------

ValueStratum = tuple[np.ndarray, np.ndarray]


def stratified_case(
    label: str, strata: Sequence[ValueStratum], alpha: float = 0.05, tuning_n: float = 5000.0
) -> dict[str, Any]:
    used = [(c, t) for c, t in strata if c.size >= 2 and t.size >= 2]
    ci = lift_ci = (-math.inf, math.inf)
    p, significant = 1.0, False
    if not used:
        c_all = np.concatenate([c for c, _ in strata])
        t_all = np.concatenate([t for _, t in strata])
        mean_c = float(c_all.mean()) if c_all.size else 0.0
        mean_t = float(t_all.mean()) if t_all.size else 0.0
        d = mean_t - mean_c
        n = c_all.size + t_all.size
        lift = d / mean_c if mean_c != 0.0 else math.nan
    else:
        h = [Fraction(c.size * t.size, c.size + t.size) for c, t in used]
        w = [float(x / sum(h, Fraction(0))) for x in h]
        # Per stratum: (x̄_c, s_c²/n_c, x̄_t, s_t²/n_t), from the raw values.
        moments = []
        for c, t in used:
            (mc, vc), (mt, vt) = mean_var(c), mean_var(t)
            moments.append((mc, vc / c.size, mt, vt / t.size))
        n = sum(c.size + t.size for c, t in used)
        pairs = list(zip(w, moments, strict=True))
        d = math.fsum(ws * (mt - mc) for ws, (mc, _, mt, _) in pairs)
        mean_c = math.fsum(ws * mc for ws, (mc, _, _, _) in pairs)
        mean_t = math.fsum(ws * mt for ws, (_, _, mt, _) in pairs)
        var_c = math.fsum(ws * ws * vc for ws, (_, vc, _, _) in pairs)
        var_t = math.fsum(ws * ws * vt for ws, (_, _, _, vt) in pairs)
        sigma2 = n * (var_c + var_t)
        lift = d / mean_c if mean_c != 0.0 else math.nan
        if sigma2 > 0.0:
            p, ci, significant = boundary(label, d, sigma2, n, alpha, tuning_n)
            if mean_c != 0.0:
                v = var_t / mean_c**2 + mean_t**2 * var_c / mean_c**4
                if v > 0.0:
                    _, lift_ci, _ = boundary(f"{label} lift", lift, n * v, n, alpha, tuning_n)
    return {
        "label": label,
        "strata": [{"control": arm(c), "treatment": arm(t)} for c, t in strata],
        "alpha": alpha,
        "tuning_n": tuning_n,
        "rho": num(math.sqrt(rho2_for(alpha, tuning_n))),
        "effect": num(d),
        "ci": [num(x) for x in ci],
        "relative_lift": num(lift),
        "lift_ci": [num(x) for x in lift_ci],
        "p_value": num(p),
        "significant": significant,
        "n": n,
    }


def stratified_cases() -> list[dict[str, Any]]:
    rng = np.random.default_rng(20240917)
    normal, lognormal = rng.normal, rng.lognormal
    b = bernoulli
    two_normal = [
        (normal(10.0, 2.0, 400), normal(10.3, 2.0, 100)),
        (normal(12.0, 3.0, 150), normal(12.4, 3.0, 450)),
    ]
    return [
        stratified_case("one stratum, binary", [(b(1000, 300), b(1000, 340))]),
        stratified_case("one stratum, normal", [(normal(5.0, 1.0, 60), normal(5.6, 1.5, 90))]),
        stratified_case("two strata, normal", two_normal),
        stratified_case(
            "three strata, lognormal revenue",
            [
                (lognormal(1.0, 1.0, 300), lognormal(1.2, 1.0, 100)),
                (lognormal(1.1, 1.0, 200), lognormal(1.3, 1.0, 200)),
                (lognormal(0.9, 1.0, 100), lognormal(1.1, 1.0, 500)),
            ],
        ),
        stratified_case(
            "Simpson: equal within splits",
            [(b(9000, 4500), b(1000, 500)), (b(1000, 800), b(9000, 7200))],
        ),
        stratified_case(
            "Simpson: reversed within splits",
            [(b(9000, 4500), b(1000, 480)), (b(1000, 800), b(9000, 7020))],
        ),
        stratified_case(
            "strata too small for a variance are left out",
            [
                two_normal[0],
                (np.array([1.0]), normal(10.0, 2.0, 50)),
                (normal(10.0, 2.0, 40), np.zeros(0)),
                two_normal[1],
            ],
        ),
        stratified_case(
            "no stratum with a variance",
            [(np.array([1.0]), b(20, 5)), (b(30, 9), np.zeros(0))],
        ),
        stratified_case(
            "constant arms", [(np.full(20, 2.0), np.full(30, 3.0)), (np.ones(5), np.ones(8))]
        ),
        stratified_case("control mean 0", [(np.zeros(100), b(100, 5)), (np.zeros(50), b(60, 2))]),
        stratified_case(
            "negative values",
            [
                (normal(-1.0, 4.0, 500), normal(-0.4, 4.0, 500)),
                (normal(1.0, 4.0, 300), normal(1.5, 4.0, 100)),
            ],
        ),
        stratified_case(
            "alpha 0.01, tuning 1000",
            [(b(800, 200), b(800, 260)), (b(400, 90), b(1200, 330))],
            alpha=0.01,
            tuning_n=1000.0,
        ),
        stratified_case("alpha 0.2", [(b(500, 100), b(500, 118)), (b(250, 60), b(250, 61))], 0.2),
    ]


BUILDERS: dict[str, Callable[[], list[dict[str, Any]]]] = {
    "rate_limit": rate_limit_cases,
    "srm_sequential": srm_sequential_cases,
    "rate_difference": rate_difference_cases,
    "stratified": stratified_cases,
}


def build() -> dict[str, Any]:
    return build_vectors(SPEC, SECTIONS, BUILDERS)


def render() -> str:
    return render_vectors(build(), SECTIONS)


def main(argv: list[str]) -> int:
    return write_or_check(OUT, render(), "tests.vectors.generate_anytime", argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
