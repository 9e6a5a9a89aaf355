"""The retrain queue's asker side (evaluator.retrain, migration 0010) on a real database: one
pending request per experiment, a second ask returns the waiting one, a bad source is refused
by the code and by the table."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from abgate.db.migrate import migrate
from evaluator.retrain import request_retrain, requests_of


def test_one_pending_request_per_experiment(fresh_db: str) -> None:
    async def run() -> None:
        await migrate(fresh_db)
        conn = await asyncpg.connect(fresh_db)
        try:
            first = await request_retrain(
                conn, "exp", "drift", "score psi 0.31", details={"psi": 0.31}
            )
            again = await request_retrain(conn, "exp", "manual", "by hand", requested_by="ops")
            other = await request_retrain(conn, "other", "manual", "by hand")
            assert first.created and other.created and not again.created
            assert again.id == first.id and again.source == "drift"
            assert first.details == {"psi": 0.31} and first.state == "pending"
            await conn.execute(
                "UPDATE retrain_requests SET state = 'registered' WHERE id = $1", first.id
            )
            later = await request_retrain(conn, "exp", "schedule", "nightly")
            assert later.created and later.id not in (first.id, other.id)
            assert [r.id for r in await requests_of(conn, "exp")] == [later.id, first.id]
            with pytest.raises(ValueError, match="retrain source"):
                await request_retrain(conn, "exp", "whim", "")
            with pytest.raises(asyncpg.CheckViolationError):
                await conn.execute(
                    "INSERT INTO retrain_requests (experiment, source) VALUES ('x', 'whim')"
                )
        finally:
            await conn.close()

    asyncio.run(run())


def test_a_new_request_wakes_the_trainers(fresh_db: str) -> None:
    """Every asker (the evaluator's drift/decay trigger as much as RequestRetrain) notifies
    NOTIFY_CHANNEL with the new request's id; a repeat that queued nothing does not."""
    from evaluator.retrain import NOTIFY_CHANNEL

    async def run() -> None:
        await migrate(fresh_db)
        listener = await asyncpg.connect(fresh_db)
        conn = await asyncpg.connect(fresh_db)
        heard: asyncio.Queue[str] = asyncio.Queue()
        try:
            await listener.add_listener(NOTIFY_CHANNEL, lambda *a: heard.put_nowait(a[3]))
            first = await request_retrain(conn, "exp", "decay", "accuracy fell")
            assert await asyncio.wait_for(heard.get(), 10) == str(first.id)
            await request_retrain(conn, "exp", "drift", "again")  # already pending
            await conn.execute("SELECT pg_notify($1, 'marker')", NOTIFY_CHANNEL)
            assert await asyncio.wait_for(heard.get(), 10) == "marker"
        finally:
            await listener.close()
            await conn.close()

    asyncio.run(run())
