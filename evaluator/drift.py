"""Drift monitoring of each running experiment's arms (issue #16, first slice): the served
model's score distribution and predicted-class shares in the current window against the
reference window, from the bins ``evaluator.aggregate`` keeps (migration 0009).

Per arm and kind, once the reference holds its N rows: PSI (``stats.psi``; level 'warn' and
'act' from the experiment's levels, by default ``PSI_WARN`` and ``PSI_ACT``) of the rolling
current window (the rows answered in the last --drift-window seconds, migration 0015), so a
shift after weeks of steady traffic is not diluted by them and a level falls back once the
traffic does; and the anytime-valid two-sample test (``stats.sequential_drift``) of every row
after the reference, the sample on which it is valid however often the tick looks."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from evaluator.aggregate import SCORE_BINS, DriftBins, FeatureBins
from evaluator.levels import DRIFT_ALPHA as DRIFT_ALPHA
from evaluator.levels import PSI_ACT, PSI_WARN
from evaluator.stats import psi, sequential_drift

KINDS = ("score", "class")
LEVELS = ("ok", "warn", "act")
DRIFT_CONCENTRATION = 100.0
DECAY_KINDS = ("accuracy", "outcome")


@dataclass(frozen=True)
class DriftMeasure:
    kind: str
    psi: float
    level: str  # ok | warn | act
    p_value: float
    log_e: float
    rejected: bool  # the sequential test rejected "same shares as the reference"
    reference_rows: int
    current_rows: int  # every row after the reference: the test's sample
    reference: dict[str, int]  # bin -> rows (str keys: as JSON has them)
    current: dict[str, int]
    window_rows: int  # the rolling window's rows: PSI's and the level's sample
    window: dict[str, int]


# A PSI level counts only when PSI's chance level on unchanged traffic, about
# (K − 1)·(1/N + 1/n) for K bins, N reference and n current rows, is at most this share of
# the warn band: on 30 current rows in 10 bins PSI is ≈ 0.3 by chance alone, and on a
# 100-row reference ≥ 0.09 however many current rows there are.
PSI_NOISE_SHARE = 0.25


def level_of(
    value: float,
    current_rows: int | None = None,
    reference_rows: int = 0,
    bins: int = 10,
    warn: float = PSI_WARN,
    act: float = PSI_ACT,
) -> int:
    """0 ok, 1 warn (PSI ≥ ``warn``), 2 act (≥ ``act``). With the window sizes given, 0 while
    PSI's chance level is above ``PSI_NOISE_SHARE`` of the warn band (N = 1,000 in 10 bins, warn
    0.1: from n ≈ 570 current rows)."""
    if current_rows is not None:
        if current_rows <= 0 or reference_rows <= 0:
            return 0
        chance = (bins - 1) * (1.0 / reference_rows + 1.0 / current_rows)
        if chance > PSI_NOISE_SHARE * warn:
            return 0
    return 2 if value >= act else 1 if value >= warn else 0


def _measure_bins(
    kind: str,
    keys: list[int],
    ref: dict[int, int],
    cur: dict[int, int],
    win: dict[int, int] | None,
    alpha: float,
    tests: int,
    warn: float,
    act: float,
) -> DriftMeasure:
    """PSI of the window (``win``; the current bins when None) and the sequential test of the
    current bins; ``tests``: how many are tested together at ``alpha`` (Bonferroni: p is
    multiplied by it)."""
    r = [ref.get(b, 0) for b in keys]
    c = [cur.get(b, 0) for b in keys]
    w = c if win is None else [win.get(b, 0) for b in keys]
    value = psi(r, w)
    test = sequential_drift(r, c, alpha / tests, DRIFT_CONCENTRATION)
    p_value = min(1.0, test.p_value * tests)
    return DriftMeasure(
        kind=kind,
        psi=value,
        level=LEVELS[level_of(value, sum(w), sum(r), len(keys), warn, act)],
        p_value=p_value,
        log_e=test.log_e,
        rejected=test.drift,
        reference_rows=sum(r),
        current_rows=sum(c),
        reference={str(b): n for b, n in zip(keys, r, strict=True)},
        current={str(b): n for b, n in zip(keys, c, strict=True)},
        window_rows=sum(w),
        window={str(b): n for b, n in zip(keys, w, strict=True)},
    )


def measure(
    bins: DriftBins, alpha: float = DRIFT_ALPHA, warn: float = PSI_WARN, act: float = PSI_ACT
) -> dict[str, DriftMeasure]:
    """kind -> measures of one arm; empty while its reference is incomplete. A kind without
    current rows yet is measured too (PSI 0, p 1). ``alpha``, ``warn``, ``act``: the
    experiment's levels (DriftThresholds)."""
    if bins.reference_rows < bins.reference_size:
        return {}
    out = {}
    for kind in KINDS:
        ref = bins.reference.get(kind, {})
        cur = bins.current.get(kind, {})
        win = None if bins.window is None else bins.window.get(kind, {})
        keys = list(range(SCORE_BINS)) if kind == "score" else sorted(set(ref) | set(cur))
        if len(keys) < 2:
            keys = [*keys, max(keys, default=0) + 1]  # one class only: a second, empty bin
        out[kind] = _measure_bins(kind, keys, ref, cur, win, alpha, 1, warn, act)
    return out


def feature_name(kind: str, names: Sequence[str]) -> str:
    """The model's name of the feature a measure ``feature:I`` is of ("" when it is another
    kind or the model names no feature I)."""
    index = kind.removeprefix("feature:")
    if index == kind or not index.isdigit() or int(index) >= len(names):
        return ""
    return names[int(index)]


def measure_features(
    bins: FeatureBins, alpha: float = DRIFT_ALPHA, warn: float = PSI_WARN, act: float = PSI_ACT
) -> dict[str, DriftMeasure]:
    """feature ("0", "1", ...) -> measures of one arm's captured features; empty until its
    reference is complete and binned. The arm's F features are tested together at ``alpha``
    (each at alpha/F, its p-value multiplied by F), so stationary traffic raises a false
    alarm on some feature of an arm with probability at most alpha, not F·alpha."""
    if bins.reference_rows < bins.reference_size or not bins.edges:
        return {}
    tests = len(bins.edges)
    out = {}
    for feature in sorted(bins.edges):
        keys = list(range(len(bins.edges[feature]) + 1))
        out[str(feature)] = _measure_bins(
            f"feature:{feature}",
            keys,
            bins.reference.get(feature, {}),
            bins.current.get(feature, {}),
            None if bins.window is None else bins.window.get(feature, {}),
            alpha,
            tests,
            warn,
            act,
        )
    return out


@dataclass(frozen=True)
class DecayMeasure:
    """The champion's accuracy (outcome == predicted label) or outcome rate (share of
    positive outcomes) in its current labelled rows against its reference's."""

    kind: str  # accuracy | outcome
    reference_rate: float
    current_rate: float
    p_value: float
    log_e: float
    rejected: bool  # the sequential test rejected "same rate as the reference"
    reference_rows: int
    current_rows: int  # every labelled row after the reference: the test's sample
    window_rate: float  # the rate over the rolling window's labelled rows
    window_rows: int

    @property
    def worse(self) -> bool:
        """Rejected with a lower accuracy than the reference's (the model decayed); any
        rejected change of the outcome rate counts (the labels' base rate moved)."""
        return self.rejected and (
            self.kind != "accuracy" or self.current_rate < self.reference_rate
        )


def measure_decay(bins: DriftBins, alpha: float = DRIFT_ALPHA) -> dict[str, DecayMeasure]:
    """kind -> decay measures of one arm; empty while its labelled reference is incomplete.
    The test is ``sequential_drift`` on the two bins (0, 1) of each kind."""
    if bins.reference_rows < bins.reference_size:
        return {}
    out = {}
    for kind in DECAY_KINDS:
        ref = bins.reference.get(kind, {})
        cur = bins.current.get(kind, {})
        r = [ref.get(0, 0), ref.get(1, 0)]
        c = [cur.get(0, 0), cur.get(1, 0)]
        win = cur if bins.window is None else bins.window.get(kind, {})
        w = [win.get(0, 0), win.get(1, 0)]
        test = sequential_drift(r, c, alpha, DRIFT_CONCENTRATION)
        out[kind] = DecayMeasure(
            kind=kind,
            reference_rate=r[1] / sum(r) if sum(r) else math.nan,
            current_rate=c[1] / sum(c) if sum(c) else math.nan,
            p_value=test.p_value,
            log_e=test.log_e,
            rejected=test.drift,
            reference_rows=sum(r),
            current_rows=sum(c),
            window_rate=w[1] / sum(w) if sum(w) else math.nan,
            window_rows=sum(w),
        )
    return out


def as_json(measures: Mapping[str, DriftMeasure | DecayMeasure]) -> dict[str, Any]:
    return {kind: _finite(asdict(m)) for kind, m in measures.items()}


def _finite(doc: dict[str, Any]) -> dict[str, Any]:
    # JSON has no NaN: a rate without rows is null.
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in doc.items()}
