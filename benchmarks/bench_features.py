"""Logging cost of feature capture at 0 %, 10 % and 100 % as a ratio to logging without it.

Drives the gateway's own logging code (``DataPlane.log_prediction`` / ``log_batch`` queueing
rows into real ``LogWriter``s, which COPY them into PostgreSQL) for the same predictions with
capture absent (the ratio's base), at rate 0, 0.1 and 1; the request ids are the same across
configurations, so each rate samples the same rows every round. One measurement is: queue
``--rows`` predictions the way a gateway does (``single``: one ``log_prediction`` per call, as
Predict; ``batch``: one ``log_batch`` of ``--batch`` rows per call, as PredictBatch), yielding to
the event loop between calls so the writers flush meanwhile, then stop the writers (the rest is
flushed): wall time per row, and the time spent inside the queueing calls (the request path's
part). The configurations alternate within each round (in a rotating order), the tables are
emptied after every measurement, and ratios are of medians over ``--repeats`` rounds.

Run: python -m benchmarks.bench_features [--rows 50000] [--repeats 9] [--database-url URL]
     [--out benchmarks/results/features.json]
(without a URL an embedded PostgreSQL is started in a temporary directory, as bench_logwriter).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import asyncpg
import numpy as np

from abgate.db.embedded import EmbeddedPostgres
from abgate.db.migrate import migrate
from gateway.dataplane import ArmRuntime, BatchResult, DataPlane, ExperimentRuntime
from gateway.hashing import BUCKET_FUNCTIONS, feature_threshold
from gateway.logwriter import FEATURE_COLUMNS, LogWriter
from gateway.pgsink import PostgresSink

# None: no capture at all (the code path before feature capture: no row passed, no writer).
CONFIGS: tuple[float | None, ...] = (None, 0.0, 0.1, 1.0)
MODES = ("single", "batch")
N_FEATURES = 30  # the demo models' (breast cancer) width
N_CLASSES = 2


def label(rate: float | None) -> str:
    return "none" if rate is None else f"{rate:g}"


def experiment(rate: float | None) -> ExperimentRuntime:
    arms = tuple(
        ArmRuntime(
            name=name, index=i, variant=cast(Any, None), model_id=f"demo-{name}",
            model_version="1", model_sha256=str(i) * 64, model_pb=None, response_prefix=b"",
        )
        for i, name in enumerate(("control", "treatment"))
    )  # fmt: skip
    return ExperimentRuntime(
        name="demo",
        salt="demo",
        arms=arms,
        allocation=cast(Any, None),
        table=(),
        table_np=np.zeros(0, dtype=np.intp),
        n_features=N_FEATURES,
        n_classes=N_CLASSES,
        config_version=1,
        hash_version=1,
        bucket_of=BUCKET_FUNCTIONS[1],
        feature_sample_rate=rate or 0.0,
        feature_threshold=feature_threshold(rate or 0.0),
    )


class Workload:
    """The same predictions for every configuration: request ids, rows, labels, scores."""

    def __init__(self, n: int, seed: int = 7) -> None:
        rng = np.random.default_rng(seed)
        self.n = n
        self.request_ids = [f"{i:032x}" for i in rng.integers(0, 2**63, n)]
        self.matrix = rng.standard_normal((n, N_FEATURES)).astype(np.float32)
        # Each call's decoded row, as the servicer holds it before it logs (built once here,
        # so that no configuration pays for making it inside the timed calls).
        self.rows = [self.matrix[i : i + 1] for i in range(n)]
        self.scores = rng.random((n, N_CLASSES)).astype(np.float32)
        self.labels = self.scores.argmax(axis=1).astype(np.int64)
        self.arm_index = (np.arange(n) % 2).astype(np.intp)
        self.buckets = (np.arange(n) % 10_000).astype(np.intp)


async def measure(
    url: str, work: Workload, rate: float | None, mode: str, batch: int, batch_rows: int
) -> dict[str, float]:
    """One measurement: seconds per row end to end and inside the queueing calls, rows."""
    big = 10 * work.n + 1
    log = LogWriter(PostgresSink(url), batch_rows=batch_rows, max_queued_rows=big, max_age=0.2)
    feats = None
    if rate is not None:
        feats = LogWriter(
            PostgresSink(url, table="prediction_features", columns=FEATURE_COLUMNS),
            batch_rows=batch_rows, max_queued_rows=big, max_age=0.2,
        )  # fmt: skip
    writers = [w for w in (log, feats) if w is not None]
    for w in writers:
        await w.start()
        await w.connected()
    dp = DataPlane("bench", log)
    dp.features = feats
    exp = experiment(rate)
    arms = exp.arms
    capture = rate is not None
    threshold = exp.feature_threshold
    inside = 0.0
    t0 = time.perf_counter()
    if mode == "single":
        for i in range(work.n):
            a = time.perf_counter()
            dp.log_prediction(
                exp, arms[work.arm_index[i]], int(work.buckets[i]), work.request_ids[i],
                int(work.labels[i]), work.scores[i], a,
                work.rows[i] if capture else None,
            )  # fmt: skip
            inside += time.perf_counter() - a
            if i % 64 == 63:
                await asyncio.sleep(0)  # other calls run between requests
    else:
        for lo in range(0, work.n, batch):
            hi = min(lo + batch, work.n)
            result = BatchResult(
                "demo", 1, 1, arms, work.arm_index[lo:hi], work.buckets[lo:hi],
                work.labels[lo:hi], work.scores[lo:hi], work.request_ids[lo:hi],
            )  # fmt: skip
            a = time.perf_counter()
            if capture:
                dp.log_batch(result, a, work.matrix[lo:hi], threshold)
            else:
                dp.log_batch(result, a)  # as before feature capture
            inside += time.perf_counter() - a
            await asyncio.sleep(0)
    for w in writers:
        await w.stop()
    elapsed = time.perf_counter() - t0
    written = log.counters.written
    captured = feats.counters.written if feats is not None else 0
    if written != work.n:
        raise RuntimeError(f"{written} prediction rows written, not {work.n}")
    return {
        "us_per_row": elapsed / work.n * 1e6,
        "queue_us_per_row": inside / work.n * 1e6,
        "feature_rows": captured,
    }


async def _truncate(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("TRUNCATE predictions, prediction_features")
    finally:
        await conn.close()


async def main_async(url: str, n: int, repeats: int, batch: int, batch_rows: int) -> dict[str, Any]:
    await migrate(url)
    work = Workload(n)
    runs: dict[str, dict[str, list[dict[str, float]]]] = {
        m: {label(c): [] for c in CONFIGS} for m in MODES
    }
    await measure(url, Workload(min(n, 2000), seed=1), 1.0, "batch", batch, batch_rows)  # warm
    await _truncate(url)
    for r in range(repeats):
        for mode in MODES:
            order = CONFIGS[r % len(CONFIGS) :] + CONFIGS[: r % len(CONFIGS)]  # rotate
            for rate in order:
                runs[mode][label(rate)].append(
                    await measure(url, work, rate, mode, batch, batch_rows)
                )
                await _truncate(url)
    report: dict[str, Any] = {
        "rows": n, "repeats": repeats, "batch": batch, "log_batch_rows": batch_rows,
        "n_features": N_FEATURES, "modes": {},
    }  # fmt: skip
    for mode in MODES:
        base = statistics.median(x["us_per_row"] for x in runs[mode]["none"])
        base_q = statistics.median(x["queue_us_per_row"] for x in runs[mode]["none"])
        out: dict[str, Any] = {}
        for rate in CONFIGS:
            xs = runs[mode][label(rate)]
            us = statistics.median(x["us_per_row"] for x in xs)
            q = statistics.median(x["queue_us_per_row"] for x in xs)
            out[label(rate)] = {
                "us_per_row": us,
                "queue_us_per_row": q,
                "ratio": us / base,
                "queue_ratio": q / base_q,
                "feature_rows": [int(x["feature_rows"]) for x in xs],
                "us_per_row_runs": [x["us_per_row"] for x in xs],
            }
            print(
                f"{mode:>6} capture {label(rate):>4}: {us:6.2f} µs/row end to end "
                f"(x{us / base:.3f}), queueing {q:5.2f} µs/row (x{q / base_q:.3f}), "
                f"{xs[-1]['feature_rows']:.0f} feature rows"
            )
        report["modes"][mode] = out
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000, help="predictions a measurement")
    parser.add_argument("--repeats", type=int, default=9, help="rounds (medians over them)")
    parser.add_argument("--batch", type=int, default=100, help="rows a PredictBatch call")
    parser.add_argument("--log-batch-rows", type=int, default=1000, help="rows a COPY")
    parser.add_argument("--database-url", default="")
    parser.add_argument("--out", type=Path, default=None, help="write results as JSON here")
    args = parser.parse_args(argv)

    def run(url: str) -> dict[str, Any]:
        return asyncio.run(
            main_async(url, args.rows, args.repeats, args.batch, args.log_batch_rows)
        )

    if args.database_url:
        report = run(args.database_url)
    else:
        with EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="abgate-pg-"))) as pg:
            report = run(pg.url)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
