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
