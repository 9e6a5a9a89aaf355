"""Why the evaluator uses the always-valid test: simulated experiments checked after every batch.
Under A/A the sequential test stays at α; peeking at Welch's test does not. With a real effect
the sequential test still finds it, with the right sign."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
from scipy import stats as sps

from evaluator.stats import ArmStats, fixed_horizon_t_test, sequential_rho, sequential_test

ALPHA = 0.05
TUNING_N = 5000.0
LOOKS = 50
BATCH = 100  # observations per arm per look
CHECKED = 100  # experiments re-run through evaluator.stats itself, at every look
# Vectorised float64 statistics (numpy's exp/log/sqrt and sums) against evaluator.stats.
pytestmark = pytest.mark.numeric


@dataclass(frozen=True)
class Runs:
    """Cumulative sufficient statistics, shape (experiments, looks), per arm."""

    n: np.ndarray
    c_total: np.ndarray
    c_sq: np.ndarray
    t_total: np.ndarray
    t_sq: np.ndarray

    def arms(self, e: int, look: int) -> tuple[ArmStats, ArmStats]:
        n = int(self.n[look])
        return (
            ArmStats(n, float(self.c_total[e, look]), float(self.c_sq[e, look])),
            ArmStats(n, float(self.t_total[e, look]), float(self.t_sq[e, look])),
        )


def bernoulli_runs(rng: np.random.Generator, experiments: int, p_c: float, p_t: float) -> Runs:
    # A batch's conversions are Binomial(BATCH, p); x² = x for 0/1 outcomes.
    c = np.cumsum(rng.binomial(BATCH, p_c, (experiments, LOOKS)), axis=1).astype(float)
    t = np.cumsum(rng.binomial(BATCH, p_t, (experiments, LOOKS)), axis=1).astype(float)
    return Runs(BATCH * np.arange(1, LOOKS + 1), c, c, t, t)


def normal_runs(rng: np.random.Generator, experiments: int, mean: float, sd: float) -> Runs:
    sums = []
    for _ in range(2):
        x = rng.normal(mean, sd, (experiments, LOOKS, BATCH))
        sums += [np.cumsum(x.sum(axis=2), axis=1), np.cumsum((x * x).sum(axis=2), axis=1)]
    return Runs(BATCH * np.arange(1, LOOKS + 1), *sums)


def variances(total: np.ndarray, sq: np.ndarray, n: np.ndarray) -> np.ndarray:
    return np.maximum(0.0, (sq - total * total / n) / (n - 1))


def sequential_vectorised(runs: Runs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(effect, p-value, radius) for every experiment and look: the same formulas as
    sequential_test, over arrays. Every arm here has n >= 100 and positive variance."""
    n_arm = runs.n[None, :]
    effect = runs.t_total / n_arm - runs.c_total / n_arm
    n = 2.0 * n_arm
    sigma2 = n * (
        variances(runs.c_total, runs.c_sq, n_arm) / n_arm
        + variances(runs.t_total, runs.t_sq, n_arm) / n_arm
    )
    assert np.all(sigma2 > 0)
    rho2 = sequential_rho(ALPHA, TUNING_N) ** 2
    x = n * rho2
    log_m = n * n * rho2 * effect**2 / (2.0 * sigma2 * (x + 1.0)) - 0.5 * np.log1p(x)
    p = np.exp(-np.maximum(log_m, 0.0))
    radius = np.sqrt(sigma2 * 2.0 * (x + 1.0) / (n * n * rho2) * np.log(np.sqrt(x + 1.0) / ALPHA))
    return effect, p, radius


def welch_vectorised(runs: Runs) -> np.ndarray:
    n = runs.n[None, :]
    a = variances(runs.c_total, runs.c_sq, n) / n
    b = variances(runs.t_total, runs.t_sq, n) / n
    t = (runs.t_total - runs.c_total) / n / np.sqrt(a + b)
    df = (a + b) ** 2 / ((a * a + b * b) / (n - 1))
    return np.asarray(2.0 * sps.t.sf(np.abs(t), df))


def assert_matches_evaluator_stats(runs: Runs) -> None:
    """The vectorised copies are only trusted because they agree with the real functions."""
    effect, p, radius = sequential_vectorised(runs)
    welch_p = welch_vectorised(runs)
    for e in range(CHECKED):
        for look in range(LOOKS):
            c, t = runs.arms(e, look)
            res = sequential_test(c, t, ALPHA, TUNING_N)
            assert res.effect == pytest.approx(effect[e, look], rel=1e-9, abs=1e-12)
            assert res.p_value == pytest.approx(p[e, look], rel=1e-9, abs=1e-300)
            assert res.ci[1] - res.effect == pytest.approx(radius[e, look], rel=1e-9)
            # Both sides compute p to 1e-9; a p-value that close to α may fall either side.
            assert res.significant == bool(p[e, look] <= ALPHA) or math.isclose(
                p[e, look], ALPHA, rel_tol=1e-9
            )
            _, p_welch, _ = fixed_horizon_t_test(c, t, ALPHA)
            assert p_welch == pytest.approx(welch_p[e, look], rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("metric", ["bernoulli", "normal"])
def test_peeking_inflates_welch_but_not_the_sequential_test(metric: str) -> None:
    rng = np.random.default_rng(20240611)
    experiments = 1000
    if metric == "bernoulli":
        runs = bernoulli_runs(rng, experiments, 0.3, 0.3)
    else:
        runs = normal_runs(rng, experiments, 10.0, 3.0)
    assert_matches_evaluator_stats(runs)

    _, p, _ = sequential_vectorised(runs)
    sequential_fpr = float(np.mean(np.any(p <= ALPHA, axis=1)))
    welch_p = welch_vectorised(runs)
    naive_fpr = float(np.mean(np.any(welch_p <= ALPHA, axis=1)))
    last_look_fpr = float(np.mean(welch_p[:, -1] <= ALPHA))
    print(
        f"\nA/A {metric}, {experiments} experiments x {LOOKS} looks: ever significant "
        f"sequential {sequential_fpr:.1%}, Welch peeking {naive_fpr:.1%}, "
        f"Welch at the last look only {last_look_fpr:.1%}"
    )
    assert sequential_fpr <= ALPHA
    assert naive_fpr > 0.25
    # One planned look is fine for Welch: the damage is done by looking 50 times.
    assert 0.02 <= last_look_fpr <= 0.08


def test_sequential_test_finds_a_real_effect_with_the_right_sign() -> None:
    rng = np.random.default_rng(20240612)
    experiments, p_c, p_t = 200, 0.30, 0.36
    runs = bernoulli_runs(rng, experiments, p_c, p_t)
    assert_matches_evaluator_stats(runs)

    effect, p, radius = sequential_vectorised(runs)
    detected = p <= ALPHA
    power = float(np.mean(np.any(detected, axis=1)))
    first = np.where(np.any(detected, axis=1), np.argmax(detected, axis=1), LOOKS)
    # The confidence sequence is time-uniform under the alternative too: it should (almost)
    # never exclude the true difference at any look.
    missed_truth = float(np.mean(np.any(np.abs(effect - (p_t - p_c)) > radius, axis=1)))
    print(
        f"\npower {p_c} vs {p_t}: {power:.1%} of {experiments} detected, median first detection "
        f"at {int(np.median(first[first < LOOKS]) + 1) * BATCH} users per arm; "
        f"sequence ever excluded the true effect in {missed_truth:.1%}"
    )
    assert power >= 0.80
    assert np.all(effect[detected] > 0)  # every significant look has the right sign
    assert missed_truth <= ALPHA
