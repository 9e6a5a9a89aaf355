"""Seeded simulations of whole experiments through ``evaluator.policy.decide``, driven exactly as
the evaluator's tick drives it: each tick, rows arrive and are split across arms by the
experiment's current weights (or by a buggy split); their sums land in per-config-version
totals as ``evaluator.aggregate`` stores them; ``build_arm_data`` turns them into what the
policy reads; a decision that changes the config becomes a new version with a new snapshot
seq and SRM window, as ``EvaluatorServer._write`` does it. Used by the tests (a few hundred
experiments) and by ``benchmarks/bench_decisions.py`` (thousands, with Clopper–Pearson
intervals).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import stats as _sp

from evaluator.aggregate import ArmTotals, build_arm_data, latency_bucket_floor_us
from evaluator.experiments import Arm, ExperimentState, Guardrails
from evaluator.policy import Decision, decide
from gateway.allocation import Allocation

FAST_BUCKET = 40  # 2^10 µs ≈ 1 ms


@dataclass(frozen=True)
class ArmTruth:
    """How one arm really behaves."""

    accuracy: float = 0.8  # P(outcome equals the predicted label), successful rows
    error_rate: float = 0.0
    slow_rate: float = 0.0  # share of rows slower than the p99 limit


@dataclass(frozen=True)
class Scenario:
    kind: str  # ab | canary | bandit
    truths: Mapping[str, ArmTruth]  # first is control
    weights: Mapping[str, float] | None = None  # starting split (canary: the ramp's)
    rows_per_tick: int = 100
    ticks: int = 3600
    # The gateway's true shares, when they differ from the configured split (an SRM bug):
    # arm -> multiplier of its configured weight.
    skew: Mapping[str, float] = field(default_factory=dict)
    min_samples: int = 1000
    min_effect: float = 0.0
    max_error_rate: float = 0.0
    max_p99_latency_ms: float = 0.0
    rollback_threshold: float = 0.0
    stage_hold_s: float = 60.0
    stage_min_rows: int = 0
    bandit_interval_s: float = 60.0


@dataclass(frozen=True)
class Outcome:
    action: str  # the first decision that ended it, or "running"
    recommendation: str
    tick: int  # when (-1: never)
    stage: int  # canary stage at the end
    winner: str | None = None  # the last decision's verdict


def _state(s: Scenario) -> ExperimentState:
    names = list(s.truths)
    if s.kind == "canary":
        weights = {names[0]: 99.0, names[1]: 1.0}
    else:
        weights = dict(s.weights or {n: 100.0 / len(names) for n in names})
    allocation = Allocation.initial(weights).to_dict()
    arms = tuple(Arm(n, f"model-{n}", float(weights[n])) for n in names)
    return ExperimentState(
        name="sim",
        salt="sim",
        kind=s.kind,
        arms=arms,
        min_samples=s.min_samples,
        min_effect=s.min_effect,
        guardrails=Guardrails(s.max_error_rate, s.max_p99_latency_ms, s.rollback_threshold),
        stage_hold_s=s.stage_hold_s,
        stage_min_rows=s.stage_min_rows,
        bandit_interval_s=s.bandit_interval_s,
        allocation=allocation,
        created_at=0.0,
        stage_started_at=0.0,
    )


def run(s: Scenario, rng: np.random.Generator) -> Outcome:
    """One experiment to its first terminal decision (pause, rollback, promote, keep, stop),
    or to the end of its ticks."""
    state = _state(s)
    seq = 1
    history: list[tuple[int, ExperimentState]] = [(seq, state)]
    since = seq
    by_version: dict[int, dict[str, ArmTotals]] = {}
    slow_bucket = FAST_BUCKET
    if s.max_p99_latency_ms > 0:
        limit_us = s.max_p99_latency_ms * 1000.0
        slow_bucket = 4 * math.ceil(math.log2(limit_us)) + 4
        assert latency_bucket_floor_us(slow_bucket) >= limit_us
    names = list(s.truths)
    last: Decision | None = None
    for tick in range(1, s.ticks + 1):
        w = np.array([state.weights[n] * s.skew.get(n, 1.0) for n in names])
        counts = rng.multinomial(s.rows_per_tick, w / w.sum())
        cell = by_version.setdefault(seq, {})
        for n, c in zip(names, counts, strict=True):
            if c == 0:
                continue
            t = s.truths[n]
            errors = int(rng.binomial(c, t.error_rate))
            ok = int(c) - errors
            correct = int(rng.binomial(ok, t.accuracy))
            slow = int(rng.binomial(c, t.slow_rate))
            a = cell.setdefault(n, ArmTotals())
            a.served += int(c)
            a.errors += errors
            a.outcome_n += ok
            a.outcome_sum += correct
            a.outcome_sumsq += correct
            a.correct += correct
            if slow:
                a.latency[slow_bucket] = a.latency.get(slow_bucket, 0) + slow
            if c - slow:
                a.latency[FAST_BUCKET] = a.latency.get(FAST_BUCKET, 0) + int(c) - slow
        data = build_arm_data(state, history, by_version, since)
        d: Decision = decide(state, data, float(tick), rng)
        last = d
        if d.state is None:
            continue
        new = d.state
        seq += 1
        if new.allocation == state.allocation:
            new = replace(new, since_version=since)
        else:
            new = replace(new, since_version=0)
            since = seq
        history.append((seq, new))
        state = new
        if new.status != "running":
            return Outcome(
                d.action, d.recommendation, tick, new.canary_stage, d.verdict.get("winner")
            )
    winner = last.verdict.get("winner") if last is not None else None
    return Outcome("running", "", -1, state.canary_stage, winner)


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval for k successes in n trials."""
    if n == 0:
        return 0.0, 1.0
    a = 1.0 - confidence
    lo = 0.0 if k == 0 else float(_sp.beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(_sp.beta.ppf(1 - a / 2, k + 1, n - k))
    return lo, hi


def rate(outcomes: list[Outcome], *actions: str) -> tuple[float, float, float, int]:
    """Share of ``outcomes`` that ended in one of ``actions``: (share, CP low, CP high, k)."""
    k = sum(o.action in actions for o in outcomes)
    lo, hi = clopper_pearson(k, len(outcomes))
    return k / len(outcomes), lo, hi, k


# -- drift monitoring ---------------------------------------------------------------------------
SCORE_BINS = 10  # as evaluator.drift bins scores: 10 equal-width bins of [0, 1]


def score_bins(scores: np.ndarray) -> np.ndarray:
    """Counts of ``scores`` in the drift monitor's bins (``evaluator.drift.score_bin``'s rule:
    floor(10·s), 1.0 in the last bin)."""
    b = np.minimum(np.floor(scores * SCORE_BINS).astype(np.int64), SCORE_BINS - 1)
    return np.bincount(b, minlength=SCORE_BINS)


@dataclass(frozen=True)
class DriftScenario:
    """One arm's positive-class scores, Beta(a, b), and after ``shift_after`` current rows
    Beta(a2, b2); looked at every ``rows_per_tick`` rows as the tick looks at the stored bins."""

    a: float = 2.0
    b: float = 5.0
    a2: float | None = None  # None: stationary
    b2: float | None = None
    shift_after: int = 0
    reference_rows: int = 1000
    rows_per_tick: int = 200
    ticks: int = 500
    alpha: float = 0.01


@dataclass(frozen=True)
class DriftOutcome:
    detected_tick: int  # first look the sequential test rejected at (-1: never)
    delay_rows: int  # current rows after the shift until then (-1: never)
    final_psi: float


def run_drift(s: DriftScenario, rng: np.random.Generator) -> DriftOutcome:
    """The reference window (the first ``reference_rows`` rows), then ``ticks`` looks at PSI
    and ``sequential_drift`` of the cumulative current window, as the evaluator does each tick."""
    from evaluator.stats import psi, sequential_drift

    ref = score_bins(rng.beta(s.a, s.b, s.reference_rows))
    cur = np.zeros(SCORE_BINS, dtype=np.int64)
    seen = 0
    for tick in range(s.ticks):
        shifted = s.a2 is not None and s.b2 is not None
        n_before = (
            max(0, min(s.rows_per_tick, s.shift_after - seen)) if shifted else s.rows_per_tick
        )
        n_after = s.rows_per_tick - n_before
        cur += score_bins(rng.beta(s.a, s.b, n_before))
        if n_after:
            cur += score_bins(rng.beta(s.a2, s.b2, n_after))  # type: ignore[arg-type]
        seen += s.rows_per_tick
        if sequential_drift(ref.tolist(), cur.tolist(), s.alpha).drift:
            delay = seen - s.shift_after if shifted and seen > s.shift_after else -1
            return DriftOutcome(tick, delay, psi(ref.tolist(), cur.tolist()))
    return DriftOutcome(-1, -1, psi(ref.tolist(), cur.tolist()))


# -- feature drift and decay --------------------------------------------------------------------
@dataclass(frozen=True)
class MonitorScenario:
    """One arm's traffic as the feature drift and decay monitors see it: ``features``
    independent N(0, 1) request features and labelled rows whose predicted label is right with
    probability ``accuracy``. After ``shift_after`` current rows, feature 0's mean moves by
    ``covariate_shift`` (a covariate shift) and/or the accuracy becomes ``accuracy_after`` (a
    concept shift: the labels change, the features do not). Each look (tick) adds
    ``rows_per_tick`` feature rows and ``labelled_per_tick`` labelled rows."""

    features: int = 5
    accuracy: float = 0.85
    positive_rate: float = 0.4
    covariate_shift: float = 0.0
    accuracy_after: float | None = None
    shift_after: int = 0
    reference_rows: int = 1000
    decay_reference_rows: int = 1000
    rows_per_tick: int = 500
    labelled_per_tick: int = 100
    ticks: int = 100
    alpha: float = 0.01
    window_ticks: int | None = None  # PSI over the last this many looks' rows (None: all)


@dataclass(frozen=True)
class MonitorOutcome:
    feature_tick: int  # first look a feature's crossing (PSI warn/act or the test) came at
    feature_delay_rows: int  # current feature rows after the shift until then (-1: never)
    decay_tick: int  # first look a decay test rejected at (-1: never)
    decay_delay_rows: int  # current labelled rows after the shift until then (-1: never)
    psi_tick: int = -1  # first look a feature's PSI level (warn or act) came at (-1: never)
    psi_delay_rows: int = -1


def _feature_counts(values: np.ndarray, edges: list[np.ndarray]) -> list[np.ndarray]:
    return [
        np.bincount(np.searchsorted(e, values[:, f], side="right"), minlength=len(e) + 1)
        for f, e in enumerate(edges)
    ]


def run_monitor(s: MonitorScenario, rng: np.random.Generator) -> MonitorOutcome:
    """The tick's feature drift and decay measures (``evaluator.drift.measure_features`` and
    ``measure_decay``, on bins built as the SQL builds them: decile edges of the reference
    rows, width_bucket) after every look: the tests on the cumulative current windows, PSI on
    the rolling window of the last ``window_ticks`` looks (as the slots of migration 0015
    hold) or, without one, on the cumulative window too."""
    from evaluator.aggregate import DriftBins, FeatureBins
    from evaluator.drift import measure_decay, measure_features

    deciles = [0.1 * i for i in range(1, 10)]
    ref = rng.normal(0.0, 1.0, (s.reference_rows, s.features)).astype(np.float32)
    edges = [
        np.unique(np.quantile(ref[:, f].astype(np.float64), deciles)) for f in range(s.features)
    ]
    ref_counts = _feature_counts(ref.astype(np.float64), edges)
    cur_counts = [np.zeros(len(e) + 1, dtype=np.int64) for e in edges]
    looks: list[list[np.ndarray]] = []  # the window's looks' counts, oldest first
    in_window = [np.zeros(len(e) + 1, dtype=np.int64) for e in edges]

    def labelled(n: int, accuracy: float) -> tuple[np.ndarray, np.ndarray]:
        outcome = rng.random(n) < s.positive_rate
        right = rng.random(n) < accuracy
        return right.astype(np.int64), outcome.astype(np.int64)

    ref_right, ref_pos = labelled(s.decay_reference_rows, s.accuracy)
    decay_ref = {
        "accuracy": {0: int((ref_right == 0).sum()), 1: int(ref_right.sum())},
        "outcome": {0: int((ref_pos == 0).sum()), 1: int(ref_pos.sum())},
    }
    decay_cur = {"accuracy": {0: 0, 1: 0}, "outcome": {0: 0, 1: 0}}
    shifted = s.covariate_shift != 0.0 or s.accuracy_after is not None
    feature_tick = decay_tick = psi_tick = -1
    feature_delay = decay_delay = psi_delay = -1
    seen = labelled_seen = 0
    labelled_shift = s.shift_after * s.labelled_per_tick // s.rows_per_tick
    for tick in range(s.ticks):
        rows = rng.normal(0.0, 1.0, (s.rows_per_tick, s.features))
        after = np.arange(seen, seen + s.rows_per_tick) >= s.shift_after
        if s.covariate_shift:
            rows[after, 0] += s.covariate_shift
        look = _feature_counts(rows.astype(np.float32).astype(np.float64), edges)
        for f, c in enumerate(look):
            cur_counts[f] += c
        if s.window_ticks is not None:
            looks.append(look)
            for f, c in enumerate(look):
                in_window[f] += c
            if len(looks) > s.window_ticks:
                for f, c in enumerate(looks.pop(0)):
                    in_window[f] -= c
        seen += s.rows_per_tick
        n_before = max(0, min(s.labelled_per_tick, labelled_shift - labelled_seen))
        n_after = s.labelled_per_tick - n_before if s.accuracy_after is not None else 0
        n_before = s.labelled_per_tick - n_after
        for n, acc in ((n_before, s.accuracy), (n_after, s.accuracy_after or s.accuracy)):
            right, pos = labelled(n, acc)
            decay_cur["accuracy"][1] += int(right.sum())
            decay_cur["accuracy"][0] += n - int(right.sum())
            decay_cur["outcome"][1] += int(pos.sum())
            decay_cur["outcome"][0] += n - int(pos.sum())
        labelled_seen += s.labelled_per_tick
        if feature_tick < 0 or psi_tick < 0:
            window = None
            if s.window_ticks is not None:
                window = {f: dict(enumerate(c.tolist())) for f, c in enumerate(in_window)}
            bins = FeatureBins(
                s.reference_rows,
                s.reference_rows,
                {f: e.tolist() for f, e in enumerate(edges)},
                {f: dict(enumerate(c.tolist())) for f, c in enumerate(ref_counts)},
                {f: dict(enumerate(c.tolist())) for f, c in enumerate(cur_counts)},
                window,
            )
            measures = measure_features(bins, s.alpha)
            delay = seen - s.shift_after if shifted and seen > s.shift_after else -1
            if feature_tick < 0 and any(m.rejected or m.level != "ok" for m in measures.values()):
                feature_tick, feature_delay = tick, delay
            if psi_tick < 0 and any(m.level != "ok" for m in measures.values()):
                psi_tick, psi_delay = tick, delay
        if decay_tick < 0:
            decay_bins = DriftBins(
                s.decay_reference_rows,
                s.decay_reference_rows,
                {k: dict(v) for k, v in decay_ref.items()},
                {k: dict(v) for k, v in decay_cur.items()},
            )
            if any(m.rejected for m in measure_decay(decay_bins, s.alpha).values()):
                decay_tick = tick
                if shifted and labelled_seen > labelled_shift:
                    decay_delay = labelled_seen - labelled_shift
        if feature_tick >= 0 and decay_tick >= 0 and psi_tick >= 0:
            break
    return MonitorOutcome(feature_tick, feature_delay, decay_tick, decay_delay, psi_tick, psi_delay)
