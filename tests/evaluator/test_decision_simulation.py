"""Seeded simulations of whole experiments through ``evaluator.policy.decide``, looked at on
every tick as the evaluator does (``evaluator.simulate``): each decision that can end an
experiment (SRM pause, guardrail rollback, canary rollback and promotion, a bandit's winner)
keeps its false-alarm rate near its level under continuous monitoring and still catches what
it is for. Fewer experiments and more rows per tick than ``benchmarks/bench_decisions.py``
(which reports every figure with its interval), so that the suite stays fast; the bounds are
the levels plus the Clopper–Pearson slack of a few hundred runs. The policy before issue #13
failed the first three (18 % false rollbacks, 1.7 % false SRM pauses, 59.5 % rollbacks at
0.8 % errors under a 1 % limit)."""

from __future__ import annotations

import numpy as np
import pytest

from evaluator.policy import GUARDRAIL_ALPHA, SRM_ALPHA
from evaluator.simulate import (
    ArmTruth,
    DriftScenario,
    MonitorScenario,
    Outcome,
    Scenario,
    clopper_pearson,
    run,
    run_drift,
    run_monitor,
)

HEALTHY = ArmTruth(accuracy=0.8, error_rate=0.002, slow_rate=0.001)
GUARDED = {"max_error_rate": 0.01, "max_p99_latency_ms": 250.0, "rollback_threshold": 0.05}


def simulate(scenario: Scenario, runs: int, seed: int) -> list[Outcome]:
    rng = np.random.default_rng(seed)
    return [run(scenario, rng) for _ in range(runs)]


def share(outcomes: list[Outcome], *actions: str) -> tuple[float, int]:
    k = sum(o.action in actions for o in outcomes)
    return k / len(outcomes), k


def canary(treatment: ArmTruth, control: ArmTruth = HEALTHY) -> Scenario:
    # 1,000 rows per tick: the 1 % stage gathers its 1,016 rows (3x a 1 % limit) in ~102 ticks.
    return Scenario(
        "canary",
        {"control": control, "treatment": treatment},
        rows_per_tick=1000,
        ticks=400,
        stage_hold_s=5.0,
        **GUARDED,
    )


def test_identical_canary_arms_end_promoted_nearly_always() -> None:
    outcomes = simulate(canary(HEALTHY), runs=80, seed=1)
    wrong, k = share(outcomes, "rollback", "pause")
    # Two guardrails at GUARDRAIL_ALPHA each, the SRM at SRM_ALPHA: at most 3 % in theory.
    bound = 2 * GUARDRAIL_ALPHA + SRM_ALPHA
    assert clopper_pearson(k, len(outcomes))[0] <= bound, outcomes
    assert wrong <= 0.05
    assert share(outcomes, "promote")[0] >= 0.95
    assert all(o.stage == 5 for o in outcomes if o.action == "promote")


def test_arms_both_near_the_limit_are_not_rolled_back() -> None:
    near = ArmTruth(0.8, 0.008, 0.001)
    outcomes = simulate(canary(near, control=near), runs=60, seed=2)
    assert share(outcomes, "rollback")[0] <= 0.04


@pytest.mark.parametrize(
    "bad", [ArmTruth(0.8, 0.03, 0.001), ArmTruth(0.8, 0.002, 0.03)], ids=["errors", "slow"]
)
def test_a_canary_three_times_over_a_limit_is_caught_mostly_at_the_first_stage(
    bad: ArmTruth,
) -> None:
    outcomes = simulate(canary(bad), runs=60, seed=3)
    assert share(outcomes, "rollback")[0] >= 0.97
    first = sum(o.stage == 0 for o in outcomes if o.action == "rollback")
    assert first >= 0.8 * len(outcomes)


def test_srm_under_continuous_monitoring() -> None:
    # 100 looks of 1,000 rows (100k rows): the correct split is rarely paused…
    aa = Scenario("ab", {"a": HEALTHY, "b": HEALTHY}, rows_per_tick=1000, ticks=100,
                  min_samples=10**9)  # fmt: skip
    outcomes = simulate(aa, runs=200, seed=4)
    paused, k = share(outcomes, "pause")
    assert clopper_pearson(k, len(outcomes))[0] <= SRM_ALPHA and paused <= 0.025
    # … a 47/53 split bug is caught well before 100k rows.
    bug = Scenario("ab", {"a": HEALTHY, "b": HEALTHY}, rows_per_tick=1000, ticks=100,
                   min_samples=10**9, skew={"a": 0.94, "b": 1.06})  # fmt: skip
    caught = simulate(bug, runs=60, seed=5)
    assert share(caught, "pause")[0] >= 0.97


def test_ab_policy_keeps_its_level_and_its_power() -> None:
    aa = Scenario("ab", {"a": HEALTHY, "b": HEALTHY}, rows_per_tick=500, ticks=60)
    assert share(simulate(aa, runs=200, seed=6), "promote")[0] <= 0.02
    better = Scenario("ab", {"a": HEALTHY, "b": ArmTruth(0.84, 0.002, 0.001)},
                      rows_per_tick=500, ticks=60)  # fmt: skip
    won = simulate(better, runs=60, seed=7)
    assert share(won, "promote")[0] >= 0.9 and all(o.winner == "b" for o in won if o.winner)


def test_a_bandit_names_no_winner_between_identical_arms() -> None:
    """The bandit re-weights by Thompson sampling, so its pooled means are not a test: between
    identical arms its verdict must name no winner (it used to name the best raw mean)."""
    same = Scenario("bandit", {"a": HEALTHY, "b": HEALTHY, "c": HEALTHY}, rows_per_tick=1000,
                    ticks=60, min_samples=200, bandit_interval_s=10.0)  # fmt: skip
    outcomes = simulate(same, runs=30, seed=8)
    assert sum(o.winner is not None for o in outcomes) <= 2
    # A clearly better arm is named, and only that one.
    better = Scenario("bandit", {"a": HEALTHY, "b": HEALTHY, "c": ArmTruth(0.9, 0.002, 0.001)},
                      rows_per_tick=1000, ticks=60, min_samples=200,
                      bandit_interval_s=10.0)  # fmt: skip
    won = simulate(better, runs=12, seed=9)
    assert sum(o.winner == "c" for o in won) >= 11
    assert all(o.winner in (None, "c") for o in won)


def test_drift_test_under_continuous_monitoring(capsys: pytest.CaptureFixture[str]) -> None:
    # Stationary scores: 200 arms, each looked at after every 250 rows for 200 looks (50k rows
    # after its 1,000-row reference). The sequential test's false alarms stay below alpha.
    stationary = DriftScenario(rows_per_tick=250, ticks=200)
    rng = np.random.default_rng(11)
    runs = [run_drift(stationary, rng) for _ in range(200)]
    k = sum(o.detected_tick >= 0 for o in runs)
    lo, hi = clopper_pearson(k, len(runs))
    assert lo <= stationary.alpha and k / len(runs) <= stationary.alpha
    # PSI of a stationary arm stays well under the warn band once the window has rows.
    assert max(o.final_psi for o in runs) < 0.1
    # A known shift of the score distribution 1,000 rows into the current window: Beta(2, 5)
    # to Beta(3, 5) (PSI ≈ 0.33 in the monitor's bins). Caught, with its delay in rows.
    shift = DriftScenario(a2=3.0, b2=5.0, shift_after=1000, rows_per_tick=250, ticks=200)
    caught = [run_drift(shift, rng) for _ in range(60)]
    delays = sorted(o.delay_rows for o in caught if o.delay_rows >= 0)
    assert len(delays) / len(caught) >= 0.95
    assert all(o.detected_tick < 0 or o.delay_rows >= 0 for o in caught)  # none before the shift
    median = delays[len(delays) // 2]
    with capsys.disabled():
        print(
            f"\ndrift: false alarms {k}/{len(runs)} (≤ {hi:.3f} at 95 %) over 200 looks of 250 "
            f"rows; shift PSI≈0.33 caught {len(delays)}/{len(caught)}, delay median {median} "
            f"rows, max {delays[-1]}"
        )
    assert median <= 10_000


def test_feature_drift_and_decay_under_continuous_monitoring(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Stationary traffic: 200 arms (experiment-days), each with 5 captured features and
    # labelled rows, looked at after every 500 feature rows and 100 labelled rows for 100 looks
    # (50k feature rows and 10k labelled rows after 1,000-row references). Any crossing counts:
    # a feature's PSI level (warn or act) or its test, and either decay test.
    stationary = MonitorScenario()
    rng = np.random.default_rng(16)
    runs = [run_monitor(stationary, rng) for _ in range(200)]
    kf = sum(o.feature_tick >= 0 for o in runs)
    kd = sum(o.decay_tick >= 0 for o in runs)
    for k in (kf, kd):
        lo, _ = clopper_pearson(k, len(runs))
        assert lo <= stationary.alpha and k / len(runs) <= stationary.alpha
    # A covariate shift 1,000 rows into the current window: feature 0's mean moves by half a
    # standard deviation (PSI ≈ 0.24 on its deciles). The feature monitor catches it; decay
    # (the labels do not change) does not.
    covariate = MonitorScenario(covariate_shift=0.5, shift_after=1000)
    cov = [run_monitor(covariate, rng) for _ in range(40)]
    cov_delays = sorted(o.feature_delay_rows for o in cov if o.feature_delay_rows >= 0)
    assert len(cov_delays) / len(cov) >= 0.95
    assert all(o.feature_tick < 0 or o.feature_delay_rows >= 0 for o in cov)  # none before
    assert sum(o.decay_tick >= 0 for o in cov) <= 2
    # A concept shift: accuracy 0.85 -> 0.70 after 200 labelled rows of the current window,
    # features unchanged. Only decay can see it.
    concept = MonitorScenario(accuracy_after=0.70, shift_after=1000)
    con = [run_monitor(concept, rng) for _ in range(40)]
    con_delays = sorted(o.decay_delay_rows for o in con if o.decay_delay_rows >= 0)
    assert len(con_delays) / len(con) >= 0.95
    assert all(o.decay_tick < 0 or o.decay_delay_rows >= 0 for o in con)
    assert sum(o.feature_tick >= 0 for o in con) <= 2
    cov_median, con_median = cov_delays[len(cov_delays) // 2], con_delays[len(con_delays) // 2]
    with capsys.disabled():
        print(
            f"\nfeatures/decay: false alarms {kf}/{len(runs)} (features), {kd}/{len(runs)} "
            f"(decay) over 100 looks; covariate shift caught {len(cov_delays)}/{len(cov)}, "
            f"delay median {cov_median} rows, max {cov_delays[-1]}; concept shift caught "
            f"{len(con_delays)}/{len(con)}, delay median {con_median} labelled rows, max "
            f"{con_delays[-1]}"
        )
    assert cov_median <= 5000 and con_median <= 2000


def test_psi_on_the_rolling_window_sees_a_late_shift(capsys: pytest.CaptureFixture[str]) -> None:
    # The rolling window: PSI over the last 24 looks (12,000 feature rows), the tests over every
    # current row. On stationary traffic (200 arm-days of 100 looks) a PSI level or a test
    # fires on at most alpha of them.
    stationary = MonitorScenario(window_ticks=24)
    rng = np.random.default_rng(23)
    runs = [run_monitor(stationary, rng) for _ in range(200)]
    k = sum(o.feature_tick >= 0 for o in runs)
    lo, hi = clopper_pearson(k, len(runs))
    assert lo <= stationary.alpha and k / len(runs) <= stationary.alpha
    # A covariate shift after 40,000 current rows (look 80 of 100): in the window PSI reaches
    # a level before the window is full of shifted rows; on the cumulative window the 40,000
    # steady rows dilute it.
    late = {"covariate_shift": 0.5, "shift_after": 40_000}
    windowed = [run_monitor(MonitorScenario(window_ticks=24, **late), rng) for _ in range(20)]
    cumulative = [run_monitor(MonitorScenario(**late), rng) for _ in range(10)]
    delays = sorted(o.psi_delay_rows for o in windowed if o.psi_delay_rows >= 0)
    assert len(delays) / len(windowed) >= 0.95
    assert all(o.psi_tick < 0 or o.psi_delay_rows >= 0 for o in windowed)  # none before
    diluted = sum(o.psi_tick >= 0 for o in cumulative)
    assert diluted <= len(cumulative) // 4
    median = delays[len(delays) // 2]
    with capsys.disabled():
        print(
            f"\nrolling window: false alarms {k}/{len(runs)} (≤ {hi:.3f} at 95 %); a shift after "
            f"40,000 rows reached a PSI level in {len(delays)}/{len(windowed)} runs (delay median "
            f"{median} rows, max {delays[-1]}) with the window, in {diluted}/{len(cumulative)} "
            f"on the cumulative window"
        )
    assert delays[-1] <= 12_000
