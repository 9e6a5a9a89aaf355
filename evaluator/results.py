"""An experiment's results as PostgreSQL holds them, and the series derived from them: what
``abgate report`` draws, and what anything else that shows an experiment reads.

Loading (``load_results``: one read-only snapshot, every table reduced by time-bucketed GROUP BY
queries, never a dump of rows) → ``ExperimentResults`` → pure series (``metric_series``,
``histogram_quantile``; ``bucket_width`` picks the buckets). Figures and rendering stand in
``evaluator.report`` (figures → render), which imports this module and never the other way
round: nothing here imports matplotlib or a renderer.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from abgate.errors import AbgateError, FailedPrecondition, NotFound, Unavailable

if TYPE_CHECKING:
    import asyncpg

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
DECISION_ROWS = 500  # newest decisions listed (markers: every non-"continue" one up to this)


# -- data ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VersionInfo:
    """One row of ``experiment_versions``."""

    version: int
    created_at: float  # epoch seconds
    created_by: str
    reason: str
    state: ExperimentState


class DriftPoint(NamedTuple):
    """One arm's drift or decay measure as a tick measured it (drift_history), the last one
    of its time bucket."""

    t: float  # epoch s
    psi: float | None  # None for decay
    level: str  # ok | warn | act
    p_value: float  # anytime-valid
    rejected: bool
    rate: float | None  # decay: the accuracy or outcome rate (of the rolling window)
    reference_rate: float | None
    reference_rows: int
    current_rows: int  # every row after the reference (the test's sample)
    window_rows: int | None  # the rolling window's (PSI's, rate's); None before migration 0015
    feature_name: str | None  # a feature's name in the arm's model (None: unnamed, or no feature)


@dataclass
class ExperimentResults:
    """An experiment's results, already reduced by PostgreSQL to one row per bucket/arm.

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
    # (arm, measure) -> its drift_history points, oldest first, at most one per bucket;
    # measure: score, class, feature:I (I: its position), decay:accuracy, decay:outcome
    drift: dict[tuple[str, str], list[DriftPoint]] = field(default_factory=dict)
    # (n_buckets, 4): true/false positives, false/true negatives of the labelled rows, by arm
    # (label > 0 said positive, outcome > 0 was positive), by when the later was logged
    confusion: dict[str, np.ndarray] = field(default_factory=dict)
    # arm -> time bucket -> {fine log bin: rows}: ``latency`` by bucket, loaded only when asked
    # (``load_results(..., latency_by_bucket=True)``); empty otherwise
    latency_by_bucket: dict[str, dict[int, dict[int, int]]] = field(default_factory=dict)

    def latency_within(self, arm: str, inside: np.ndarray) -> dict[int, int]:
        """``arm``'s latency histogram over the buckets where ``inside`` (n_buckets bools) is
        True; needs ``latency_by_bucket``."""
        merged: dict[int, int] = {}
        for t, bins in self.latency_by_bucket.get(arm, {}).items():
            if inside[t]:
                for b, n in bins.items():
                    merged[b] = merged.get(b, 0) + n
        return merged

    def measure_label(self, arm: str, measure: str) -> str:
        """``measure`` as the report names it: a feature with its model's name when the
        evaluator knew it (``feature:1 (mean_texture)``)."""
        named = next(
            (p.feature_name for p in self.drift.get((arm, measure), ()) if p.feature_name), None
        )
        return f"{measure} ({named})" if named else measure

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
_DRIFT_SPAN = """
SELECT extract(epoch FROM min(ts))::float8 AS lo, extract(epoch FROM max(ts))::float8 AS hi
FROM drift_history WHERE experiment = $1
"""
_DECISION_SPAN = """
SELECT extract(epoch FROM min(ts))::float8 AS lo, extract(epoch FROM max(ts))::float8 AS hi,
       count(*) AS n
FROM decisions WHERE experiment = $1
"""
# Each request id counts once, as in evaluator.aggregate: its first served row by ingest order
# (a retry that reached another worker or gateway, or a reused id, is logged twice), and per
# shadow its first shadow row. Repeated ids are few: finding them is one hash aggregate over the
# experiment's rows, and the join to that short list is a hash join.
_SERVED_ONCE = """WITH repeated AS (
    SELECT request_id, min(seq) AS first_seq FROM predictions
    WHERE experiment = $1 AND NOT shadow GROUP BY 1 HAVING count(*) > 1
), served AS (
    SELECT p.* FROM predictions p LEFT JOIN repeated r USING (request_id)
    WHERE p.experiment = $1 AND NOT p.shadow AND (r.first_seq IS NULL OR r.first_seq = p.seq)
)
"""
_SERVED = f"""{_SERVED_ONCE}
SELECT {_bucket("ts")} AS b, arm, count(*) AS n, count(*) FILTER (WHERE status <> 0) AS errors
FROM served GROUP BY 1, 2
"""
# A prediction and its outcome count from when the later of the two was logged: the cumulative
# series at time t is (up to the evaluator's settle delay) what the evaluator could know at t.
# Several outcome sources of one request each count, as in evaluator.aggregate, but of one
# source only the first outcome (by ingest order) from the prediction's client identity or
# accepted for any identity.
_METRIC_OUTCOMES = f"""{_SERVED_ONCE}, pairs AS (
    SELECT DISTINCT ON (o.request_id, o.source) p.ts AS pts, o.ts AS ots, p.arm, p.label, o.value
    FROM served p JOIN outcomes o ON o.request_id = p.request_id
    WHERE p.status = 0 AND (o.client_identity = p.client_identity OR o.any_identity)
    ORDER BY o.request_id, o.source, o.seq
)
SELECT {_bucket("greatest(pts, ots)")} AS b, arm, count(*) AS n,
       sum(value) AS s, sum(value * value) AS ss,
       count(*) FILTER (WHERE value = label) AS correct
FROM pairs GROUP BY 1, 2
"""
# The confusion counts of the same pairs, by when the later of the two was logged: label > 0 is
# a positive prediction, value > 0 a positive outcome (binary labels; precision, recall, FPR).
_CONFUSION = f"""{_SERVED_ONCE}, pairs AS (
    SELECT DISTINCT ON (o.request_id, o.source) p.ts AS pts, o.ts AS ots, p.arm,
           p.label > 0 AS said, o.value > 0 AS was
    FROM served p JOIN outcomes o ON o.request_id = p.request_id
    WHERE p.status = 0 AND (o.client_identity = p.client_identity OR o.any_identity)
    ORDER BY o.request_id, o.source, o.seq
)
SELECT {_bucket("greatest(pts, ots)")} AS b, arm,
       count(*) FILTER (WHERE said AND was) AS tp, count(*) FILTER (WHERE said AND NOT was) AS fp,
       count(*) FILTER (WHERE NOT said AND was) AS fn,
       count(*) FILTER (WHERE NOT said AND NOT was) AS tn
FROM pairs GROUP BY 1, 2
"""
_METRIC_SCORE = f"""{_SERVED_ONCE}
SELECT {_bucket("ts")} AS b, arm, count(*) AS n, sum(scores[2]::float8) AS s,
       sum(scores[2]::float8 * scores[2]::float8) AS ss, 0 AS correct
FROM served WHERE status = 0
GROUP BY 1, 2
"""
_LATENCY = f"""{_SERVED_ONCE}
SELECT arm, floor(ln(greatest(latency_us, 1)) / ln(2) * {LATENCY_BINS_PER_OCTAVE})::int AS b,
       count(*) AS n
FROM served GROUP BY 1, 2
"""
# The same histogram per time bucket too (for a question's window; one row per bucket, arm and
# bin, so only when asked).
_LATENCY_BY_BUCKET = f"""{_SERVED_ONCE}
SELECT {_bucket("ts")} AS t, arm,
       floor(ln(greatest(latency_us, 1)) / ln(2) * {LATENCY_BINS_PER_OCTAVE})::int AS b,
       count(*) AS n
FROM served GROUP BY 1, 2, 3
"""
# A shadow row and the served row of the same request (both answered), by the shadow's time.
# Each shadow row against the served row of its request, in one scan of the experiment's rows
# (a window per request id) rather than a self-join: on a partition not yet ANALYZEd the planner
# expects one row and nests a loop of index scans, 13.9 s for 10k pairs (0.08 s like this).
# Only the first row of each (request id, served or shadow arm) takes part.
_SHADOW_PAIRS = f"""
SELECT b, shadow, count(*) AS pairs, count(*) FILTER (WHERE label = served_label) AS agree
FROM (
    SELECT {_bucket("ts")} AS b, arm AS shadow, shadow AS is_shadow, label, status,
           max(label) FILTER (WHERE NOT shadow AND status = 0)
               OVER (PARTITION BY request_id) AS served_label,
           count(*) FILTER (WHERE NOT shadow AND status = 0)
               OVER (PARTITION BY request_id) AS served
    FROM (
        SELECT ts, arm, shadow, label, status, request_id,
               row_number() OVER (PARTITION BY request_id, shadow,
                                  CASE WHEN shadow THEN arm ELSE '' END ORDER BY seq) AS k
        FROM predictions WHERE experiment = $1
    ) AS once
    WHERE k = 1
) AS x
WHERE is_shadow AND status = 0 AND served > 0
GROUP BY 1, 2
"""
# The last measure of each bucket: at most n_buckets points per (arm, measure), however often
# the evaluator kept one.
_DRIFT_HISTORY = f"""
SELECT DISTINCT ON (arm, measure, b) {_bucket("ts")} AS b, arm, measure,
       extract(epoch FROM ts)::float8 AS t, psi, level, p_value, rejected, rate, reference_rate,
       reference_rows, current_rows, window_rows, feature_name
FROM drift_history WHERE experiment = $1
ORDER BY arm, measure, b, ts DESC
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


async def load_results(
    url: str, name: str, bucket_seconds: float | None, *, latency_by_bucket: bool = False
) -> ExperimentResults:
    """Read one experiment's results (one read-only snapshot); NotFound if it has no
    version, Unavailable if PostgreSQL cannot be reached. ``latency_by_bucket``: also each
    bucket's latency histogram (``ExperimentResults.latency_within``)."""
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
            return await _load(conn, name, bucket_seconds, latency_by_bucket)
    except asyncpg.UndefinedTableError as exc:
        raise FailedPrecondition(
            f"the database has no abgate schema ({exc}); run `abgate db migrate`"
        ) from None
    finally:
        await conn.close()


async def _load(
    conn: asyncpg.Connection, name: str, bucket_seconds: float | None, by_bucket: bool = False
) -> ExperimentResults:
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
    measured = await conn.fetchrow(_DRIFT_SPAN, name)
    assert pred is not None and dec is not None and measured is not None
    spans = (pred, dec, measured)
    starts = [versions[0].created_at] + [r["lo"] for r in spans if r["lo"] is not None]
    ends = [versions[-1].created_at] + [r["hi"] for r in spans if r["hi"] is not None]
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
    confusion_rows = await conn.fetch(_CONFUSION, *args)
    pair_rows = await conn.fetch(_SHADOW_PAIRS, *args) if _any_shadows(versions) else []
    seen = [int(r["b"]) for r in (*served_rows, *metric_rows, *pair_rows, *confusion_rows)]
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
    confusion: dict[str, np.ndarray] = {}
    for r in confusion_rows:
        if r["b"] < n_buckets:
            confusion.setdefault(r["arm"], np.zeros((n_buckets, 4), np.int64))[r["b"]] += (
                r["tp"],
                r["fp"],
                r["fn"],
                r["tn"],
            )
    pairs: dict[str, np.ndarray] = {}
    for r in pair_rows:
        pairs.setdefault(r["shadow"], np.zeros((n_buckets, 2), np.int64))[r["b"]] += (
            r["pairs"],
            r["agree"],
        )
    latency: dict[str, dict[int, int]] = {}
    latency_by_bucket: dict[str, dict[int, dict[int, int]]] = {}
    if by_bucket:
        for r in await conn.fetch(_LATENCY_BY_BUCKET, *args):
            arm, b, n = r["arm"], int(r["b"]), int(r["n"])
            latency_by_bucket.setdefault(arm, {}).setdefault(int(r["t"]), {})[b] = n
            whole = latency.setdefault(arm, {})
            whole[b] = whole.get(b, 0) + n
    else:
        for r in await conn.fetch(_LATENCY, name):
            latency.setdefault(r["arm"], {})[int(r["b"])] = int(r["n"])

    drift: dict[tuple[str, str], list[DriftPoint]] = {}
    for r in await conn.fetch(_DRIFT_HISTORY, *args):
        point = DriftPoint(
            r["t"], r["psi"], r["level"], r["p_value"], r["rejected"], r["rate"],
            r["reference_rate"], int(r["reference_rows"]), int(r["current_rows"]),
            None if r["window_rows"] is None else int(r["window_rows"]), r["feature_name"],
        )  # fmt: skip
        drift.setdefault((r["arm"], r["measure"]), []).append(point)
    for points in drift.values():
        points.sort()
    recent = await conn.fetch(_DECISIONS.format(where=""), name, DECISION_ROWS)
    markers = await conn.fetch(
        _DECISIONS.format(where="AND action <> 'continue'"), name, DECISION_ROWS
    )
    verdict_row = await conn.fetchrow(_VERDICT, name)
    summary = {s: compare(sums) for s, sums in (await shadow_totals(conn, name)).items()}
    return ExperimentResults(
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
        latency_by_bucket=latency_by_bucket,
        decisions=[dict(r) for r in reversed(recent)],
        decisions_total=int(dec["n"]),
        markers=[dict(r) for r in reversed(markers)],
        verdict=verdict_row["verdict"] if verdict_row else None,
        verdict_ts=verdict_row["ts"] if verdict_row else None,
        models=await _model_names(conn, name, versions),
        shadow_pairs=pairs,
        shadow_summary=summary,
        confusion=confusion,
        generated_at=time.time(),
        drift=drift,
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
    # Each arm's mean with its always-valid interval at 1 − confidence (nan: unbounded).
    mean_lo: dict[str, np.ndarray] = field(default_factory=dict)
    mean_hi: dict[str, np.ndarray] = field(default_factory=dict)
    mean_alpha: float = 0.05


def metric_series(data: ExperimentResults) -> MetricSeries:
    """Cumulative per-arm sufficient statistics and ``sequential_test`` at every bucket end."""
    from evaluator.stats import ArmStats, mean_confidence_sequence, sequential_test

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
    mean_alpha = 1.0 - data.state.confidence
    bands = {arm: mean_confidence_sequence(c[:, 0], c[:, 1], c[:, 2], mean_alpha)
             for arm, c in cum.items()}  # fmt: skip
    return MetricSeries(
        data.edges()[1:], n, mean, effect, lo, hi, p, alpha,
        {arm: b[0] for arm, b in bands.items()}, {arm: b[1] for arm, b in bands.items()},
        mean_alpha,
    )  # fmt: skip


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
