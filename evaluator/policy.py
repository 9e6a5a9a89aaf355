"""Policies: per-arm results → one decision (``ab``, ``canary``, ``bandit``). Pure: the server
feeds aggregates in and writes out what comes back; the statistics live in ``evaluator.stats``.

Order of checks, every kind: sample-ratio mismatch (pauses: nothing else can be trusted) →
guardrails (roll back at once) → the kind's own rule.

The evaluator calls ``decide`` on every tick, so every check here is a test that stays valid
when looked at continuously (an e-value or confidence sequence at one level for the whole
experiment), never a fixed-level test repeated: see docs/statistics.md for each one and its
simulated false-alarm rate and power (``evaluator.simulate``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from evaluator.experiments import CANARY_STAGES, ExperimentState
from evaluator.stats import (
    ArmStats,
    SequentialResult,
    holm,
    rate_difference_test,
    rate_limit_test,
    rate_rows_needed,
    sequential_srm,
    stratified_sequential_test,
    thompson_weights,
)

# Level of the sample-ratio check over the whole experiment (every split, every look).
SRM_ALPHA = 0.01
# Level of each guardrail (error rate, p99 latency) over the whole experiment, per arm.
GUARDRAIL_ALPHA = 0.01
# Guardrails and a canary's metric rollback judge an arm on at least this many of its rows
# (or min_samples if smaller), and the control arm likewise before it is compared with.
GUARDRAIL_MIN_ROWS = 100
# A canary stage collects enough treatment rows for the absolute test (at GUARDRAIL_ALPHA/2) to
# catch a rate this many times a guardrail's limit (with GUARDRAIL_POWER at that one look)
# before it advances, unless stage_min_rows says.
GUARDRAIL_CATCH_TIMES = 3.0
GUARDRAIL_POWER = 0.9
# A bandit moves weights only when some arm changes by at least this much (percentage points).
BANDIT_MIN_CHANGE = 1.0
# p99 latency: "more than 1% of rows slower than the limit".
P99_SHARE = 0.01


@dataclass(frozen=True)
class SplitCell:
    """One arm under one split (a range of config versions with the same allocation)."""

    weight: float  # percent, as configured for this split
    metric: ArmStats = field(default_factory=ArmStats.empty)
    served: int = 0
    errors: int = 0
    slow: int = 0  # rows slower than the latency guardrail


@dataclass(frozen=True)
class ArmData:
    """What the policy knows about one arm (built by ``evaluator.aggregate.build_arm_data``)."""

    metric: ArmStats  # primary metric, all rows of the experiment
    served_since: int = 0  # rows served since the split last changed (a canary's stage)
    window_served: int = 0  # guardrail window: every row of the experiment
    window_errors: int = 0
    window_slow: int = 0  # rows slower than the latency guardrail
    p99_ms: float = math.nan
    # The arm under each split the experiment ran under, oldest first; the same splits, in the
    # same order, for every arm. Empty: one split, the current one, described by the fields
    # above.
    splits: tuple[SplitCell, ...] = ()
    # precision, recall, fpr of the labelled rows (binary labels; None without rows)
    confusion: Mapping[str, float | None] = field(default_factory=dict)


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
            **{k: v for k, v in d.confusion.items()},
        }
    return out


def _only(state: ExperimentState, arm: str, **changes: Any) -> ExperimentState:
    return state.with_weights(
        {a.name: 100.0 if a.name == arm else 0.0 for a in state.arms}, **changes
    )


def _splits(state: ExperimentState, data: Mapping[str, ArmData]) -> list[dict[str, SplitCell]]:
    """Per split, oldest first: arm -> its cell (an arm without data gets an empty one)."""
    arms = [a.name for a in state.arms]
    depth = max((len(d.splits) for d in data.values()), default=0)
    if depth == 0:
        current: dict[str, SplitCell] = {}
        for arm in state.arms:
            d = data.get(arm.name, ArmData(ArmStats.empty()))
            current[arm.name] = SplitCell(
                arm.weight, d.metric, d.served_since, d.window_errors, d.window_slow
            )
        return [current]
    out = []
    for j in range(depth):
        cells = {}
        for name in arms:
            got = data.get(name)
            cells[name] = (
                got.splits[j] if got is not None and j < len(got.splits) else SplitCell(0.0)
            )
        out.append(cells)
    return out


def check_srm(state: ExperimentState, data: Mapping[str, ArmData]) -> dict[str, Any]:
    """The sequential sample-ratio check (``stats.sequential_srm``) over every split, at level
    SRM_ALPHA for the whole experiment: valid from the first row, so no minimum."""
    splits = _splits(state, data)
    r = sequential_srm(
        [
            ({a: c.served for a, c in cells.items()}, {a: c.weight for a, c in cells.items()})
            for cells in splits
        ],
        alpha=SRM_ALPHA,
    )
    return {
        "checked": sum(r.observed.values()) > 0,
        "test": "Dirichlet-multinomial sequential test (Lindon & Malek 2022), every split",
        "level": SRM_ALPHA,
        "splits": len(splits),
        "observed": dict(r.observed),
        "expected": {k: _num(v) for k, v in r.expected.items()},
        "log_bayes_factor": _num(r.log_bayes_factor),
        "p_value": _num(r.p_value),
        "mismatch": r.mismatch,
    }


def guardrail_min_rows(state: ExperimentState) -> int:
    """Rows an arm needs before its guardrails (and a canary's metric rollback) judge it."""
    return max(2, min(state.min_samples, GUARDRAIL_MIN_ROWS))


def stage_rows_needed(state: ExperimentState) -> int:
    """Treatment rows a canary stage collects before advancing: ``stage_min_rows`` when set,
    else enough for each enabled guardrail to catch GUARDRAIL_CATCH_TIMES × its limit."""
    if state.stage_min_rows > 0:
        return state.stage_min_rows
    g = state.guardrails
    limits = [r for r in (g.max_error_rate, P99_SHARE if g.max_p99_latency_ms > 0 else 0) if r]
    needed = [
        rate_rows_needed(r, GUARDRAIL_ALPHA / 2.0, GUARDRAIL_CATCH_TIMES, GUARDRAIL_POWER)
        for r in limits
        if 0.0 < r * GUARDRAIL_CATCH_TIMES < 1.0
    ]
    return max([guardrail_min_rows(state), *needed])


def _rate_check(
    arm: str,
    what: str,
    limit: float,
    margin: float,
    totals: tuple[int, int, int, int],
    strata: Sequence[tuple[tuple[int, int], tuple[int, int]]],
    min_rows: int,
) -> dict[str, Any]:
    """One guardrail of one treatment arm, ``totals`` = (failures, rows) of treatment then of
    control. Two tests, each anytime-valid at GUARDRAIL_ALPHA/2 so that together they hold
    GUARDRAIL_ALPHA: the rate confidently above its absolute ``limit`` (exact,
    ``rate_limit_test``), or, once control has ``min_rows`` too, confidently above control's
    rate by more than ``margin`` (stratified by split, ``rate_difference_test``)."""
    k_t, n_t, k_c, n_c = totals
    level = GUARDRAIL_ALPHA / 2.0
    check: dict[str, Any] = {
        "arm": arm,
        "guardrail": what,
        "limit": limit,
        "margin_over_control": margin,
        "failures": k_t,
        "rows": n_t,
        "level": GUARDRAIL_ALPHA,
        "breach": False,
    }
    if n_t < min_rows:
        check["status"] = f"waiting for {min_rows} rows"
        return check
    absolute = rate_limit_test(k_t, n_t, limit, level)
    check["p_value_limit"] = _num(absolute.p_value)
    check["status"] = "within the limit"
    if absolute.breach:
        check["status"] = "above the limit"
        check["breach"] = True
    if n_c >= min_rows:
        rel = rate_difference_test(strata, alpha=level)
        check["control_rate"] = _num(k_c / n_c)
        check["difference_ci"] = [_num(rel.ci[0]), _num(rel.ci[1])]
        if rel.ci[0] > margin:
            check["status"] = (
                "above the limit and above control" if check["breach"] else "above control"
            )
            check["breach"] = True
    return check


def check_guardrails(state: ExperimentState, data: Mapping[str, ArmData]) -> dict[str, Any]:
    """Each treatment arm's error rate and p99 latency over all its rows, each an anytime-valid
    test at GUARDRAIL_ALPHA (``_rate_check``): ``{"breaches": [text], "checks": [...]}``."""
    g = state.guardrails
    control = state.control.name
    splits = _splits(state, data) if any(d.splits for d in data.values()) else None
    empty = ArmData(ArmStats.empty())
    d_c = data.get(control, empty)
    min_rows = guardrail_min_rows(state)
    breaches: list[str] = []
    checks: list[dict[str, Any]] = []
    for arm in state.arms[1:]:
        d_t = data.get(arm.name, empty)
        for what, limit, of_cell, of_arm in (
            ("error_rate", g.max_error_rate, _errors, _window_errors),
            ("p99_latency", P99_SHARE if g.max_p99_latency_ms > 0 else 0.0, _slow, _window_slow),
        ):
            if not limit > 0.0:
                continue
            if splits is None:
                strata = [((of_arm(d_c), d_c.window_served), (of_arm(d_t), d_t.window_served))]
            else:
                strata = [
                    (
                        (of_cell(s[control]), s[control].served),
                        (of_cell(s[arm.name]), s[arm.name].served),
                    )
                    for s in splits
                ]
            totals = (of_arm(d_t), d_t.window_served, of_arm(d_c), d_c.window_served)
            c = _rate_check(arm.name, what, limit, g.max_rate_increase, totals, strata, min_rows)
            checks.append(c)
            if not c["breach"]:
                continue
            why = c["status"]
            if "difference_ci" in c:
                why += f", +{c['difference_ci'][0]:.2g} or more over control"
            if what == "error_rate":
                breaches.append(
                    f"{arm.name}: error rate {c['failures']}/{c['rows']} ({why}; limit "
                    f"{g.max_error_rate:g}, anytime-valid at {GUARDRAIL_ALPHA:g})"
                )
            else:
                c["limit_ms"] = g.max_p99_latency_ms
                breaches.append(
                    f"{arm.name}: p99 latency ≈{d_t.p99_ms:.3g} ms over {g.max_p99_latency_ms:g}"
                    f" ms ({c['failures']}/{c['rows']} rows slower: {why}; anytime-valid at "
                    f"{GUARDRAIL_ALPHA:g})"
                )
    return {"breaches": breaches, "checks": checks}


def _errors(c: SplitCell) -> int:
    return c.errors


def _slow(c: SplitCell) -> int:
    return c.slow


def _window_errors(d: ArmData) -> int:
    return d.window_errors


def _window_slow(d: ArmData) -> int:
    return d.window_slow


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
            f"pause: sample ratio mismatch (sequential p={srm['p_value']:.2g} ≤ {SRM_ALPHA:g}); "
            "counts do not match the split, so no result can be trusted"
        )
        return Decision(
            "pause", rec, replace(state, status="paused"), _verdict(None, None, 1.0, rec), stats
        )
    guardrails = check_guardrails(state, data)
    stats["guardrails"] = guardrails
    breaches = guardrails["breaches"]
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
    """Every treatment against control, within each split and combined
    (``stratified_sequential_test``); Holm-adjusted p-values when there are several."""
    alpha = 1.0 - state.confidence
    control = state.control.name
    treatments = [a.name for a in state.arms[1:]]
    splits = _splits(state, data)
    # Intervals at alpha/k keep them consistent with Holm's most stringent step.
    per_test = alpha / len(treatments)
    results = {
        name: stratified_sequential_test(
            [(s[control].metric, s[name].metric) for s in splits], alpha=per_test
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


def next_stage(state: ExperimentState, now: float) -> ExperimentState:
    """A canary at its next stage from ``now`` (the treatment's share ``CANARY_STAGES[stage +
    1]``); promoted when that is the last (100 %)."""
    control, treatment = state.arms[0].name, state.arms[1].name
    nxt = state.canary_stage + 1
    share = CANARY_STAGES[nxt]
    return state.with_weights(
        {control: 100.0 - share, treatment: share},
        canary_stage=nxt,
        stage_started_at=now,
        status="promoted" if nxt == len(CANARY_STAGES) - 1 else state.status,
    )


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
    min_rows = guardrail_min_rows(state)
    empty = ArmData(ArmStats.empty())
    n_t = data.get(treatment, empty).metric.n
    n_c = data.get(control, empty).metric.n
    stats["canary"]["rollback_test"] = {
        "threshold": threshold,
        "level": 1.0 - state.confidence,
        "min_rows": min_rows,
        "checked": threshold > 0 and n_t >= min_rows and n_c >= min_rows,
    }
    if threshold > 0 and n_t >= min_rows and n_c >= min_rows and r.ci[1] < -threshold:
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
    needed = stage_rows_needed(state)
    stats["canary"]["stage_rows_needed"] = needed
    seen = data.get(treatment, empty).served_since
    held = now - state.stage_started_at
    if held < state.stage_hold_s or seen < needed:
        rec = (
            f"continue: canary at {CANARY_STAGES[stage]:g}%, held {held:.0f}/"
            f"{state.stage_hold_s:g}s, {seen}/{needed} treatment rows in this stage"
        )
        return Decision("continue", rec, None, _verdict(None, r, adjusted[treatment], rec), stats)
    new = next_stage(state, now)
    share = CANARY_STAGES[new.canary_stage]
    done = new.status == "promoted"
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
    """Thompson re-weighting, and a verdict only from a test: every arm against control within
    each split (the split is fixed inside one, whatever chose it) and combined, Holm-adjusted.
    The arm with the best raw mean is only "the leader": a bandit's allocation follows the
    data, so its pooled means are not a test, and nothing untested is named the winner."""
    arms = {a.name: data.get(a.name, ArmData(ArmStats.empty())).metric for a in state.arms}
    alpha = 1.0 - state.confidence
    results, adjusted = _compare(state, data)
    stats["tests"] = {k: _result_json(r, adjusted[k]) for k, r in results.items()}
    tested = [
        k
        for k, r in results.items()
        if adjusted[k] <= alpha and r.effect > 0 and r.effect >= state.min_effect
    ]
    winner = max(tested, key=lambda k: results[k].effect) if tested else None
    leader = max(arms, key=lambda k: arms[k].mean)
    best = winner or max(results, key=lambda k: results[k].effect)
    verdict_p = adjusted[best]
    if winner is not None:
        said = (
            f"{winner} beats {state.control.name} (stratified by split, p={verdict_p:.3g} "
            f"≤ {alpha:g}): promote it with `abgate experiments promote`"
        )
    else:
        said = f"leader {leader} is not tested better than {state.control.name} yet"
    since = now - state.stage_started_at
    total = sum(s.n for s in arms.values())

    def verdict(rec: str) -> dict[str, Any]:
        return _verdict(winner, results[best] if winner else None, verdict_p, rec)

    if since < state.bandit_interval_s or total < min(state.min_samples, GUARDRAIL_MIN_ROWS):
        rec = (
            f"continue: next re-weight after {state.bandit_interval_s:g}s "
            f"(last {since:.0f}s ago), {total} samples; {said}"
        )
        return Decision("continue", rec, None, verdict(rec), stats)
    weights = thompson_weights(
        arms, floor=state.bandit_floor * 100.0, rng=rng, binary=state.primary_metric == "accuracy"
    )
    stats["thompson"] = weights
    current = state.weights
    change = max(abs(weights[k] - current[k]) for k in current)
    if change < BANDIT_MIN_CHANGE:
        rec = (
            f"continue: Thompson weights within {BANDIT_MIN_CHANGE:g} pp of the current split; "
            f"{said}"
        )
        return Decision("continue", rec, None, verdict(rec), stats)
    new = state.with_weights(weights, stage_started_at=now)
    split = ", ".join(f"{k} {v:.2f}%" for k, v in weights.items())
    rec = f"reweight: Thompson sampling → {split} (floor {state.bandit_floor:.0%}); {said}"
    return Decision("reweight", rec, new, verdict(rec), stats)
