"""One evaluation tick over 1M and 10M logged rows: a full pass against an incremental one.

Run: python -m benchmarks.bench_evaluator [--rows 1000000,10000000] [--new-rows 10000]
     [--repeats 5] [--full-repeats K] [--database-url URL]
     [--out benchmarks/results/evaluator.json]
(without a URL an embedded PostgreSQL is started in a temporary directory; with one, the URL
names a server on which a database per size is created and dropped afterwards).

Per size N: a fresh database gets N predictions (two experiments, arms 50/50 by a hash of the
row number, ~0.5% failed rows, latencies 100-5000 µs) and outcomes for ~60% of them, generated
server-side by INSERT ... SELECT FROM generate_series (per table, 5M rows a statement). Then:

- full tick: ``reset`` and a ``catch_up`` over everything, in transactions of --tick-rows
  rows of each log (the evaluator's --tick-rows; median of --full-repeats, by default
  --repeats);
- incremental tick: --new-rows new predictions, their outcomes and late outcomes for old
  predictions, then one ``aggregate`` (median of --repeats, fresh rows each time), on two
  connections in turn. ``server``: as the evaluator's pooled connection after it started over
  an existing log: its first tick was a full pass, then small ticks up to 5 in all. asyncpg
  keeps the statements prepared, and from the 6th execution PostgreSQL runs one generic plan
  for every watermark when its estimate beats the average of the first 5 custom plans (which
  the full pass makes large); until asyncpg re-prepares them (statement lifetime, 300 s).
  ``custom``: ``plan_cache_mode=force_custom_plan``, every execution planned for its
  watermarks. The report counts the plans each statement got on ``server``. Since this
  benchmark found the generic plans 5-30x slower, ``aggregate`` sets that mode itself, so both
  columns now measure custom plans (the ``server`` one guards against a regression);
- policy read: ``evaluator.aggregate.arm_data`` (what the evaluator reads) + ``decide``;
- check: the aggregates equal counts computed directly from the logs, else the run fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from abgate.db.embedded import EmbeddedPostgres
from abgate.db.migrate import migrate
from abgate.v1 import control_pb2 as cpb
from evaluator.aggregate import DEFAULT_TICK_ROWS, aggregate, arm_data, arm_totals, catch_up, reset
from evaluator.experiments import ExperimentState, validate_definition
from evaluator.policy import decide

EXPERIMENT = "bench"
OTHER = "other"  # a second experiment, so the GROUP BY has more than one experiment to split
BENCH_SHARE = 0.7  # of the rows; the rest belong to OTHER
OUTCOME_SHARE = 0.6  # of the predictions get an outcome
ERROR_SHARE = 0.005  # of the predictions failed (status 14, label -1, no scores)
CONFIG_VERSIONS = 3  # versions 1..3 in time order; new rows are served under the last one
LATE_SHARE = 0.2  # late outcomes for old predictions per incremental tick, relative to new rows
POLICY_RUNS = 20  # the policy read is milliseconds: more runs than the ticks
PLAN_CACHE_TICKS = 5  # PostgreSQL may switch a prepared statement to a generic plan after 5
WARMUP_ROWS = 100  # rows per untimed small tick on the `server` connection
T0 = 1_790_000_000.0  # ts of row 0; rows are 1 ms apart
LOAD_CHUNK_ROWS = 5_000_000

# Deterministic pseudo-random columns from row number i: u(k) is uniform in [0, 1).
_U = "((hashint8extended(i, {k}) & 2147483647)::float8 / 2147483648.0)"

# The rows [$1, $2) of the log; $3 is N (the config version is the row's third of [0, N)).
_GENERATED = f"""
WITH g AS (
    SELECT i,
           (hashint8extended(i, 1) & 1073741823) % 10000 AS bucket,
           {_U.format(k=2)} AS u_exp,
           {_U.format(k=3)} AS p,
           {_U.format(k=4)} AS u_lat,
           {_U.format(k=5)} AS u_err,
           {_U.format(k=6)} AS u_out,
           {_U.format(k=7)} AS u_val
    FROM generate_series($1::bigint, $2::bigint - 1) AS i
), r AS (
    SELECT i, bucket, p, u_out, u_val,
           'req-' || i AS request_id,
           CASE WHEN u_exp < {BENCH_SHARE} THEN '{EXPERIMENT}' ELSE '{OTHER}' END AS experiment,
           CASE WHEN bucket < 5000 THEN 'control' ELSE 'treatment' END AS arm,
           1 + least(i * {CONFIG_VERSIONS} / $3::bigint, {CONFIG_VERSIONS - 1}) AS config_version,
           (100 + floor(u_lat * 4901))::integer AS latency_us,
           CASE WHEN u_err < {ERROR_SHARE} THEN 14 ELSE 0 END::smallint AS status
    FROM g
), s AS (
    SELECT *, CASE WHEN status = 0 THEN (p >= 0.5)::int::bigint ELSE -1 END AS label FROM r
)
"""

_INSERT_PREDICTIONS = (
    _GENERATED
    + """
INSERT INTO predictions (request_id, ts, experiment, config_version, bucket, hash_version, arm,
                         model_id, model_version, model_sha256, label, scores, latency_us,
                         shadow, gateway_id, status)
SELECT request_id, to_timestamp($4::float8 + i / 1000.0), experiment, config_version, bucket,
       1, arm, 'bench-' || arm, '1', repeat(CASE WHEN arm = 'control' THEN 'a' ELSE 'b' END, 64),
       label,
       CASE WHEN status = 0 THEN ARRAY[1 - p, p]::real[] ELSE '{}'::real[] END,
       latency_us, false, 'gw-' || (i % 4), status
FROM s ORDER BY i
"""
)

# Outcomes of the predictions [$1, $2) that get one (u_out < share) or, with $4, of those that
# did not (late outcomes, arriving after their prediction was aggregated without one). The
# outcome equals the predicted label 70% (control) or 72% (treatment) of the time.
_INSERT_OUTCOMES = (
    _GENERATED
    + f"""
INSERT INTO outcomes (request_id, value, source)
SELECT request_id,
       CASE WHEN label < 0 THEN (u_val < 0.5)::int
            WHEN u_val < (CASE WHEN arm = 'control' THEN 0.70 ELSE 0.72 END) THEN label
            ELSE 1 - label END::float8,
       'bench'
FROM s WHERE (u_out < {OUTCOME_SHARE}) <> $4::boolean ORDER BY i
"""
)


class BenchmarkError(RuntimeError):
    """The aggregates disagree with the logs: the timings mean nothing."""


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


async def load(conn: asyncpg.Connection, lo: int, hi: int, n: int) -> None:
    """Predictions [lo, hi) of a log of nominal size n, and the outcomes that come with them,
    in statements of at most ``LOAD_CHUNK_ROWS`` rows (the same rows in the same order as one
    statement: each sorts its rows on disk, and one sort of 100M rows needs ~25 GB)."""
    for start in range(lo, hi, LOAD_CHUNK_ROWS):
        await conn.execute(_INSERT_PREDICTIONS, start, min(hi, start + LOAD_CHUNK_ROWS), n, T0)
    for start in range(lo, hi, LOAD_CHUNK_ROWS):
        end = min(hi, start + LOAD_CHUNK_ROWS)
        await conn.execute(_INSERT_OUTCOMES, start, end, n, False)


async def load_late_outcomes(conn: asyncpg.Connection, lo: int, hi: int, n: int) -> None:
    """Outcomes for the predictions in [lo, hi) that had none."""
    await conn.execute(_INSERT_OUTCOMES, lo, hi, n, True)


def bench_state() -> ExperimentState:
    d = cpb.ExperimentDefinition(
        name=EXPERIMENT,
        kind=cpb.AB,
        arms=[
            cpb.ArmConfig(name="control", model="bench-control", weight=50.0),
            cpb.ArmConfig(name="treatment", model="bench-treatment", weight=50.0),
        ],
        primary_metric="accuracy",
        min_effect=0.01,
        min_samples=1000,
        guardrails=cpb.Guardrails(max_error_rate=0.05, max_p99_latency_ms=50.0),
    )
    return validate_definition(d, now=T0)


async def check(conn: asyncpg.Connection) -> dict[str, int]:
    """The aggregates against counts straight from the logs; raises BenchmarkError."""
    totals = await arm_totals(conn, EXPERIMENT, 0)
    got = {
        "served": sum(t.served for t in totals.values()),
        "errors": sum(t.errors for t in totals.values()),
        "outcome_n": sum(t.outcome_n for t in totals.values()),
        "correct": sum(t.correct for t in totals.values()),
        "latency_rows": sum(sum(t.latency.values()) for t in totals.values()),
    }
    served = await conn.fetchrow(
        "SELECT count(*) AS served, count(*) FILTER (WHERE status <> 0) AS errors"
        " FROM predictions WHERE experiment = $1 AND NOT shadow",
        EXPERIMENT,
    )
    joined = await conn.fetchrow(
        "SELECT count(*) AS outcome_n, count(*) FILTER (WHERE o.value = p.label) AS correct"
        " FROM predictions p JOIN outcomes o USING (request_id)"
        " WHERE p.experiment = $1 AND NOT p.shadow AND p.status = 0",
        EXPERIMENT,
    )
    assert served is not None and joined is not None
    want = {
        "served": int(served["served"]),
        "errors": int(served["errors"]),
        "outcome_n": int(joined["outcome_n"]),
        "correct": int(joined["correct"]),
        "latency_rows": int(served["served"]),
    }
    if got != want:
        raise BenchmarkError(f"aggregates {got} != logs {want}")
    per_arm = await conn.fetch(
        "SELECT arm, count(*) AS n FROM predictions WHERE experiment = $1 AND NOT shadow"
        " GROUP BY arm",
        EXPERIMENT,
    )
    for r in per_arm:
        if totals[r["arm"]].served != r["n"]:
            raise BenchmarkError(f"arm {r['arm']}: served {totals[r['arm']].served} != {r['n']}")
    return want


async def one_size(
    server_url: str,
    n: int,
    new_rows: int,
    repeats: int,
    log: Any = print,
    full_repeats: int | None = None,
    tick_rows: int = DEFAULT_TICK_ROWS,
) -> dict[str, Any]:
    name = f"abgate_bench_{n}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            return await _one_size(
                with_database(server_url, name),
                n,
                new_rows,
                repeats,
                log,
                full_repeats or repeats,
                tick_rows,
            )
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


class _Log:
    """Hands out row numbers: new predictions above N, late outcomes downwards from N."""

    def __init__(self, n: int, new_rows: int) -> None:
        self.n = n
        self.top = n
        self.late_top = n
        self.late = max(1, int(new_rows * LATE_SHARE))
        # Old rows holding about `late` predictions without an outcome.
        self.span = math.ceil(self.late / (1 - OUTCOME_SHARE))

    async def add(self, conn: asyncpg.Connection, rows: int, late: bool = True) -> None:
        """New predictions with their outcomes and, with ``late``, outcomes for old ones."""
        await load(conn, self.top, self.top + rows, self.n)
        self.top += rows
        if late:
            if self.late_top - self.span < 0:
                raise ValueError("--rows too small for this many late outcomes; use fewer")
            await load_late_outcomes(conn, self.late_top - self.span, self.late_top, self.n)
            self.late_top -= self.span


async def _tick(conn: asyncpg.Connection) -> float:
    now = time.time() + 10  # settle 0 and a cutoff in the future: every row is read
    t = time.perf_counter()
    await aggregate(conn, settle=0.0, now=now)
    return time.perf_counter() - t


async def plan_counts(conn: asyncpg.Connection) -> dict[str, dict[str, int]]:
    """Generic and custom plans this connection made for the tick's two big statements."""
    rows = await conn.fetch(
        "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements"
        " WHERE statement LIKE '%INSERT INTO arm_stats%'"
        " AND statement NOT LIKE '%pg_prepared_statements%'"  # this query is one too
    )
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        if "FROM outcomes o" in r["statement"]:  # (both materialise a CTE)
            name = "outcomes_new"
        elif "AS MATERIALIZED" in r["statement"]:
            name = "predictions_new"
        else:
            continue
        counts = out.setdefault(name, {"generic": 0, "custom": 0})
        counts["generic"] += int(r["generic_plans"])
        counts["custom"] += int(r["custom_plans"])
    return out


async def _one_size(
    url: str, n: int, new_rows: int, repeats: int, log: Any, full_repeats: int, tick_rows: int
) -> dict[str, Any]:
    await migrate(url)
    load_avg = [os.getloadavg()[0]]  # other work on the machine makes the timings noisy
    server = await asyncpg.connect(url)  # as the evaluator's pool has it (see the docstring)
    custom = await asyncpg.connect(url, server_settings={"plan_cache_mode": "force_custom_plan"})
    try:
        log(f"N={n:,}: loading ...")
        t0 = time.perf_counter()
        await load(server, 0, n, n)
        load_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        await server.execute("VACUUM ANALYZE predictions")
        await server.execute("VACUUM ANALYZE outcomes")
        vacuum_s = time.perf_counter() - t1
        outcomes = int(await server.fetchval("SELECT count(*) FROM outcomes"))
        size = await server.fetchrow(
            "SELECT pg_total_relation_size('predictions_default') AS p,"
            " pg_total_relation_size('outcomes') AS o"
        )
        assert size is not None
        log(f"N={n:,}: loaded in {load_s:.1f} s (+ VACUUM ANALYZE {vacuum_s:.1f} s)")

        # Full passes on `custom`, the last one on `server` as its first tick (planned for its
        # parameters either way). Last, so that `server`'s measured ticks come well within
        # asyncpg's statement lifetime (300 s; a re-prepared statement starts over with custom
        # plans).
        full: list[float] = []
        full_ticks = 0
        for i in range(full_repeats):
            conn = server if i == full_repeats - 1 else custom
            await reset(conn)
            result = await catch_up(conn, settle=0.0, now=time.time() + 10, max_rows=tick_rows)
            full.append(result.seconds)
            full_ticks = result.ticks
            log(f"N={n:,}: full pass {full[-1]:.3f} s in {full_ticks} transactions")

        rows = _Log(n, new_rows)
        for _ in range(PLAN_CACHE_TICKS - 1):
            await rows.add(server, WARMUP_ROWS, late=False)
            await _tick(server)
        incremental: list[float] = []
        incremental_custom: list[float] = []
        for _ in range(repeats):
            for conn, runs in ((server, incremental), (custom, incremental_custom)):
                await rows.add(conn, new_rows)
                runs.append(await _tick(conn))
            log(
                f"N={n:,}: incremental tick {incremental[-1] * 1000:.1f} ms"
                f" (custom plans {incremental_custom[-1] * 1000:.1f} ms)"
            )
        plans = await plan_counts(server)
        log(f"N={n:,}: plans on the server-like connection: {plans}")

        state = bench_state()
        policy: list[float] = []
        reads: list[float] = []
        action = ""
        for _ in range(POLICY_RUNS):
            t = time.perf_counter()
            data = await arm_data(server, state, CONFIG_VERSIONS)
            t_read = time.perf_counter()
            action = decide(state, data, T0 + 3600.0).action
            policy.append((time.perf_counter() - t) * 1000.0)
            reads.append((t_read - t) * 1000.0)

        checked = await check(server)
        log(f"N={n:,}: check passed ({checked['served']:,} served rows of {EXPERIMENT!r})")
    finally:
        await server.close()
        await custom.close()
    load_avg.append(os.getloadavg()[0])

    def series(runs: list[float], digits: int) -> dict[str, Any]:
        return {
            "median": round(statistics.median(runs), digits),
            "runs": [round(x, digits) for x in runs],
        }

    full_med = statistics.median(full)
    return {
        "rows": n,
        "outcomes": outcomes,
        "rows_after": rows.top,
        "load_s": round(load_s, 3),
        "vacuum_analyze_s": round(vacuum_s, 3),
        "table_bytes": {"predictions": int(size["p"]), "outcomes": int(size["o"])},
        "full_tick_s": series(full, 4),
        "full_tick_transactions": full_ticks,
        "new_rows": new_rows,
        "late_outcomes_per_tick_approx": rows.late,
        "incremental_tick_s": series(incremental, 5),
        "ratio": round(full_med / statistics.median(incremental), 1),
        "plans": plans,
        "incremental_custom_plan_tick_s": series(incremental_custom, 5),
        "ratio_custom_plan": round(full_med / statistics.median(incremental_custom), 1),
        "policy_ms": {
            "median": round(statistics.median(policy), 3),
            "arm_totals_median": round(statistics.median(reads), 3),
            "runs": len(policy),
        },
        "policy_action": action,
        "check": {"passed": True, **checked},
        "load_average_1m": {"start": load_avg[0], "end": load_avg[1]},
    }


async def main_async(
    server_url: str,
    sizes: Sequence[int],
    new_rows: int,
    repeats: int,
    log: Any = print,
    full_repeats: int | None = None,
    tick_rows: int = DEFAULT_TICK_ROWS,
) -> dict[str, Any]:
    results = [
        await one_size(server_url, n, new_rows, repeats, log, full_repeats, tick_rows)
        for n in sizes
    ]
    conn = await asyncpg.connect(server_url)
    try:
        names = ["server_version", "shared_buffers", "work_mem", "max_parallel_workers_per_gather"]
        settings = {
            r["name"]: r["value"]
            for r in await conn.fetch(
                "SELECT name, current_setting(name) AS value FROM unnest($1::text[]) AS name",
                names,
            )
        }
    finally:
        await conn.close()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "postgres": settings,
        "repeats": repeats,
        "full_repeats": full_repeats or repeats,
        "tick_rows": tick_rows,
        "sizes": results,
    }


def markdown(report: dict[str, Any]) -> str:
    """The report as a table of medians ("server": as the evaluator's pooled connection)."""
    lines = [
        "| rows | load s | full tick s | new rows | incremental ms (server) | full/incr (server)"
        " | incremental ms (custom plans) | full/incr (custom) | policy ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["sizes"]:
        lines.append(
            f"| {r['rows']:,} | {r['load_s']:.1f} | {r['full_tick_s']['median']:.3f}"
            f" | {r['new_rows']:,} | {r['incremental_tick_s']['median'] * 1000:.1f}"
            f" | {r['ratio']:g} | {r['incremental_custom_plan_tick_s']['median'] * 1000:.1f}"
            f" | {r['ratio_custom_plan']:g} | {r['policy_ms']['median']:.2f} |"
        )
    return "\n".join(lines)


def parse_sizes(text: str) -> list[int]:
    return [int(float(x)) for x in text.split(",") if x.strip()]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=parse_sizes, default=[1_000_000, 10_000_000])
    parser.add_argument("--new-rows", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--full-repeats",
        type=int,
        default=None,
        help="full passes per size (default: --repeats); one pass over 100M rows takes minutes",
    )
    parser.add_argument(
        "--tick-rows",
        type=int,
        default=DEFAULT_TICK_ROWS,
        help="rows of each log one transaction of the full pass reads (the evaluator's option)",
    )
    parser.add_argument("--database-url", default="", help="a server; databases are made on it")
    parser.add_argument("--out", type=Path, default=None, help="write results as JSON here")
    args = parser.parse_args(argv)
    if args.database_url:
        report = asyncio.run(
            main_async(
                args.database_url,
                args.rows,
                args.new_rows,
                args.repeats,
                full_repeats=args.full_repeats,
                tick_rows=args.tick_rows,
            )
        )
    else:
        # The data directory goes too: at 10M rows it holds several GB.
        with (
            tempfile.TemporaryDirectory(prefix="abgate-pg-") as tmp,
            EmbeddedPostgres(Path(tmp)) as pg,
        ):
            report = asyncio.run(
                main_async(
                    pg.url,
                    args.rows,
                    args.new_rows,
                    args.repeats,
                    full_repeats=args.full_repeats,
                    tick_rows=args.tick_rows,
                )
            )
    print(markdown(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
