"""Local write-ahead log of ``--log-durability local``: an answer leaves only once its log row
is fsynced to local disk, so a gateway killed with SIGKILL loses no answered row.

Rows are group-committed: every row appended since the last write joins one group, which shares
one asyncio future; a background task waits ``interval`` seconds for the group to fill, writes
it as one record in the spool's format (``gateway.spool``) and fsyncs it in a thread, then
resolves the future the answering coroutines await. The rows stay queued in the log writer too,
which writes them to PostgreSQL as in ``memory`` mode; the write-ahead segments only matter
after a crash.

Segments are tied to the writer's generations: the writer closes a generation each time it
takes its buffer, and once every row taken so far is in PostgreSQL or the spool it releases that
generation, whose segments are then deleted. Segments left by a killed process are moved into
the spool at start and replayed with it (replays are idempotent: ``INSERT … ON CONFLICT DO
NOTHING``), so a row already written is not stored twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from abgate.errors import Unavailable
from gateway.spool import Spool, make_dirs

log = logging.getLogger(__name__)

WAL_DIR = "wal"


class LocalLog:
    def __init__(self, spool: Spool, *, interval: float = 0.002) -> None:
        self.spool = spool
        self.interval = interval
        root = spool.root / WAL_DIR
        make_dirs(root)
        # Left by a process that did not stop cleanly: replayed with the spool.
        for segment in sorted(root.glob("seg-*.spool")):
            adopted = spool.adopt(segment)
            log.warning("local log segment %s from an earlier run moved to %s for replay",
                        segment.name, adopted)  # fmt: skip
        self.wal = Spool(root, max_bytes=1 << 62)
        self.gen = 0  # rows cut now belong to this generation of the writer
        self._written_gen = -1
        self._segments: dict[int, list[Path]] = {}
        self._released = -1
        self._rows: list[Any] = []
        self._future: asyncio.Future[None] | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.groups = 0  # groups written (each one fsync)
        self.rows_written = 0

    # -- hot path -------------------------------------------------------------------------
    def add(self, row: Any) -> None:
        if not self._rows:
            self._wake.set()
        self._rows.append(row)

    def add_many(self, rows: list[Any]) -> None:
        if not self._rows:
            self._wake.set()
        self._rows.extend(rows)

    def synced(self) -> asyncio.Future[None] | None:
        """A future done once the rows of the group now gathering, and every row added before
        them, are on disk; None when no row waits. Each caller gets its own (a shield of the
        group's): a caller cancelled meanwhile (its client went away) cancels only its own,
        never the group's that the other answers wait on."""
        if not self._rows:
            return None
        fut = self._future
        if fut is None:
            fut = self._future = asyncio.get_running_loop().create_future()
        return asyncio.shield(fut)

    # -- the writer's generations ----------------------------------------------------------
    def close_generation(self) -> int:
        """Called as the writer takes its buffer: rows cut from now on are of a new
        generation. Returns the closed one."""
        closed = self.gen
        self.gen += 1
        return closed

    def release(self, gen: int) -> None:
        """Every row of generations up to ``gen`` is in PostgreSQL or the spool."""
        if gen > self._released:
            self._released = gen
            self._wake.set()

    # -- background -----------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="abgate-local-log")

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._rows and self.interval > 0 and not self._closing:
                await asyncio.sleep(self.interval)  # let the group gather
            rows, fut, gen = self._rows, self._future, self.gen
            self._rows, self._future = [], None
            if rows:
                await self._write(rows, fut, gen)
            await self._delete_released()
            if self._closing and not self._rows:
                return

    async def _write(self, rows: list[Any], fut: asyncio.Future[None] | None, gen: int) -> None:
        try:
            if gen != self._written_gen:
                self.wal.seal()  # one generation's rows never share a segment with the next's
                self._written_gen = gen
            path = await asyncio.to_thread(self.wal.append, rows)
        except Exception as exc:  # disk full, I/O error: these answers fail, the rows stay queued
            log.error("local log cannot write %d rows: %s", len(rows), exc)
            if fut is not None and not fut.done():
                fut.set_exception(Unavailable("the local write-ahead log cannot be written"))
                fut.exception()  # retrieved: a group nobody awaited must not log it again
            return
        paths = self._segments.setdefault(gen, [])
        if path not in paths:
            paths.append(path)
        self.groups += 1
        self.rows_written += len(rows)
        if fut is not None and not fut.done():  # done: cancelled, which must not end this task
            fut.set_result(None)

    async def _delete_released(self) -> None:
        done = [g for g in self._segments if g <= self._released]
        for g in sorted(done):
            for path in self._segments.pop(g):
                with contextlib.suppress(FileNotFoundError):
                    await asyncio.to_thread(self.wal.delete, path)

    async def stop(self, *, all_written: bool) -> None:
        """Write what waits and stop; with ``all_written`` (nothing left queued in the writer)
        every segment is deleted, so a clean stop leaves nothing to replay."""
        self._closing = True
        if all_written:
            self._released = self.gen
        self._wake.set()
        if self._task is not None:
            await self._task
        if all_written:
            for segment in self.wal.segments():
                with contextlib.suppress(FileNotFoundError):
                    self.wal.delete(segment)
