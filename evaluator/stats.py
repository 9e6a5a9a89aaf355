"""Pure statistics for the evaluator: sufficient statistics, the always-valid sequential test
(pooled and stratified by split), anytime-valid rate limits and sample-ratio checks, Holm,
Wilson and Thompson allocation, drift of binned distributions (PSI, an anytime-valid two-sample
test); Welch and the fixed-level χ² SRM as one-look references. No
I/O; the policy turns these into decisions."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special as _special
from scipy import stats as _sp

from evaluator.levels import PSI_ACT as PSI_ACT
from evaluator.levels import PSI_WARN as PSI_WARN

__all__ = [
    "ArmStats",
    "RateLimitResult",
    "SequentialDriftResult",
    "SequentialResult",
    "SequentialSrmResult",
    "SrmResult",
    "fixed_horizon_t_test",
    "holm",
    "psi",
    "rate_difference_test",
    "rate_limit_test",
    "rate_rows_needed",
    "sequential_drift",
    "sequential_rho",
    "sequential_srm",
    "sequential_test",
    "srm_test",
    "stratified_sequential_test",
    "thompson_weights",
    "wilson_interval",
]

_UNBOUNDED = (-math.inf, math.inf)


@dataclass(frozen=True)
class ArmStats:
    """Sufficient statistics of one arm's metric: ``count(*), sum(x), sum(x*x)``."""

    n: int
    total: float
    total_sq: float

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError(f"ArmStats.n must be >= 0, got {self.n!r}")
        if not (math.isfinite(self.total) and math.isfinite(self.total_sq)):
            raise ValueError(f"ArmStats sums must be finite, got {self.total!r}, {self.total_sq!r}")

    @classmethod
    def empty(cls) -> ArmStats:
        """No observations: the identity of ``+``."""
        return cls(0, 0.0, 0.0)

    @classmethod
    def from_values(cls, values: Sequence[float] | np.ndarray) -> ArmStats:
        """n = len(x), total = Σx, total_sq = Σx² of a 1-D sequence."""
        x = np.asarray(values, dtype=np.float64)
        if x.ndim != 1:
            raise ValueError(f"from_values needs a 1-D sequence, got shape {x.shape}")
        return cls(int(x.size), float(x.sum()), float(np.dot(x, x)))

    def __add__(self, other: ArmStats) -> ArmStats:
        """Merge two disjoint samples: every field adds (incremental ticks accumulate this way)."""
        if not isinstance(other, ArmStats):
            return NotImplemented
        return ArmStats(self.n + other.n, self.total + other.total, self.total_sq + other.total_sq)

    @property
    def mean(self) -> float:
        """x̄ = total / n; 0.0 when n == 0."""
        return self.total / self.n if self.n > 0 else 0.0

    @property
    def variance(self) -> float:
        """Sample variance s² = (Σx² − (Σx)²/n) / (n − 1), ddof=1; 0.0 when n < 2.

        Only the sums are available, so cancellation can push s² of near-constant data slightly
        below zero: it is clamped at 0.
        """
        if self.n < 2:
            return 0.0
        return max(0.0, (self.total_sq - self.total * self.total / self.n) / (self.n - 1))


@dataclass(frozen=True)
class SequentialResult:
    """One look of the always-valid test of treatment − control (see ``sequential_test``)."""

    effect: float
    ci: tuple[float, float]
    relative_lift: float
    lift_ci: tuple[float, float]
    p_value: float
    significant: bool
    n: int
    alpha: float


def _check_alpha(alpha: float) -> None:
    if not (0.0 < alpha < 1.0):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")


def sequential_rho(alpha: float, tuning_n: float) -> float:
    """Mixture scale ρ for which the normal-mixture boundary is (nearly) tightest at N = tuning_n.

    ρ = sqrt((−2 ln α + ln(−2 ln α + 1)) / tuning_n): one fixed-point step of the exact optimum
    x = ln(1 + x) − 2 ln α for x = Nρ² (the approximate optimum of Waudby-Smith et al. 2023,
    "Time-uniform central limit theory"; the tuning GrowthBook and Eppo document).
    """
    _check_alpha(alpha)
    if not (math.isfinite(tuning_n) and tuning_n > 0):
        raise ValueError(f"tuning_n must be a finite number > 0, got {tuning_n!r}")
    two_log = -2.0 * math.log(alpha)
    return math.sqrt((two_log + math.log(two_log + 1.0)) / tuning_n)


def _radius(sigma2: float, n: int, rho2: float, alpha: float) -> float:
    """Half-width of the normal-mixture confidence sequence; see ``sequential_test``."""
    x = n * rho2
    return math.sqrt(
        sigma2 * 2.0 * (x + 1.0) / (n * n * rho2) * math.log(math.sqrt(x + 1.0) / alpha)
    )


def mean_confidence_sequence(
    n: np.ndarray,
    total: np.ndarray,
    sumsq: np.ndarray,
    alpha: float = 0.05,
    tuning_n: float = 5000.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Always-valid interval of ONE arm's mean, at each look (arrays of cumulative n, Σx, Σx²):
    x̄ ± r with r = ``_radius`` at σ² = s² (the sample variance) and ρ = ``sequential_rho`` —
    the one-sample normal-mixture confidence sequence of ``sequential_test`` (Waudby-Smith et
    al. 2023), so it covers the arm's true mean at every look simultaneously with probability ≥
    1 − α (asymptotically). nan where n < 2 or s² = 0 (no variance estimate: unbounded)."""
    _check_alpha(alpha)
    rho2 = sequential_rho(alpha, tuning_n) ** 2
    n = np.asarray(n, dtype=np.float64)
    total, sumsq = np.asarray(total, dtype=np.float64), np.asarray(sumsq, dtype=np.float64)
    ok = n >= 2
    safe = np.where(ok, n, 2.0)
    mean = total / safe
    var = np.where(ok, np.maximum(sumsq - total * mean, 0.0) / (safe - 1.0), 0.0)
    x = safe * rho2
    radius = np.sqrt(
        var * 2.0 * (x + 1.0) / (safe * safe * rho2) * np.log(np.sqrt(x + 1.0) / alpha)
    )
    bounded = ok & (var > 0)
    nan = np.full(n.shape, np.nan)
    return np.where(bounded, mean - radius, nan), np.where(bounded, mean + radius, nan)


def _boundary(
    effect: float, sigma2: float, n: int, rho2: float, alpha: float
) -> tuple[float, float]:
    """(radius r, p = min(1, 1/M)) of the normal-mixture sequence at this look; see
    ``sequential_test`` for both formulas. σ² must be > 0."""
    r = _radius(sigma2, n, rho2, alpha)
    x = n * rho2
    # log M rather than M: strong effects on large N overflow exp().
    log_m = n * n * rho2 * effect * effect / (2.0 * sigma2 * (x + 1.0)) - 0.5 * math.log1p(x)
    return r, (math.exp(-log_m) if log_m > 0.0 else 1.0)


def sequential_test(
    control: ArmStats, treatment: ArmStats, alpha: float = 0.05, tuning_n: float = 5000.0
) -> SequentialResult:
    """Asymptotic always-valid test of d = x̄_t − x̄_c via the normal-mixture confidence sequence.

    With N = n_c + n_t, σ² = N (s_c²/n_c + s_t²/n_t) (so σ²/N = Var d̂) and ρ = sequential_rho:

        r = sqrt( σ² · 2(Nρ² + 1)/(N²ρ²) · ln( sqrt(Nρ² + 1)/α ) ),    ci = d̂ ± r,
        M = exp( N²ρ² d̂² / (2σ²(Nρ² + 1)) ) / sqrt(Nρ² + 1),          p = min(1, 1/M).

    M is the likelihood ratio of the sum S = N d̂ mixed over drifts θ ~ N(0, ρ²σ²); P(sup M ≥
    1/α) ≤ α by Ville's inequality, so ci covers d at every N simultaneously with probability ≥
    1 − α and p ≤ α ⇔ |d̂| ≥ r ⇔ 0 ∉ ci (open). References: Howard, Ramdas, McAuliffe & Sekhon
    (2021), "Time-uniform, nonparametric, nonasymptotic confidence sequences", normal mixture;
    Waudby-Smith et al. (2023), "Time-uniform central limit theory" (validity with plug-in σ²).

    p is valid at this look; the running minimum over looks is the always-valid p-value process.
    Relative lift d̂/x̄_c uses the same boundary with σ² = N·v, v the delta-method variance
    s_t²/(n_t x̄_c²) + x̄_t² s_c²/(n_c x̄_c⁴). Either arm with n < 2 or σ² = 0 gives ci = (−∞, ∞),
    p = 1; a zero control mean gives lift nan; lift_ci is (−∞, ∞) unless v is positive and finite.
    """
    return stratified_sequential_test([(control, treatment)], alpha, tuning_n)


def stratified_sequential_test(
    strata: Sequence[tuple[ArmStats, ArmStats]], alpha: float = 0.05, tuning_n: float = 5000.0
) -> SequentialResult:
    """``sequential_test`` of treatment − control within strata (control, treatment) — one per
    split the experiment ran under — combined, so a trend over time cannot make an effect out
    of a split that changed (Simpson's paradox): with h_s = n_cs·n_ts/(n_cs + n_ts) and
    w_s = h_s/Σh,

        d̂ = Σ w_s (x̄_ts − x̄_cs),    Var d̂ = Σ w_s² (s_ts²/n_ts + s_cs²/n_cs),

    (the Cochran–Mantel–Haenszel weights) fed to the same normal-mixture boundary with N the
    rows of the strata used and σ² = N·Var d̂. Within a stratum the split is fixed, so the
    comparison is valid even when earlier data chose the split (a canary's ramp, a bandit's
    re-weighting: Zhang, Janson & Murphy 2020, "Inference for batched bandits"). Strata where
    either arm has n < 2 carry no variance estimate and are left out. One stratum is exactly
    ``sequential_test``. The relative lift uses the weighted means x̄_c* = Σ w_s x̄_cs,
    x̄_t* = Σ w_s x̄_ts and their variances Σ w_s² s²/n in the delta-method formula.
    """
    rho = sequential_rho(alpha, tuning_n)
    rho2 = rho * rho
    used = [(c, t) for c, t in strata if c.n >= 2 and t.n >= 2]
    if not used:
        control = sum((c for c, _ in strata), ArmStats.empty())
        treatment = sum((t for _, t in strata), ArmStats.empty())
        effect = treatment.mean - control.mean
        lift = effect / control.mean if control.mean != 0.0 else math.nan
        return SequentialResult(
            effect, _UNBOUNDED, lift, _UNBOUNDED, 1.0, False, control.n + treatment.n, alpha
        )
    h = [c.n * t.n / (c.n + t.n) for c, t in used]
    h_sum = math.fsum(h)
    w = [x / h_sum for x in h]
    n = sum(c.n + t.n for c, t in used)
    mean_c = math.fsum(ws * c.mean for ws, (c, _) in zip(w, used, strict=True))
    mean_t = math.fsum(ws * t.mean for ws, (_, t) in zip(w, used, strict=True))
    var_c = math.fsum(ws * ws * (c.variance / c.n) for ws, (c, _) in zip(w, used, strict=True))
    var_t = math.fsum(ws * ws * (t.variance / t.n) for ws, (_, t) in zip(w, used, strict=True))
    if len(used) == 1:
        effect = used[0][1].mean - used[0][0].mean
        sigma2 = n * (used[0][0].variance / used[0][0].n + used[0][1].variance / used[0][1].n)
    else:
        effect = math.fsum(ws * (t.mean - c.mean) for ws, (c, t) in zip(w, used, strict=True))
        sigma2 = n * (var_c + var_t)
    lift = effect / mean_c if mean_c != 0.0 else math.nan
    if not sigma2 > 0.0:
        return SequentialResult(effect, _UNBOUNDED, lift, _UNBOUNDED, 1.0, False, n, alpha)

    r, p_value = _boundary(effect, sigma2, n, rho2, alpha)

    lift_ci = _UNBOUNDED
    if mean_c != 0.0:
        # Divided step by step: mean_c**4 underflows to 0 long before mean_c does.
        ratio = mean_t / mean_c
        v = var_t / mean_c / mean_c + ratio * ratio * var_c / mean_c / mean_c
        if 0.0 < v < math.inf:
            r_lift = _radius(n * v, n, rho2, alpha)
            lift_ci = (lift - r_lift, lift + r_lift)

    return SequentialResult(
        effect=effect,
        ci=(effect - r, effect + r),
        relative_lift=lift,
        lift_ci=lift_ci,
        p_value=p_value,
        significant=p_value <= alpha,
        n=n,
        alpha=alpha,
    )


def fixed_horizon_t_test(
    control: ArmStats, treatment: ArmStats, alpha: float = 0.05
) -> tuple[float, float, tuple[float, float]]:
    """Welch's t-test of x̄_t − x̄_c: (effect, two-sided p, (1 − α) CI). Valid at ONE planned look.

    se² = s_c²/n_c + s_t²/n_t, t = d̂/se, ν = se⁴ / ((s_c²/n_c)²/(n_c−1) + (s_t²/n_t)²/(n_t−1))
    (Welch–Satterthwaite), p = 2·P(T_ν > |t|), CI = d̂ ± t_{ν,1−α/2}·se; as
    scipy.stats.ttest_ind_from_stats(equal_var=False). Either n < 2 or se = 0 gives p = 1 and
    CI (−∞, ∞) where scipy gives nan.
    """
    _check_alpha(alpha)
    effect = treatment.mean - control.mean
    if control.n < 2 or treatment.n < 2:
        return effect, 1.0, _UNBOUNDED
    a = control.variance / control.n
    b = treatment.variance / treatment.n
    se2 = a + b
    if not se2 > 0.0:
        return effect, 1.0, _UNBOUNDED
    se = math.sqrt(se2)
    # As shares of se²: the squares of tiny variances would underflow to a zero denominator.
    fa, fb = a / se2, b / se2
    df = 1.0 / (fa * fa / (control.n - 1) + fb * fb / (treatment.n - 1))
    p_value = float(2.0 * _sp.t.sf(abs(effect) / se, df))
    q = float(_sp.t.ppf(1.0 - alpha / 2.0, df))
    return effect, min(1.0, p_value), (effect - q * se, effect + q * se)


@dataclass(frozen=True)
class SrmResult:
    """Sample-ratio-mismatch check: Pearson χ², its p-value, and the counts compared."""

    chi2: float
    p_value: float
    mismatch: bool
    observed: Mapping[str, int]
    expected: Mapping[str, float]


def _counts_and_expected(
    observed: Mapping[str, int], weights: Mapping[str, float], what: str
) -> tuple[list[str], dict[str, int], int, dict[str, float]]:
    """Validated (arms, counts, total, expected counts) of rows per arm against a split: every
    weighted arm, then arms with rows but no weight."""
    for arm, w in weights.items():
        if not (math.isfinite(w) and w >= 0.0):
            raise ValueError(f"weight of arm {arm!r} must be finite and >= 0, got {w!r}")
    for arm, o in observed.items():
        if o < 0:
            raise ValueError(f"observed count of arm {arm!r} must be >= 0, got {o!r}")
    weight_sum = math.fsum(weights.values())
    if not weight_sum > 0.0:
        raise ValueError(f"{what} must have a positive sum")
    arms = list(weights) + [a for a in observed if a not in weights]
    counts = {a: int(observed.get(a, 0)) for a in arms}
    total = sum(counts.values())
    return arms, counts, total, {a: total * weights.get(a, 0.0) / weight_sum for a in arms}


def srm_test(
    observed: Mapping[str, int], expected_weights: Mapping[str, float], threshold: float = 0.001
) -> SrmResult:
    """Pearson χ² goodness of fit of arm counts to the configured split (as scipy.stats.chisquare).
    Valid at ONE planned look, like ``fixed_horizon_t_test``: the policy uses ``sequential_srm``;
    this stays as the fixed-level reference one look is compared with.

    E_i = T·w_i/Σw, χ² = Σ (O_i − E_i)²/E_i over arms with w_i > 0, df = (#those arms) − 1,
    p = P(χ²_df ≥ χ²); mismatch when p < threshold. An arm with w = 0 (or missing from the
    weights) but O > 0 is a mismatch outright (χ² = ∞, p = 0); T = 0 is no evidence (p = 1).
    """
    if not (0.0 < threshold < 1.0):
        raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
    arms, counts, total, expected = _counts_and_expected(
        observed, expected_weights, "expected_weights"
    )

    def result(chi2: float, p: float) -> SrmResult:
        return SrmResult(chi2, p, p < threshold, counts, expected)

    if total == 0:
        return result(0.0, 1.0)
    if any(counts[a] > 0 and expected[a] == 0.0 for a in arms):
        return result(math.inf, 0.0)
    live = [a for a in arms if expected[a] > 0.0]
    chi2 = math.fsum((counts[a] - expected[a]) ** 2 / expected[a] for a in live)
    if len(live) < 2:
        return result(chi2, 1.0)
    return result(chi2, float(_sp.chi2.sf(chi2, len(live) - 1)))


def _log_dirichlet_multinomial(prior: Sequence[float], counts: Sequence[float]) -> float:
    """log of the probability of one ordered sequence of rows with these bin counts under the
    Dirichlet(prior)-multinomial mixture (a Pólya urn started at ``prior``):

        log Γ(Σa)/Γ(Σa + n) + Σ_i log Γ(a_i + x_i)/Γ(a_i).

    Bins with a_i > 0 only. Shared by ``sequential_srm`` and ``sequential_drift``; in plain
    floats (math.lgamma), as the bins are few (10 to 20) and numpy's per-call cost would be
    most of the work on every tick."""
    lgamma = math.lgamma
    total = math.fsum(prior)
    return (
        lgamma(total)
        - lgamma(total + math.fsum(counts))
        + math.fsum(lgamma(a + x) - lgamma(a) for a, x in zip(prior, counts, strict=True))
    )


@dataclass(frozen=True)
class SequentialSrmResult:
    """The anytime-valid sample-ratio check over every split an experiment ran under."""

    log_bayes_factor: float  # log of the product of the per-split Bayes factors
    p_value: float  # min(1, 1/BF): valid at this look, and at every look up to it
    mismatch: bool  # BF >= 1/alpha (p <= alpha)
    alpha: float
    observed: Mapping[str, int]  # rows per arm in the current split
    expected: Mapping[str, float]  # what the current split's weights expect of them


def sequential_srm(
    splits: Sequence[tuple[Mapping[str, int], Mapping[str, float]]],
    alpha: float = 0.01,
    concentration: float = 10_000.0,
) -> SequentialSrmResult:
    """Sample-ratio mismatch as a test valid at every look: the Dirichlet-multinomial mixture
    Bayes factor of Lindon & Malek (2022), "Anytime-valid inference for multinomial count data".

    Each split is (rows per arm, weights in force). Within a split with null shares θ_i = w_i/Σw
    (arms with w_i > 0) and a Dirichlet(A·θ) prior on the true shares, the counts x (n rows):

        BF = Γ(A)/Γ(A + n) · Π_i Γ(Aθ_i + x_i)/Γ(Aθ_i) / Π_i θ_i^x_i,

    a nonnegative martingale under "rows fall into arms with shares θ" that starts at 1. A new
    split starts a new factor, and the product over splits is again a test martingale (each
    factor is stopped at a stopping time), so P(sup BF ≥ 1/α) ≤ α over the whole experiment by
    Ville's inequality, however often it is looked at and however many splits it had. A = 10⁴
    tunes it to deviations of about 1 % of the share (a 50.5/49.5 split bug) around 10⁵ rows.
    Rows in an arm of weight 0 are a mismatch outright (BF = ∞). No rows: BF = 1.
    """
    _check_alpha(alpha)
    if not (math.isfinite(concentration) and concentration > 0.0):
        raise ValueError(f"concentration must be finite and > 0, got {concentration!r}")
    log_bf = 0.0
    observed: dict[str, int] = {}
    expected: dict[str, float] = {}
    for counts, weights in splits:
        arms, x, total, expected = _counts_and_expected(counts, weights, "each split's weights")
        weight_sum = math.fsum(weights.values())
        observed = x
        if any(x[a] > 0 and weights.get(a, 0.0) == 0.0 for a in arms):
            log_bf = math.inf
            continue
        live = [a for a in arms if weights.get(a, 0.0) > 0.0]
        if total == 0 or len(live) < 2:
            continue
        theta = [weights[a] / weight_sum for a in live]
        xs = [float(x[a]) for a in live]
        log_bf += _log_dirichlet_multinomial([concentration * t for t in theta], xs) - math.fsum(
            xi * math.log(t) for xi, t in zip(xs, theta, strict=True)
        )
    p_value = math.exp(-log_bf) if log_bf > 0.0 else 1.0
    return SequentialSrmResult(log_bf, p_value, p_value <= alpha, alpha, observed, expected)


# -- drift of a binned distribution ------------------------------------------------------------
# The default PSI bands (evaluator.levels: 0.1 warn, 0.25 act); an experiment may set its own.
PSI_EPS = 1e-4


def _bin_lists(
    reference_counts: Sequence[int], current_counts: Sequence[int]
) -> tuple[list[float], list[float]]:
    if len(reference_counts) != len(current_counts):
        raise ValueError(
            f"reference and current need the same bins, got {len(reference_counts)} and "
            f"{len(current_counts)}"
        )
    if len(reference_counts) < 2:
        raise ValueError(f"need at least 2 bins, got {len(reference_counts)}")
    r = [float(v) for v in reference_counts]
    c = [float(v) for v in current_counts]
    if not all(0.0 <= v < math.inf for v in (*r, *c)):  # NaN fails too
        raise ValueError("bin counts must be finite and >= 0")
    return r, c


def psi(
    reference_counts: Sequence[int], current_counts: Sequence[int], eps: float = PSI_EPS
) -> float:
    """Population stability index of the current rows' bin shares q against the reference's p:

        PSI = Σ_i (q_i − p_i) · ln(q_i / p_i),

    a symmetrised Kullback-Leibler divergence (0 when the shares are equal). A share below
    ``eps`` is floored at ``eps`` (an empty bin would otherwise make it infinite). Either side
    without rows: 0 (nothing to compare). Thresholds: ``PSI_WARN``/``PSI_ACT``. PSI is a size
    of change, not a test: on 1,000 vs 1,000 rows from one distribution it is about
    (1/1000 + 1/1000)·χ²₉ ≈ 0.018 by chance alone; ``sequential_drift`` is the test."""
    if not (math.isfinite(eps) and 0.0 < eps < 1.0):
        raise ValueError(f"eps must be in (0, 1), got {eps!r}")
    r, c = _bin_lists(reference_counts, current_counts)
    r_total, c_total = math.fsum(r), math.fsum(c)
    if r_total == 0 or c_total == 0:
        return 0.0
    out = []
    for ri, ci in zip(r, c, strict=True):
        p, q = max(ri / r_total, eps), max(ci / c_total, eps)
        out.append((q - p) * math.log(q / p))
    return math.fsum(out)


@dataclass(frozen=True)
class SequentialDriftResult:
    """The anytime-valid test of "the current rows fall into the bins with the reference's
    shares" (see ``sequential_drift``)."""

    log_e: float  # log of the e-process; its running max never needs to be kept
    p_value: float  # min(1, 1/E): valid at this look and every look up to it
    drift: bool  # E >= 1/alpha
    alpha: float
    reference_rows: int
    current_rows: int


def sequential_drift(
    reference_counts: Sequence[int],
    current_counts: Sequence[int],
    alpha: float = 0.01,
    concentration: float = 100.0,
) -> SequentialDriftResult:
    """Drift of the current rows' bin shares from the reference rows', as a test valid at every
    look while current rows keep coming: the Dirichlet-multinomial mixture of ``sequential_srm``
    (Lindon & Malek 2022) made honest about the reference being estimated.

    Null: the reference rows (r, N of them) and the current rows (x, n so far) are independent
    draws from ONE unknown bin distribution p. With θ̂ = (r + 1)/(N + K) the add-one smoothed
    reference shares (K bins), the alternative's mixture is Dirichlet(1) on the reference and
    Dirichlet(A·θ̂) on the current rows (a prior chosen from the reference, which comes first,
    is allowed), and

        E = DM(r; 1) · DM(x; A·θ̂) / sup_p L(r, x; p),

    where DM is the probability of the ordered rows under the mixture and the supremum is the
    likelihood of the pooled shares (r + x)/(N + n). For the true p, sup_p L ≥ L(·; p), so E is
    below DM(r; 1)·DM(x; A·θ̂)/L(r, x; p), a test martingale in the current rows whose mean is
    1: by Ville's inequality P(sup_n E ≥ 1/α) ≤ α however often it is looked at (universal
    inference, Wasserman, Ramdas & Balakrishnan 2020). Plugging θ̂ in as if it were the truth —
    ``sequential_srm`` against θ̂ — would not be valid: θ̂ is off by about sqrt(θ/N), and that
    error alone is a "shift" the test finds once n is a few times N.

    The price of the estimated reference is that E starts below 1 (by the regret of the
    Dirichlet(1) mixture on the N reference rows, ≈ ((K−1)/2)·ln(N/2π) nats) and, for a fixed
    shift, stops gaining once n ≫ N: drift this test sees is drift the reference rows can
    show, so a small N finds only large shifts (N = 1,000 in 10 bins: a shift of PSI ≈ 0.16
    within a few thousand current rows, one of PSI ≈ 0.06 not at all; tests/evaluator). A = 100
    keeps the current side's prior loose enough for such shifts: a tight one (10³ and up, as
    for SRM) pays for every shift it did not expect. Rows must be exchangeable under the null
    (no daily cycle between reference and current). No current rows: E = DM(r; 1)/L(r; r/N) ≤ 1.
    """
    _check_alpha(alpha)
    if not (math.isfinite(concentration) and concentration > 0.0):
        raise ValueError(f"concentration must be finite and > 0, got {concentration!r}")
    r, x = _bin_lists(reference_counts, current_counts)
    big_n, n = int(math.fsum(r)), int(math.fsum(x))
    if big_n == 0:
        return SequentialDriftResult(0.0, 1.0, False, alpha, 0, n)
    k = len(r)
    prior = [concentration * (ri + 1.0) / (big_n + k) for ri in r]  # A·θ̂
    rows = big_n + n
    log_sup = math.fsum(
        (ri + xi) * math.log((ri + xi) / rows) for ri, xi in zip(r, x, strict=True) if ri + xi > 0
    )
    log_e = (
        _log_dirichlet_multinomial([1.0] * k, r) + _log_dirichlet_multinomial(prior, x) - log_sup
    )
    p_value = math.exp(-log_e) if log_e > 0.0 else 1.0
    return SequentialDriftResult(log_e, p_value, p_value <= alpha, alpha, big_n, n)


@dataclass(frozen=True)
class RateLimitResult:
    """The anytime-valid test of "this rate is at most ``limit``" (see ``rate_limit_test``)."""

    failures: int
    n: int
    limit: float
    log_e: float  # log of the mixture likelihood ratio (the e-value) at this look
    p_value: float  # min(1, 1/e)
    breach: bool  # p <= alpha: confidently above the limit
    alpha: float


def _rate_prior(limit: float) -> tuple[float, float]:
    """Beta(a, b) with mean min(3·limit, (1 + limit)/2) and a + b = max(2, 1/limit): its mass
    sits where a rate worth catching is (a few times the limit), which is where the mixture
    test detects soonest."""
    strength = max(2.0, 1.0 / limit)
    mean = min(3.0 * limit, 0.5 * (1.0 + limit))
    return mean * strength, (1.0 - mean) * strength


@functools.lru_cache(maxsize=256)
def _log_prior_mass(limit: float) -> float:
    """log(B(a, b)·S(limit; a, b)) of ``_rate_prior(limit)``: the truncated prior's norm."""
    a, b = _rate_prior(limit)
    return float(_special.betaln(a, b)) + float(_sp.beta.logsf(limit, a, b))


def rate_limit_test(failures: int, n: int, limit: float, alpha: float = 0.01) -> RateLimitResult:
    """H0: the failure rate p is at most ``limit``, tested at every look with one level α.

    The e-value is the likelihood ratio of the failures against p = limit, mixed over rates
    θ > limit with a Beta(a, b) prior truncated to (limit, 1] (``_rate_prior``):

        E = B(a + k, b + n − k)·S(limit; a + k, b + n − k) / (B(a, b)·S(limit; a, b))
            / (limit^k (1 − limit)^(n − k)),

    S the Beta survival function. For every θ > limit the ratio is a supermartingale under any
    p ≤ limit (its one-step mean p·θ/limit + (1 − p)(1 − θ)/(1 − limit) is at most 1), so the
    mixture is too, and P(sup E ≥ 1/α) ≤ α by Ville's inequality: exact at every n, no normal
    approximation (the beta-binomial mixture of Howard, Ramdas, McAuliffe & Sekhon 2021,
    "Time-uniform, nonparametric, nonasymptotic confidence sequences", one-sided). The p99
    latency limit is this test on the share of rows slower than it (p99 ≤ L ⇔ P(X > L) ≤ 1 %):
    a confidence sequence for the quantile. ``limit`` of 0 or 1 cannot be tested (p = 1).
    """
    _check_alpha(alpha)
    if not (0 <= failures <= n):
        raise ValueError(f"need 0 <= failures <= n, got failures={failures!r}, n={n!r}")
    if not (0.0 <= limit <= 1.0):
        raise ValueError(f"limit must be in [0, 1], got {limit!r}")
    if n == 0 or not (0.0 < limit < 1.0):
        return RateLimitResult(failures, n, limit, 0.0, 1.0, False, alpha)
    a, b = _rate_prior(limit)
    k, m = float(failures), float(n - failures)
    # S(limit; a', b') by the regularized incomplete beta itself (scipy.stats.beta.logsf costs
    # 100x more). Where the posterior's mass above the limit underflows float64 (k/n far below
    # the limit: every θ > limit then explains the data worse than the limit does, so the
    # e-value is below 1, e.g. 1.9e-5 for 0 failures in 10⁶ rows at 1 %), log_e is reported as
    # −inf: p = 1 and no breach, as the exact value would give.
    tail = float(_special.betaincc(a + k, b + m, limit))
    if not tail > 0.0:
        return RateLimitResult(failures, n, limit, -math.inf, 1.0, False, alpha)
    log_e = (
        float(_special.betaln(a + k, b + m))
        + math.log(tail)
        - _log_prior_mass(limit)
        - k * math.log(limit)
        - m * math.log1p(-limit)
    )
    p_value = math.exp(-log_e) if log_e > 0.0 else 1.0
    return RateLimitResult(failures, n, limit, log_e, p_value, p_value <= alpha, alpha)


def rate_difference_test(
    strata: Sequence[tuple[tuple[int, int], tuple[int, int]]],
    alpha: float = 0.01,
    tuning_n: float = 5000.0,
) -> SequentialResult:
    """Always-valid test of the difference of two failure rates, treatment − control, within
    strata ((k_c, n_c), (k_t, n_t)) — one per split — combined with the weights of
    ``stratified_sequential_test`` and the same normal-mixture boundary. Each rate's variance
    is p̃(1 − p̃)/n with p̃ = (k + 1)/(n + 2) (Agresti & Caffo 2000, "Simple and effective
    confidence intervals for proportions and differences of proportions result from adding two
    successes and two failures"): with no failures in one arm and only failures in the other,
    the plug-in variance is 0 and says nothing; this one stays honest at small counts. The
    effect is the plain difference of the rates. Strata where either arm has no rows are left
    out; relative lift is not computed (nan, unbounded).
    """
    rho = sequential_rho(alpha, tuning_n)
    for (kc, nc), (kt, nt) in strata:
        if not (0 <= kc <= nc and 0 <= kt <= nt):
            raise ValueError(f"need 0 <= k <= n in every stratum, got {(kc, nc)}, {(kt, nt)}")
    used = [(c, t) for c, t in strata if c[1] > 0 and t[1] > 0]
    n = sum(c[1] + t[1] for c, t in used)
    if not used:
        return SequentialResult(0.0, _UNBOUNDED, math.nan, _UNBOUNDED, 1.0, False, 0, alpha)
    h = [c[1] * t[1] / (c[1] + t[1]) for c, t in used]
    h_sum = math.fsum(h)
    effect = 0.0
    var = 0.0
    for hs, ((kc, nc), (kt, nt)) in zip(h, used, strict=True):
        w = hs / h_sum
        effect += w * (kt / nt - kc / nc)
        pc, pt = (kc + 1.0) / (nc + 2.0), (kt + 1.0) / (nt + 2.0)
        var += w * w * (pc * (1.0 - pc) / nc + pt * (1.0 - pt) / nt)
    sigma2 = n * var
    rho2 = rho * rho
    r, p_value = _boundary(effect, sigma2, n, rho2, alpha)
    return SequentialResult(
        effect=effect,
        ci=(effect - r, effect + r),
        relative_lift=math.nan,
        lift_ci=_UNBOUNDED,
        p_value=p_value,
        significant=p_value <= alpha,
        n=n,
        alpha=alpha,
    )


def rate_rows_needed(
    limit: float, alpha: float = 0.01, times: float = 3.0, power: float = 0.9
) -> int:
    """Rows after which ``rate_limit_test`` catches a rate ``times`` × ``limit`` with
    probability at least ``power`` at that one look (a lower bound on catching it at some look
    before): an n with P(Bin(n, times·limit) ≥ k*(n)) ≥ power, k*(n) the fewest failures that
    breach at n, found by doubling and then bisection to about 1 %. That power is a sawtooth in
    n (it drops where k* steps up), so a somewhat smaller n can reach it too (up to ~8 % smaller
    for a 0.1 % limit): this is a sample size that works, not the least one. A canary stage
    collects this many treatment rows before it advances."""
    _check_alpha(alpha)
    if not (0.0 < limit < 1.0 and times > 1.0 and times * limit < 1.0):
        raise ValueError(
            f"need 0 < limit, times > 1 and times * limit < 1, got {limit!r}, {times!r}"
        )
    if not (0.0 < power < 1.0):
        raise ValueError(f"power must be in (0, 1), got {power!r}")
    return _rows_needed(limit, alpha, times, power)


def _first_breach(n: int, limit: float, alpha: float) -> int | None:
    """The fewest failures in n rows that breach (None: not even n of n)."""
    if not rate_limit_test(n, n, limit, alpha).breach:
        return None
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) // 2
        if rate_limit_test(mid, n, limit, alpha).breach:
            hi = mid
        else:
            lo = mid + 1
    return lo


@functools.lru_cache(maxsize=64)
def _rows_needed(limit: float, alpha: float, times: float, power: float) -> int:
    def enough(n: int) -> bool:
        k = _first_breach(n, limit, alpha)
        return k is not None and float(_sp.binom.sf(k - 1, n, times * limit)) >= power

    hi = 16
    while not enough(hi):
        hi *= 2
        if hi > 1 << 40:
            raise ValueError(f"no sample size reaches power {power} for limit {limit!r}")
    lo = hi // 2
    while hi - lo > max(1, hi // 100):
        mid = (lo + hi) // 2
        if enough(mid):
            hi = mid
        else:
            lo = mid
    return hi


def holm(p_values: Mapping[str, float]) -> dict[str, float]:
    """Holm–Bonferroni adjusted p-values (Holm 1979): with p_(1) ≤ … ≤ p_(m),
    p̃_(i) = min(1, max_{j ≤ i} (m − j + 1)·p_(j)). Rejecting p̃ ≤ α controls the FWER at α."""
    for name, p in p_values.items():
        if not (0.0 <= p <= 1.0):
            raise ValueError(f"p-value of {name!r} must be in [0, 1], got {p!r}")
    m = len(p_values)
    adjusted: dict[str, float] = {}
    running = 0.0
    for rank, name in enumerate(sorted(p_values, key=lambda k: p_values[k])):
        running = max(running, min(1.0, (m - rank) * p_values[name]))
        adjusted[name] = running
    return {name: adjusted[name] for name in p_values}


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927; Newcombe 1998, method 3):

        (p̂ + z²/2n ± z·sqrt(p̂(1 − p̂)/n + z²/4n²)) / (1 + z²/n),    z = Φ⁻¹((1 + confidence)/2),

    with the bound at 0 (k = 0) or 1 (k = n) exact, as scipy's binomtest(...).proportion_ci(
    method="wilson"). n = 0 gives (0, 1).
    """
    if not (0.0 < confidence < 1.0):
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if not (0 <= successes <= n):
        raise ValueError(f"need 0 <= successes <= n, got successes={successes!r}, n={n!r}")
    if n == 0:
        return 0.0, 1.0
    z = float(_sp.norm.ppf(0.5 + 0.5 * confidence))
    p = successes / n
    denom = 1.0 + z * z / n
    center = (p + z * z / (2.0 * n)) / denom
    half = z / denom * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n))
    lo = 0.0 if successes == 0 else max(0.0, center - half)
    hi = 1.0 if successes == n else min(1.0, center + half)
    return lo, hi


def thompson_weights(
    arms: Mapping[str, ArmStats],
    floor: float,
    rng: np.random.Generator,
    draws: int = 10_000,
    binary: bool = True,
) -> dict[str, float]:
    """Thompson-sampling split in percent: floor for every arm, the rest by P(arm is best).

    P(best) is the share of ``draws`` joint posterior samples in which the arm's draw is the
    largest (ties split evenly). Binary metrics: Beta(1 + total, 1 + n − total). Otherwise the
    posterior of the mean is N(x̄, s²/n); arms with n < 2 get a wide prior N(pooled mean,
    (10·pooled sd)²), so an arm without data is explored rather than starved (Russo et al. 2018,
    "A tutorial on Thompson sampling"). Higher is better: negate a metric to minimise it.

    w_i = floor + (100 − k·floor)·P_i, in whole 0.01 % (the gateway's bucket resolution): the
    floor rounds down to 0.01, the remainder is split by largest remainder, so the weights sum to
    exactly 100.00 and none falls below the (rounded) floor.
    """
    names = list(arms)
    k = len(names)
    if k == 0:
        raise ValueError("thompson_weights needs at least one arm")
    if not (math.isfinite(floor) and floor >= 0.0 and floor * k <= 100.0):
        raise ValueError(f"floor must satisfy 0 <= floor * {k} arms <= 100, got floor={floor!r}")
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws!r}")

    samples = np.empty((draws, k))
    if binary:
        for j, name in enumerate(names):
            s = arms[name]
            if not (0.0 <= s.total <= s.n):
                raise ValueError(f"binary arm {name!r} needs 0 <= total <= n, got {s}")
            samples[:, j] = rng.beta(1.0 + s.total, 1.0 + s.n - s.total, size=draws)
    else:
        pooled = sum(arms.values(), ArmStats.empty())
        wide_sd = 10.0 * (math.sqrt(pooled.variance) or max(abs(pooled.mean), 1.0))
        for j, name in enumerate(names):
            s = arms[name]
            if s.n < 2:
                samples[:, j] = rng.normal(pooled.mean, wide_sd, size=draws)
            else:
                samples[:, j] = rng.normal(s.mean, math.sqrt(s.variance / s.n), size=draws)

    best = samples == samples.max(axis=1, keepdims=True)
    p_best = (best / best.sum(axis=1, keepdims=True)).mean(axis=0)

    # Whole hundredths of a percent; 1e-9 absorbs 33.33 * 100 == 3332.9999999999995.
    floor_cents = math.floor(floor * 100.0 + 1e-9)
    spare = 10_000 - k * floor_cents
    exact = spare * p_best
    cents = np.floor(exact).astype(np.int64)
    leftover = spare - int(cents.sum())
    # Largest remainder, not "residue on the largest arm": that can push an arm below the floor.
    order = sorted(range(k), key=lambda j: (-(exact[j] - cents[j]), -p_best[j], j))
    for j in order[:leftover]:
        cents[j] += 1
    return {name: (floor_cents + int(c)) / 100.0 for name, c in zip(names, cents, strict=True)}


def mcnemar(served_only_right: int, shadow_only_right: int) -> float:
    """Exact McNemar test for paired classifications: two-sided binomial p-value of the
    discordant pairs b (only the first model right) and c (only the second), b ~ Bin(b + c, ½)
    under "equally accurate". Concordant pairs carry no information. 1.0 without discordance.
    """
    b, c = int(served_only_right), int(shadow_only_right)
    if b < 0 or c < 0:
        raise ValueError(f"counts must be >= 0, got {b}, {c}")
    if b + c == 0:
        return 1.0
    return float(_sp.binomtest(min(b, c), b + c, 0.5).pvalue)
