"""Policies as pure functions: per-arm results in, one decision out."""

from __future__ import annotations

import numpy as np
import pytest

from abgate.v1 import control_pb2 as cpb
from evaluator.experiments import CANARY_STAGES, ExperimentState, validate_definition
from evaluator.policy import ArmData, decide
from evaluator.stats import ArmStats
from gateway.allocation import Allocation

NOW = 1_000_000.0


def state(kind: int = cpb.AB, arms: int = 2, **kw: object) -> ExperimentState:
    weights = [100.0 / arms] * arms
    weights[-1] = 100.0 - sum(weights[:-1])
    names = ["control"] + [f"t{i}" for i in range(1, arms)]
    d = cpb.ExperimentDefinition(
        name="exp",
        kind=kind,  # type: ignore[arg-type]
        arms=[
            cpb.ArmConfig(name=n, model="m" + n, weight=w)
            for n, w in zip(names, weights, strict=True)
        ],
        min_samples=kw.pop("min_samples", 100),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )
    return validate_definition(d, now=NOW)


def binary(n: int, rate: float, rng: np.random.Generator) -> ArmStats:
    k = int(rng.binomial(n, rate))
    return ArmStats(n, float(k), float(k))


def data_for(s: ExperimentState, rates: dict[str, float], n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for a in s.arms:
        served = int(n * 100 / max(a.weight, 1e-9)) if a.weight else 0
        out[a.name] = ArmData(
            metric=binary(n, rates[a.name], rng),
            served_since=round(n * a.weight / 50.0),
            window_served=served,
        )
    return out


def test_ab_promotes_a_clear_winner_and_pins_every_user_to_it() -> None:
    s = state(min_effect=0.02)
    d = decide(s, data_for(s, {"control": 0.30, "t1": 0.40}, 5000), NOW + 10)
    assert d.action == "promote" and d.verdict["winner"] == "t1"
    assert d.state is not None and d.state.status == "promoted"
    assert d.state.weights == {"control": 0.0, "t1": 100.0}
    assert Allocation.from_dict(d.state.allocation).counts() == {"control": 0, "t1": 10_000}
    assert d.verdict["effect_size"] == pytest.approx(0.10, abs=0.03)
    lo, hi = d.verdict["ci"]
    assert 0 < lo < d.verdict["effect_size"] < hi
    assert d.verdict["p_value"] < 0.05


def test_ab_waits_for_min_samples_and_keeps_control_when_treatment_is_worse() -> None:
    s = state(min_samples=10_000)
    d = decide(s, data_for(s, {"control": 0.30, "t1": 0.40}, 5000), NOW)
    assert d.action == "continue" and d.state is None and "waiting for 10000" in d.recommendation
    s = state()
    d = decide(s, data_for(s, {"control": 0.40, "t1": 0.30}, 5000), NOW)
    assert d.action == "keep" and d.state is not None
    assert d.state.weights == {"control": 100.0, "t1": 0.0} and d.state.status == "stopped"


def test_ab_effect_below_the_minimum_is_not_promoted_and_stops_for_futility() -> None:
    # Significant but tiny: not worth shipping; continue until the CI rules it out.
    s = state(min_effect=0.05, max_duration_s=3600)
    data = data_for(s, {"control": 0.30, "t1": 0.32}, 40_000)
    d = decide(s, data, NOW + 10)
    assert d.action in {"continue", "keep"} and d.verdict["winner"] != "t1"
    # No difference at all, max duration elapsed: stop, keep control.
    s = state(max_duration_s=60)
    d = decide(s, data_for(s, {"control": 0.30, "t1": 0.30}, 500), NOW + 61)
    assert d.action == "stop" and "futility" in d.recommendation
    assert d.state is not None and d.state.weights["control"] == 100.0


def test_ab_with_three_arms_uses_holm_and_promotes_the_best() -> None:
    s = state(arms=3)
    d = decide(s, data_for(s, {"control": 0.30, "t1": 0.33, "t2": 0.40}, 6000), NOW)
    assert d.action == "promote" and d.verdict["winner"] == "t2"
    tests = d.statistics["tests"]
    assert set(tests) == {"t1", "t2"}
    for t in tests.values():
        assert t["p_value_holm"] >= t["p_value"]


def test_sample_ratio_mismatch_pauses_instead_of_deciding() -> None:
    s = state()
    data = data_for(s, {"control": 0.30, "t1": 0.40}, 5000)
    data["control"] = ArmData(data["control"].metric, served_since=5600, window_served=5600)
    data["t1"] = ArmData(data["t1"].metric, served_since=4400, window_served=4400)
    d = decide(s, data, NOW)
    assert d.action == "pause" and d.state is not None and d.state.status == "paused"
    assert d.state.allocation == s.allocation, "a pause keeps the split"
    assert d.statistics["srm"]["mismatch"] and d.statistics["srm"]["p_value"] < 0.001


def test_guardrail_breach_rolls_back_before_any_promotion() -> None:
    s = state(guardrails=cpb.Guardrails(max_error_rate=0.01))
    data = data_for(s, {"control": 0.30, "t1": 0.45}, 5000)
    data["t1"] = ArmData(data["t1"].metric, 5000, window_served=5000, window_errors=150)
    d = decide(s, data, NOW)
    assert d.action == "rollback" and d.state is not None
    assert d.state.status == "rolled_back" and d.state.weights["control"] == 100.0
    # 1% allowed, 1.2% seen on few rows: not confidently over, so no rollback on noise.
    data["t1"] = ArmData(data["t1"].metric, 5000, window_served=500, window_errors=6)
    assert decide(s, data, NOW).action == "promote"


def test_canary_advances_only_after_its_hold_and_never_moves_a_treated_user_back() -> None:
    s = state(kind=cpb.CANARY, stage_hold_s=30.0, min_samples=50)
    assert s.weights == {"control": 100.0 - CANARY_STAGES[0], "t1": CANARY_STAGES[0]}
    seen: set[int] = set()
    now = NOW
    for stage in range(len(CANARY_STAGES) - 1):
        share = s.weights["t1"] / 100.0
        data = {  # rows since the split changed match it; 100 treatment rows in the stage
            "control": ArmData(ArmStats(900, 270.0, 270.0), round(10_000 * (1 - share)), 900),
            "t1": ArmData(ArmStats(100, 31.0, 31.0), round(10_000 * share), window_served=100),
        }
        early = decide(s, data, now + 10)
        assert early.action == "continue", early.recommendation
        d = decide(s, data, now + 31)
        assert d.action == ("promote" if stage == len(CANARY_STAGES) - 2 else "advance")
        assert d.state is not None
        old = Allocation.from_dict(s.allocation)
        new = Allocation.from_dict(d.state.allocation)
        treated_before = {b for b in range(10_000) if old.arm_for(b) == "t1"}
        treated_after = {b for b in range(10_000) if new.arm_for(b) == "t1"}
        assert treated_before <= treated_after
        assert old.moved(new) == len(treated_after) - len(treated_before)
        seen |= treated_after
        s, now = d.state, now + 31
    assert s.status == "promoted" and s.weights["t1"] == 100.0 and len(seen) == 10_000


def test_canary_rolls_back_when_clearly_worse_than_the_threshold() -> None:
    s = state(kind=cpb.CANARY, guardrails=cpb.Guardrails(rollback_threshold=0.02))
    data = {
        "control": ArmData(ArmStats(20_000, 8000.0, 8000.0), 19_800, 19_800),
        "t1": ArmData(ArmStats(2_000, 500.0, 500.0), 200, 2000),
    }
    d = decide(s, data, NOW)
    assert d.action == "rollback" and "worse" in d.recommendation


def test_bandit_reweights_toward_the_best_arm_with_a_floor_and_cadence() -> None:
    s = state(kind=cpb.BANDIT, arms=3, bandit_floor=0.1, bandit_interval_s=60.0)
    data = {
        "control": ArmData(ArmStats(1000, 300.0, 300.0), 1000, 1000),
        "t1": ArmData(ArmStats(1000, 310.0, 310.0), 1000, 1000),
        "t2": ArmData(ArmStats(1000, 420.0, 420.0), 1000, 1000),
    }
    rng = np.random.default_rng(1)
    assert decide(s, data, NOW + 30, rng).action == "continue", "cadence not reached"
    d = decide(s, data, NOW + 61, rng)
    assert d.action == "reweight" and d.state is not None
    w = d.state.weights
    assert sum(w.values()) == pytest.approx(100.0)
    assert min(w.values()) >= 10.0 - 1e-9 and w["t2"] == max(w.values()) > 70
    old, new = Allocation.from_dict(s.allocation), Allocation.from_dict(d.state.allocation)
    moved = sum(abs(new.counts()[a] - old.counts()[a]) for a in w) // 2
    assert old.moved(new) == moved, "re-weighting moves the fewest users"
    assert d.state.stage_started_at == NOW + 61


def _simulate(rates: tuple[float, float], experiments: int, looks: int, seed: int) -> list[str]:
    """The A/B policy run after every batch; what each experiment ended with."""
    rng = np.random.default_rng(seed)
    s = state(min_samples=100)
    outcomes = []
    for _ in range(experiments):
        c, t = ArmStats.empty(), ArmStats.empty()
        final = "continue"
        for _look in range(looks):
            c = c + binary(200, rates[0], rng)
            t = t + binary(200, rates[1], rng)
            d = decide(s, {"control": ArmData(c, c.n, c.n), "t1": ArmData(t, t.n, t.n)}, NOW)
            if d.action != "continue":
                final = f"{d.action}:{d.verdict['winner']}"
                break
        outcomes.append(final)
    return outcomes


def test_policy_rarely_promotes_in_aa_tests_and_promotes_the_true_winner() -> None:
    aa = _simulate((0.3, 0.3), experiments=200, looks=50, seed=7)
    false_promotions = sum(o.startswith("promote") for o in aa) / len(aa)
    print(f"\nA/A false promotions with 50 looks: {false_promotions:.1%}")
    assert false_promotions <= 0.05
    real = _simulate((0.30, 0.36), experiments=50, looks=50, seed=8)
    right = sum(o == "promote:t1" for o in real) / len(real)
    print(f"true effect 0.30 -> 0.36: promoted the right arm in {right:.0%}")
    assert right >= 0.8 and not any(o == "promote:control" for o in real)
