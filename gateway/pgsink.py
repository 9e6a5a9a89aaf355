"""The PostgreSQL sink of the log writer (``gateway.logwriter.LogSink``): a binary COPY
straight into the log table, and, for a batch holding rows already written (a spool replay, a
retried flush that had committed after all), a staging table and ``INSERT … ON CONFLICT DO
NOTHING`` instead, so replays are harmless. Everything the writer knows of PostgreSQL is here.
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg

from gateway import logcopy
from gateway.logwriter import COLUMNS, FEATURE_COLUMNS, DeadLetter, Row, Written

# Classes decoded by an inlined expression; wider score vectors take abgate_f4le_array.
INLINE_CLASSES = 8


def _scores_from_bytes(col: str) -> str:
    whens = " ".join(
        f"WHEN {4 * k} THEN ARRAY[{', '.join(f'abgate_f4le({col}, {4 * j})' for j in range(k))}]"
        for k in range(1, INLINE_CLASSES + 1)
    )
    return (
        f"CASE length({col}) WHEN 0 THEN '{{}}'::real[] {whens} ELSE abgate_f4le_array({col}) END"
    )


# Columns that travel through the staging table in another form: (staged as, converted back).
# asyncpg's real[] encoder cost ~3 µs a row on the event loop (ABC isinstance checks per
# element); bytea costs ~0.1 µs and PostgreSQL decodes it in ~1.2 µs a row.
_STAGED = {
    "ts": ("extract(epoch FROM ts)::float8", "to_timestamp(ts)"),
    "scores": ("NULL::bytea", _scores_from_bytes("scores")),
    "features": ("NULL::bytea", _scores_from_bytes("features")),
}

# Errors that say nothing about the rows (connection lost, timeouts, too many connections, a
# server shutting down or read-only, a missing table or privilege) keep the batch and retry it.
# These say a row holds something the database refuses (classes 22 data exception, 23 integrity
# constraint, P0 a trigger's RAISE; 54000 a value too large for an index), or that the gateway
# could not encode it (asyncpg's own input errors are ValueErrors).
_CONTENT_CLASSES = ("22", "23", "P0")
_CONTENT_ERRORS = (ValueError, TypeError, OverflowError, struct.error)


def refused_for_content(exc: BaseException) -> bool:
    """Whether a failed write was refused for what its rows hold (isolate and dead-letter the
    rows at fault) rather than for the database's state (keep the rows, retry)."""
    if isinstance(exc, asyncpg.PostgresError):
        state = exc.sqlstate or ""
        return state[:2] in _CONTENT_CLASSES or state == "54000"
    return isinstance(exc, _CONTENT_ERRORS)


_DEAD_LETTER_SQL = (
    "INSERT INTO dead_letters (log_table, content, sqlstate, error, message, detail, gateway_id) "
    "VALUES ($1, $2::json, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING"
)


class PostgresSink:
    """One log table of one PostgreSQL (a pool of two connections, opened lazily)."""

    def __init__(
        self,
        dsn: str,
        *,
        table: str = "predictions",
        columns: Sequence[str] = COLUMNS,
        on_connect: Callable[[str], Awaitable[object]] | None = None,
    ) -> None:
        self.dsn = dsn
        self.table = table
        self.columns = tuple(columns)
        self.on_connect = on_connect  # e.g. run migrations before the first flush
        self._pool: asyncpg.Pool | None = None
        # Prediction and feature rows have layouts gateway.logcopy encodes (a direct COPY).
        self._direct: tuple[Any, tuple[str, ...]] | None = None
        if self.columns == COLUMNS:
            self._direct = (logcopy.chunks, logcopy.COPY_COLUMNS)
        elif self.columns == FEATURE_COLUMNS:
            self._direct = (logcopy.feature_chunks, logcopy.FEATURE_COPY_COLUMNS)
        staging = f"{table}_staging"
        staged = ", ".join(f"{_STAGED[c][0]} AS {c}" if c in _STAGED else c for c in self.columns)
        restored = ", ".join(_STAGED[c][1] if c in _STAGED else c for c in self.columns)
        self._staging = staging
        self._create_staging_sql = (
            f"CREATE TEMP TABLE IF NOT EXISTS {staging} ON COMMIT DELETE ROWS AS "
            f"SELECT {staged} FROM {table} WITH NO DATA"
        )
        # Run through fetchval so asyncpg prepares it once per connection: without parameters
        # PostgreSQL then keeps one generic plan, where the simple protocol re-planned the
        # scores decoding on every flush (10 ms, as much as executing 400 rows).
        self._insert_sql = (
            f"WITH inserted AS (INSERT INTO {table} ({', '.join(self.columns)}) "
            f"SELECT {restored} FROM {staging} ON CONFLICT DO NOTHING RETURNING 1) "
            "SELECT count(*) FROM inserted"
        )

    async def open(self) -> None:
        if self._pool is not None:
            return
        if self.on_connect is not None:
            await self.on_connect(self.dsn)
        self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=2)

    def abandon(self) -> None:
        # After a failed flush the connections may be half-dead; start over with new ones.
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def refused_for_content(self, exc: BaseException) -> bool:
        return refused_for_content(exc)

    def dead_letters_refuse(self, exc: BaseException) -> bool:
        """dead_letters refuses a row too (or is missing, or not ours to write: class 42)."""
        return refused_for_content(exc) or isinstance(exc, asyncpg.SyntaxOrAccessRuleError)

    def _connections(self) -> asyncpg.Pool:
        if self._pool is None:
            raise ConnectionError(f"{self.table} log: not connected")
        return self._pool

    async def write(self, batch: Sequence[Row]) -> Written:
        """Write ``batch``; rows already present are skipped.

        Prediction (and feature) rows first try a binary COPY straight into the table
        (``gateway.logcopy``). A row already there — the batch is a spool replay, or a retry of
        a flush that committed after all — violates the primary key, which aborts that COPY
        whole; the batch then goes through the staging table and ``INSERT … ON CONFLICT DO
        NOTHING``, the one path that outcomes always take."""
        pool = self._connections()
        if self._direct is None:
            return await self.write_staged(batch)
        encode, copy_columns = self._direct
        parts = await encode(batch)  # encoding errors raise here, before the COPY
        try:
            async with pool.acquire() as conn, conn.transaction():
                await conn.copy_to_table(
                    self.table, source=logcopy.send(parts), columns=copy_columns,
                    format="binary",
                )  # fmt: skip
        except asyncpg.UniqueViolationError:
            written = await self.write_staged(batch)
            return Written(written.inserted, written.duplicates, written.unmatched, staged=True)
        return Written(len(batch))

    async def write_staged(self, batch: Sequence[Row]) -> Written:
        """COPY ``batch`` into a staging table and insert what is new."""
        staging = self._staging
        unmatched = 0
        async with self._connections().acquire() as conn, conn.transaction():
            await conn.execute(self._create_staging_sql)
            await conn.copy_records_to_table(staging, records=batch, columns=self.columns)
            inserted = int(await conn.fetchval(self._insert_sql))
            if self.table == "outcomes":
                unmatched = int(
                    await conn.fetchval(
                        f"SELECT count(*) FROM {staging} s WHERE NOT EXISTS "
                        "(SELECT 1 FROM predictions p WHERE p.request_id = s.request_id)"
                    )
                )
        return Written(inserted, len(batch) - inserted, unmatched)

    async def dead_letter(self, records: Sequence[DeadLetter]) -> None:
        """Keep ``records`` in the dead_letters table (migration 0006), one statement."""
        async with self._connections().acquire() as conn:
            await conn.executemany(_DEAD_LETTER_SQL, records)
