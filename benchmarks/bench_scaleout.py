"""N log writers into one PostgreSQL: aggregate rows/s as N grows, until it flattens.

Run: python -m benchmarks.bench_scaleout [--writers 1,2,4,8] [--seconds 8] [--batch 1000]
     [--database-url URL] [--out benchmarks/results/scaleout.json]
(without a URL an embedded PostgreSQL is started in a temporary directory).

Each writer is a separate process, as each gateway process has its own writer: it builds its
rows first (the gateway's row layout, its own request ids), connects, and from a common start
time writes batches of --batch rows through ``LogWriter.write`` (the flush path: the binary
COPY of ``gateway.pgsink``) for --seconds. Rows/s of a step = rows all writers committed inside
the window ÷ its length; the table is emptied between steps (the primary-key index grows with
the table, so later steps would otherwise pay for earlier ones). Before each step the machine's
other load is printed: on a 2-core machine PostgreSQL and the writers share the cores, which is
where one machine stops; a fleet stops where one PostgreSQL's COPY does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg

from abgate.db.embedded import EmbeddedPostgres
from abgate.db.migrate import migrate
from benchmarks.bench_logwriter import make_rows
from gateway.logwriter import LogWriter
from gateway.pgsink import PostgresSink

START_DELAY = 2.0  # s from launch to the common start: every child has built its rows by then


def _child(url: str, index: int, start_at: float, seconds: float, batch: int, out: Any) -> None:
    out.put(asyncio.run(_write(url, index, start_at, seconds, batch)))


async def _write(url: str, index: int, start_at: float, seconds: float, batch: int) -> int:
    # Enough rows for the window at well above one writer's rate; reused with new ids if not.
    rows = make_rows(200_000, index)
    w = LogWriter(PostgresSink(url), batch_rows=batch)
    await w.start()
    await w.connected()
    await asyncio.sleep(max(0.0, start_at - time.time()))
    end = start_at + seconds
    written = 0
    per_lap = len(rows) // batch
    k = 0
    while time.time() < end:
        lap, i = divmod(k, per_lap)
        chunk = rows[i * batch : (i + 1) * batch]
        if lap:  # past the rows built: the same rows under new request ids
            chunk = [(f"{r[0]}-{lap}", *r[1:]) for r in chunk]
        written += await w.write(chunk)
        k += 1
    await w.stop()
    return written


def step(url: str, writers: int, seconds: float, batch: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    load = os.getloadavg()[0]
    start_at = time.time() + START_DELAY + 0.3 * writers
    procs = [
        ctx.Process(target=_child, args=(url, i, start_at, seconds, batch, out))
        for i in range(writers)
    ]
    for p in procs:
        p.start()
    counts = [int(out.get(timeout=120 + seconds)) for _ in procs]
    for p in procs:
        p.join(30)
    total = sum(counts)
    return {
        "writers": writers,
        "rows": total,
        "rows_per_s": round(total / seconds),
        "per_writer_rows_per_s": [round(c / seconds) for c in counts],
        "load_average_1m_before": round(load, 2),
    }


async def _truncate(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        n = int(await conn.fetchval("SELECT count(*) FROM predictions"))
        await conn.execute("TRUNCATE predictions")
        return n
    finally:
        await conn.close()


def run(url: str, writers: Sequence[int], seconds: float, batch: int) -> dict[str, Any]:
    asyncio.run(migrate(url))
    asyncio.run(_truncate(url))
    steps = []
    for n in writers:
        s = step(url, n, seconds, batch)
        stored = asyncio.run(_truncate(url))
        if stored != s["rows"]:  # every committed row is in the table, once
            raise RuntimeError(f"{n} writers: reported {s['rows']} rows, the table has {stored}")
        print(f"{n} writer(s): {s['rows_per_s']:>9,} rows/s  (per writer "
              f"{s['per_writer_rows_per_s']}; load before {s['load_average_1m_before']})",
              flush=True)  # fmt: skip
        steps.append(s)
    best = max(steps, key=lambda s: s["rows_per_s"])
    one = steps[0]["rows_per_s"] if steps and steps[0]["writers"] == 1 else None
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "cpus": os.cpu_count(),
        "seconds": seconds,
        "batch": batch,
        "steps": steps,
        "peak": {"writers": best["writers"], "rows_per_s": best["rows_per_s"]},
        "peak_over_one_writer": round(best["rows_per_s"] / one, 2) if one else None,
    }


def markdown(report: dict[str, Any]) -> str:
    one = report["steps"][0]["rows_per_s"]
    lines = ["| writers | rows/s | ÷ 1 writer | per writer (median) |", "|---:|---:|---:|---:|"]
    for s in report["steps"]:
        lines.append(
            f"| {s['writers']} | {s['rows_per_s']:,} | {s['rows_per_s'] / one:.2f}"
            f" | {statistics.median(s['per_writer_rows_per_s']):,.0f} |"
        )
    return "\n".join(lines)


def parse_writers(text: str) -> list[int]:
    values = [int(x) for x in text.split(",") if x.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("--writers: a comma-separated list of counts ≥ 1")
    return values


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=parse_writers, default=[1, 2, 4, 8])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--database-url", default="", help="a server to write into")
    parser.add_argument("--out", type=Path, default=None, help="write results as JSON here")
    args = parser.parse_args(argv)
    if args.database_url:
        report = run(args.database_url, args.writers, args.seconds, args.batch)
    else:
        with EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="abgate-pg-"))) as pg:
            report = run(pg.url, args.writers, args.seconds, args.batch)
    print(markdown(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
