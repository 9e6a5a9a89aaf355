"""The evaluator's PostgreSQL access: experiment versions, decisions, gateway status.

Experiment versions are append-only; a change is a new row whose ``version`` is the previous
one plus one, so two writers racing on one experiment cannot both win (the second gets
FAILED_PRECONDITION and retries from the new state).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from abgate.errors import FailedPrecondition, NotFound, shown
from evaluator.experiments import ExperimentState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VersionRow:
    state: ExperimentState
    version: int  # per experiment
    seq: int  # global: the snapshot version this row is part of from now on

    @property
    def since(self) -> int:
        """The snapshot version from which this experiment's split is the one in force."""
        return self.state.since_version or self.seq


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


class EvaluatorStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def open(cls, dsn: str, *, max_size: int = 4) -> EvaluatorStore:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=max_size, init=_init_connection)
        return cls(pool)

    async def close(self) -> None:
        await self.pool.close()

    # -- experiment versions -----------------------------------------------------------------
    async def latest(self) -> dict[str, VersionRow]:
        """The latest version of every experiment. A row that does not parse is an error for
        the caller (it keeps publishing what it had), never silently skipped."""
        rows = await self.pool.fetch(
            """SELECT DISTINCT ON (experiment) experiment, version, seq, config
               FROM experiment_versions ORDER BY experiment, version DESC"""
        )
        out: dict[str, VersionRow] = {}
        for r in rows:
            try:
                state = ExperimentState.from_json(r["config"])
            except (TypeError, KeyError, ValueError) as exc:
                raise ValueError(
                    f"experiment {r['experiment']!r} version {r['version']} is unreadable: {exc}"
                ) from None
            out[r["experiment"]] = VersionRow(state, r["version"], r["seq"])
        return out

    async def get(self, name: str) -> VersionRow:
        r = await self.pool.fetchrow(
            """SELECT version, seq, config FROM experiment_versions WHERE experiment = $1
               ORDER BY version DESC LIMIT 1""",
            name,
        )
        if r is None:
            raise NotFound(f"unknown experiment {shown(name)}", field="name")
        return VersionRow(ExperimentState.from_json(r["config"]), r["version"], r["seq"])

    async def status_since(self, name: str) -> float:
        """When (epoch seconds) the experiment entered its current status: the first version of
        the latest run of versions in that status (the end of a round, for the cooldown)."""
        value = await self.pool.fetchval(
            """WITH latest AS (
                   SELECT version, config->>'status' AS status FROM experiment_versions
                   WHERE experiment = $1 ORDER BY version DESC LIMIT 1)
               SELECT extract(epoch FROM min(v.created_at))::float8
               FROM experiment_versions v, latest
               WHERE v.experiment = $1 AND v.version > coalesce(
                   (SELECT max(o.version) FROM experiment_versions o
                    WHERE o.experiment = $1 AND o.config->>'status' <> latest.status), 0)""",
            name,
        )
        if value is None:
            raise NotFound(f"unknown experiment {shown(name)}", field="name")
        return float(value)

    async def snapshot_version(self) -> int:
        return int(
            await self.pool.fetchval("SELECT coalesce(max(seq), 0) FROM experiment_versions")
        )

    async def append(
        self,
        state: ExperimentState,
        *,
        previous: int,
        reason: str,
        by: str,
        decision: Mapping[str, Any] | None = None,
    ) -> VersionRow:
        """Write version ``previous + 1`` of ``state`` (``previous`` 0 creates it), and the
        decision that produced it in the same transaction."""
        async with self.pool.acquire() as conn, conn.transaction():
            try:
                row = await conn.fetchrow(
                    """INSERT INTO experiment_versions
                           (experiment, version, config, created_by, reason)
                       VALUES ($1, $2, $3, $4, $5) RETURNING version, seq""",
                    state.name,
                    previous + 1,
                    state.to_json(),
                    by,
                    reason,
                )
            except asyncpg.UniqueViolationError:
                if previous == 0:
                    raise FailedPrecondition(
                        f"experiment {state.name!r} already exists", field="definition.name"
                    ) from None
                raise FailedPrecondition(
                    f"experiment {state.name!r} changed meanwhile (version {previous} is not "
                    "the latest); retry"
                ) from None
            assert row is not None
            if decision is not None:
                await self._insert_decision(conn, state.name, decision, previous, row["version"])
            return VersionRow(state, row["version"], row["seq"])

    # -- decisions ---------------------------------------------------------------------------
    @staticmethod
    async def _insert_decision(
        conn: asyncpg.Connection,
        experiment: str,
        decision: Mapping[str, Any],
        from_version: int | None,
        to_version: int | None,
    ) -> None:
        await conn.execute(
            """INSERT INTO decisions (experiment, action, recommendation, source, statistics,
                                      inputs, from_version, to_version)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
            experiment,
            decision["action"],
            decision.get("recommendation", ""),
            decision.get("source", "policy"),
            decision.get("statistics", {}),
            decision.get("inputs", {}),
            from_version or None,
            to_version,
        )

    async def record_decision(
        self, experiment: str, decision: Mapping[str, Any], version: int
    ) -> None:
        """A decision that changed no config (continue, keep, a paused SRM check...)."""
        async with self.pool.acquire() as conn:
            await self._insert_decision(conn, experiment, decision, version, None)

    async def record_decision_on(
        self, conn: asyncpg.Connection, experiment: str, decision: Mapping[str, Any], version: int
    ) -> None:
        """``record_decision`` on the caller's connection (inside its transaction)."""
        await self._insert_decision(conn, experiment, decision, version, None)

    async def last_verdict(self, experiment: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """(verdict, statistics) of the latest policy decision, if any."""
        stats = await self.pool.fetchval(
            """SELECT statistics FROM decisions
               WHERE experiment = $1 AND statistics ? 'verdict' ORDER BY id DESC LIMIT 1""",
            experiment,
        )
        if stats is None:
            return None
        verdict = stats.pop("verdict")
        return verdict, stats

    async def decisions(
        self, experiment: str, limit: int = 1000, *, steps_only: bool = False
    ) -> list[dict[str, Any]]:
        """The experiment's audit rows, oldest first: the newest ``limit`` of them; without the
        unchanged "continue" verdicts when ``steps_only``."""
        rows = await self.pool.fetch(
            """SELECT id, extract(epoch FROM ts)::float8 AS ts, action, recommendation, source,
                      statistics, inputs, from_version, to_version
               FROM decisions WHERE experiment = $1 AND NOT ($3 AND action = 'continue')
               ORDER BY id DESC LIMIT $2""",
            experiment,
            limit,
            steps_only,
        )
        return [dict(r) for r in reversed(rows)]

    # -- gateways ----------------------------------------------------------------------------
    async def gateway_seen(
        self,
        node_id: str,
        *,
        version: int,
        connected: bool,
        acked: bool = False,
        error: str = "",
        nack_version: int | None = None,
    ) -> None:
        await self.pool.execute(
            """INSERT INTO gateway_status AS g (node_id, version, acked_at, connected,
                                                last_nack_version, last_error, updated_at)
               VALUES ($1, $2, CASE WHEN $3 THEN now() END, $4, $5, $6, now())
               ON CONFLICT (node_id) DO UPDATE SET
                   version = EXCLUDED.version,
                   acked_at = coalesce(EXCLUDED.acked_at, g.acked_at),
                   connected = EXCLUDED.connected,
                   last_nack_version = coalesce(EXCLUDED.last_nack_version, g.last_nack_version),
                   last_error = CASE WHEN $3 THEN '' WHEN $6 <> '' THEN $6 ELSE g.last_error END,
                   updated_at = now()""",
            node_id,
            version,
            acked,
            connected,
            nack_version,
            error,
        )

    async def gateways(self) -> Sequence[Mapping[str, Any]]:
        return await self.pool.fetch(
            """SELECT node_id, version, extract(epoch FROM acked_at) AS acked_at, connected,
                      last_nack_version, last_error FROM gateway_status ORDER BY node_id"""
        )
