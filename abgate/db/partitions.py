"""Dated partitions of ``predictions`` and ``prediction_features`` (one per UTC day and table):
created ahead of time, dropped for retention, a day's partitions of both tables together (the
captured features of a prediction go when its row goes). Rows of a day without its partition
land in the table's ``_default`` partition.

Creating a day's partition while the default partition already holds rows of that day would
fail (or mean moving them under a lock writers wait on), so such a day simply stays in the
default partition; creating partitions *ahead* keeps that the exception.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

import asyncpg

PARENT = "predictions"
DEFAULT_PARTITION = "predictions_default"
# Every table partitioned by day (migration 0008 adds prediction_features), in creation order.
PARENTS = ("predictions", "prediction_features")
_DATED = re.compile(r"^(?:predictions|prediction_features)_(\d{8})$")
# "abgate" + 3 (migrations hold + 1, aggregation + 2).
_LOCK_KEY = 0x61626761746503


@dataclass(frozen=True)
class Partition:
    name: str
    day: dt.date | None  # None: the default partition
    rows: int  # planner estimate (pg_class.reltuples), -1 if never analysed


def _name(day: dt.date, parent: str = PARENT) -> str:
    return f"{parent}_{day:%Y%m%d}"


def _bound(day: dt.date) -> str:
    return f"{day.isoformat()} 00:00:00+00"


async def list_partitions(conn: asyncpg.Connection, parent: str | None = None) -> list[Partition]:
    """The partitions of ``parent``, or of every table in PARENTS (by name)."""
    rows = await conn.fetch(
        """SELECT c.relname AS name, c.reltuples::bigint AS rows
           FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
           WHERE i.inhparent::regclass::text = ANY($1::text[]) ORDER BY c.relname""",
        [parent] if parent is not None else list(PARENTS),
    )
    out = []
    for r in rows:
        m = _DATED.match(r["name"])
        day = dt.datetime.strptime(m.group(1), "%Y%m%d").date() if m else None
        out.append(Partition(r["name"], day, int(r["rows"])))
    return out


async def ensure_partitions(
    conn: asyncpg.Connection, *, days_ahead: int = 7, today: dt.date | None = None
) -> list[str]:
    """Create the partitions of ``today`` and the next ``days_ahead`` days that are missing;
    returns the names created. Safe to run concurrently and repeatedly."""
    today = today or dt.datetime.now(dt.UTC).date()
    created = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        existing = {p.name for p in await list_partitions(conn)}
        for k in range(days_ahead + 1):
            day = today + dt.timedelta(days=k)
            lo, hi = day, day + dt.timedelta(days=1)
            for parent in PARENTS:
                name = _name(day, parent)
                if name in existing:
                    continue
                occupied = await conn.fetchval(
                    f"SELECT EXISTS (SELECT 1 FROM {parent}_default WHERE ts >= $1 AND ts < $2)",
                    dt.datetime.combine(lo, dt.time(), dt.UTC),
                    dt.datetime.combine(hi, dt.time(), dt.UTC),
                )
                if occupied:
                    continue  # that day stays in the default partition (see module docstring)
                # Identifiers and bounds come from a date, never from input: safe to format.
                await conn.execute(
                    f"CREATE TABLE {name} PARTITION OF {parent} "
                    f"FOR VALUES FROM ('{_bound(lo)}') TO ('{_bound(hi)}')"
                )
                created.append(name)
    return created


async def drop_partitions_before(conn: asyncpg.Connection, day: dt.date) -> list[str]:
    """Drop the dated partitions of days before ``day`` (retention), of every table in PARENTS;
    returns the names dropped, and forgets the dropped rows in ``duplicate_rows``. The evaluator's
    aggregates already hold what those rows contributed."""
    dropped = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        for p in await list_partitions(conn):
            if p.day is not None and p.day < day:
                await conn.execute(f"DROP TABLE {p.name}")
                dropped.append(p.name)
        if dropped:
            # The evaluator's record of rows it skipped as repeats (evaluator.aggregate) must
            # not outlive them: every tick reads the whole table. One index probe per entry,
            # and it holds only repeated request ids.
            await conn.execute(
                "DELETE FROM duplicate_rows d WHERE NOT EXISTS "
                "(SELECT 1 FROM predictions p WHERE p.seq = d.seq)"
            )
    return dropped


async def prepare(dsn: str, days_ahead: int = 7) -> None:
    """Migrate, then make sure the coming days have their partitions (what a gateway runs when
    its log writer connects)."""
    from abgate.db.migrate import migrate

    await migrate(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        await ensure_partitions(conn, days_ahead=days_ahead)
    finally:
        await conn.close()
