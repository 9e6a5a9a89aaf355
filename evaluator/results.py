"""``abgate report``: one experiment as a self-contained HTML page and a PDF of the same figures,
read straight from PostgreSQL with time-bucketed GROUP BY queries (never a dump of rows).

Loading (``load_report``, SQL) → pure series (``metric_series``, ``histogram_quantile``) →
figures (matplotlib, object API only: no pyplot state) → ``write_report`` (HTML and PDF).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import html
import io
import json
import logging
import math
import os
import textwrap
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from abgate.errors import AbgateError, FailedPrecondition, NotFound, Unavailable

if TYPE_CHECKING:
    import asyncpg
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure, FigureBase

    from evaluator.experiments import ExperimentState

log = logging.getLogger(__name__)

# "auto" aims at about this many time buckets over the experiment; an explicit width is widened
# when it would give more than MAX_BUCKETS (every series is one row per bucket and arm).
AUTO_BUCKETS = 60
MAX_BUCKETS = 2000
_NICE_STEPS = (
    0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800,
    3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800,
)  # fmt: skip
# Latency histogram resolution: bin b holds [2^(b/K), 2^((b+1)/K)) µs, ≈2.2 % wide, so
# quantiles read from it are within about 1 % of the exact ones.
LATENCY_BINS_PER_OCTAVE = 32
# Shown coarser in the histogram panel (4 bins per octave), exact in the tail panel.
_DISPLAY_MERGE = 8
DECISION_ROWS = 500  # newest decisions listed (markers: every non-"continue" one up to this)
PDF_DECISION_LINES = 24  # rows on the PDF's decision page (recommendations wrap)

# Arms and shadows avoid the decision markers' colours (green, red, black, grey, cyan).
_ARM_COLORS = ("C0", "C1", "C4", "C5", "C6", "C8")
_SHADOW_COLORS = ("C6", "C5", "C8", "C4")
_ACTION_STYLE = {
    "create": ("#000000", ":"),
    "promote": ("#2ca02c", "-"),
    "advance": ("#17becf", "-."),
    "reweight": ("#555555", (0, (1, 3))),
    "keep": ("#000000", "-"),
    "stop": ("#000000", "--"),
    "rollback": ("#d62728", "-"),
    "pause": ("#7f7f7f", "--"),
    "resume": ("#7f7f7f", "-."),
    "archive": ("#7f7f7f", (0, (6, 2))),
    "unarchive": ("#7f7f7f", (0, (1, 1))),
}
_METRIC_LABEL = {
    "accuracy": "accuracy (outcome = predicted label)",
    "outcome": "mean outcome value",
    "score": "mean positive-class score",
}
_METRIC_SOURCE = {
    "accuracy": ", over predictions paired with their outcome (a pair counts from when the later"
    " of the two was logged)",
    "outcome": ", over predictions paired with their outcome (a pair counts from when the later"
    " of the two was logged)",
    "score": ", over successful predictions",
}
_METRIC_AXIS = {"accuracy": "accuracy", "outcome": "mean outcome", "score": "mean score"}


# -- data ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VersionInfo:
    """One row of ``experiment_versions``."""

    version: int
    created_at: float  # epoch seconds
    created_by: str
    reason: str
    state: ExperimentState


@dataclass
class ReportData:
    """Everything the report shows, already reduced by PostgreSQL to one row per bucket/arm.

    Bucket i covers [t0 + i·bucket_s, t0 + (i+1)·bucket_s); every per-bucket array has
    ``n_buckets`` entries."""

    name: str
    versions: list[VersionInfo]
    t0: float
    t1: float  # the last prediction, decision or version (outcomes may come later)
    bucket_s: float
    n_buckets: int
    served: dict[str, np.ndarray]  # non-shadow rows per bucket, by arm
    errors: dict[str, np.ndarray]  # of which status <> 0
    metric: dict[str, np.ndarray]  # (n_buckets, 3): n, Σx, Σx² of the primary metric, by arm
    latency: dict[str, dict[int, int]]  # fine log bin -> rows, by arm
    decisions: list[dict[str, Any]]  # newest DECISION_ROWS, oldest first
    decisions_total: int
    markers: list[dict[str, Any]]  # every decision but "continue" (up to DECISION_ROWS)
    verdict: dict[str, Any] | None
    verdict_ts: float | None
    models: dict[str, str]  # sha256 -> "id:version"
    shadow_pairs: dict[str, np.ndarray]  # (n_buckets, 2): pairs, agreeing pairs, by shadow
    shadow_summary: dict[str, dict[str, Any]]  # evaluator.shadows.compare of shadow_stats
    generated_at: float

    @property
    def state(self) -> ExperimentState:
        return self.versions[-1].state

    @property
    def arms(self) -> list[str]:
        """Arms of the latest version first, then any older ones still in the data."""
        names = [a.name for a in self.state.arms]
        for v in self.versions:
            names += [a.name for a in v.state.arms if a.name not in names]
        return names

    @property
    def shadows(self) -> list[str]:
        names: list[str] = []
        for v in self.versions:
            names += [s.name for s in v.state.shadows if s.name not in names]
        names += [s for s in self.shadow_pairs if s not in names]
        return names

    def edges(self) -> np.ndarray:
        return self.t0 + self.bucket_s * np.arange(self.n_buckets + 1)

    def covered(self) -> np.ndarray:
        """Seconds of each bucket inside [t0, t1] (the last one is usually partial)."""
        edges = self.edges()
        return np.clip(np.minimum(edges[1:], self.t1) - edges[:-1], 0.0, self.bucket_s)

    @property
    def has_traffic(self) -> bool:
        return any(int(v.sum()) for v in self.served.values())


def bucket_width(span_s: float, requested: float | None) -> float:
    """Seconds per bucket: ``auto`` (None) is the smallest of 10 ms, 20 ms, 50 ms … 1 week that
    gives at most AUTO_BUCKETS buckets over ``span_s``; a requested width is kept unless it
    gives more than MAX_BUCKETS, then widened to span/MAX_BUCKETS."""
    span_s = max(span_s, 0.0)
    if requested is None:
        for step in _NICE_STEPS:
            if span_s / step <= AUTO_BUCKETS:
                return float(step)
        return float(math.ceil(span_s / AUTO_BUCKETS / 86400.0) * 86400)
    if span_s / requested > MAX_BUCKETS:
        return span_s / MAX_BUCKETS
    return requested


def parse_bucket_seconds(text: str) -> float | None:
    """``auto`` → None; else a finite number of seconds > 0 (ValueError otherwise)."""
    if text.strip().lower() == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"--bucket-seconds takes seconds or 'auto', got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"--bucket-seconds must be a number > 0, got {text!r}")
    return value


def _bucket(ts: str) -> str:
    # $2 = t0 (epoch s), $3 = bucket width, $4 = last bucket: rows past it (outcomes that came
    # much later than the span the width was chosen for) land in the last bucket.
    return (
        f"least(greatest(floor((extract(epoch FROM {ts})::float8 - $2::float8) / $3::float8), 0),"
        f" $4::float8)::int"
    )


_VERSIONS = """
SELECT version, extract(epoch FROM created_at)::float8 AS t, created_by, reason, config
FROM experiment_versions WHERE experiment = $1 ORDER BY version
"""
# min/max over the (experiment, ts) index: two index probes, not a scan.
_PRED_SPAN = """
SELECT extract(epoch FROM min(ts))::float8 AS lo, extract(epoch FROM max(ts))::float8 AS hi
FROM predictions WHERE experiment = $1
"""
_DECISION_SPAN = """
SELECT extract(epoch FROM min(ts))::float8 AS lo, extract(epoch FROM max(ts))::float8 AS hi,
       count(*) AS n
FROM decisions WHERE experiment = $1
"""
_SERVED = f"""
SELECT {_bucket("ts")} AS b, arm, count(*) AS n, count(*) FILTER (WHERE status <> 0) AS errors
FROM predictions WHERE experiment = $1 AND NOT shadow GROUP BY 1, 2
"""
# A prediction and its outcome count from when the later of the two was logged: the cumulative
# series at time t is (up to the evaluator's settle delay) what the evaluator could know at t.
# Several outcome sources of one request each count, as in evaluator.aggregate.
_METRIC_OUTCOMES = f"""
SELECT {_bucket("greatest(p.ts, o.ts)")} AS b, p.arm, count(*) AS n,
       sum(o.value) AS s, sum(o.value * o.value) AS ss,
       count(*) FILTER (WHERE o.value = p.label) AS correct
FROM predictions p JOIN outcomes o ON o.request_id = p.request_id
WHERE p.experiment = $1 AND NOT p.shadow AND p.status = 0
GROUP BY 1, 2
"""
_METRIC_SCORE = f"""
SELECT {_bucket("ts")} AS b, arm, count(*) AS n, sum(scores[2]::float8) AS s,
       sum(scores[2]::float8 * scores[2]::float8) AS ss, 0 AS correct
FROM predictions WHERE experiment = $1 AND NOT shadow AND status = 0
GROUP BY 1, 2
"""
_LATENCY = f"""
SELECT arm, floor(ln(greatest(latency_us, 1)) / ln(2) * {LATENCY_BINS_PER_OCTAVE})::int AS b,
       count(*) AS n
FROM predictions WHERE experiment = $1 AND NOT shadow GROUP BY 1, 2
"""
# A shadow row and the served row of the same request (both answered), by the shadow's time.
# Each shadow row against the served row of its request, in one scan of the experiment's rows
# (a window per request id) rather than a self-join: on a partition not yet ANALYZEd the planner
# expects one row and nests a loop of index scans, 13.9 s for 10k pairs (0.08 s like this).
_SHADOW_PAIRS = f"""
SELECT b, shadow, count(*) AS pairs, count(*) FILTER (WHERE label = served_label) AS agree
FROM (
    SELECT {_bucket("ts")} AS b, arm AS shadow, shadow AS is_shadow, label,
           max(label) FILTER (WHERE NOT shadow) OVER (PARTITION BY request_id) AS served_label,
           count(*) FILTER (WHERE NOT shadow) OVER (PARTITION BY request_id) AS served
    FROM predictions WHERE experiment = $1 AND status = 0
) AS x
WHERE is_shadow AND served > 0
GROUP BY 1, 2
"""
_DECISIONS = """
SELECT id, extract(epoch FROM ts)::float8 AS ts, action, source, recommendation,
       from_version, to_version
FROM decisions WHERE experiment = $1 {where} ORDER BY id DESC LIMIT $2
"""
_VERDICT = """
SELECT extract(epoch FROM ts)::float8 AS ts, statistics -> 'verdict' AS verdict
FROM decisions WHERE experiment = $1 AND statistics ? 'verdict' ORDER BY id DESC LIMIT 1
"""


async def load_report(url: str, name: str, bucket_seconds: float | None) -> ReportData:
    """Read one experiment's report data (one read-only snapshot); NotFound if it has no
    version, Unavailable if PostgreSQL cannot be reached."""
    import asyncpg

    try:
        conn = await asyncpg.connect(url, timeout=15)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise Unavailable(f"cannot reach PostgreSQL: {reason}") from None
    try:
        await conn.set_type_codec(
            "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            return await _load(conn, name, bucket_seconds)
    except asyncpg.UndefinedTableError as exc:
        raise FailedPrecondition(
            f"the database has no abgate schema ({exc}); run `abgate db migrate`"
        ) from None
    finally:
        await conn.close()


async def _load(conn: asyncpg.Connection, name: str, bucket_seconds: float | None) -> ReportData:
    from evaluator.aggregate import shadow_totals
    from evaluator.experiments import ExperimentState
    from evaluator.shadows import compare

    versions: list[VersionInfo] = []
    for r in await conn.fetch(_VERSIONS, name):
        try:
            state = ExperimentState.from_json(r["config"])
        except (TypeError, KeyError, ValueError) as exc:
            raise AbgateError(
                f"experiment {name!r} version {r['version']} is unreadable: {exc}"
            ) from None
        versions.append(VersionInfo(r["version"], r["t"], r["created_by"], r["reason"], state))
    if not versions:
        raise NotFound(f"unknown experiment {name!r}")

    pred = await conn.fetchrow(_PRED_SPAN, name)
    dec = await conn.fetchrow(_DECISION_SPAN, name)
    assert pred is not None and dec is not None
    starts = [versions[0].created_at] + [x for x in (pred["lo"], dec["lo"]) if x is not None]
    ends = [versions[-1].created_at] + [x for x in (pred["hi"], dec["hi"]) if x is not None]
    t0, t1 = min(starts), max(ends)
    width = bucket_width(t1 - t0, bucket_seconds)
    if bucket_seconds is not None and width != bucket_seconds:
        log.warning(
            "--bucket-seconds %g gives more than %d buckets; using %.3g s",
            bucket_seconds,
            MAX_BUCKETS,
            width,
        )
    last = MAX_BUCKETS - 1
    args = (name, t0, width, float(last))

    state = versions[-1].state
    served_rows = await conn.fetch(_SERVED, *args)
    metric_sql = _METRIC_SCORE if state.primary_metric == "score" else _METRIC_OUTCOMES
    metric_rows = await conn.fetch(metric_sql, *args)
    pair_rows = await conn.fetch(_SHADOW_PAIRS, *args) if _any_shadows(versions) else []
    seen = [int(r["b"]) for r in (*served_rows, *metric_rows, *pair_rows)]
    n_buckets = max([math.floor((t1 - t0) / width) + 1, *(b + 1 for b in seen)])
    n_buckets = min(n_buckets, MAX_BUCKETS)

    served: dict[str, np.ndarray] = {}
    errors: dict[str, np.ndarray] = {}
    for r in served_rows:
        served.setdefault(r["arm"], np.zeros(n_buckets, np.int64))[r["b"]] += r["n"]
        errors.setdefault(r["arm"], np.zeros(n_buckets, np.int64))[r["b"]] += r["errors"]
    metric: dict[str, np.ndarray] = {}
    for r in metric_rows:
        row = metric.setdefault(r["arm"], np.zeros((n_buckets, 3)))[r["b"]]
        if state.primary_metric == "accuracy":  # 0/1 values: Σx = Σx² = correct
            row += (r["n"], r["correct"], r["correct"])
        else:
            row += (r["n"], r["s"], r["ss"])
    pairs: dict[str, np.ndarray] = {}
    for r in pair_rows:
        pairs.setdefault(r["shadow"], np.zeros((n_buckets, 2), np.int64))[r["b"]] += (
            r["pairs"],
            r["agree"],
        )
    latency: dict[str, dict[int, int]] = {}
    for r in await conn.fetch(_LATENCY, name):
        latency.setdefault(r["arm"], {})[int(r["b"])] = int(r["n"])

    recent = await conn.fetch(_DECISIONS.format(where=""), name, DECISION_ROWS)
    markers = await conn.fetch(
        _DECISIONS.format(where="AND action <> 'continue'"), name, DECISION_ROWS
    )
    verdict_row = await conn.fetchrow(_VERDICT, name)
    summary = {s: compare(sums) for s, sums in (await shadow_totals(conn, name)).items()}
    return ReportData(
        name=name,
        versions=versions,
        t0=t0,
        t1=t1,
        bucket_s=width,
        n_buckets=n_buckets,
        served=served,
        errors=errors,
        metric=metric,
        latency=latency,
        decisions=[dict(r) for r in reversed(recent)],
        decisions_total=int(dec["n"]),
        markers=[dict(r) for r in reversed(markers)],
        verdict=verdict_row["verdict"] if verdict_row else None,
        verdict_ts=verdict_row["ts"] if verdict_row else None,
        models=await _model_names(conn, name, versions),
        shadow_pairs=pairs,
        shadow_summary=summary,
        generated_at=time.time(),
    )


def _any_shadows(versions: Sequence[VersionInfo]) -> bool:
    return any(v.state.shadows for v in versions)


async def _model_names(
    conn: asyncpg.Connection, name: str, versions: Sequence[VersionInfo]
) -> dict[str, str]:
    """sha256 -> "id:version": from the model registry table, else from one logged row."""
    shas = sorted(
        {a.model for v in versions for a in v.state.arms}
        | {sh.model for v in versions for sh in v.state.shadows}
    )
    rows = await conn.fetch("SELECT sha256, id, version FROM models WHERE sha256 = ANY($1)", shas)
    out = {r["sha256"]: f"{r['id']}:{r['version']}" for r in rows}
    for sha in shas:
        if sha in out:
            continue
        r = await conn.fetchrow(
            "SELECT model_id, model_version FROM predictions WHERE experiment = $1 AND "
            "model_sha256 = $2 LIMIT 1",
            name,
            sha,
        )
        if r is not None:
            out[sha] = f"{r['model_id']}:{r['model_version']}"
    return out


# -- pure series --------------------------------------------------------------------------------
@dataclass(frozen=True)
class MetricSeries:
    """The primary metric as the evaluator would see it at the end of every bucket."""

    ends: np.ndarray  # bucket end times (epoch s)
    n: dict[str, np.ndarray]  # cumulative samples, by arm
    mean: dict[str, np.ndarray]  # cumulative mean (nan before any sample), by arm
    effect: dict[str, np.ndarray]  # treatment − control, by treatment (nan: no test possible)
    lo: dict[str, np.ndarray]  # always-valid CI (nan where unbounded)
    hi: dict[str, np.ndarray]
    p_value: dict[str, np.ndarray]
    alpha: float  # per test: (1 − confidence) / number of treatments, as the policy uses


def metric_series(data: ReportData) -> MetricSeries:
    """Cumulative per-arm sufficient statistics and ``sequential_test`` at every bucket end."""
    from evaluator.stats import ArmStats, sequential_test

    nb = data.n_buckets
    zeros = np.zeros((nb, 3))
    cum = {arm: np.cumsum(data.metric.get(arm, zeros), axis=0) for arm in data.arms}
    n = {arm: c[:, 0].astype(np.int64) for arm, c in cum.items()}
    mean = {
        arm: np.divide(c[:, 1], c[:, 0], out=np.full(nb, np.nan), where=c[:, 0] > 0)
        for arm, c in cum.items()
    }
    control, treatments = data.arms[0], data.arms[1:]
    alpha = (1.0 - data.state.confidence) / max(1, len(treatments))
    effect, lo, hi, p = {}, {}, {}, {}
    for t in treatments:
        effect[t], lo[t], hi[t], p[t] = (np.full(nb, np.nan) for _ in range(4))
        for i in range(nb):
            c, x = cum[control][i], cum[t][i]
            if c[0] < 2 or x[0] < 2:
                continue
            r = sequential_test(
                ArmStats(int(c[0]), float(c[1]), float(c[2])),
                ArmStats(int(x[0]), float(x[1]), float(x[2])),
                alpha=alpha,
            )
            effect[t][i], p[t][i] = r.effect, r.p_value
            if math.isfinite(r.ci[0]) and math.isfinite(r.ci[1]):
                lo[t][i], hi[t][i] = r.ci
    return MetricSeries(data.edges()[1:], n, mean, effect, lo, hi, p, alpha)


def histogram_quantile(bins: Mapping[int, int], q: float) -> float:
    """Quantile ``q`` (µs) of a LATENCY_BINS_PER_OCTAVE log histogram, interpolated
    geometrically inside its bin; nan without rows."""
    total = sum(bins.values())
    if total == 0:
        return math.nan
    rank = q * total
    seen = 0
    for b in sorted(bins):
        if seen + bins[b] >= rank:
            frac = (rank - seen) / bins[b]
            return float(2.0 ** ((b + frac) / LATENCY_BINS_PER_OCTAVE))
        seen += bins[b]
    return float(2.0 ** ((max(bins) + 1) / LATENCY_BINS_PER_OCTAVE))


# -- formatting ---------------------------------------------------------------------------------
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


def _model(data: ReportData, sha: str) -> str:
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


def definition_rows(data: ReportData) -> list[tuple[str, str]]:
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


def verdict_rows(data: ReportData) -> list[tuple[str, str]]:
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


def arm_rows(data: ReportData, series: MetricSeries) -> list[list[str]]:
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


def shadow_rows(data: ReportData) -> list[list[str]]:
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


# -- figures ------------------------------------------------------------------------------------
def _times(epochs: np.ndarray) -> np.ndarray:
    """Epoch seconds as datetime64 (UTC) for matplotlib's date axis."""
    return (np.asarray(epochs) * 1000.0).astype("datetime64[ms]")


def _date_axis(ax: Axes) -> None:
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator(minticks=4, maxticks=9)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=dt.UTC))


def _no_data(ax: Axes, text: str = "no data yet") -> None:
    ax.text(
        0.5,
        0.5,
        text,
        transform=ax.transAxes,
        ha="center",
        va="center",
        fontsize=14,
        color="0.45",
    )
    ax.set_xticks([])
    ax.set_yticks([])


def _figure(height: float, into: FigureBase | None) -> FigureBase:
    """``into`` (a PDF page's sub-figure) or a new 10-inch-wide figure for the HTML page."""
    from matplotlib.figure import Figure

    return into if into is not None else Figure(figsize=(10, height), layout="constrained")


def _empty(title: str, into: FigureBase | None, text: str = "no data yet") -> FigureBase:
    """A short panel saying there is nothing to plot yet."""
    fig = _figure(2.0, into)
    fig.suptitle(title)
    _no_data(fig.subplots(), text)
    return fig


def _arm_color(data: ReportData, arm: str) -> str:
    return _ARM_COLORS[data.arms.index(arm) % len(_ARM_COLORS)]


def _split_changes(data: ReportData) -> list[float]:
    """When the configured split changed (the first version included): the shares since then
    are what the evaluator's sample-ratio check compares against that split."""
    out = [data.versions[0].created_at]
    for prev, v in zip(data.versions, data.versions[1:], strict=False):
        if v.state.weights != prev.state.weights:
            out.append(v.created_at)
    return out


def fig_shares(data: ReportData, into: FigureBase | None = None) -> FigureBase:
    title = f"Arm shares vs the configured split ({_duration(data.bucket_s)} buckets)"
    if not data.has_traffic:
        return _empty(title, into)
    fig = _figure(5.2, into)
    ax, ax_rate = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1.4])
    fig.suptitle(title)
    edges = data.edges()
    centers = _times((edges[:-1] + edges[1:]) / 2)
    ends = _times(edges[1:])
    zeros = np.zeros(data.n_buckets, np.int64)
    total = sum(data.served.values(), zeros)
    # A bucket belongs to the split in force at its start; cumulative shares restart there.
    segment = np.searchsorted(np.array(_split_changes(data)), edges[:-1], side="right")
    k = len(data.arms)
    covered = data.covered()

    def rate_of(rows: np.ndarray) -> np.ndarray:
        # A sliver of a bucket (the data's last moment) would show a meaningless rate.
        ok = covered >= 0.05 * data.bucket_s
        return np.divide(rows, covered, out=np.full(len(rows), np.nan), where=ok)

    for j, arm in enumerate(data.arms):
        color = _arm_color(data, arm)
        rows = data.served.get(arm, zeros)
        share = np.divide(100.0 * rows, total, out=np.full(data.n_buckets, np.nan), where=total > 0)
        share[covered < 0.05 * data.bucket_s] = np.nan
        ax.plot(centers, share, ".", color=color, ms=4, alpha=0.45)
        for g in np.unique(segment):
            sel = segment == g
            cum_all, cum_arm = np.cumsum(total[sel]), np.cumsum(rows[sel])
            since = np.divide(
                100.0 * cum_arm, cum_all, out=np.full(int(sel.sum()), np.nan), where=cum_all > 0
            )
            ax.plot(
                ends[sel],
                since,
                "-",
                color=color,
                lw=2.4,
                zorder=2,
                label=f"{arm} since the split changed" if g == segment[0] else None,
            )
        # The split in force: one step per version. Dashes of the arms interleave, so equal
        # weights still show every arm's colour.
        xs = [v.created_at for v in data.versions] + [float(edges[-1])]
        ys = [v.state.weights.get(arm, 0.0) for v in data.versions]
        ax.step(
            _times(np.array(xs)),
            [*ys, ys[-1]],
            where="post",
            color=color,
            lw=1.3,
            ls=(4 * j, (4, 4 * (k - 1))),
            zorder=3,
            label=f"{arm} configured",
        )
        ax_rate.plot(centers, rate_of(rows), "-", color=color, lw=1, label=arm)
    ax.plot([], [], ".", color="0.4", label="share per bucket")
    ax.set_ylim(-4, 104)
    ax.set_ylabel("share of requests (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    ax_rate.set_ylabel("requests / s")
    ax_rate.set_ylim(bottom=0)
    ax_rate.grid(alpha=0.3)
    ax_rate.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    ax_rate.set_xlabel("time (UTC)")
    _date_axis(ax_rate)
    return fig


def _decision_lines(data: ReportData, axes: Iterable[Axes], legend_ax: Axes) -> None:
    """A vertical line per decision that is not "continue", styled by action; one legend entry
    per action and source."""
    labelled: set[tuple[str, str]] = set()
    for d in data.markers:
        color, ls = _ACTION_STYLE.get(d["action"], ("#444444", (0, (3, 2, 1, 2))))
        when = _times(np.array([d["ts"]]))[0]
        for ax in axes:
            ax.axvline(when, color=color, ls=ls, lw=1.3, alpha=0.85)
        key = (d["action"], d["source"])
        if key not in labelled:
            labelled.add(key)
            legend_ax.plot([], [], color=color, ls=ls, lw=1.3, label=f"{key[0]} ({key[1]})")


def fig_metric(
    data: ReportData, series: MetricSeries, into: FigureBase | None = None
) -> FigureBase:
    s = data.state
    title = (
        f"Primary metric: {s.primary_metric} (cumulative, at the end of each "
        f"{_duration(data.bucket_s)} bucket)"
    )
    if not any(int(n[-1]) for n in series.n.values()):
        return _empty(
            title, into, "no data yet" if s.primary_metric == "score" else "no outcomes yet"
        )
    fig = _figure(6.2, into)
    ax, ax_eff = fig.subplots(2, 1, sharex=True, height_ratios=[1, 1.15])
    fig.suptitle(title)
    ends = _times(series.ends)
    for arm in data.arms:
        ax.plot(
            ends,
            series.mean[arm],
            "-",
            color=_arm_color(data, arm),
            lw=1.6,
            label=f"{arm} (n={int(series.n[arm][-1]):,})",
        )
    ax.set_ylabel(_METRIC_AXIS[s.primary_metric])
    ax.grid(alpha=0.3)
    level = 100.0 * (1.0 - series.alpha)
    ci_name = f"{level:.4g}% always-valid CI" + (
        f" (α/{len(data.arms) - 1} each)" if len(data.arms) > 2 else ""
    )
    for j, t in enumerate(data.arms[1:]):
        color = _arm_color(data, t)
        ax_eff.plot(ends, series.effect[t], "-", color=color, lw=1.6, label=f"{t} − {data.arms[0]}")
        ax_eff.fill_between(
            ends,
            series.lo[t],
            series.hi[t],
            color=color,
            alpha=0.2,
            lw=0,
            label=ci_name if j == 0 else None,
        )
    ax_eff.axhline(0.0, color="black", lw=0.9)
    if s.min_effect > 0:
        ax_eff.axhline(
            s.min_effect, color="#2ca02c", ls="--", lw=1, label=f"min effect {s.min_effect:g}"
        )
    _clip_effect_axis(ax_eff, series, s.min_effect)
    ax_eff.set_ylabel("effect (treatment − control)")
    if s.kind == "ab" and s.min_samples > 0:
        # The policy decides nothing before every arm has min_samples: shade that wait.
        fewest = np.min(np.vstack([series.n[a] for a in data.arms]), axis=0)
        ready = np.flatnonzero(fewest >= s.min_samples)
        until = series.ends[ready[0]] if ready.size else series.ends[-1]
        start = _times(np.array([data.t0, until]))
        for a in (ax, ax_eff):
            a.axvspan(start[0], start[1], color="0.5", alpha=0.12, lw=0)
        ax_eff.fill_between(
            [], [], color="0.5", alpha=0.12, label=f"< {s.min_samples:,} samples per arm"
        )
    ax_eff.grid(alpha=0.3)
    ax_eff.set_xlabel("time (UTC)")
    _decision_lines(data, (ax, ax_eff), ax)
    for a in (ax, ax_eff):
        a.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    _date_axis(ax_eff)
    return fig


def _clip_effect_axis(ax: Axes, series: MetricSeries, min_effect: float) -> None:
    """Early CIs are huge: scale the axis to the effects and the later CIs, not the first."""
    values = [0.0, min_effect]
    for t, e in series.effect.items():
        values += [float(x) for x in e[np.isfinite(e)]]
        lo, hi = series.lo[t], series.hi[t]
        ok = np.isfinite(lo) & np.isfinite(hi)
        if ok.any():
            width = hi[ok] - lo[ok]
            # CIs no wider than 3x the final one: the early, uninformative ones go off-axis.
            keep = width <= 3.0 * width[-1]
            values += [float(x) for x in lo[ok][keep]] + [float(x) for x in hi[ok][keep]]
    lo_v, hi_v = min(values), max(values)
    pad = 0.08 * (hi_v - lo_v or 1.0)
    ax.set_ylim(lo_v - pad, hi_v + pad)


def _ms_formatter(value: float, _pos: int) -> str:
    return f"{value:g}"


def fig_latency(data: ReportData, into: FigureBase | None = None) -> FigureBase:
    from matplotlib.ticker import FuncFormatter

    title = "Latency per arm (served rows; gateway time per request)"
    arms = [a for a in data.arms if data.latency.get(a)]
    if not arms:
        return _empty(title, into)
    fig = _figure(4.6, into)
    ax_hist, ax_tail = fig.subplots(1, 2)
    fig.suptitle(title)
    k = LATENCY_BINS_PER_OCTAVE
    limit_ms = data.state.guardrails.max_p99_latency_ms
    for arm in arms:
        bins = data.latency[arm]
        total = sum(bins.values())
        color = _arm_color(data, arm)
        p50, p99 = histogram_quantile(bins, 0.5) / 1000, histogram_quantile(bins, 0.99) / 1000
        label = f"{arm}: p50 {p50:.3g} ms, p99 {p99:.3g} ms (n={total:,})"
        # Histogram at 4 bins per octave: share of requests per bin.
        coarse: dict[int, int] = {}
        for b, n in bins.items():
            coarse[b // _DISPLAY_MERGE] = coarse.get(b // _DISPLAY_MERGE, 0) + n
        lo, hi = min(coarse), max(coarse)
        values = np.array([coarse.get(b, 0) for b in range(lo, hi + 1)]) / total
        edges = 2.0 ** (np.arange(lo, hi + 2) * _DISPLAY_MERGE / k) / 1000.0
        ax_hist.stairs(100.0 * values, edges, color=color, lw=1.6, label=label)
        # Tail: share of requests slower than x, at every fine bin edge.
        keys = np.array(sorted(bins))
        counts = np.array([bins[b] for b in keys])
        slower = 1.0 - np.cumsum(counts) / total
        xs = 2.0 ** ((keys + 1) / k) / 1000.0
        ax_tail.step(
            np.r_[2.0 ** (keys[0] / k) / 1000.0, xs],
            np.r_[1.0, slower],
            where="post",
            color=color,
            lw=1.6,
            label=label,
        )
    ax_tail.axhline(0.01, color="0.3", ls=":", lw=1, label="1 % (p99)")
    if limit_ms > 0:
        for a in (ax_hist, ax_tail):
            a.axvline(
                limit_ms, color="#d62728", ls="--", lw=1, label=f"guardrail p99 ≤ {limit_ms:g} ms"
            )
    for a in (ax_hist, ax_tail):
        a.set_xscale("log")
        a.xaxis.set_major_formatter(FuncFormatter(_ms_formatter))
        a.set_xlabel("latency (ms, log scale)")
        a.grid(alpha=0.3, which="both")
    ax_hist.set_ylabel("requests per bin (%)")
    ax_hist.set_title("distribution", fontsize=10)
    ax_hist.set_ylim(0, ax_hist.get_ylim()[1] * 1.35)  # headroom: the legend sits above the bars
    ax_hist.legend(fontsize=8, loc="upper right")
    ax_tail.set_yscale("log")
    ax_tail.set_ylim(max(0.5 / max(sum(data.latency[a].values()) for a in arms), 1e-5), 1.5)
    ax_tail.set_ylabel("share of requests slower than x")
    ax_tail.set_title("tail (1 − CDF)", fontsize=10)
    ax_tail.legend(fontsize=8, loc="lower left")
    return fig


def fig_shadows(data: ReportData, into: FigureBase | None = None) -> FigureBase:
    from evaluator.stats import wilson_interval

    title = (
        f"Shadow agreement with the served prediction (same label), per "
        f"{_duration(data.bucket_s)} bucket and cumulative"
    )
    if not any(int(p[:, 0].sum()) for p in data.shadow_pairs.values()):
        return _empty(title, into)
    fig = _figure(4.4, into)
    ax = fig.subplots()
    fig.suptitle(title)
    edges = data.edges()
    centers = _times((edges[:-1] + edges[1:]) / 2)
    ends = _times(edges[1:])
    for i, name in enumerate(data.shadows):
        p = data.shadow_pairs.get(name)
        if p is None or not p[:, 0].sum():
            continue
        color = _SHADOW_COLORS[i % len(_SHADOW_COLORS)]
        rate = np.divide(100.0 * p[:, 1], p[:, 0], out=np.full(len(p), np.nan), where=p[:, 0] > 0)
        ax.plot(centers, rate, ".", color=color, ms=5, alpha=0.55, label=f"{name} per bucket")
        cp, ca = np.cumsum(p[:, 0]), np.cumsum(p[:, 1])
        has = cp > 0
        cum = np.divide(100.0 * ca, cp, out=np.full(len(p), np.nan), where=has)
        band = np.array(
            [
                wilson_interval(int(a), int(n)) if n else (np.nan, np.nan)
                for a, n in zip(ca, cp, strict=True)
            ]
        )
        ax.plot(
            ends, cum, "-", color=color, lw=1.8, label=f"{name} cumulative ({int(cp[-1]):,} pairs)"
        )
        ax.fill_between(
            ends,
            100 * band[:, 0],
            100 * band[:, 1],
            color=color,
            alpha=0.2,
            lw=0,
            label="95% Wilson CI",
        )
    ax.set_ylim(-4, 104)
    ax.set_ylabel("agreement (%)")
    ax.set_xlabel("time (UTC)")
    ax.grid(alpha=0.3)
    _decision_lines(data, (ax,), ax)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    _date_axis(ax)
    return fig


def _text_page(title: str, blocks: Sequence[tuple[str, Sequence[str]]]) -> Figure:
    """A PDF page of monospaced text (A4 landscape-ish width as the figures)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=_A4_LANDSCAPE)
    fig.text(0.05, 0.95, title, fontsize=16, weight="bold", va="top")
    y = 0.89
    for heading, lines in blocks:
        if y < 0.08:
            break
        fig.text(0.05, y, heading, fontsize=11, weight="bold", va="top")
        y -= 0.032
        for line in lines:
            if y < 0.05:
                fig.text(0.05, y, "…", fontsize=8, family="monospace", va="top")
                break
            fig.text(0.06, y, line, fontsize=8, family="monospace", va="top")
            y -= 0.021
        y -= 0.015
    return fig


def _table_lines(
    columns: Sequence[str], rows: Sequence[Sequence[str]], last_width: int = 0
) -> list[str]:
    """A monospaced table; with ``last_width`` the last column wraps onto further lines."""
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    if last_width:
        widths[-1] = min(widths[-1], last_width)
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*columns).rstrip()]
    for r in rows:
        tail = textwrap.wrap(r[-1], width=last_width) if last_width else [r[-1]]
        lines.append(fmt.format(*r[:-1], tail[0] if tail else "").rstrip())
        indent = sum(widths[:-1]) + 2 * (len(widths) - 1)
        lines += [" " * indent + t for t in tail[1:]]
    return lines


def _wrap(label: str, value: str, width: int = 120) -> list[str]:
    head = f"{label:<22}"
    return textwrap.wrap(value, width=width, initial_indent=head, subsequent_indent=" " * 22) or [
        head
    ]


def title_page(data: ReportData, series: MetricSeries) -> Figure:
    blocks: list[tuple[str, Sequence[str]]] = [
        ("Experiment", [x for k, v in definition_rows(data) for x in _wrap(k, v)]),
        ("Current verdict", [x for k, v in verdict_rows(data) for x in _wrap(k, v)]),
        ("Arms now (all data)", _table_lines(ARM_COLUMNS, arm_rows(data, series))),
    ]
    if data.shadows:
        blocks.append(("Shadows", _table_lines(SHADOW_COLUMNS, shadow_rows(data))))
    blocks.append(
        (
            "Report",
            [
                f"generated {_when(data.generated_at)}; data {_when(data.t0)} .. "
                f"{_when(data.t1)}, buckets of {_duration(data.bucket_s)}",
            ],
        )
    )
    return _text_page(f"abgate experiment report: {data.name}", blocks)


def decision_page(data: ReportData) -> Figure:
    rows = _decision_table(data)
    # On paper: every decision that is not "continue", and the latest ones to fill the page.
    if len(rows) > PDF_DECISION_LINES:
        keep = {i for i, d in enumerate(data.decisions) if d["action"] != "continue"}
        keep |= set(range(len(rows) - PDF_DECISION_LINES // 2, len(rows)))
        rows = [r for i, r in enumerate(rows) if i in keep][-PDF_DECISION_LINES:]
    columns = ("time (UTC)", "action", "source", "versions", "recommendation")
    lines = _table_lines(columns, rows, last_width=100)
    note = (
        f"{data.decisions_total:,} decisions in all; listed: {len(rows)}"
        if data.decisions_total
        else "no decisions yet"
    )
    return _text_page(f"Decisions: {data.name}", [(note, lines)])


def _decision_table(data: ReportData) -> list[list[str]]:
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


# -- output -------------------------------------------------------------------------------------
@dataclass
class Figures:
    shares: FigureBase
    metric: FigureBase
    latency: FigureBase
    shadows: FigureBase | None


def build_figures(data: ReportData, series: MetricSeries) -> Figures:
    return Figures(
        shares=fig_shares(data),
        metric=fig_metric(data, series),
        latency=fig_latency(data),
        shadows=fig_shadows(data) if data.shadows else None,
    )


def captions(data: ReportData) -> dict[str, str]:
    """What each figure shows, under it on the HTML page and on its PDF page."""
    metric = data.state.primary_metric
    return {
        "shares": "Dots: each arm's share of the requests in a bucket. Solid: its share of all "
        "requests since the split last changed (what the sample-ratio check compares). Dashed: "
        "the split in force, from the experiment's versions. Below: requests per second.",
        "metric": f"Per arm, cumulative {_METRIC_LABEL[metric]}{_METRIC_SOURCE[metric]}. Below: "
        "the effect with its always-valid confidence sequence (evaluator.stats.sequential_test), "
        "valid at every look at once; grey: before every arm had the minimum samples. Vertical "
        "lines: decisions.",
        "latency": "Left: share of requests per latency bin (4 bins per octave). Right: share of "
        "requests slower than x; each curve crosses the dotted 1 % line at its p99. p50 and p99 "
        "come from a 32-bins-per-octave histogram computed in SQL over every row (within about "
        "1 %).",
        "shadows": "Agreement: the shadow and the served prediction of the same request have the "
        "same label. Dots per bucket, the line cumulative with a 95 % Wilson interval. The table "
        "is the evaluator's pairwise comparison (shadow_stats).",
    }


_A4_LANDSCAPE = (11.69, 8.27)


def _pdf_page(draw: Callable[[FigureBase], object], caption: str) -> Figure:
    """An A4 landscape page: the figure drawn into its upper part, the caption below."""
    from matplotlib.figure import Figure

    page = Figure(figsize=_A4_LANDSCAPE, layout="constrained")
    subs: Any = page.subfigures(2, 1, height_ratios=[7.0, 1.0])
    top, bottom = subs
    draw(top)
    text = "\n".join(textwrap.wrap(caption, 150))
    bottom.text(0.03, 0.85, text, va="top", fontsize=9, color="0.3")
    return page


def png_base64(fig: FigureBase, dpi: int = 100) -> str:
    buf = io.BytesIO()
    root = fig.get_figure(root=True)
    assert root is not None
    root.savefig(buf, format="png", dpi=dpi)
    return base64.b64encode(buf.getvalue()).decode("ascii")


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}
h1{font-size:1.6em}h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f4f4f4}table.kv th{width:12em}
img{max-width:100%;border:1px solid #eee}.note{color:#666;font-size:.9em}
tr.continue td{color:#777}
"""


def _kv_table(rows: Sequence[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f'<table class="kv">{body}</table>'


def _html_table(
    columns: Sequence[str], rows: Sequence[Sequence[str]], classes: Sequence[str] = ()
) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        f'<tr class="{html.escape(classes[i]) if i < len(classes) else ""}">'
        + "".join(f"<td>{html.escape(c)}</td>" for c in row)
        + "</tr>"
        for i, row in enumerate(rows)
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(fig: FigureBase, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{png_base64(fig)}">'


def render_html(data: ReportData, series: MetricSeries, figs: Figures) -> str:
    name = html.escape(data.name)
    decisions = _decision_table(data)
    shown = (
        f"latest {len(decisions)} of {data.decisions_total:,}"
        if data.decisions_total > len(decisions)
        else f"{len(decisions)}"
    )
    notes = {k: f'<p class="note">{html.escape(v)}</p>' for k, v in captions(data).items()}
    parts = [
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>abgate report: {name}</title><style>{_CSS}</style></head><body>",
        f"<h1>abgate experiment report: {name}</h1>",
        f'<p class="note">Generated {_when(data.generated_at)} from the prediction, outcome '
        f"and decision logs; data from {_when(data.t0)} to {_when(data.t1)} in buckets "
        f"of {html.escape(_duration(data.bucket_s))}.</p>",
        "<h2>Experiment</h2>",
        _kv_table(definition_rows(data)),
        "<h2>Current verdict</h2>",
        _kv_table(verdict_rows(data)),
        "<h3>Arms now</h3>",
        '<p class="note">All data up to now (the verdict above is as of its decision); p50/p99 '
        "from a log-scale histogram, within about 1 %.</p>",
        _html_table(ARM_COLUMNS, arm_rows(data, series)),
        "<h2>Arm shares over time</h2>",
        notes["shares"],
        _img(figs.shares, "arm shares over time"),
        "<h2>Primary metric and confidence sequence</h2>",
        notes["metric"],
        _img(figs.metric, "primary metric and effect over time"),
        "<h2>Decision timeline</h2>",
        f'<p class="note">Decisions ({shown}), oldest first; unchanged "continue" verdicts are '
        "audited when the action changes and then periodically.</p>",
        _html_table(
            ("time (UTC)", "action", "source", "versions", "recommendation"),
            decisions,
            [d["action"] for d in data.decisions],
        )
        if decisions
        else "<p>No decisions yet.</p>",
        "<h2>Latency</h2>",
        notes["latency"],
        _img(figs.latency, "latency distribution per arm"),
        "<h2>Shadow models</h2>",
    ]
    if figs.shadows is None:
        parts.append("<p>This experiment has no shadow models.</p>")
    else:
        parts += [
            notes["shadows"],
            _img(figs.shadows, "shadow agreement over time"),
            _html_table(SHADOW_COLUMNS, shadow_rows(data)),
        ]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(data: ReportData, out: Path) -> tuple[Path, Path]:
    """Write ``out/NAME.html`` and ``out/NAME.pdf`` (each via a temporary file and a rename)."""
    from matplotlib.backends.backend_pdf import PdfPages

    series = metric_series(data)
    figs = build_figures(data, series)
    out.mkdir(parents=True, exist_ok=True)
    html_path, pdf_path = out / f"{data.name}.html", out / f"{data.name}.pdf"

    tmp = html_path.with_name(html_path.name + ".tmp")
    tmp.write_text(render_html(data, series, figs), encoding="utf-8")
    os.replace(tmp, html_path)

    tmp = pdf_path.with_name(pdf_path.name + ".tmp")
    created = dt.datetime.fromtimestamp(data.generated_at, dt.UTC)
    metadata = {"Title": f"abgate report: {data.name}", "CreationDate": created}
    text = captions(data)
    with PdfPages(tmp, metadata=metadata) as pdf:
        # The same figures, drawn again on uniform A4 landscape pages with their captions.
        pdf.savefig(title_page(data, series))
        pdf.savefig(_pdf_page(lambda f: fig_shares(data, f), text["shares"]))
        pdf.savefig(_pdf_page(lambda f: fig_metric(data, series, f), text["metric"]))
        pdf.savefig(decision_page(data))
        pdf.savefig(_pdf_page(lambda f: fig_latency(data, f), text["latency"]))
        if data.shadows:
            pdf.savefig(_pdf_page(lambda f: fig_shadows(data, f), text["shadows"]))
    os.replace(tmp, pdf_path)
    return html_path, pdf_path


# -- CLI ----------------------------------------------------------------------------------------
def cmd_report(args: argparse.Namespace) -> int:
    from abgate.cli_common import EXIT_OK, UsageError, local_database, writable_dir
    from abgate.db.embedded import database_url

    try:
        bucket = parse_bucket_seconds(args.bucket_seconds)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not args.experiment:
        raise UsageError("--experiment must name an experiment")
    writable_dir(args.out, "--out")
    local_database(args.database_url, args.pg_data)
    with database_url(args.database_url, args.pg_data) as url:
        data = asyncio.run(load_report(url, args.experiment, bucket))
    html_path, pdf_path = write_report(data, args.out)
    print(html_path)
    print(pdf_path)
    return EXIT_OK


def add_report_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "report", help="an experiment's report from the logs: self-contained HTML and a PDF"
    )
    p.add_argument("--experiment", required=True, help="experiment name")
    p.add_argument(
        "--out", type=Path, required=True, help="directory for EXPERIMENT.html and EXPERIMENT.pdf"
    )
    p.add_argument(
        "--database-url",
        default=None,
        help="PostgreSQL URL (env ABGATE_DATABASE_URL); without one, an embedded server is started",
    )
    p.add_argument(
        "--pg-data",
        type=Path,
        default=None,
        help="embedded server data directory (env ABGATE_PG_DATA, default var/pg)",
    )
    p.add_argument(
        "--bucket-seconds",
        default="auto",
        help=f"time bucket width in seconds, or 'auto' (about {AUTO_BUCKETS} buckets over the "
        "experiment; default)",
    )
    p.set_defaults(func=cmd_report)
