"""Drift monitoring of each running experiment's arms (issue #16, first slice): the served
model's score distribution and predicted-class shares in the current window against the
reference window, from the bins ``evaluator.aggregate`` keeps (migration 0009).

Per arm and kind, once the reference holds its N rows: PSI (``stats.psi``; level 'warn' from
``PSI_WARN``, 'act' from ``PSI_ACT``) and the anytime-valid two-sample test
(``stats.sequential_drift``), valid however often the tick looks. The current window is every
row after the reference (cumulative; a rolling window is a later refinement)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from evaluator.aggregate import SCORE_BINS, DriftBins
from evaluator.stats import PSI_ACT, PSI_WARN, psi, sequential_drift

KINDS = ("score", "class")
LEVELS = ("ok", "warn", "act")
DRIFT_ALPHA = 0.01
DRIFT_CONCENTRATION = 100.0


@dataclass(frozen=True)
class DriftMeasure:
    kind: str
    psi: float
    level: str  # ok | warn | act
    p_value: float
    log_e: float
    rejected: bool  # the sequential test rejected "same shares as the reference"
    reference_rows: int
    current_rows: int
    reference: dict[str, int]  # bin -> rows (str keys: as JSON has them)
    current: dict[str, int]


def level_of(value: float) -> int:
    return 2 if value >= PSI_ACT else 1 if value >= PSI_WARN else 0


def measure(bins: DriftBins, alpha: float = DRIFT_ALPHA) -> dict[str, DriftMeasure]:
    """kind -> measures of one arm; empty while its reference is incomplete. A kind without
    current rows yet is measured too (PSI 0, p 1)."""
    if bins.reference_rows < bins.reference_size:
        return {}
    out = {}
    for kind in KINDS:
        ref = bins.reference.get(kind, {})
        cur = bins.current.get(kind, {})
        keys = list(range(SCORE_BINS)) if kind == "score" else sorted(set(ref) | set(cur))
        if len(keys) < 2:
            keys = [*keys, max(keys, default=0) + 1]  # one class only: a second, empty bin
        r = [ref.get(b, 0) for b in keys]
        c = [cur.get(b, 0) for b in keys]
        value = psi(r, c)
        test = sequential_drift(r, c, alpha, DRIFT_CONCENTRATION)
        out[kind] = DriftMeasure(
            kind=kind,
            psi=value,
            level=LEVELS[level_of(value)],
            p_value=test.p_value,
            log_e=test.log_e,
            rejected=test.drift,
            reference_rows=sum(r),
            current_rows=sum(c),
            reference={str(b): n for b, n in zip(keys, r, strict=True)},
            current={str(b): n for b, n in zip(keys, c, strict=True)},
        )
    return out


def as_json(measures: dict[str, DriftMeasure]) -> dict[str, Any]:
    return {kind: asdict(m) for kind, m in measures.items()}
