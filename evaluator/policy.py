"""Policies: per-arm results → one decision (``ab``, ``canary``, ``bandit``). Pure: the server
feeds aggregates in and writes out what comes back; the statistics live in ``evaluator.stats``.

Order of checks, every kind: sample-ratio mismatch (pauses: nothing else can be trusted) →
guardrails (roll back at once) → the kind's own rule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from evaluator.experiments import CANARY_STAGES, ExperimentState
from evaluator.stats import (
    ArmStats,
    SequentialResult,
    holm,
    rate_exceeds,
    sequential_test,
    srm_test,
    thompson_weights,
)

SRM_THRESHOLD = 0.001
# The chi-square approximation needs a few expected rows per arm before it means anything.
SRM_MIN_ROWS = 200
# Guardrails are judged on at least this many treatment rows (or min_samples if smaller).
GUARDRAIL_MIN_ROWS = 100
# A bandit moves weights only when some arm changes by at least this much (percentage points).
BANDIT_MIN_CHANGE = 1.0
# p99 latency: "more than 1% of rows slower than the limit", judged with a Wilson bound.
P99_SHARE = 0.01


@dataclass(frozen=True)
class ArmData:
    """What the policy knows about one arm (built from ``evaluator.aggregate`` totals)."""

    metric: ArmStats  # primary metric, all rows of the experiment
    served_since: int = 0  # rows served since the split last changed (SRM)
    window_served: int = 0  # guardrail window (canary: this stage; others: all)
    window_errors: int = 0
    window_slow: int = 0  # rows slower than the latency guardrail
    p99_ms: float = math.nan


@dataclass(frozen=True)
class Decision:
    action: str  # continue | promote | keep | stop | advance | rollback | reweight | pause
    recommendation: str
    state: ExperimentState | None = None  # the new version to write; None: config unchanged
    verdict: dict[str, Any] = field(default_factory=dict)
    statistics: dict[str, Any] = field(default_factory=dict)

    @property
    def changes_config(self) -> bool:
        return self.state is not None


def _verdict(
    winner: str | None, result: SequentialResult | None, p_value: float, recommendation: str
) -> dict[str, Any]:
    return {
        "winner": winner,
        "p_value": _num(p_value),
        "effect_size": _num(result.effect) if result else 0.0,
        "ci": [_num(x) for x in result.ci] if result else [],
        "recommendation": recommendation,
    }


def _num(x: float) -> float | None:
    """JSON has no inf/nan: unbounded ends of an interval become null."""
    return float(x) if math.isfinite(x) else None


def _result_json(r: SequentialResult, adjusted_p: float) -> dict[str, Any]:
    return {
        "effect": _num(r.effect),
        "ci": [_num(r.ci[0]), _num(r.ci[1])],
        "relative_lift": _num(r.relative_lift),
        "lift_ci": [_num(r.lift_ci[0]), _num(r.lift_ci[1])],
        "p_value": _num(r.p_value),
        "p_value_holm": _num(adjusted_p),
        "n": r.n,
    }


def _arms_json(state: ExperimentState, data: Mapping[str, ArmData]) -> dict[str, Any]:
    out = {}
    for arm in state.arms:
        d = data.get(arm.name, ArmData(ArmStats.empty()))
        out[arm.name] = {
            "weight": arm.weight,
            "n": d.metric.n,
            "mean": _num(d.metric.mean),
            "variance": _num(d.metric.variance),
            "served_since_split": d.served_since,
            "window_served": d.window_served,
            "window_errors": d.window_errors,
            "window_slow": d.window_slow,
            "p99_ms": _num(d.p99_ms),
        }
    return out


def _only(state: ExperimentState, arm: str, **changes: Any) -> ExperimentState:
    return state.with_weights(
        {a.name: 100.0 if a.name == arm else 0.0 for a in state.arms}, **changes
    )


def check_srm(state: ExperimentState, data: Mapping[str, ArmData]) -> dict[str, Any]:
    observed = {
        a.name: data.get(a.name, ArmData(ArmStats.empty())).served_since for a in state.arms
    }
    total = sum(observed.values())
    if total < SRM_MIN_ROWS:
        return {"checked": False, "observed": observed, "reason": f"fewer than {SRM_MIN_ROWS} rows"}
    r = srm_test(observed, state.weights, threshold=SRM_THRESHOLD)
    return {
        "checked": True,
        "observed": observed,
        "expected": {k: _num(v) for k, v in r.expected.items()},
        "chi2": _num(r.chi2),
        "p_value": _num(r.p_value),
        "mismatch": r.mismatch,
    }


def check_guardrails(
    state: ExperimentState, data: Mapping[str, ArmData], confidence: float = 0.95
) -> list[str]:
    """Breaches by treatment arms, judged with a Wilson bound (confidently over the limit)."""
    g = state.guardrails
    breaches = []
    for arm in state.arms[1:]:
        d = data.get(arm.name)
        if d is None or d.window_served == 0:
            continue
        if g.max_error_rate > 0 and rate_exceeds(
            d.window_errors, d.window_served, g.max_error_rate, confidence
        ):
            breaches.append(
                f"{arm.name}: error rate {d.window_errors}/{d.window_served} exceeds "
                f"{g.max_error_rate:g}"
            )
        if g.max_p99_latency_ms > 0 and rate_exceeds(
            d.window_slow, d.window_served, P99_SHARE, confidence
        ):
            breaches.append(
                f"{arm.name}: p99 latency ≈{d.p99_ms:.3g} ms exceeds {g.max_p99_latency_ms:g} ms "
                f"({d.window_slow}/{d.window_served} rows slower)"
            )
    return breaches


def decide(
    state: ExperimentState,
    data: Mapping[str, ArmData],
    now: float,
    rng: np.random.Generator | None = None,
) -> Decision:
    """The decision for one running experiment at time ``now`` (seconds since the epoch)."""
    stats: dict[str, Any] = {"arms": _arms_json(state, data), "kind": state.kind}
    srm = check_srm(state, data)
    stats["srm"] = srm
    if srm.get("mismatch"):
        rec = (
            f"pause: sample ratio mismatch (p={srm['p_value']:.2g} < {SRM_THRESHOLD}); "
            "counts do not match the split, so no result can be trusted"
        )
        return Decision(
            "pause", rec, replace(state, status="paused"), _verdict(None, None, 1.0, rec), stats
        )
    breaches = check_guardrails(state, data)
    stats["guardrails"] = {"breaches": breaches}
    if breaches:
        rec = "rollback: guardrail breached: " + "; ".join(breaches)
        control = state.control.name
        new = _only(state, control, status="rolled_back")
        return Decision("rollback", rec, new, _verdict(control, None, 1.0, rec), stats)
    if state.kind == "canary":
        return _canary(state, data, now, stats)
    if state.kind == "bandit":
        return _bandit(state, data, now, stats, rng or np.random.default_rng())
    return _ab(state, data, now, stats)


def _compare(
    state: ExperimentState, data: Mapping[str, ArmData]
) -> tuple[dict[str, SequentialResult], dict[str, float]]:
    """Every treatment against control; Holm-adjusted p-values when there are several."""
    alpha = 1.0 - state.confidence
    control = data.get(state.control.name, ArmData(ArmStats.empty())).metric
    treatments = [a.name for a in state.arms[1:]]
    # Intervals at alpha/k keep them consistent with Holm's most stringent step.
    per_test = alpha / len(treatments)
    results = {
        name: sequential_test(
            control, data.get(name, ArmData(ArmStats.empty())).metric, alpha=per_test
        )
        for name in treatments
    }
    adjusted = holm({name: r.p_value for name, r in results.items()})
    return results, adjusted


def _ab(
    state: ExperimentState, data: Mapping[str, ArmData], now: float, stats: dict[str, Any]
) -> Decision:
    alpha = 1.0 - state.confidence
    control = state.control.name
    results, adjusted = _compare(state, data)
    stats["tests"] = {k: _result_json(r, adjusted[k]) for k, r in results.items()}
    best = max(results, key=lambda k: results[k].effect)
    best_r, best_p = results[best], adjusted[best]
    short = [
        a.name
        for a in state.arms
        if data.get(a.name, ArmData(ArmStats.empty())).metric.n < state.min_samples
    ]
    elapsed = now - state.created_at
    if short:
        rec = (
            f"continue: waiting for {state.min_samples} samples per arm ({', '.join(short)} short)"
        )
        return Decision("continue", rec, None, _verdict(None, best_r, best_p, rec), stats)
    winners = [
        k
        for k, r in results.items()
        if adjusted[k] <= alpha and r.effect > 0 and r.effect >= state.min_effect
    ]
    if winners:
        win = max(winners, key=lambda k: results[k].effect)
        r = results[win]
        rec = (
            f"promote {win}: {state.primary_metric} {r.effect:+.4g} over {control} "
            f"(CI {r.ci[0]:.4g}..{r.ci[1]:.4g}, p={adjusted[win]:.3g}), clears min effect "
            f"{state.min_effect:g}"
        )
        return Decision(
            "promote",
            rec,
            _only(state, win, status="promoted"),
            _verdict(win, r, adjusted[win], rec),
            stats,
        )
    worse = [k for k, r in results.items() if adjusted[k] <= alpha and r.effect < 0]
    if len(worse) == len(results):
        rec = f"keep {control}: every treatment is significantly worse"
        return Decision(
            "keep",
            rec,
            _only(state, control, status="stopped"),
            _verdict(control, best_r, best_p, rec),
            stats,
        )
    # Confidently below the smallest effect worth shipping: stop early (futility).
    if state.min_effect > 0 and all(r.ci[1] < state.min_effect for r in results.values()):
        rec = (
            f"keep {control}: no treatment can reach the min effect {state.min_effect:g} "
            f"(best upper bound {max(r.ci[1] for r in results.values()):.4g})"
        )
        return Decision(
            "keep",
            rec,
            _only(state, control, status="stopped"),
            _verdict(control, best_r, best_p, rec),
            stats,
        )
    if state.max_duration_s > 0 and elapsed >= state.max_duration_s:
        rec = (
            f"stop, keep {control}: no decision after max duration {state.max_duration_s:g}s "
            "(futility)"
        )
        return Decision(
            "stop",
            rec,
            _only(state, control, status="stopped"),
            _verdict(control, best_r, best_p, rec),
            stats,
        )
    rec = f"continue: best {best} {best_r.effect:+.4g} (p={best_p:.3g}) not conclusive yet"
    return Decision("continue", rec, None, _verdict(None, best_r, best_p, rec), stats)


def _canary(
    state: ExperimentState, data: Mapping[str, ArmData], now: float, stats: dict[str, Any]
) -> Decision:
    control, treatment = state.arms[0].name, state.arms[1].name
    results, adjusted = _compare(state, data)
    r = results[treatment]
    stats["tests"] = {treatment: _result_json(r, adjusted[treatment])}
    stage = state.canary_stage
    stats["canary"] = {
        "stage": stage,
        "share": CANARY_STAGES[stage],
        "held_s": now - state.stage_started_at,
        "hold_s": state.stage_hold_s,
    }
    threshold = state.guardrails.rollback_threshold
    if threshold > 0 and r.ci[1] < -threshold:
        rec = (
            f"rollback: {treatment} is worse than {control} by more than {threshold:g} "
            f"({state.primary_metric} {r.effect:+.4g}, CI {r.ci[0]:.4g}..{r.ci[1]:.4g})"
        )
        return Decision(
            "rollback",
            rec,
            _only(state, control, status="rolled_back"),
            _verdict(control, r, adjusted[treatment], rec),
            stats,
        )
    needed = min(state.min_samples, GUARDRAIL_MIN_ROWS)
    seen = data.get(treatment, ArmData(ArmStats.empty())).window_served
    held = now - state.stage_started_at
    if held < state.stage_hold_s or seen < needed:
        rec = (
            f"continue: canary at {CANARY_STAGES[stage]:g}%, held {held:.0f}/"
            f"{state.stage_hold_s:g}s, {seen}/{needed} treatment rows in this stage"
        )
        return Decision("continue", rec, None, _verdict(None, r, adjusted[treatment], rec), stats)
    nxt = stage + 1
    share = CANARY_STAGES[nxt]
    done = nxt == len(CANARY_STAGES) - 1
    new = state.with_weights(
        {control: 100.0 - share, treatment: share},
        canary_stage=nxt,
        stage_started_at=now,
        status="promoted" if done else state.status,
    )
    if done:
        rec = f"promote {treatment}: canary passed every stage with guardrails holding"
        return Decision(
            "promote", rec, new, _verdict(treatment, r, adjusted[treatment], rec), stats
        )
    rec = (
        f"advance: canary {CANARY_STAGES[stage]:g}% → {share:g}% (guardrails hold over {seen} rows)"
    )
    return Decision("advance", rec, new, _verdict(None, r, adjusted[treatment], rec), stats)


def _bandit(
    state: ExperimentState,
    data: Mapping[str, ArmData],
    now: float,
    stats: dict[str, Any],
    rng: np.random.Generator,
) -> Decision:
    arms = {a.name: data.get(a.name, ArmData(ArmStats.empty())).metric for a in state.arms}
    since = now - state.stage_started_at
    total = sum(s.n for s in arms.values())
    leader = max(arms, key=lambda k: arms[k].mean)
    if since < state.bandit_interval_s or total < min(state.min_samples, GUARDRAIL_MIN_ROWS):
        rec = (
            f"continue: next re-weight after {state.bandit_interval_s:g}s "
            f"(last {since:.0f}s ago), {total} samples"
        )
        return Decision("continue", rec, None, _verdict(leader, None, 1.0, rec), stats)
    weights = thompson_weights(
        arms, floor=state.bandit_floor * 100.0, rng=rng, binary=state.primary_metric == "accuracy"
    )
    stats["thompson"] = weights
    current = state.weights
    change = max(abs(weights[k] - current[k]) for k in current)
    if change < BANDIT_MIN_CHANGE:
        rec = f"continue: Thompson weights within {BANDIT_MIN_CHANGE:g} pp of the current split"
        return Decision("continue", rec, None, _verdict(leader, None, 1.0, rec), stats)
    new = state.with_weights(weights, stage_started_at=now)
    split = ", ".join(f"{k} {v:.2f}%" for k, v in weights.items())
    rec = f"reweight: Thompson sampling → {split} (floor {state.bandit_floor:.0%})"
    return Decision("reweight", rec, new, _verdict(leader, None, 1.0, rec), stats)
