"""gateway.wal.LocalLog against a real gateway.spool.Spool in a temporary directory (no
database: the log writer's side is played by calling close_generation/release directly)."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.spool import Spool
from gateway.wal import WAL_DIR, LocalLog


def rows_of(spool: Spool) -> list[list[Any]]:
    """Every intact row in a spool's segments, in order."""
    return [row for seg in spool.segments() for batch in spool.read(seg) for row in batch]


def row(i: int) -> list[Any]:
    return [f"req-{i}", i * 0.5, b"\x00\x01"]


def test_synced_resolves_only_once_the_group_is_on_disk(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "predictions")

    async def main() -> tuple[list[list[Any]], list[list[Any]]]:
        local = LocalLog(spool, interval=0.01)
        local.start()
        assert local.synced() is None  # nothing waits
        for i in range(5):
            local.add(row(i))
        fut = local.synced()
        assert fut is not None and not fut.done()
        assert rows_of(local.wal) == []  # not written yet, so not answered yet
        seen_at_resolution: list[list[Any]] = []
        # What is on disk at the moment the future resolves, read back from the segment.
        fut.add_done_callback(lambda _: seen_at_resolution.extend(rows_of(local.wal)))
        await fut
        after = rows_of(local.wal)
        await local.stop(all_written=False)
        return seen_at_resolution, after

    seen, after = asyncio.run(main())
    expected = [row(i) for i in range(5)]
    assert seen == expected
    assert after == expected


def test_concurrent_adds_in_one_interval_share_one_group(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "predictions")
    n = 50

    async def main() -> tuple[int, int, int]:
        local = LocalLog(spool, interval=0.05)
        local.start()
        futures: list[asyncio.Future[None]] = []

        async def answer(i: int) -> None:
            local.add(row(i))
            fut = local.synced()
            assert fut is not None
            futures.append(fut)
            await fut

        await asyncio.gather(*(answer(i) for i in range(n)))
        assert local._future is None  # every group taken
        groups, written = local.groups, local.rows_written
        await local.stop(all_written=True)
        return groups, written, len(futures)

    groups, written, answered = asyncio.run(main())
    assert written == answered == n
    assert 1 <= groups < n


def test_a_cancelled_waiter_cancels_neither_its_group_nor_the_log(tmp_path: Path) -> None:
    """A call whose client goes away is cancelled while it awaits its group: the other calls
    of that group are still answered, and so are later groups (the background task lives)."""
    spool = Spool(tmp_path / "predictions")

    async def main() -> tuple[int, list[list[Any]]]:
        local = LocalLog(spool, interval=0.01)
        local.start()

        async def answer(i: int) -> int:
            local.add(row(i))
            fut = local.synced()
            assert fut is not None
            await fut
            return i

        tasks = [asyncio.create_task(answer(i)) for i in range(3)]
        await asyncio.sleep(0)  # all three wait on one group now
        tasks[1].cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        assert done[0] == 0 and done[2] == 2
        assert isinstance(done[1], asyncio.CancelledError)
        assert await answer(3) == 3  # a later group
        assert local._task is not None and not local._task.done()
        groups = local.groups
        await local.stop(all_written=False)
        return groups, rows_of(local.wal)

    groups, written = asyncio.run(main())
    assert groups == 2
    assert written == [row(i) for i in range(4)]  # the cancelled call's row is logged too


def test_segments_are_deleted_only_after_their_generation_is_released(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "predictions")

    async def main() -> None:
        local = LocalLog(spool, interval=0)

        async def write(rows: list[list[Any]]) -> None:
            local.add_many(rows)
            fut = local.synced()
            assert fut is not None
            await fut

        local.start()
        await write([row(0), row(1)])  # generation 0
        gen0 = local.close_generation()
        await write([row(2)])  # generation 1: a segment of its own
        gen1 = local.close_generation()
        await write([row(3)])  # generation 2
        segments = local.wal.segments()
        assert len(segments) == 3
        assert [rows_of_segment(local.wal, s) for s in segments] == [
            [row(0), row(1)],
            [row(2)],
            [row(3)],
        ]
        # The task deletes released segments after a write; it has gone through that pass
        # once the next write is done (one loop, one step after the other).
        await write([row(4)])
        await write([row(5)])
        assert local.wal.segments()[:3] == segments  # nothing released: nothing deleted
        local.release(gen0)
        await write([row(6)])
        await write([row(7)])
        assert segments[0] not in local.wal.segments()
        assert segments[1] in local.wal.segments() and segments[2] in local.wal.segments()
        local.release(gen1)
        await write([row(8)])
        await write([row(9)])
        assert segments[1] not in local.wal.segments()
        assert segments[2] in local.wal.segments()
        await local.stop(all_written=False)
        # The unreleased generation's segment survives a stop that is not clean.
        assert segments[2] in local.wal.segments()
        assert rows_of(local.wal) == [row(i) for i in range(3, 10)]

    asyncio.run(main())


def rows_of_segment(spool: Spool, segment: Path) -> list[list[Any]]:
    return [r for batch in spool.read(segment) for r in batch]


def test_stop_all_written_deletes_every_segment_after_writing_what_waits(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "predictions")

    async def main() -> asyncio.Future[None]:
        local = LocalLog(spool, interval=10.0)  # the stop must not wait out the interval
        local.start()
        local.add(row(0))
        fut = local.synced()
        assert fut is not None
        await local.stop(all_written=True)
        assert local.rows_written == 1
        return fut

    fut = asyncio.run(main())
    assert fut.done() and fut.exception() is None  # the waiting answer was released
    assert list((spool.root / WAL_DIR).glob("seg-*.spool")) == []
    assert spool.segments() == []  # nothing to replay after a clean stop


def test_stop_not_all_written_leaves_segments_that_the_next_start_adopts(tmp_path: Path) -> None:
    root = tmp_path / "predictions"

    async def first_run() -> None:
        local = LocalLog(Spool(root), interval=0)
        local.start()
        local.add_many([row(0), row(1)])
        fut = local.synced()
        assert fut is not None
        await fut
        local.close_generation()
        local.add(row(2))
        await local.stop(all_written=False)  # the writer still held rows

    asyncio.run(first_run())
    assert len(list((root / WAL_DIR).glob("seg-*.spool"))) == 2
    spool = Spool(root)
    LocalLog(spool)  # a restart: the leftovers go to the spool
    assert list((root / WAL_DIR).glob("seg-*.spool")) == []
    assert rows_of(spool) == [row(0), row(1), row(2)]
    assert spool.pending


def write_leftover(root: Path, name: str, batches: list[list[list[Any]]]) -> Path:
    """A write-ahead segment as a killed process left it (written with a Spool of its own)."""
    wal = Spool(root / WAL_DIR)
    for batch in batches:
        wal.append(batch)
    (segment,) = wal.segments()
    return segment.rename(segment.with_name(name))


def test_a_leftover_segment_is_adopted_into_the_spool_at_construction(tmp_path: Path) -> None:
    root = tmp_path / "predictions"
    spool = Spool(root)
    spool.append([row(100)])  # the spool's own segment (a failed flush) stays first
    write_leftover(root, "seg-000000000007.spool", [[row(0), row(1)], [row(2)]])
    LocalLog(spool)
    assert list((root / WAL_DIR).iterdir()) == []
    assert len(spool.segments()) == 2
    assert rows_of(spool) == [row(100), row(0), row(1), row(2)]
    assert spool.pending
    assert spool.size == sum(p.stat().st_size for p in spool.segments())
    # A Spool opened afresh on the directory (the log writer's replay) reads the same.
    assert rows_of(Spool(root)) == [row(100), row(0), row(1), row(2)]


@pytest.mark.parametrize("keep", [5, 12, 20, -1])
def test_a_torn_last_record_keeps_the_complete_ones_and_startup_goes_on(
    tmp_path: Path, keep: int
) -> None:
    """A crash mid-write leaves only ``keep`` bytes of the last record (-1: all but its last
    byte): a torn header (5), the header alone (12), part of the payload."""
    root = tmp_path / "predictions"
    wal = Spool(root / WAL_DIR)  # as a killed process left it
    wal.append([row(0)])
    wal.append([row(1), row(2)])
    complete = wal.size  # where the last record starts
    (segment,) = wal.segments()
    wal.append([row(3)])
    data = segment.read_bytes()
    assert len(data) - complete > 20
    segment.write_bytes(data[: len(data) - 1] if keep < 0 else data[: complete + keep])
    spool = Spool(root)

    async def main() -> list[list[Any]]:
        local = LocalLog(spool, interval=0)  # does not raise
        local.start()
        local.add(row(4))  # and the new run logs as usual
        fut = local.synced()
        assert fut is not None
        await fut
        written = rows_of(local.wal)
        await local.stop(all_written=True)
        return written

    assert asyncio.run(main()) == [row(4)]
    assert rows_of(spool) == [row(0), row(1), row(2)]


def test_a_leftover_segment_torn_in_its_first_record_is_harmless(tmp_path: Path) -> None:
    root = tmp_path / "predictions"
    segment = write_leftover(root, "seg-000000000001.spool", [[row(0)]])
    segment.write_bytes(segment.read_bytes()[:7])  # not even a whole header
    spool = Spool(root)
    LocalLog(spool)
    assert rows_of(spool) == []
    (adopted,) = spool.segments()
    spool.delete(adopted)  # what the replayer does with a segment read to its end
    assert not spool.pending and spool.size == 0


def test_a_failed_local_write_fails_the_group_and_the_next_group_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path / "predictions")

    async def main() -> None:
        local = LocalLog(spool, interval=0)
        local.start()
        real_append = local.wal.append

        def failing(rows: list[Any]) -> Path:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(local.wal, "append", failing)
        local.add(row(0))
        fut = local.synced()
        assert fut is not None
        with pytest.raises(Exception, match="cannot be written"):
            await fut
        monkeypatch.setattr(local.wal, "append", real_append)
        local.add(row(1))
        fut = local.synced()
        assert fut is not None
        await fut
        assert rows_of(local.wal) == [row(1)]
        await local.stop(all_written=True)

    asyncio.run(main())


# -- directory fsyncs: a created, renamed or removed directory entry is durable only once the
# directory itself is fsynced -----------------------------------------------------------------


@pytest.fixture
def dir_fsyncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Path]]:
    """The directories os.fsync is called on (by path), the real fsync still done."""
    calls: list[Path] = []
    real = os.fsync

    def recording(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            calls.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        real(fd)

    monkeypatch.setattr(os, "fsync", recording)
    yield calls


def test_a_new_segment_fsyncs_its_directory(tmp_path: Path, dir_fsyncs: list[Path]) -> None:
    root = tmp_path / "predictions"
    spool = Spool(root)
    assert dir_fsyncs == [tmp_path.resolve()]  # the new directory's entry, made durable
    dir_fsyncs.clear()
    spool.append([row(0)])  # a new file: its entry made durable
    assert dir_fsyncs == [root.resolve()]
    dir_fsyncs.clear()
    spool.append([row(1)])  # the same file: the data fsync suffices
    assert dir_fsyncs == []
    spool.seal()
    spool.append([row(2)])
    assert dir_fsyncs == [root.resolve()]


def test_wal_segments_and_adoption_fsync_their_directories(
    tmp_path: Path, dir_fsyncs: list[Path]
) -> None:
    root = tmp_path / "predictions"
    write_leftover(root, "seg-000000000001.spool", [[row(0)]])
    spool = Spool(root)
    dir_fsyncs.clear()
    local = LocalLog(spool)
    wal_dir = (root / WAL_DIR).resolve()
    # The rename out of wal/ into the spool: both directories.
    assert root.resolve() in dir_fsyncs and wal_dir in dir_fsyncs
    dir_fsyncs.clear()

    async def main() -> None:
        local.start()
        local.add(row(1))
        fut = local.synced()
        assert fut is not None
        await fut
        await local.stop(all_written=False)

    asyncio.run(main())
    assert dir_fsyncs == [wal_dir]  # the group's new segment
