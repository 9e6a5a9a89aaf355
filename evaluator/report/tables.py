"""The report's words and numbers: how values, times and durations are written, and the tables
(definition, verdict, arms, shadows, decisions) that the HTML page and the PDF's text pages both
show, as plain strings from ``evaluator.results``. The figures take their titles' durations from
here; the ``_`` helpers are shared inside ``evaluator.report`` only.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from evaluator.results import ExperimentResults, MetricSeries, histogram_quantile

if TYPE_CHECKING:
    from evaluator.experiments import ExperimentState


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, float) and not math.isfinite(x):
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def _when(epoch: float | None, ms: bool = False) -> str:
    if epoch is None:
        return "–"
    t = dt.datetime.fromtimestamp(epoch, dt.UTC)
    return t.strftime("%Y-%m-%d %H:%M:%S") + (f".{t.microsecond // 1000:03d}" if ms else "") + "Z"


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:g} ms"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


def _model(data: ExperimentResults, sha: str) -> str:
    named = data.models.get(sha)
    return f"{named} ({sha[:12]})" if named else sha[:12] if len(sha) == 64 else sha


def _guardrails(state: ExperimentState) -> str:
    """The limits and what is tested of them, at what level (``evaluator.policy``)."""
    from evaluator.policy import GUARDRAIL_ALPHA, P99_SHARE, guardrail_min_rows

    g = state.guardrails
    parts = []
    if g.max_error_rate:
        parts.append(f"error rate ≤ {g.max_error_rate:.3g}")
    if g.max_p99_latency_ms:
        parts.append(f"p99 ≤ {g.max_p99_latency_ms:g} ms (≤ {P99_SHARE:.0%} of rows slower)")
    tested = ""
    if parts:
        tested = (
            f" — each a test valid at every look at α = {GUARDRAIL_ALPHA:g} per arm: the "
            "treatment's rate confidently above the limit, or above control's by more than "
            f"{g.max_rate_increase:g}, over at least {guardrail_min_rows(state)} rows"
        )
    if g.rollback_threshold:
        parts.append(f"canary rolls back if worse by > {g.rollback_threshold:g}")
    return (", ".join(parts) + tested) if parts else "none"


def definition_rows(data: ExperimentResults) -> list[tuple[str, str]]:
    """The experiment's latest definition as (field, value) rows."""
    from evaluator.policy import SRM_ALPHA

    s, v = data.state, data.versions[-1]
    rows = [
        ("status", s.status),
        ("kind", s.kind + (f" (stage {s.canary_stage})" if s.kind == "canary" else "")),
        (
            "arms",
            "; ".join(f"{a.name} = {_model(data, a.model)} @ {a.weight:g}%" for a in s.arms),
        ),
        ("primary metric", s.primary_metric),
        ("min effect", f"{s.min_effect:g}"),
        ("confidence", f"{s.confidence:g}"),
        ("min samples per arm", f"{s.min_samples:,}"),
        ("max duration", _duration(s.max_duration_s) if s.max_duration_s else "none"),
        ("guardrails", _guardrails(s)),
        (
            "sample-ratio check",
            f"Dirichlet-multinomial sequential test over every split, α = {SRM_ALPHA:g} for the"
            " whole experiment",
        ),
    ]
    if s.shadows:
        rows.append(
            (
                "shadows",
                "; ".join(
                    f"{sh.name} = {_model(data, sh.model)} @ {sh.sample_rate:g}" for sh in s.shadows
                ),
            )
        )
    rows += [
        ("created", _when(data.versions[0].created_at)),
        (
            "version",
            f"{v.version} of {len(data.versions)}, {_when(v.created_at)}"
            + (f" by {v.created_by}" if v.created_by else "")
            + (f": {v.reason}" if v.reason else ""),
        ),
    ]
    return rows


def verdict_rows(data: ExperimentResults) -> list[tuple[str, str]]:
    v = data.verdict
    if v is None:
        return [("verdict", "none yet (the evaluator has not judged this experiment)")]
    ci = v.get("ci") or []
    ci_text = f"[{_fmt(ci[0])}, {_fmt(ci[1])}]" if len(ci) == 2 else "–"
    return [
        ("recommendation", v.get("recommendation") or "continue"),
        ("winner", v.get("winner") or "–"),
        ("effect", _fmt(v.get("effect_size"))),
        ("CI", ci_text),
        ("p-value", _fmt(v.get("p_value"))),
        ("decided", _when(data.verdict_ts)),
    ]


def arm_rows(data: ExperimentResults, series: MetricSeries) -> list[list[str]]:
    """Per arm: model, weight, served, errors, metric n and mean, effect [CI], p50/p99."""
    weights = data.state.weights
    models = {a.name: a.model for v in data.versions for a in v.state.arms}
    out = []
    for arm in data.arms:
        served = int(data.served.get(arm, np.zeros(1)).sum())
        errs = int(data.errors.get(arm, np.zeros(1)).sum())
        n = int(series.n[arm][-1]) if data.n_buckets else 0
        mean = float(series.mean[arm][-1]) if n else math.nan
        if arm in series.effect and np.isfinite(series.effect[arm][-1]):
            e = series.effect[arm][-1]
            lo, hi = series.lo[arm][-1], series.hi[arm][-1]
            effect = f"{e:+.4g} [{_fmt(float(lo))}, {_fmt(float(hi))}]"
        else:
            effect = "control" if arm == data.arms[0] else "–"
        bins = data.latency.get(arm, {})
        p50, p99 = histogram_quantile(bins, 0.5), histogram_quantile(bins, 0.99)
        out.append(
            [
                arm,
                _model(data, models.get(arm, "")),
                f"{weights.get(arm, 0.0):g}%",
                f"{served:,}",
                f"{errs:,}",
                f"{n:,}",
                _fmt(mean),
                effect,
                f"{_fmt(p50 / 1000, 3)} / {_fmt(p99 / 1000, 3)}",
            ]
        )
    return out


ARM_COLUMNS = (
    "arm",
    "model",
    "weight now",
    "served",
    "errors",
    "metric n",
    "metric mean",
    "effect vs control [CI]",
    "p50 / p99 ms",
)


def shadow_rows(data: ExperimentResults) -> list[list[str]]:
    out = []
    for name in data.shadows:
        s = data.shadow_summary.get(name)
        if s is None:
            out.append([name, "–", "not aggregated by the evaluator yet", "–", "–", "–", "–"])
            continue
        if not s["pairs"]:
            out.append([name, "0", "–", "–", "–", _fmt(s["shadow_error_rate"], 3), "–"])
            continue
        ci = s["agreement_ci"]
        acc = (
            f"{s['served_accuracy']:.3f} / {s['shadow_accuracy']:.3f} "
            f"(McNemar p={s['mcnemar']['p_value']:.3g}, n={s['labelled']:,})"
            if "mcnemar" in s
            else "no outcomes yet"
        )
        out.append(
            [
                name,
                f"{s['pairs']:,}",
                f"{s['agreement']:.1%} [{ci[0]:.1%}, {ci[1]:.1%}]",
                f"{s['score_delta']['mean']:+.4f}",
                f"{s['latency_delta_us']['mean'] / 1000:+.3f}",
                _fmt(s["shadow_error_rate"], 3),
                acc,
            ]
        )
    return out


SHADOW_COLUMNS = (
    "shadow",
    "pairs",
    "agreement [95% CI]",
    "score Δ",
    "latency Δ ms",
    "shadow error rate",
    "accuracy served / shadow",
)


def _decision_table(data: ExperimentResults) -> list[list[str]]:
    return [
        [
            _when(d["ts"], ms=True),
            d["action"],
            d["source"],
            f"{d['from_version'] or '–'} → {d['to_version']}" if d["to_version"] else "",
            d["recommendation"],
        ]
        for d in data.decisions
    ]


def drift_keys(data: ExperimentResults, features_per_arm: int = 3) -> list[tuple[str, str]]:
    """The (arm, measure) series the report shows, by arm: score and class drift, the
    ``features_per_arm`` captured features with the highest PSI seen, then decay."""
    arms = data.arms + sorted({a for a, _ in data.drift if a not in data.arms})
    out: list[tuple[str, str]] = []
    for arm in arms:
        own = sorted(k for k in data.drift if k[0] == arm)
        features = sorted(
            (k for k in own if k[1].startswith("feature:")),
            key=lambda k: -max((p.psi or 0.0) for p in data.drift[k]),
        )[:features_per_arm]
        out += [k for k in own if k[1] in ("score", "class")] + features
        out += [k for k in own if k[1].startswith("decay:")]
    return out


def drift_rows(data: ExperimentResults) -> list[list[str]]:
    """Per shown series: its latest measure, and when it first reached warn and act."""
    rows = []
    for key in drift_keys(data):
        points = data.drift[key]
        last = points[-1]
        first = {lv: next((p.t for p in points if p.level in lvs), None)
                 for lv, lvs in (("warn", ("warn", "act")), ("act", ("act",)))}  # fmt: skip
        rate = (
            f"{last.rate:.3f} / {last.reference_rate:.3f}"
            if last.rate is not None and last.reference_rate is not None
            else "–"
        )
        rows.append(
            [
                key[0],
                data.measure_label(*key),
                _fmt(last.psi, 3),
                last.level + (" (test rejected)" if last.rejected else ""),
                f"{last.p_value:.3g}",
                rate,
                f"{last.reference_rows:,} / {last.current_rows:,} / "
                + ("–" if last.window_rows is None else f"{last.window_rows:,}"),
                _when(first["warn"]),
                _when(first["act"]),
                _when(last.t),
            ]
        )
    return rows


DRIFT_COLUMNS = (
    "arm",
    "measure",
    "PSI",
    "level",
    "p-value (anytime-valid)",
    "rate now / reference",
    "rows reference / current / window",
    "first warn",
    "first act",
    "measured",
)
