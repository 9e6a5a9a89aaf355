"""Dated partitions of ``predictions`` (one per UTC day): created ahead of time, dropped for
retention. Rows of a day without its partition land in ``predictions_default``.

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
_DATED = re.compile(r"^predictions_(\d{8})$")
# "abgate" + 3 (migrations hold + 1, aggregation + 2).
_LOCK_KEY = 0x61626761746503


@dataclass(frozen=True)
class Partition:
    name: str
    day: dt.date | None  # None: the default partition
    rows: int  # planner estimate (pg_class.reltuples), -1 if never analysed


def _name(day: dt.date) -> str:
    return f"{PARENT}_{day:%Y%m%d}"


def _bound(day: dt.date) -> str:
    return f"{day.isoformat()} 00:00:00+00"


async def list_partitions(conn: asyncpg.Connection) -> list[Partition]:
    rows = await conn.fetch(
        """SELECT c.relname AS name, c.reltuples::bigint AS rows
           FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
           WHERE i.inhparent = $1::regclass ORDER BY c.relname""",
        PARENT,
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
            name = _name(day)
            if name in existing:
                continue
            lo, hi = day, day + dt.timedelta(days=1)
            occupied = await conn.fetchval(
                f"SELECT EXISTS (SELECT 1 FROM {DEFAULT_PARTITION} WHERE ts >= $1 AND ts < $2)",
                dt.datetime.combine(lo, dt.time(), dt.UTC),
                dt.datetime.combine(hi, dt.time(), dt.UTC),
            )
            if occupied:
                continue  # that day stays in the default partition (see module docstring)
            # Identifiers and bounds come from a date, never from input: safe to format.
            await conn.execute(
                f"CREATE TABLE {name} PARTITION OF {PARENT} "
                f"FOR VALUES FROM ('{_bound(lo)}') TO ('{_bound(hi)}')"
            )
            created.append(name)
    return created


async def drop_partitions_before(conn: asyncpg.Connection, day: dt.date) -> list[str]:
    """Drop the dated partitions of days before ``day`` (retention); returns the names dropped.
    The evaluator's aggregates already hold what those rows contributed."""
    dropped = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        for p in await list_partitions(conn):
            if p.day is not None and p.day < day:
                await conn.execute(f"DROP TABLE {p.name}")
                dropped.append(p.name)
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
