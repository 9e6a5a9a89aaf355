"""Schema migrations: plain SQL files applied in name order, each once, recorded with a checksum.

An applied file that has changed since is an error (never edit a released migration; add one).
Concurrent migrators serialize on an advisory lock, so every gateway may run this at start-up.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

import asyncpg

from abgate.errors import FailedPrecondition

MIGRATIONS_PACKAGE = "abgate.db.migrations"
_LOCK_KEY = 0x61626761746501  # "abgate" + 1: one advisory lock id for migrations


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available() -> list[Migration]:
    files = resources.files(MIGRATIONS_PACKAGE)
    return sorted(
        (Migration(f.name, f.read_text()) for f in files.iterdir() if f.name.endswith(".sql")),
        key=lambda m: m.name,
    )


async def migrate(dsn: str) -> list[str]:
    """Apply pending migrations; returns the names applied now (empty when up to date)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        try:
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       name text PRIMARY KEY,
                       checksum text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            applied = {
                r["name"]: r["checksum"]
                for r in await conn.fetch("SELECT name, checksum FROM schema_migrations")
            }
            done: list[str] = []
            for m in available():
                if m.name in applied:
                    if applied[m.name] != m.checksum:
                        raise FailedPrecondition(
                            f"migration {m.name} was changed after it was applied; "
                            "add a new migration instead"
                        )
                    continue
                async with conn.transaction():
                    await conn.execute(m.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)",
                        m.name,
                        m.checksum,
                    )
                done.append(m.name)
            return done
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    finally:
        await conn.close()


async def applied(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT name FROM schema_migrations ORDER BY name")
        return [r["name"] for r in rows]
    finally:
        await conn.close()
