"""Retrain requests: the asker's side of the queue in ``retrain_requests`` (migration 0010).

The evaluator (when drift or decay acts), a schedule, or an operator asks; the trainer service
(``evaluator.trainer``) claims and answers. At most one request per experiment is pending at a
time: asking while one waits returns the waiting one (``created`` False) instead of queueing a
second training. A new request wakes the trainers listening on ``NOTIFY_CHANNEL`` (delivered
when the asker's transaction commits); a trainer also polls, so a lost wake-up only delays.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg

SOURCES = ("drift", "decay", "schedule", "manual")
STATES = ("pending", "registered", "rejected", "failed")
NOTIFY_CHANNEL = "abgate_retrain"


@dataclass(frozen=True)
class RetrainRequest:
    id: int
    experiment: str
    source: str
    reason: str
    requested_by: str
    details: Mapping[str, Any]
    state: str
    attempts: int
    result: Mapping[str, Any]
    created: bool = False  # True when this call queued it, False when it was already pending

    @classmethod
    def from_row(cls, row: asyncpg.Record, created: bool = False) -> RetrainRequest:
        return cls(
            id=row["id"],
            experiment=row["experiment"],
            source=row["source"],
            reason=row["reason"],
            requested_by=row["requested_by"],
            details=_json(row["details"]),
            state=row["state"],
            attempts=row["attempts"],
            result=_json(row["result"]),
            created=created,
        )


def _json(value: Any) -> Mapping[str, Any]:
    return json.loads(value) if isinstance(value, str) else dict(value or {})


_COLUMNS = "id, experiment, source, reason, requested_by, details, state, attempts, result"


async def request_retrain(
    conn: asyncpg.Connection | asyncpg.Pool,
    experiment: str,
    source: str,
    reason: str,
    *,
    requested_by: str = "",
    details: Mapping[str, Any] | None = None,
) -> RetrainRequest:
    """Queue a retrain of ``experiment`` unless one is already pending (then return that one)."""
    if source not in SOURCES:
        raise ValueError(f"retrain source must be one of {', '.join(SOURCES)}, not {source!r}")
    row = await conn.fetchrow(
        f"""INSERT INTO retrain_requests (experiment, source, reason, requested_by, details)
            VALUES ($1, $2, $3, $4, $5::text::jsonb)
            ON CONFLICT (experiment) WHERE state = 'pending' DO NOTHING
            RETURNING {_COLUMNS}""",
        experiment,
        source,
        reason,
        requested_by,
        json.dumps(dict(details or {})),
    )
    if row is not None:
        await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, str(row["id"]))
        return RetrainRequest.from_row(row, created=True)
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM retrain_requests WHERE experiment = $1 AND state = 'pending'",
        experiment,
    )
    if row is None:  # answered between the two statements: ask again
        return await request_retrain(
            conn, experiment, source, reason, requested_by=requested_by, details=details
        )
    return RetrainRequest.from_row(row)


async def requests_of(
    conn: asyncpg.Connection | asyncpg.Pool, experiment: str, limit: int = 100
) -> list[RetrainRequest]:
    """The experiment's requests, newest first."""
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM retrain_requests WHERE experiment = $1
            ORDER BY id DESC LIMIT $2""",
        experiment,
        limit,
    )
    return [RetrainRequest.from_row(r) for r in rows]
