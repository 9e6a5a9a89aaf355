"""Rows/s the prediction log writer sustains into PostgreSQL at batch sizes 100, 1,000, 10,000.

Run: python -m benchmarks.bench_logwriter [--rows 100000] [--database-url URL]
(without a URL an embedded PostgreSQL is started in a temporary directory).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import asyncpg
import numpy as np

from abgate.db.embedded import EmbeddedPostgres
from abgate.db.migrate import migrate
from gateway.logwriter import LogWriter
from gateway.pgsink import PostgresSink

SCORES = np.array([0.25, 0.75], dtype="<f4").tobytes()  # as the gateway queues scores


def make_rows(n: int, run: int) -> list[tuple[object, ...]]:
    now = time.time()
    model = ("demo-logreg", "1", "a" * 64)
    return [
        (
            f"bench-{run}-{i}",
            now,
            "demo",
            1,
            i % 10_000,
            1,
            "control",
            *model,
            i % 2,
            SCORES,
            150,
            False,
            "bench",
            0,
            "",
        )
        for i in range(n)
    ]


async def one(url: str, batch: int, n: int, run: int) -> float:
    w = LogWriter(PostgresSink(url), batch_rows=batch)
    await w.start()
    await w.connected()
    rows = make_rows(n, run)
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        await w.write(rows[i : i + batch])
    elapsed = time.perf_counter() - t0
    await w.stop()
    return n / elapsed


async def main_async(url: str, n: int, repeats: int) -> dict[str, float]:
    await migrate(url)
    results: dict[str, float] = {}
    run = 0
    for batch in (100, 1_000, 10_000):
        rates = []
        for _ in range(repeats):
            run += 1
            rates.append(await one(url, batch, n, run))
        results[str(batch)] = statistics.median(rates)
        print(f"batch {batch:>6}: {results[str(batch)]:>9.0f} rows/s (median of {repeats})")
    conn = await asyncpg.connect(url)
    await conn.execute("TRUNCATE predictions")
    await conn.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--out", type=Path, default=None, help="write results as JSON here")
    args = parser.parse_args()
    if args.database_url:
        results = asyncio.run(main_async(args.database_url, args.rows, args.repeats))
    else:
        with EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="abgate-pg-"))) as pg:
            results = asyncio.run(main_async(pg.url, args.rows, args.repeats))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"rows_per_s_by_batch": results}, indent=1))


if __name__ == "__main__":
    main()
