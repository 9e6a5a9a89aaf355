"""The log writer needs of its store only the ``LogSink`` interface: a second sink — a small
keyed store kept here, as a Kafka or Citus sink would be a module — gets every row once through
an outage (spool, replay), a refused row is isolated and dead-lettered, and nothing the writer
does reaches for PostgreSQL. (The PostgreSQL sink itself is tested against a real server in
test_logwriter, test_spool and test_log_poison.)"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path

from gateway.logwriter import COLUMNS, DeadLetter, LogSink, LogWriter, Row, Written
from gateway.spool import DEAD_LETTERS, Spool
from tests.gateway.test_logwriter import row


class Refused(ValueError):
    """What the store says of a row it cannot hold."""


class KeyedSink:
    """Rows by request id (a replay adds only what is missing), all-or-nothing per batch; it
    can be taken down, refuses rows whose request id holds "poison", and its dead letters
    refuse records whose request id holds "cursed"."""

    table = "predictions"
    columns: tuple[str, ...] = COLUMNS

    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}
        self.dead: list[DeadLetter] = []
        self.down = False
        self.opened = 0
        self.abandoned = 0
        self.closed = False

    async def open(self) -> None:
        if self.down:
            raise ConnectionError("store is down")
        self.opened += 1

    def abandon(self) -> None:
        self.abandoned += 1

    async def close(self) -> None:
        self.closed = True

    async def write(self, batch: Sequence[Row]) -> Written:
        if self.down:
            raise ConnectionError("store is down")
        if any("poison" in r[0] for r in batch):
            raise Refused("a row the store cannot hold")
        new = {r[0]: r for r in batch if r[0] not in self.rows}
        self.rows.update(new)
        return Written(len(new), len(batch) - len(new), staged=len(new) < len(batch))

    async def dead_letter(self, records: Sequence[DeadLetter]) -> None:
        if self.down:
            raise ConnectionError("store is down")
        if any("cursed" in r[1] for r in records):
            raise Refused("a dead letter the store cannot hold")
        self.dead.extend(records)

    def refused_for_content(self, exc: BaseException) -> bool:
        return isinstance(exc, Refused)

    def dead_letters_refuse(self, exc: BaseException) -> bool:
        return isinstance(exc, Refused)


async def until(condition: object, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:  # type: ignore[operator]
        await asyncio.sleep(0.02)


def test_a_store_away_then_back_gets_every_row_once(tmp_path: Path) -> None:
    sink = KeyedSink()
    typed: LogSink = sink  # (a type checker holds it to the interface)

    async def run() -> LogWriter:
        w = LogWriter(typed, batch_rows=100, max_age=0.02, spool=Spool(tmp_path))
        await w.start()
        w.extend([row(i) for i in range(1000, 1100)])
        await until(lambda: w.counters.written == 100)
        sink.down = True  # an open store goes away: writes fail, the writer abandons it
        for i in range(1000):
            w.append(row(i))
            if i % 100 == 0:
                await asyncio.sleep(0.01)
        await until(lambda: w.counters.spooled == 1000)
        assert len(sink.rows) == 100 and w.queued == 0  # the rest on disk, none in memory
        sink.down = False
        await until(lambda: not Spool(tmp_path).segments())
        for i in range(1100, 1200):  # and new rows after it
            w.append(row(i))
        await w.stop()
        return w

    w = asyncio.run(run())
    assert sorted(sink.rows) == sorted(f"req-{i}" for i in range(1200))
    assert w.counters.replayed == 1000 and w.counters.written == 1200
    assert w.counters.failed_flushes > 0 and sink.abandoned > 0 and sink.closed


def test_a_replayed_batch_adds_only_what_is_missing() -> None:
    sink = KeyedSink()

    async def run() -> tuple[int, int, LogWriter]:
        w = LogWriter(sink)
        await w.start()
        await w.connected()
        batch = [row(i) for i in range(50)]
        first = await w.write(batch[:20])
        second = await w.write(batch)
        await w.stop()
        return first, second, w

    first, second, w = asyncio.run(run())
    assert (first, second) == (20, 30)
    assert w.counters.duplicates == 20 and w.counters.staged_batches == 1
    assert len(sink.rows) == 50


def test_refused_rows_are_isolated_and_dead_lettered_through_the_sink(tmp_path: Path) -> None:
    sink = KeyedSink()
    rows = [row(i) for i in range(200)]
    rows[17] = ("poison-17", *rows[17][1:])
    rows[150] = ("poison-cursed-150", *rows[150][1:])  # its dead letter is refused too

    async def run() -> LogWriter:
        w = LogWriter(sink, batch_rows=1000, max_age=0.02, spool=Spool(tmp_path), gateway_id="g")
        await w.start()
        w.extend(rows)
        await until(lambda: w.counters.dead_lettered == 2)
        await w.stop()
        return w

    w = asyncio.run(run())
    assert len(sink.rows) == 198 and "poison-17" not in sink.rows
    (letter,) = sink.dead
    table, content, _state, error, message, _detail, gateway = letter
    assert (table, error, message, gateway) == ("predictions", "Refused",
                                                "a row the store cannot hold", "g")  # fmt: skip
    assert json.loads(content)["request_id"] == "poison-17"
    (kept,) = [json.loads(x) for x in (tmp_path / DEAD_LETTERS).read_text().splitlines()]
    assert kept["content"]["request_id"] == "poison-cursed-150"
    assert w.counters.dead_lettered == 2 and w.counters.written == 198


class SlowSink(KeyedSink):
    """A KeyedSink whose writes take a while, counting how many run at once; the write of the
    batch holding ``flaky`` fails (the store's state, not the rows) the first time only."""

    def __init__(self, flaky: str) -> None:
        super().__init__()
        self.flaky = flaky
        self.running = 0
        self.most = 0
        self.writes = 0

    async def write(self, batch: Sequence[Row]) -> Written:
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(0.02)
            self.writes += 1
            if any(r[0] == self.flaky for r in batch):
                self.flaky = ""
                raise ConnectionError("connection reset")
            return await super().write(batch)
        finally:
            self.running -= 1


def test_a_backlog_is_written_two_batches_at_a_time_and_a_failed_one_alone_again() -> None:
    """A backlog goes out in batches of batch_rows, two at once; when one of a pair fails, the
    other is not written again, the failed one is retried, and every row arrives once."""
    sink = SlowSink(flaky="req-250")

    async def run() -> LogWriter:
        w = LogWriter(sink, batch_rows=100, max_age=5.0)
        await w.start()
        await w.connected()
        w.extend([row(i) for i in range(1000)])  # 10 batches' worth, flushed at once
        await until(lambda: w.counters.written == 1000)
        await w.stop()
        return w

    w = asyncio.run(run())
    assert sorted(sink.rows) == sorted(f"req-{i}" for i in range(1000))
    assert sink.most == 2  # side by side, never more
    assert w.counters.failed_flushes == 1 and sink.abandoned == 1
    # Ten batches and the one retried: the batch beside the failed one is not written again.
    assert sink.writes == 11
    assert w.counters.written == 1000 and w.queued == 0
