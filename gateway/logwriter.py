"""Prediction log writer: the request path appends a tuple and returns; a background task
flushes batches to a sink (``LogSink``; the one in use, PostgreSQL's, is ``gateway.pgsink``),
whose writes are idempotent, so a batch written twice (a replay) changes nothing.

When a flush fails, its rows go to the on-disk spool (``gateway.spool``) and the writer keeps
retrying; once the sink answers again the spool is replayed in order and each segment is
deleted after its rows are committed. Only when memory and spool are both full does ``append``
raise UNAVAILABLE, so no answer is given without a place for its log row.

A batch refused for what some of its rows hold (the sink's ``refused_for_content``: a value
PostgreSQL cannot store, a constraint broken) is split until the rows that fail on their own
are found; every other row is written and those go to the sink's dead letters (the
``dead_letters`` table, migration 0006), or to the spool directory's ``dead-letters.jsonl``
when those refuse them too. So one bad row never sends its batch to the spool, and a spool
segment holding one never blocks the spool.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from abgate.errors import Unavailable
from gateway.spool import Spool, SpoolFull
from gateway.wal import LocalLog

log = logging.getLogger(__name__)

COLUMNS = (
    "request_id",
    "ts",
    "experiment",
    "config_version",
    "bucket",
    "hash_version",
    "arm",
    "model_id",
    "model_version",
    "model_sha256",
    "label",
    "scores",
    "latency_us",
    "shadow",
    "gateway_id",
    "status",
    "client_identity",
)
# ``client_identity``: who submitted it; ``any_identity``: it counts for a prediction of any
# identity (the gateway runs with --allow-cross-identity-outcomes).
OUTCOME_COLUMNS = ("request_id", "value", "ts", "source", "client_identity", "any_identity")
# Captured request features (migration 0008): ``features`` as little-endian float32 bytes,
# ``ts`` the prediction row's own.
FEATURE_COLUMNS = ("request_id", "ts", "experiment", "arm", "features")
# Rows spooled before a column existed get its default on replay (migration 0007's defaults).
_ADDED_COLUMNS = {"client_identity": "", "any_identity": False}

# One row as the hot path builds it: the writer's columns in order, ``ts`` as float seconds
# since the epoch and ``scores`` as little-endian float32 bytes (both converted by PostgreSQL
# at flush time, never on the request path).
Row = tuple[Any, ...]

SCORES_DTYPE = np.dtype("<f4")


def scores_rows(scores: np.ndarray) -> list[bytes]:
    """Each row of an (n, k) score matrix as the log queues it (SCORES_DTYPE bytes, decoded by
    migration 0005_scores_bytes), from one conversion."""
    n = len(scores)
    raw = scores.astype(SCORES_DTYPE, copy=False).tobytes()
    width = len(raw) // n if n else 0
    if width == 0:
        return [b""] * n
    return [raw[i : i + width] for i in range(0, len(raw), width)]


@dataclass
class LogCounters:
    queued: int = 0
    written: int = 0
    duplicates: int = 0
    failed_flushes: int = 0
    refused: int = 0
    unmatched: int = 0  # outcomes whose prediction was not (yet) in the log when written
    spooled: int = 0  # rows written to the disk spool
    staged_batches: int = 0  # prediction batches that met a row already written (replays)
    replayed: int = 0  # rows read back from the spool and committed
    # Rows refused for their content, kept in dead_letters (or the spool's dead-letters.jsonl).
    dead_lettered: int = 0
    oldest_queued_at: float | None = field(default=None)

    def lag_seconds(self) -> float:
        return 0.0 if self.oldest_queued_at is None else time.time() - self.oldest_queued_at


DeadLetter = tuple[str, str, str, str, str, str, str]
"""A refused row as a sink keeps it: log table, the row as JSON text, sqlstate, error type,
message, detail, gateway id."""


@dataclass(frozen=True, slots=True)
class Written:
    """What one write of a batch did."""

    inserted: int
    duplicates: int = 0  # rows already there (a replay), skipped
    unmatched: int = 0  # outcomes whose prediction was not (yet) in the log
    staged: bool = False  # the batch met a row already written and took the slower path


class LogSink(Protocol):
    """Where a ``LogWriter`` sends its batches: one table of one store. The writer owns the
    buffering, retries, spool, local log, isolation of bad rows and counters; a sink only
    writes. Another store (a distributed PostgreSQL, a Kafka-compatible log drained by a COPY
    consumer) is one more module with these methods.

    - ``write`` must be idempotent by ``request_id`` (a replayed or retried batch adds only the
      rows missing) and all-or-nothing; it raises on failure. The writer may run up to its
      ``concurrent_writes`` of them at once (distinct batches).
    - ``self.sink.refused_for_content(exc)``: the failure was caused by what rows hold (the writer
      bisects the batch and dead-letters the rows failing alone) rather than by the store's
      state (the writer keeps the rows and retries).
    - ``dead_letters_refuse(exc)``: ``dead_letter`` refused a record for good (it goes to the
      spool directory's file instead); any other failure retries the whole batch.
    - ``abandon`` drops connections after a failure (the next ``open`` makes new ones);
      ``open`` is called before every drain and returns at once when open.
    """

    table: str
    columns: tuple[str, ...]

    async def open(self) -> None: ...

    def abandon(self) -> None: ...

    async def close(self) -> None: ...

    async def write(self, batch: Sequence[Row]) -> Written: ...

    async def dead_letter(self, records: Sequence[DeadLetter]) -> None: ...

    def refused_for_content(self, exc: BaseException) -> bool: ...

    def dead_letters_refuse(self, exc: BaseException) -> bool: ...


async def _outcome(write: Awaitable[object]) -> object:
    """``write``'s result, or the Exception it raised (cancellation still propagates)."""
    try:
        return await write
    except Exception as exc:
        return exc


class LogWriter:
    def __init__(
        self,
        sink: LogSink,
        *,
        batch_rows: int = 1000,
        max_age: float = 0.2,
        max_queued_rows: int = 200_000,
        flush_timeout: float = 30.0,
        spool: Spool | None = None,
        gateway_id: str = "",
        local: LocalLog | None = None,
        concurrent_writes: int = 2,
    ) -> None:
        if concurrent_writes < 1:
            raise ValueError("concurrent_writes must be at least 1")
        self.sink = sink
        # A backlog drains this many batches at a time: the store works on one batch while the
        # writer encodes the next (PostgresSink's pool has as many connections).
        self.concurrent_writes = concurrent_writes
        # --log-durability local: rows also go to a local write-ahead log, whose group fsync
        # the answering call awaits (``synced``); None (memory) leaves the hot path as it was.
        self.local = local
        self._local_gen: int | None = None  # the last generation taken, not yet released
        self.gateway_id = gateway_id  # recorded with each dead letter
        self.table = sink.table
        self.columns = tuple(sink.columns)
        self._ts = self.columns.index("ts")
        self._scores = self.columns.index("scores") if "scores" in self.columns else None
        # Sees every batch once as it leaves memory (request metrics from the log rows).
        self.observe: Callable[[list[Row]], None] | None = None
        # A flush (or connect) that takes longer is abandoned and retried; a retried batch
        # that had in fact committed is harmless (the sink's writes are idempotent).
        self.flush_timeout = flush_timeout
        self.spool = spool
        self.batch_rows = batch_rows
        self.max_age = max_age
        self.max_queued_rows = max_queued_rows
        self.counters = LogCounters()
        self._buffer: list[Row] = []
        self._retry: list[list[Row]] = []  # batches whose flush failed, oldest first
        self._queued = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._open = False
        self._closing = False
        self._connected = asyncio.Event()

    # -- hot path -------------------------------------------------------------------------
    def ensure_room(self, n: int) -> None:
        """Raise Unavailable unless ``n`` more rows fit (checked before a batch is answered)."""
        if self._queued + n > self.max_queued_rows:
            self.counters.refused += n
            raise Unavailable("prediction log is full (database unreachable?); retry later")

    def append(self, row: Row) -> None:
        """Queue one row; never awaits. Raises Unavailable when the queue is full."""
        if self._queued >= self.max_queued_rows:
            self.counters.refused += 1
            raise Unavailable("prediction log is full (database unreachable?); retry later")
        buf = self._buffer
        if not buf and self.counters.oldest_queued_at is None:
            self.counters.oldest_queued_at = row[self._ts]
        buf.append(row)
        self._queued += 1
        if self.local is not None:
            self.local.add(row)
        if len(buf) >= self.batch_rows:
            self._wake.set()

    def extend(self, rows: list[Row]) -> None:
        """Queue many rows at once (a batch call's); never awaits. Raises Unavailable, taking
        none of them, when they do not all fit."""
        n = len(rows)
        if n == 0:
            return
        self.ensure_room(n)
        buf = self._buffer
        if not buf and self.counters.oldest_queued_at is None:
            self.counters.oldest_queued_at = rows[0][self._ts]
        buf.extend(rows)
        self._queued += n
        if self.local is not None:
            self.local.add_many(rows)
        if len(buf) >= self.batch_rows:
            self._wake.set()

    # -- background -----------------------------------------------------------------------
    async def start(self) -> None:
        """Returns at once: connecting (and migrating) happens in the background, with retries,
        so a gateway starts and queues rows even while the database is down."""
        if self.local is not None:
            self.local.start()
        self._task = asyncio.create_task(self._run(), name="abgate-log-writer")

    def synced(self) -> asyncio.Future[None] | None:
        """With a local log: a future done once every row appended so far is on local disk
        (None when none waits); always None without one."""
        return self.local.synced() if self.local is not None else None

    async def _ensure_open(self) -> bool:
        if self._open:
            return True
        try:
            await asyncio.wait_for(self.sink.open(), self.flush_timeout)
        except Exception as exc:  # any failure to reach the database: retry later
            log.warning("%s log database unreachable, will retry: %s", self.table, exc)
            return False
        self._open = True
        self._connected.set()
        return True

    def _abandon(self) -> None:
        self.sink.abandon()
        self._open = False

    async def connected(self) -> None:
        """Wait until the database has been reached (and migrated) once."""
        await self._connected.wait()

    async def _run(self) -> None:
        await self._ensure_open()  # connect (and migrate) eagerly; failures retry on flush
        backoff = 0.05
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.max_age)
            self._wake.clear()
            if self._buffer:
                if self.observe is not None:
                    self.observe(self._buffer)  # once per row, off the request path
                buf, size = self._buffer, self.batch_rows
                # A backlog goes out in batches of batch_rows, so that they can be written
                # side by side (and a failed one retried alone).
                self._retry.extend(buf[i : i + size] for i in range(0, len(buf), size))
                self._buffer = []
                if self.local is not None:
                    self._local_gen = self.local.close_generation()
            if await self._drain():
                self._release_local()
                if self.spool is not None and self.spool.pending and not await self._replay():
                    await asyncio.sleep(backoff)  # the database is still away
                    backoff = min(backoff * 2, 5.0)
                else:
                    backoff = 0.05
                if self._closing and not self._buffer:
                    return
            else:
                await self._spill()
                self._release_local()
                if self._closing:
                    if self._buffer:
                        self._retry.append(self._buffer)
                        self._buffer = []
                        await self._spill()
                    return
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def _release_local(self) -> None:
        """Every row taken from the buffer so far is in PostgreSQL or the spool: the local
        log may drop its copies of them."""
        if self.local is not None and not self._retry and self._local_gen is not None:
            self.local.release(self._local_gen)
            self._local_gen = None

    async def _drain(self) -> bool:
        """Write the pending batches oldest first, up to ``concurrent_writes`` at once; False
        (the rows of every batch not written kept) at the first failure."""
        if self._retry and not await self._ensure_open():
            self.counters.failed_flushes += 1
            return False
        while self._retry:
            batches = self._retry[: self.concurrent_writes]
            results = await asyncio.gather(*(_outcome(self._write_isolating(b)) for b in batches))
            failure: tuple[list[Row], Exception] | None = None
            for batch, result in zip(batches, results, strict=True):
                if isinstance(result, Exception):
                    failure = failure or (batch, result)
                    continue
                self._retry = [b for b in self._retry if b is not batch]
                self._queued -= len(batch)
            if failure is not None:  # the database's state, not the rows: keep them, retry
                batch, exc = failure
                self.counters.failed_flushes += 1
                log.warning("%s log flush of %d rows failed, will retry: %s",
                            self.table, len(batch), exc)  # fmt: skip
                self._abandon()
                return False
        self.counters.oldest_queued_at = self._buffer[0][self._ts] if self._buffer else None
        return True

    async def _spill(self) -> None:
        """Move batches the database refused from memory to the disk spool."""
        spool = self.spool
        while spool is not None and self._retry:
            batch = self._retry[0]
            try:
                await asyncio.to_thread(spool.append, batch)
            except (SpoolFull, OSError) as exc:
                log.error("%s spool cannot take %d rows (%s); keeping them in memory",
                          self.table, len(batch), exc)  # fmt: skip
                return
            self._retry.pop(0)
            self._queued -= len(batch)
            self.counters.spooled += len(batch)

    async def _replay(self) -> bool:
        """Commit spooled batches in order; a segment is deleted only once all of it is in.
        False when the database could not take them (the rest stays spooled)."""
        spool = self.spool
        assert spool is not None
        # Reconnect first: after an outage whose rows all went to the spool no batch is left
        # to drain, so nothing else reconnects after the failed flush gave up (the replay
        # used to wait for the next request's rows to come along).
        if not await self._ensure_open():
            self.counters.failed_flushes += 1
            return False
        spool.seal()
        for segment in spool.segments():
            batches = await asyncio.to_thread(
                _read_segment, spool, segment, self._scores, self.columns
            )
            try:
                for batch in batches:
                    dead = await self._write_isolating(batch)
                    self.counters.replayed += len(batch) - dead
            except Exception as exc:
                self.counters.failed_flushes += 1
                log.warning("%s spool replay paused: %s", self.table, _one_line(exc))
                self._abandon()
                return False
            await asyncio.to_thread(spool.delete, segment)
            log.info("%s spool segment %s replayed", self.table, segment.name)
        return True

    async def _write_isolating(self, batch: Sequence[Row]) -> int:
        """Write ``batch``; if it is refused for its content, write every row but those at
        fault and dead-letter those. Returns the rows dead-lettered; any other failure is
        raised, the rows left to the caller (what was written already replays harmlessly, a
        row dead-lettered again is recorded once)."""
        try:
            await asyncio.wait_for(self.write(batch), self.flush_timeout)
        except Exception as exc:
            if not self.sink.refused_for_content(exc):
                raise
            dead: list[tuple[Row, BaseException]] = []
            await self._isolate(batch, exc, dead)
            await self._dead_letter(dead)
            log.error("%s log: %d of %d rows refused (first: %s); the other rows are written, "
                      "those kept in dead_letters", self.table, len(dead), len(batch),
                      _one_line(dead[0][1]))  # fmt: skip
            return len(dead)
        return 0

    async def _isolate(
        self, rows: Sequence[Row], exc: BaseException, dead: list[tuple[Row, BaseException]]
    ) -> None:
        """``rows`` failed together with ``exc``: bisect, writing each half that goes in, until
        the rows that fail alone are found; those are added to ``dead``. A bad row costs about
        2·log2(len(rows)) writes, a batch whose every row is refused 2 writes a row."""
        if len(rows) == 1:
            dead.append((rows[0], exc))
            return
        mid = len(rows) // 2
        for half in (rows[:mid], rows[mid:]):
            try:
                await asyncio.wait_for(self.write(half), self.flush_timeout)
            except Exception as half_exc:
                if not self.sink.refused_for_content(half_exc):
                    raise
                await self._isolate(half, half_exc, dead)

    async def _dead_letter(self, dead: list[tuple[Row, BaseException]]) -> None:
        """Keep rows the log table refused, with why: in the sink's dead letters (one write
        for all of them), or, for each one those refuse as well, in the spool directory's
        dead-letters.jsonl (the server log without a spool)."""
        records = [self._dead_letter_record(row, exc) for row, exc in dead]
        sink = self.sink
        try:
            await asyncio.wait_for(sink.dead_letter(records), self.flush_timeout)
        except Exception as exc:
            if not sink.dead_letters_refuse(exc):
                raise  # the database is away: the caller retries the whole batch
            for record in records:  # which of them does the table refuse?
                try:
                    await asyncio.wait_for(sink.dead_letter([record]), self.flush_timeout)
                except Exception as one_exc:
                    if not sink.dead_letters_refuse(one_exc):
                        raise
                    await self._dead_letter_file(record, one_exc)
        self.counters.dead_lettered += len(records)

    def _dead_letter_record(self, row: Row, exc: BaseException) -> DeadLetter:
        """The dead_letters columns of a refused row (log_table, content, sqlstate, error,
        message, detail, gateway_id)."""
        return (
            self.table,
            _row_json(self.columns, row),
            str(getattr(exc, "sqlstate", None) or ""),
            type(exc).__name__,
            _text(str(getattr(exc, "message", None) or exc)),
            _text(str(getattr(exc, "detail", None) or "")),
            self.gateway_id,
        )

    async def _dead_letter_file(self, record: DeadLetter, exc: BaseException) -> None:
        table, content, sqlstate, error, message, detail, gateway_id = record
        line = json.dumps(
            {
                "log_table": table, "content": json.loads(content), "sqlstate": sqlstate,
                "error": error, "message": message, "detail": detail, "gateway_id": gateway_id,
                "failed_at": dt.datetime.now(dt.UTC).isoformat(),
                "dead_letters_error": _one_line(exc),
            },
            separators=(",", ":"),
        )  # fmt: skip
        if self.spool is None:
            log.error("%s log dead letter (dead_letters refused it, no spool): %s", table, line)
            return
        path = await asyncio.to_thread(self.spool.dead_letter, line)
        log.error("%s log: dead_letters refused a row too (%s); kept in %s", table,
                  _one_line(exc), path)  # fmt: skip

    async def write(self, batch: Sequence[Row]) -> int:
        """Write ``batch`` through the sink now and return the rows inserted; rows already
        present are skipped (counted as duplicates)."""
        done = await self.sink.write(batch)
        c = self.counters
        c.written += done.inserted
        c.duplicates += done.duplicates
        c.unmatched += done.unmatched
        c.staged_batches += done.staged
        return done.inserted

    async def stop(self, timeout: float = 30.0) -> None:
        """Flush everything queued (waiting up to ``timeout`` for the database), then close."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout)
            except TimeoutError:
                log.error("log writer stopped with %d rows not written", self._queued)
        if self.local is not None:
            await self.local.stop(all_written=self._queued == 0)
        await self.sink.close()
        self._open = False

    @property
    def queued(self) -> int:
        return self._queued


def _json_value(value: Any) -> Any:
    if isinstance(value, bytes):  # as the spool stores bytes
        return {"b64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, float) and not math.isfinite(value):  # JSON has no NaN or Infinity
        return {"float": repr(value)}
    return value


def _row_json(columns: Sequence[str], row: Row) -> str:
    """A refused row as JSON text that PostgreSQL's ``json`` always takes: an object of its
    columns (a list when the row does not fit them), ASCII only (NUL and lone surrogates as
    \\u escapes), anything unforeseen by its repr."""
    values = [_json_value(v) for v in row]
    obj: Any = dict(zip(columns, values, strict=True)) if len(row) == len(columns) else values
    return json.dumps(obj, separators=(",", ":"), default=repr)


def _text(value: str) -> str:
    """``value`` as text PostgreSQL can store (no NUL, no lone surrogates)."""
    return value.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {_text(str(getattr(exc, 'message', None) or exc))}"


def _read_segment(
    spool: Spool, segment: Path, scores: int | None, columns: Sequence[str] = COLUMNS
) -> list[list[Any]]:
    batches = list(spool.read(segment))
    width = len(columns)
    for batch in batches:
        for row in batch:
            if len(row) < width:  # spooled by a gateway from before a column was added
                row.extend(_ADDED_COLUMNS[c] for c in columns[len(row) :])
    if scores is not None:
        # Segments spooled before scores travelled as bytes hold them as lists of floats.
        for batch in batches:
            for row in batch:
                if isinstance(row[scores], list):
                    row[scores] = np.asarray(row[scores], dtype=SCORES_DTYPE).tobytes()
    return batches
