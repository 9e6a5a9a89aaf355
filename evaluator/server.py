"""The evaluator process: one lifecycle (start/stop), the tick loop, and the operations behind
the admin API. Experiment versions in PostgreSQL are the source of truth; every tick re-reads
the latest ones and publishes a new snapshot when the set changed (so a version written by any
means, SQL included, reaches the gateways).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import math
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import asyncpg
import grpc
import numpy as np

from abgate.db.embedded import EmbeddedPostgres
from abgate.db.migrate import migrate
from abgate.db.partitions import drop_partitions_before, ensure_partitions
from abgate.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable, shown
from abgate.metrics_endpoint import serve_collectors
from abgate.settings import EvaluatorSettings, split_listen
from abgate.surface import Surface
from abgate.v1 import control_pb2 as cpb
from abgate.v1 import control_pb2_grpc as cpb_grpc
from evaluator.aggregate import (
    DriftBins,
    FeatureBins,
    TickResult,
    all_shadow_totals,
    analyze_stale,
    arm_data,
    catch_up,
    decay_totals,
    drift_totals,
    feature_totals,
    ignored_totals,
    monitor_epochs,
    restart_windows,
    shadow_totals,
)
from evaluator.drift import (
    LEVELS,
    DecayMeasure,
    DriftMeasure,
    as_json,
    feature_name,
    measure,
    measure_decay,
    measure_features,
)
from evaluator.experiments import (
    ARCHIVED,
    ExperimentState,
    check_shadow,
    definition_message,
    drift_thresholds,
    feature_sample_rate,
    pin_model,
    pin_models,
    snapshot_message,
    validate_definition,
)
from evaluator.metrics import EvaluatorCollector
from evaluator.policy import Decision, decide, next_stage
from evaluator.retrain import request_retrain
from evaluator.rounds import approved, next_round
from evaluator.service import (
    AdminServicer,
    ConfigStreamServicer,
    GatewayRejection,
    Publisher,
    TokenAuth,
)
from evaluator.shadows import compare
from evaluator.store import EvaluatorStore, VersionRow
from gateway.modelstore import InvalidModelRef, ModelNotFound, ModelStore

log = logging.getLogger(__name__)

MAINTENANCE_INTERVAL = 3600.0  # seconds between partition upkeep runs
MAX_HISTORY = 10_000  # rows one History call returns at most


def server_credentials(s: EvaluatorSettings) -> grpc.ServerCredentials | None:
    if s.tls_cert is None and s.tls_key is None:
        if s.tls_client_ca is not None:
            raise InvalidArgument("needs --tls-cert and --tls-key", field="tls_client_ca")
        return None
    if s.tls_cert is None or s.tls_key is None:
        raise InvalidArgument("give both --tls-cert and --tls-key", field="tls_cert")
    ca = s.tls_client_ca.read_bytes() if s.tls_client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(s.tls_key.read_bytes(), s.tls_cert.read_bytes())],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


# Experiments whose arms are monitored for drift and decay, and those whose champion alone is
# (one arm serves everything, from the fresh reference taken after the change).
CHAMPION_STATUSES = ("promoted", "rolled_back")
MONITORED_STATUSES = ("running", *CHAMPION_STATUSES)


def champion_of(state: ExperimentState) -> str:
    """The arm serving as champion: the control while an experiment runs (or is paused), the
    arm holding the largest weight once it is promoted or rolled back."""
    if state.status in CHAMPION_STATUSES and state.weights:
        return max(state.weights, key=lambda a: state.weights[a])
    return state.control.name


@dataclass(frozen=True)
class _Monitored:
    drift: Mapping[tuple[str, str], DriftBins]
    features: Mapping[tuple[str, str], FeatureBins]
    decay: Mapping[tuple[str, str], DriftBins]


# Session-level advisory lock held by the one evaluator that aggregates and decides ("abgate" +
# 4; migrations, aggregation and partitions use + 1, + 2, + 3).
LEADER_LOCK = 0x61626761746504


_HISTORY_INSERT = """
INSERT INTO drift_history (experiment, arm, measure, ts, psi, level, p_value, rejected, rate,
                           reference_rate, reference_rows, current_rows, window_rows,
                           feature_name)
VALUES ($1, $2, $3, to_timestamp($4), $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
ON CONFLICT DO NOTHING
"""


def _history_rows(
    name: str,
    arm: str,
    now: float,
    drift: Mapping[str, DriftMeasure],
    decay: Mapping[str, DecayMeasure],
    names: Sequence[str] = (),
) -> list[tuple[Any, ...]]:
    """drift_history rows of one arm's measures at tick time ``now`` (psi and a decay's rate
    over the rolling window, the test's p-value over every current row; ``names``: the arm's
    model's feature names)."""
    rows: list[tuple[Any, ...]] = [
        (name, arm, kind, now, m.psi, m.level, m.p_value, m.rejected, None, None,
         m.reference_rows, m.current_rows, m.window_rows, feature_name(kind, names) or None)
        for kind, m in sorted(drift.items())
    ]  # fmt: skip
    rows += [
        (name, arm, kind, now, None, "act" if d.worse else "ok", d.p_value, d.rejected,
         None if math.isnan(d.window_rate) else d.window_rate, d.reference_rate,
         d.reference_rows, d.current_rows, d.window_rows, None)
        for kind, d in sorted(decay.items())
    ]  # fmt: skip
    return rows


def _window_table(source: str, measure: str) -> str:
    """The table holding the monitoring window of an acting measure."""
    if source == "decay":
        return "decay_windows"
    return "feature_windows" if measure.startswith("feature:") else "drift_windows"


class EvaluatorServer:
    def __init__(self, settings: EvaluatorSettings) -> None:
        if not settings.token:
            raise InvalidArgument("the evaluator needs a --token (ABGATE_TOKEN)", field="token")
        self.settings = settings
        self.store: EvaluatorStore | None = None
        # Where every experiment's models must be (the gateways' store): create pins them here.
        self.models = ModelStore(settings.model_store)
        self.publisher = Publisher(self._status_sink, self._rejections_sink)
        # (gateway, experiment) -> (version, error) of the rejection last acted upon, so that a
        # gateway repeating it in every ACK is paused and audited once.
        self._rejections_seen: dict[tuple[str, str], tuple[int, str]] = {}
        self.latest: dict[str, VersionRow] = {}
        # Health, reflection, the token check and call metrics of the gRPC listener.
        self.auth = TokenAuth(settings.token, settings.read_token)
        self.surface = Surface(authorize=self.auth, permit=self.auth.permits)
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._embedded: EmbeddedPostgres | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._lock = asyncio.Lock()  # one writer of experiment versions at a time
        self._tick_lock = asyncio.Lock()  # the loop's ticks and tick() calls never overlap
        self._next_maintenance = 0.0
        self._stopped = False
        self._rng = np.random.default_rng(settings.seed or None)
        # Latest verdict and statistics per experiment, and what was last audited when.
        self.verdicts: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        self._audited: dict[str, tuple[str, float]] = {}
        # experiment -> when its measures were last kept in drift_history (tick time)
        self._history_at: dict[str, float] = {}
        # sha256 -> the feature names in its metadata (content-addressed: they never change).
        self._names: dict[str, tuple[str, ...]] = {}
        self.last_tick: TickResult | None = None
        self.last_tick_at: float | None = None  # time.time() when the last tick completed
        # (experiment, shadow) -> shadow_stats sums as of the last tick (for /metrics)
        self.shadow_sums: dict[tuple[str, str], dict[str, float]] = {}
        self.rows_aggregated = {"predictions": 0, "outcomes": 0}
        # (experiment, reason) -> rows the aggregation left out (ignored_rows), as of the last tick
        self.ignored: dict[tuple[str, str], int] = {}
        self.decision_counts: dict[str, int] = {}
        # (experiment, arm) -> kind -> drift measures as of the last tick (evaluator.drift);
        # the same per captured feature ("0", "1", ...) and the decay measures per kind.
        self.drift: dict[tuple[str, str], dict[str, DriftMeasure]] = {}
        self.feature_drift: dict[tuple[str, str], dict[str, DriftMeasure]] = {}
        self.decay: dict[tuple[str, str], dict[str, DecayMeasure]] = {}
        self.metrics_httpd: Any = None
        self.metrics_port = 0
        self.http: Any = None  # evaluator.http.HttpServer with --http-listen
        self.http_port = 0
        # Leadership: only the evaluator holding LEADER_LOCK on its own connection aggregates
        # and runs the policies; the others serve the config stream and the admin API.
        self.leader = False
        self._leader_conn: asyncpg.Connection | None = None
        self._url = ""

    # -- background work ----------------------------------------------------------------------
    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    def _status_sink(self, node_id: str, **kw: Any) -> None:
        store = self.store
        if store is not None and not self._stopped:
            self._spawn(store.gateway_seen(node_id, **kw))

    def _rejections_sink(self, node_id: str, rejections: Mapping[str, GatewayRejection]) -> None:
        for key in [k for k in self._rejections_seen if k[0] == node_id]:
            if key[1] not in rejections:  # served now: a later rejection is news again
                del self._rejections_seen[key]
        for name, r in rejections.items():
            key, seen = (node_id, name), (r.version, r.error)
            if self._rejections_seen.get(key) == seen or self.store is None or self._stopped:
                continue
            self._rejections_seen[key] = seen
            self._spawn(self._rejected(node_id, r))

    async def _rejected(self, node_id: str, r: GatewayRejection) -> None:
        """A gateway refused version ``r.version`` of an experiment: audit it (which gateway,
        what error) and, if that is the running version, pause the experiment so that nothing
        is decided on the traffic of the gateways that do serve it."""
        try:
            async with self._lock:
                try:
                    row = await self._store().get(r.experiment)
                except NotFound:
                    return
                state = row.state
                pause = state.status == "running" and r.version == row.version
                status = "paused" if pause else state.status
                doc = {
                    "action": "reject",
                    "source": "gateway",
                    "recommendation": f"gateway {node_id} rejected version {r.version}: "
                    f"{r.error}" + ("; paused" if pause else ""),
                    "inputs": {
                        "gateway": node_id,
                        "version": r.version,
                        "error": r.error,
                        "serving_version": r.serving_version,
                        "status_before": state.status,
                        "status": status,
                    },
                }
                if pause:
                    new = replace(state, status="paused")
                    await self._write(new, row, f"rejected by gateway {node_id}", doc)
                else:
                    await self._store().record_decision(r.experiment, doc, row.version)
        except Exception:
            # Forget it, so that the gateway's next ACK tries again.
            self._rejections_seen.pop((node_id, r.experiment), None)
            raise
        log.warning(
            "gateway %s rejected experiment %s version %d (%s)%s",
            node_id,
            r.experiment,
            r.version,
            r.error,
            "; paused it" if pause else "",
        )

    def _resolve_model(self, ref: str) -> str:
        """The sha256 of ``ref`` (a sha256, "id" or "id:version") in the model store."""
        try:
            meta = self.models.resolve(ref)
        except InvalidModelRef:
            raise InvalidArgument(f"{ref!r} is not a sha256, 'id' or 'id:version'") from None
        except ModelNotFound:
            raise NotFound(f"no model {ref!r} in the store") from None
        if not self.models.contains(meta.sha256):
            raise NotFound(f"no model {ref!r} in the store (its metadata is, its bytes are not)")
        return meta.sha256

    # -- state ------------------------------------------------------------------------------
    def _store(self) -> EvaluatorStore:
        if self.store is None:
            raise Unavailable("the evaluator is not connected to its database")
        return self.store

    async def sync(self) -> bool:
        """Re-read the latest versions; publish a new snapshot if they changed."""
        try:
            latest = await self._store().latest()
        except ValueError as exc:
            log.error("not publishing: %s", exc)
            return False
        self.latest = latest
        version = max((r.seq for r in latest.values()), default=0)
        if version == self.publisher.version or version == 0:
            return False
        self.publisher.publish(
            snapshot_message(
                version,
                [r.state for r in latest.values()],
                versions={name: r.version for name, r in latest.items()},
            )
        )
        return True

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.tick_interval)
            try:
                await self.tick()
            except Exception:
                log.exception("evaluation tick failed; retrying next tick")

    async def tick(self, now: float | None = None) -> list[tuple[str, Decision]]:
        """One evaluation: publish what changed, fold new log rows into the aggregates, run
        every running experiment's policy and write what it decides."""
        async with self._tick_lock:
            return await self._tick(now)

    async def _lead(self) -> bool:
        """Whether this evaluator is the leader, taking the lock if it is free. The lock lives
        with a connection of its own: if this process dies or loses the database, PostgreSQL
        ends the session and another evaluator takes over at its next tick."""
        conn = self._leader_conn
        try:
            if conn is None or conn.is_closed():
                conn = self._leader_conn = await asyncpg.connect(self._url)
                self.leader = False
            if self.leader:
                await conn.fetchval("SELECT 1")  # still our session, so still our lock
            elif await conn.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_LOCK):
                self.leader = True
                log.info("this evaluator is the leader: it aggregates and decides")
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if self.leader:
                log.warning("lost the leader lock's connection (%s); standing by", exc)
            self.leader = False
            if conn is not None:
                conn.terminate()
            self._leader_conn = None
        return self.leader

    async def _tick(self, now: float | None) -> list[tuple[str, Decision]]:
        await self.sync()
        if time.monotonic() >= self._next_maintenance:
            await self.maintain()
        if not self.settings.evaluate or not await self._lead():
            return []
        store = self._store()
        async with store.pool.acquire() as conn:
            analyzed = await analyze_stale(conn)
            if analyzed:
                log.debug("analyzed %s before the tick", analyzed)
            # A promoted (or rolled back) experiment's champion is monitored from a fresh
            # reference: the first rows it served after that version was written.
            for name, row in sorted(self.latest.items()):
                if row.state.status in CHAMPION_STATUSES:
                    champion = champion_of(row.state)
                    if await restart_windows(conn, name, champion, row.since):
                        log.info(
                            "experiment %s: monitoring %s from a fresh reference (version %d)",
                            name,
                            champion,
                            row.version,
                        )
            if self.settings.retrain_every > 0:
                await self._scheduled_retrains(conn)
            result = await catch_up(
                conn,
                settle=self.settings.settle,
                max_rows=self.settings.tick_rows,
                drift_reference_rows=self.settings.drift_reference_rows,
                decay_reference_rows=self.settings.decay_reference_rows,
                drift_window=self.settings.drift_window,
            )
            self.shadow_sums = await all_shadow_totals(conn)
            self.ignored = await ignored_totals(conn)
            window = self.settings.drift_window
            monitored = _Monitored(
                await drift_totals(conn, None, window),
                await feature_totals(conn, None, window),
                await decay_totals(conn, None, window),
            )
        self.last_tick = result
        self.rows_aggregated["predictions"] += result.predictions
        self.rows_aggregated["outcomes"] += result.outcomes
        now = time.time() if now is None else now
        decided = []
        self.drift, self.feature_drift, self.decay = {}, {}, {}
        for name, row in sorted(self.latest.items()):
            if row.state.status not in MONITORED_STATUSES:
                continue
            try:
                await self._monitor(row, monitored, now)
            except Exception:
                log.exception("drift of %s failed; retrying next tick", name)
            if row.state.status != "running":
                continue
            try:
                data = await arm_data(self._store().pool, row.state, row.since)
                decision = decide(row.state, data, now, self._rng)
                self.decision_counts[decision.action] = (
                    self.decision_counts.get(decision.action, 0) + 1
                )
                self.verdicts[name] = (decision.verdict, decision.statistics)
                await self._record(row, decision, now)
            except Exception:
                # One experiment's failure must not stop the others from being decided.
                log.exception("evaluating %s failed; retrying next tick", name)
                continue
            decided.append((name, decision))
        self.last_tick_at = time.time()
        return decided

    async def _monitor(self, row: VersionRow, bins: _Monitored, now: float) -> None:
        """Drift (score, class, each captured feature) and decay measures of a monitored
        experiment's arms (every arm of a running one; the champion of a promoted or rolled
        back one), an audit row the first time each crosses (action 'drift': a PSI level,
        warn or act, reached or the sequential test rejecting; 'decay': the decay test
        rejecting), and, when the champion's drift acts or it decays, a retrain request
        (audit 'retrain_requested'). What was audited is kept in drift_alerts, so a restart
        or another leader does not audit it again; the measures themselves in drift_history,
        every --drift-history-interval."""
        state = row.state
        name = state.name
        champion = champion_of(state)
        arms = [a.name for a in state.arms]
        if state.status != "running":
            arms = [champion]
        history: list[tuple[Any, ...]] = []
        levels = (state.drift_alpha, state.psi_warn, state.psi_act)
        for arm in arms:
            drift: dict[str, DriftMeasure] = {}
            if (b := bins.drift.get((name, arm))) is not None and (m := measure(b, *levels)):
                self.drift[(name, arm)] = m
                drift.update(m)
            f = bins.features.get((name, arm))
            if f is not None and (fm := measure_features(f, *levels)):
                self.feature_drift[(name, arm)] = fm
                drift.update({x.kind: x for x in fm.values()})
            decay: dict[str, DecayMeasure] = {}
            d = bins.decay.get((name, arm))
            if d is not None and (dm := measure_decay(d, state.drift_alpha)):
                self.decay[(name, arm)] = dm
                decay = {f"decay:{k}": x for k, x in dm.items()}
            if drift or decay:
                await self._audit_crossings(row, arm, arm == champion, drift, decay)
                names = self.feature_names(name, arm)
                history += _history_rows(name, arm, now, drift, decay, names)
        interval = self.settings.drift_history_interval
        if history and interval > 0 and now - self._history_at.get(name, -math.inf) >= interval:
            await self._store().pool.executemany(_HISTORY_INSERT, history)
            self._history_at[name] = now

    async def timeline(self, name: str, bucket_seconds: float | None) -> dict[str, Any]:
        """The dashboard's series of one experiment (``evaluator.dashboard.timeline_json``),
        from the results model the report reads."""
        from evaluator.dashboard import timeline_json
        from evaluator.results import load_results, metric_series

        data = await load_results(self._url, name, bucket_seconds)
        # The tests per bucket are numpy/scipy work: off the loop the config stream runs on.
        return await asyncio.to_thread(lambda: timeline_json(data, metric_series(data)))

    async def ask(self, question: str) -> dict[str, Any]:
        """``evaluator.nlq.ask`` on this evaluator's database (``POST /nlq``)."""
        from evaluator.nlq import ask

        return await ask(self._url, question)

    def feature_names(self, experiment: str, arm: str) -> tuple[str, ...]:
        """The names of the features the arm's current model reads (its metadata in the model
        store; captured features are positions in that input vector), () when unknown."""
        row = self.latest.get(experiment)
        sha = next((a.model for a in row.state.arms if a.name == arm), None) if row else None
        if sha is None:
            return ()
        if (names := self._names.get(sha)) is None:
            try:
                names = tuple(self.models.get(sha).feature_names)
            except (ModelNotFound, OSError, ValueError, KeyError, TypeError):
                return ()  # not cached: the model may reach the store later
            self._names[sha] = names
        return names

    async def _audit_crossings(
        self,
        row: VersionRow,
        arm: str,
        is_champion: bool,
        drift: Mapping[str, DriftMeasure],
        decay: Mapping[str, DecayMeasure],
    ) -> None:
        name = row.state.name
        names = self.feature_names(name, arm)
        acted: list[dict[str, Any]] = []  # the champion's crossings that ask for a retrain
        async with self._store().pool.acquire() as conn, conn.transaction():
            seen = {
                r["kind"]: (int(r["psi_level"]), bool(r["rejected"]))
                for r in await conn.fetch(
                    "SELECT kind, psi_level, rejected FROM drift_alerts"
                    " WHERE experiment = $1 AND arm = $2 FOR UPDATE",
                    name,
                    arm,
                )
            }

            async def crossed(kind: str, level: int, rejected: bool, doc: dict[str, Any]) -> None:
                await self._store().record_decision_on(conn, name, doc, row.version)
                await conn.execute(
                    "INSERT INTO drift_alerts AS a (experiment, arm, kind, psi_level, rejected)"
                    " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (experiment, arm, kind) DO UPDATE"
                    " SET psi_level = EXCLUDED.psi_level, rejected = EXCLUDED.rejected",
                    name,
                    arm,
                    kind,
                    level,
                    rejected,
                )
                log.warning("experiment %s: %s", name, doc["recommendation"])

            for kind, m in drift.items():
                level, rejected = seen.get(kind, (0, False))
                new_level = max(level, LEVELS.index(m.level))
                if new_level == level and (rejected or not m.rejected):
                    continue
                what = []
                if new_level > level:
                    what.append(f"PSI {m.psi:.3f} reached {LEVELS[new_level]}")
                if m.rejected and not rejected:
                    what.append(f"sequential test rejected (p={m.p_value:.2g})")
                named = feature_name(kind, names)
                shown = f"{kind} ({named})" if named else kind
                recommendation = f"drift of {shown} in arm {arm}: " + "; ".join(what)
                await crossed(
                    kind,
                    new_level,
                    rejected or m.rejected,
                    {
                        "action": "drift",
                        "recommendation": recommendation,
                        "source": "drift",
                        "statistics": {
                            "arm": arm,
                            **asdict(m),
                            **({"feature_name": named} if named else {}),
                        },
                        "inputs": {"version": row.version},
                    },
                )
                if (new_level == 2 > level) or (m.rejected and not rejected):
                    acted.append(
                        {"source": "drift", "measure": kind, "psi": m.psi, "level": m.level,
                         "p_value": m.p_value, "text": recommendation}
                    )  # fmt: skip
            for kind, d in decay.items():
                level, rejected = seen.get(kind, (0, False))
                if rejected or not d.rejected:
                    continue
                recommendation = (
                    f"{kind} of arm {arm}: {d.current_rate:.4f} on {d.current_rows} current rows "
                    f"vs {d.reference_rate:.4f} on {d.reference_rows} reference rows, sequential "
                    f"test rejected (p={d.p_value:.2g})"
                )
                await crossed(
                    kind,
                    0,
                    True,
                    {
                        "action": "decay",
                        "recommendation": recommendation,
                        "source": "decay",
                        "statistics": {"arm": arm, **as_json({kind: d})[kind]},
                        "inputs": {"version": row.version},
                    },
                )
                if d.worse:
                    acted.append(
                        {"source": "decay", "measure": kind, "reference_rate": d.reference_rate,
                         "current_rate": d.current_rate, "p_value": d.p_value,
                         "text": recommendation}
                    )  # fmt: skip
            if acted and is_champion and self.settings.retrain_on_drift:
                await self._request_retrain(conn, row, arm, acted)

    async def _scheduled_retrains(self, conn: asyncpg.Connection) -> None:
        """``--retrain-every``: a retrain request (source ``schedule``) for each champion whose
        round ended, or whose last request was made, that long ago; with its audit row."""
        every = self.settings.retrain_every
        for name, row in sorted(self.latest.items()):
            if row.state.status not in CHAMPION_STATUSES:
                continue
            async with conn.transaction():
                due = await conn.fetchval(
                    """SELECT greatest(
                           (SELECT max(created_at) FROM retrain_requests WHERE experiment = $1),
                           (SELECT created_at FROM experiment_versions WHERE experiment = $1
                            ORDER BY version DESC LIMIT 1)
                       ) <= now() - make_interval(secs => $2)""",
                    name,
                    every,
                )
                if not due:
                    continue
                arm = champion_of(row.state)
                reason = f"scheduled retrain of champion {arm} (--retrain-every {every:g} s)"
                details = {
                    "arm": arm,
                    "version": row.version,
                    "status": row.state.status,
                    "model": next((a.model for a in row.state.arms if a.name == arm), ""),
                }
                request = await request_retrain(
                    conn, name, "schedule", reason, requested_by="evaluator", details=details
                )
                await self._store().record_decision_on(
                    conn,
                    name,
                    {
                        "action": "retrain_requested",
                        "recommendation": f"retrain of {name} requested (request {request.id}"
                        f"{'' if request.created else ', already pending'}): {reason}",
                        "source": "schedule",
                        "statistics": {
                            "request_id": request.id, "created": request.created, **details
                        },
                        "inputs": {"version": row.version, "retrain_every": every},
                    },
                    row.version,
                )  # fmt: skip
            log.info("experiment %s: scheduled retrain (request %d)", name, request.id)

    async def _request_retrain(
        self, conn: asyncpg.Connection, row: VersionRow, arm: str, acted: list[dict[str, Any]]
    ) -> None:
        """One retrain request for the champion's crossings of this tick (on the audit's
        transaction: both or neither), and its audit row."""
        name = row.state.name
        source = "decay" if any(a["source"] == "decay" for a in acted) else "drift"
        reason = "; ".join(a["text"] for a in acted)
        tables = {_window_table(a["source"], a["measure"]) for a in acted}
        # The trainer trains on the rows since the acting windows' current part began (where
        # the change was seen), not on the rows their reference was taken from.
        began = [
            await conn.fetchval(
                f"SELECT current_from FROM {t} WHERE experiment = $1 AND arm = $2", name, arm
            )
            for t in sorted(tables)
        ]
        since = min((b for b in began if b is not None), default=None)
        details = {
            "arm": arm,
            "version": row.version,
            "status": row.state.status,
            "model": next((a.model for a in row.state.arms if a.name == arm), ""),
            "measures": [{k: v for k, v in a.items() if k != "text"} for a in acted],
        }
        if since is not None:
            details["since"] = since.timestamp()
        request = await request_retrain(
            conn, name, source, reason, requested_by="evaluator", details=details
        )
        await self._store().record_decision_on(
            conn,
            name,
            {
                "action": "retrain_requested",
                "recommendation": f"retrain of {name} requested (request {request.id}"
                f"{'' if request.created else ', already pending'}): {reason}",
                "source": source,
                "statistics": {"request_id": request.id, "created": request.created, **details},
                "inputs": {"version": row.version},
            },
            row.version,
        )
        log.warning("experiment %s: retrain requested (request %d): %s", name, request.id, reason)

    async def maintain(self) -> None:
        """Hourly: dated partitions for the coming days, and retention when configured."""
        s = self.settings
        self._next_maintenance = time.monotonic() + MAINTENANCE_INTERVAL
        async with self._store().pool.acquire() as conn:
            created = await ensure_partitions(conn, days_ahead=s.partition_days_ahead)
            dropped: list[str] = []
            if s.retention_days > 0:
                today = dt.datetime.now(dt.UTC).date()
                cutoff = today - dt.timedelta(days=s.retention_days)
                dropped = await drop_partitions_before(conn, cutoff)
                await conn.execute(
                    "DELETE FROM drift_history WHERE ts < $1",
                    dt.datetime.combine(cutoff, dt.time(), dt.UTC),
                )
        if created or dropped:
            log.info("partitions created %s, dropped %s", created, dropped)

    async def _record(self, row: VersionRow, decision: Decision, now: float) -> None:
        """Write a decision: with its new version when it changes the config, else into the
        audit table when its action changed or audit_interval passed."""
        name = row.state.name
        doc = {
            "action": decision.action,
            "recommendation": decision.recommendation,
            "source": "policy",
            "statistics": {**decision.statistics, "verdict": decision.verdict},
            "inputs": {"version": row.version, "since_version": row.since},
        }
        if decision.state is not None:
            async with self._lock:
                try:
                    await self._write(decision.state, row, decision.recommendation, doc)
                except FailedPrecondition as exc:
                    log.info("decision on %s skipped: %s", name, exc)
                    return
            log.info("experiment %s: %s", name, decision.recommendation)
            self._audited[name] = (decision.action, now)
            return
        # Unchanged verdicts ("continue" every tick) are audited when the action changes and
        # then every audit_interval, so the timeline shows them without a row per tick.
        last = self._audited.get(name)
        if (
            last is None
            or last[0] != decision.action
            or now - last[1] >= self.settings.audit_interval
        ):
            async with self._lock:
                # Not about a version that changed meanwhile (archived, paused by an operator
                # while this tick ran): that experiment gets no decision from this tick.
                current = self.latest.get(name)
                if current is None or current.version != row.version:
                    return
                await self._store().record_decision(name, doc, row.version)
            self._audited[name] = (decision.action, now)

    # -- admin operations --------------------------------------------------------------------
    async def _write(
        self,
        state: ExperimentState,
        previous: VersionRow | None,
        reason: str,
        decision: dict[str, Any],
    ) -> VersionRow:
        """Append ``state`` as the next version after ``previous`` and publish it. The SRM
        window (``since_version``) carries over unless the split changed or a pause ends."""
        if (
            previous is not None
            and state.allocation == previous.state.allocation
            and not (previous.state.status == "paused" and state.status == "running")
        ):
            state = replace(state, since_version=previous.since)
        else:
            state = replace(state, since_version=0)  # from this version's own seq
        row = await self._store().append(
            state,
            previous=previous.version if previous is not None else 0,
            reason=reason,
            by=decision.get("source", "admin"),
            decision=decision,
        )
        await self.sync()
        return row

    async def create(self, definition: cpb.ExperimentDefinition) -> cpb.ExperimentView:
        state = validate_definition(definition)
        # Every model must be in the store (NOT_FOUND naming the field), and is pinned to its
        # sha256 there: an experiment no gateway can serve is never accepted.
        state = await asyncio.to_thread(pin_models, state, self._resolve_model)
        async with self._lock:
            try:
                row = await self._write(
                    state,
                    None,
                    "created",
                    {
                        "action": "create",
                        "source": "admin",
                        "inputs": {"definition": state.to_json()},
                    },
                )
            except FailedPrecondition:
                # An archived name stays taken: its logged rows and statistics are keyed by it.
                existing = await self._store().get(state.name)
                if existing.state.archived:
                    raise FailedPrecondition(
                        f"experiment {state.name!r} already exists (archived; its name stays "
                        "with its logs: unarchive it or choose another name)",
                        field="definition.name",
                    ) from None
                raise
        return self._view(row)

    async def views(self, include_archived: bool = False) -> list[cpb.ExperimentView]:
        rows = await self._store().latest()
        return [
            self._view(rows[name])
            for name in sorted(rows)
            if include_archived or not rows[name].state.archived
        ]

    async def view(self, name: str) -> cpb.ExperimentView:
        row = await self._store().get(name)
        view = self._view(row)
        # Drift, from the stored bins (any evaluator, leader or not): per arm, the reference's
        # progress and, once complete, the measures per kind.
        pool = self._store().pool
        state = row.state
        levels = (state.drift_alpha, state.psi_warn, state.psi_act)
        window = self.settings.drift_window
        bins = await drift_totals(pool, name, window)
        if bins:
            details = json.loads(view.details_json)
            details["drift"] = {
                arm: {
                    "reference_rows": b.reference_rows,
                    "reference_size": b.reference_size,
                    "window_seconds": window,
                    "measures": as_json(measure(b, *levels)),
                }
                for (_, arm), b in sorted(bins.items())
            }
            view.details_json = json.dumps(details, sort_keys=True)
        features = await feature_totals(pool, name, window)
        decay = await decay_totals(pool, name, window)
        epochs = await monitor_epochs(pool, name)
        if features or decay or epochs:
            details = json.loads(view.details_json)
            details["feature_drift"] = {
                arm: {
                    "reference_rows": f.reference_rows,
                    "reference_size": f.reference_size,
                    "window_seconds": window,
                    "edges": {str(i): e for i, e in sorted(f.edges.items())},
                    "names": {str(i): n for i, n in enumerate(self.feature_names(name, arm))},
                    "measures": as_json(measure_features(f, *levels)),
                }
                for (_, arm), f in sorted(features.items())
            }
            details["decay"] = {
                arm: {
                    "reference_rows": d.reference_rows,
                    "reference_size": d.reference_size,
                    "window_seconds": window,
                    "measures": as_json(measure_decay(d, state.drift_alpha)),
                }
                for (_, arm), d in sorted(decay.items())
            }
            details["champion"] = champion_of(row.state)
            details["monitor_epochs"] = {
                arm: {"since_version": v, "from_ts": t}
                for (_, arm), (v, t) in sorted(epochs.items())
            }
            view.details_json = json.dumps(details, sort_keys=True)
        if row.state.shadows:
            details = json.loads(view.details_json)
            sums = await shadow_totals(self._store().pool, name)
            details["shadows"] = {
                s.name: compare(sums[s.name]) if s.name in sums else {"pairs": 0}
                for s in row.state.shadows
            }
            view.details_json = json.dumps(details, sort_keys=True)
        return view

    async def operate(
        self,
        action: str,
        req: cpb.ExperimentRequest,
        caller: dict[str, str] | None = None,
    ) -> cpb.ExperimentView:
        """One operator command on one experiment; ``caller`` (who asks, as the admin API saw
        them) goes into the audit row."""
        async with self._lock:
            row = await self._store().get(req.name)
            state = row.state
            control = state.control.name
            if state.archived and action == "archive":
                raise FailedPrecondition(f"experiment {req.name!r} is already archived")
            if state.archived and action != "unarchive":
                raise FailedPrecondition(f"experiment {req.name!r} is archived; unarchive it first")
            if action == "archive":
                new = replace(state, status=ARCHIVED, archived_from=state.status)
            elif action == "unarchive":
                if not state.archived:
                    raise FailedPrecondition(
                        f"experiment {req.name!r} is {state.status}, not archived"
                    )
                # Its models must still be in the store, as at create.
                await asyncio.to_thread(pin_models, state, self._resolve_model)
                # Back with its salt and buckets. A running one comes back paused: its policy
                # restarts only on an explicit resume (with a fresh SRM window), and a canary
                # holds its stage again from now.
                before = state.archived_from or "paused"
                new = replace(
                    state,
                    status="paused" if before == "running" else before,
                    archived_from="",
                    stage_started_at=time.time(),
                )
            elif action == "promote":
                arm = req.arm or self._winner(req.name)
                if arm not in state.weights:
                    raise InvalidArgument(f"experiment {req.name!r} has no arm {shown(arm)}", "arm")
                weights = {a: 100.0 if a == arm else 0.0 for a in state.weights}
                new = state.with_weights(weights, status="promoted")
            elif action == "rollback":
                weights = {a: 100.0 if a == control else 0.0 for a in state.weights}
                new = state.with_weights(weights, status="rolled_back")
            elif action == "update":
                if not (
                    req.HasField("feature_sample_rate")
                    or req.HasField("drift")
                    or req.add_shadows
                    or req.remove_shadows
                ):
                    raise InvalidArgument(
                        "nothing to update: give feature_sample_rate, drift (psi_warn, "
                        "psi_act, alpha), add_shadows or remove_shadows",
                        field="feature_sample_rate",
                    )
                new = state
                if req.add_shadows or req.remove_shadows:
                    new = replace(new, shadows=await self._shadows_after(state, req))
                if req.HasField("feature_sample_rate"):
                    rate = feature_sample_rate(req.feature_sample_rate, "feature_sample_rate")
                    new = replace(new, feature_sample_rate=rate)
                if req.HasField("drift"):
                    warn, act, alpha = drift_thresholds(req.drift, "drift", state)
                    new = replace(new, psi_warn=warn, psi_act=act, drift_alpha=alpha)
            elif action == "approve":
                new = approved(state, now=time.time())  # FAILED_PRECONDITION unless awaiting
            elif action == "advance":
                if state.kind != "canary":
                    raise FailedPrecondition(
                        f"experiment {req.name!r} is {state.kind}, not a canary: it has no stages"
                    )
                if state.status != "running":
                    raise FailedPrecondition(f"experiment {req.name!r} is {state.status}")
                new = next_stage(state, time.time())
            elif action == "pause":
                if state.status != "running":
                    raise FailedPrecondition(f"experiment {req.name!r} is {state.status}")
                new = replace(state, status="paused")
            elif action == "resume":
                if state.status != "paused":
                    raise FailedPrecondition(f"experiment {req.name!r} is {state.status}")
                new = replace(state, status="running")
            else:  # pragma: no cover - the servicer only passes the actions above
                raise InvalidArgument(f"unknown action {action!r}", "action")
            decision = {
                "action": action,
                "source": "admin",
                "recommendation": req.reason,
                "inputs": {
                    "arm": req.arm,
                    "weights": new.weights,
                    "status_before": state.status,
                    "status": new.status,
                    **(
                        {
                            "feature_sample_rate": new.feature_sample_rate,
                            "drift": {
                                "psi_warn": new.psi_warn,
                                "psi_act": new.psi_act,
                                "alpha": new.drift_alpha,
                            },
                            "shadows": [asdict(sh) for sh in new.shadows],
                        }
                        if action == "update"
                        else {"canary_stage": new.canary_stage}
                        if action == "advance"
                        else {}
                    ),
                    **(caller or {}),
                },
            }
            row = await self._write(new, row, req.reason or action, decision)
        return self._view(row)

    async def _shadows_after(
        self, state: ExperimentState, req: cpb.ExperimentRequest
    ) -> tuple[Any, ...]:
        """The experiment's shadows after an update's remove_shadows, then add_shadows (names
        checked, models pinned to the store's sha256 as at create)."""
        have = {sh.name for sh in state.shadows}
        for k, gone in enumerate(req.remove_shadows):
            if gone not in have:
                raise NotFound(
                    f"experiment {req.name!r} has no shadow {shown(gone)}", f"remove_shadows[{k}]"
                )
        kept = [sh for sh in state.shadows if sh.name not in set(req.remove_shadows)]
        taken = {a.name for a in state.arms} | {sh.name for sh in kept}
        added = [
            check_shadow(sh, taken, f"add_shadows[{k}]") for k, sh in enumerate(req.add_shadows)
        ]
        for k, sh in enumerate(added):
            model = await asyncio.to_thread(
                pin_model, sh.model, f"add_shadows[{k}].model", self._resolve_model
            )
            added[k] = replace(sh, model=model)
        return (*kept, *added)

    # -- retraining and rounds (issue #16) -----------------------------------------------------
    async def request_retrain(
        self, req: cpb.RequestRetrainRequest, caller: dict[str, str] | None = None
    ) -> cpb.RequestRetrainResponse:
        """Queue a manual retrain (``evaluator.retrain``) of a known experiment, audit it as
        ``retrain_requested``; ``request_retrain`` wakes the trainers."""
        store = self._store()
        row = await store.get(req.experiment)  # NOT_FOUND for an unknown one
        who = (caller or {}).get("actor", "")
        async with store.pool.acquire() as conn, conn.transaction():
            r = await request_retrain(
                conn, req.experiment, "manual", req.reason, requested_by=who,
                details={"version": row.version, **(caller or {})},
            )  # fmt: skip
            if r.created:
                await store.record_decision_on(
                    conn,
                    req.experiment,
                    {
                        "action": "retrain_requested",
                        "source": "admin",
                        "recommendation": req.reason or "manual retrain",
                        "inputs": {"request": r.id, "source": "manual", **(caller or {})},
                    },
                    row.version,
                )
        return cpb.RequestRetrainResponse(
            id=r.id, created=r.created, state=r.state, attempts=r.attempts
        )

    async def start_round(
        self, req: cpb.StartRoundRequest, caller: dict[str, str] | None = None
    ) -> cpb.ExperimentView:
        """The next round of an ended experiment (``evaluator.rounds.next_round``), after the
        cooldown; the same retrain request asking again gets the round it started."""
        if not req.model:
            raise InvalidArgument("must name the challenger's model", field="model")
        if req.retrain_request < 0:
            raise InvalidArgument("must not be negative", field="retrain_request")
        try:
            sha = await asyncio.to_thread(self._resolve_model, req.model)
        except (NotFound, InvalidArgument) as exc:
            raise type(exc)(exc.message, field="model") from None
        async with self._lock:
            row = await self._store().get(req.experiment)
            state = row.state
            if req.retrain_request and state.round_request == req.retrain_request:
                return self._view(row)  # started by this request already (a retried trainer)
            if state.archived:
                raise FailedPrecondition(f"experiment {req.experiment!r} is archived")
            now = time.time()
            cooldown = self.settings.round_cooldown
            if cooldown > 0 and state.status in ("promoted", "stopped", "rolled_back"):
                ended = await self._store().status_since(req.experiment)
                waited = now - ended
                if waited < cooldown:
                    raise FailedPrecondition(
                        f"experiment {req.experiment!r}: round {state.round} ended "
                        f"{waited:.0f} s ago; the next may start after the {cooldown:g} s "
                        f"cooldown (--round-cooldown), in {cooldown - waited:.0f} s"
                    )
            new = next_round(
                state, sha, now=now, retrain_request=int(req.retrain_request),
                require_approval=req.require_approval,
            )  # fmt: skip
            champ, challenger = new.arms
            decision = {
                "action": "round_started",
                "source": "round",
                "recommendation": req.reason
                or f"round {new.round}: {challenger.name} ({sha[:12]}) challenges {champ.name}",
                "inputs": {
                    "round": new.round,
                    "champion": {"arm": champ.name, "model": champ.model},
                    "challenger": {"arm": challenger.name, "model": sha},
                    "retrain_request": int(req.retrain_request),
                    "weights": new.weights,
                    "status_before": state.status,
                    "status": new.status,
                    **(caller or {}),
                },
            }
            row = await self._write(new, row, f"round {new.round}", decision)
            # The previous round's verdict is not this round's.
            self.verdicts.pop(req.experiment, None)
            self._audited.pop(req.experiment, None)
        return self._view(row)

    async def history(self, req: cpb.HistoryRequest) -> cpb.HistoryResponse:
        """The audit trail of a known experiment (archived ones too), oldest first."""
        if not 0 <= req.limit <= MAX_HISTORY:
            raise InvalidArgument(f"must be 0..{MAX_HISTORY}", field="limit")
        store = self._store()
        await store.get(req.name)  # NOT_FOUND for an unknown one
        rows = await store.decisions(req.name, req.limit or 1000, steps_only=req.steps_only)
        return cpb.HistoryResponse(
            entries=[
                cpb.HistoryEntry(
                    ts=r["ts"],
                    action=r["action"],
                    recommendation=r["recommendation"],
                    source=r["source"],
                    from_version=r["from_version"] or 0,
                    to_version=r["to_version"] or 0,
                    inputs_json=json.dumps(r["inputs"], sort_keys=True),
                    statistics_json=json.dumps(r["statistics"], sort_keys=True),
                )
                for r in rows
            ]
        )

    def _winner(self, name: str) -> str:
        verdict = self.verdicts.get(name, ({}, {}))[0]
        winner = verdict.get("winner")
        if not winner:
            raise FailedPrecondition(
                f"experiment {name!r} has no winner yet; name the arm to promote", field="arm"
            )
        return str(winner)

    def _view(self, row: VersionRow) -> cpb.ExperimentView:
        s = row.state
        verdict, statistics = self.verdicts.get(s.name, ({}, {}))
        ci = [x if x is not None else float("nan") for x in verdict.get("ci", [])]
        return cpb.ExperimentView(
            rejections=[
                _rejection_message(node_id, r)
                for node_id, r in self.publisher.rejections_of(s.name)
            ],
            definition=definition_message(s),
            status=s.status,
            version=row.version,
            snapshot_version=self.publisher.version,
            weights=s.weights,
            verdict=cpb.Verdict(
                winner=verdict.get("winner") or "",
                p_value=verdict.get("p_value") if verdict.get("p_value") is not None else 1.0,
                effect_size=verdict.get("effect_size") or 0.0,
                ci=ci,
                recommendation=verdict.get("recommendation", ""),
            ),
            details_json=json.dumps(
                {
                    "canary_stage": s.canary_stage,
                    "round": s.round,
                    **({"round_request": s.round_request} if s.round_request else {}),
                    "since_version": row.since,
                    "allocation": dict(s.allocation),
                    "statistics": statistics,
                    **({"archived_from": s.archived_from} if s.archived else {}),
                },
                sort_keys=True,
            ),
        )

    def gateways(self) -> cpb.GatewaysResponse:
        return cpb.GatewaysResponse(
            snapshot_version=self.publisher.version,
            gateways=[
                cpb.GatewayState(
                    node_id=g.node_id,
                    version=g.version,
                    connected=g.connected,
                    last_error=g.last_error,
                    rejections=[
                        _rejection_message(g.node_id, g.rejections[name])
                        for name in sorted(g.rejections)
                    ],
                )
                for g in sorted(self.publisher.gateways.values(), key=lambda g: g.node_id)
            ],
        )

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> int:
        s = self.settings
        creds = server_credentials(s)
        if not s.model_store.is_dir():
            # As Triton refuses a --model-repository that is not there: without its store the
            # evaluator could accept no experiment (or, worse, accept every one unchecked).
            raise InvalidArgument(
                f"{s.model_store} is not a directory; point it at the gateways' model store",
                field="model_store",
            )
        url = s.database_url
        if not url:
            self._embedded = EmbeddedPostgres(s.pg_data)
            url = await asyncio.to_thread(self._embedded.start)
        try:
            await migrate(url)
        except (OSError, asyncpg.InterfaceError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise Unavailable(f"cannot reach PostgreSQL: {reason}") from None
        self._url = url
        self.store = await EvaluatorStore.open(url)
        await self.sync()
        # Verdicts survive a restart: the audit table holds the last one of each experiment.
        for name in self.latest:
            last = await self.store.last_verdict(name)
            if last is not None:
                self.verdicts[name] = last
        server = grpc.aio.server()
        surface = self.surface
        surface.add(
            cpb.DESCRIPTOR.services_by_name["ConfigStream"].full_name,
            ConfigStreamServicer(self.publisher).method_handlers(),
        )
        admin = AdminServicer(self)
        surface.add_servicer(cpb_grpc.add_EvaluatorAdminServicer_to_server, admin)
        surface.install(server)  # + health (no token needed) and reflection, for the same names
        await surface.set_serving(False)
        host, port = split_listen(s.listen)
        addr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            if creds is None:
                self.port = server.add_insecure_port(addr)
            else:
                self.port = server.add_secure_port(addr, creds)
        except RuntimeError as exc:
            raise Unavailable(f"cannot listen on {s.listen} (address in use?): {exc}") from None
        await server.start()
        self._server = server
        await self.surface.set_serving(True)
        self._spawn(self._tick_loop())
        if s.metrics_listen:
            mhost, mport = split_listen(s.metrics_listen)
            collectors = (EvaluatorCollector(self), self.surface.metrics)
            self.metrics_httpd = serve_collectors(collectors, mhost, mport)
            self.metrics_port = int(self.metrics_httpd.server_port)
        if s.http_listen:
            from abgate.http_server import serve_http
            from evaluator.http import HttpApi

            hhost, hport = split_listen(s.http_listen)
            api = HttpApi(admin, self.auth, lambda: self.publisher.current, self.timeline, self.ask)
            tls = (str(s.tls_cert), str(s.tls_key)) if s.tls_cert and s.tls_key else None
            ca = str(s.tls_client_ca) if s.tls_client_ca else None
            self.http = await serve_http(api.app(), hhost, hport, tls=tls, client_ca=ca)
            self.http_port = self.http.port
            log.info("evaluator HTTP/JSON API on %s:%d", hhost, self.http_port)
        log.info(
            "evaluator listening on %s:%d (config version %d, model store %s)",
            host,
            self.port,
            self.publisher.version,
            s.model_store,
        )
        return self.port

    async def stop(self, grace: float = 2.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        await self.surface.drain()
        if self.http is not None:
            await self.http.stop()
        if self._server is not None:
            await self._server.stop(grace)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.metrics_httpd is not None:
            self.metrics_httpd.shutdown()
            self.metrics_httpd.server_close()
        if self._leader_conn is not None:
            with contextlib.suppress(Exception):  # a dead connection has released it already
                await asyncio.wait_for(self._leader_conn.close(), 5)  # releases the lock now
            self._leader_conn = None
            self.leader = False
        if self.store is not None:
            await self.store.close()
        if self._embedded is not None:
            await asyncio.to_thread(self._embedded.stop)
        log.info("evaluator stopped")

    async def run_until_signalled(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        await self.start()
        await stop.wait()
        await self.stop()


def _rejection_message(node_id: str, r: GatewayRejection) -> cpb.ExperimentRejection:
    return cpb.ExperimentRejection(
        node_id=node_id,
        experiment=r.experiment,
        version=r.version,
        error=r.error,
        serving_version=r.serving_version,
    )


def run(settings: EvaluatorSettings) -> int:
    started = time.monotonic()
    asyncio.run(EvaluatorServer(settings).run_until_signalled())
    log.info("evaluator ran %.0f s", time.monotonic() - started)
    return 0
