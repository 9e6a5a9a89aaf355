"""Gateway process lifecycle: ``start()``/``stop()`` and the worker supervisor.

Stop order, written once: health NOT_SERVING → stop accepting and drain in-flight RPCs (grace)
→ stop the config watcher or the evaluator subscription → stop shadow work (finish the queue,
never wait on a hung model) → flush logs → shut the executor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

from abgate.db.embedded import EmbeddedPostgres
from abgate.db.partitions import prepare
from abgate.errors import AbgateError, Unavailable
from abgate.metrics_endpoint import serve_collectors
from abgate.settings import GatewaySettings, split_listen
from abgate.surface import Surface
from gateway import oip
from gateway.auth import load_client_tokens
from gateway.config import ConfigFileError, ExperimentsConfig, ParsedSnapshot, load_config_file
from gateway.control import ControlPlane, ExperimentStatus
from gateway.dataplane import DataPlane
from gateway.idempotency import RecentRequests
from gateway.logwriter import COLUMNS, FEATURE_COLUMNS, OUTCOME_COLUMNS, LogWriter
from gateway.metrics import GatewayCollector, PredictionStats
from gateway.modelstore import ModelStore
from gateway.pgsink import PostgresSink
from gateway.servicer import SERVICE_NAME, GatewayServicer
from gateway.shadow import ShadowMirror
from gateway.spool import Spool
from gateway.subscriber import ConfigSubscriber, channel_credentials
from gateway.variants import SessionOptions, VariantCache
from gateway.wal import LocalLog

log = logging.getLogger(__name__)

# Seconds a draining gateway keeps refusing new calls itself before gRPC stops the listener.
DRAIN_LINGER = 0.05

DB_STARTUP_WAIT = 5.0  # seconds start-up waits for the log database before serving anyway


class _FileWatch:
    """Notices a replaced or edited config file by (inode, size, mtime)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.last = self._stamp()

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def changed(self) -> bool:
        stamp = self._stamp()
        if stamp is None or stamp == self.last:
            return False
        self.last = stamp
        return True


class GatewayServer:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.gateway_id = settings.resolved_gateway_id()
        self.dataplane = DataPlane(
            self.gateway_id,
            recent=RecentRequests(settings.idempotency_max_entries, settings.idempotency_window),
        )
        self.logwriter: LogWriter | None = None
        self.outcome_writer: LogWriter | None = None
        self.feature_writer: LogWriter | None = None  # captured request features
        self.metrics_httpd: Any = None
        self.metrics_port = 0
        self.oip_servicer: Any = None
        self.oip_http: Any = None  # gateway.oip_http.OipHttpServer with --http-listen
        self.http_port = 0
        self._embedded: EmbeddedPostgres | None = None
        self.store = ModelStore(settings.model_store)
        self.variants = VariantCache(self.store, SessionOptions.from_settings(settings))
        self.control = ControlPlane(self.dataplane, self.store, self.variants, settings.state_dir)
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="abgate-infer")
        # Data-plane client identities: every call but health needs a bearer token when set.
        self.client_tokens = (
            load_client_tokens(settings.client_tokens_file)
            if settings.client_tokens_file is not None
            else None
        )
        # Health, reflection, the concurrency limit and call metrics of the gRPC listener.
        self.surface = Surface(
            max_concurrent_rpcs=settings.max_concurrent_rpcs, authorize=self.client_tokens
        )
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._watch: _FileWatch | None = None
        self.subscriber: ConfigSubscriber | None = None
        self.mirror: ShadowMirror | None = None
        self.prediction_stats = PredictionStats()
        self._stopped = asyncio.Event()

    # -- config ---------------------------------------------------------------------------
    async def _apply(self, config: ExperimentsConfig, source: str = "file") -> None:
        await asyncio.to_thread(self.control.apply, config, source)
        await self._set_health()

    async def _apply_from_evaluator(
        self, parsed: ParsedSnapshot, digest: str
    ) -> list[ExperimentStatus]:
        control = self.control
        await asyncio.to_thread(
            control.apply_each, parsed.config, parsed.invalid, parsed.names, digest
        )
        await self._set_health()
        return control.statuses(parsed.names)

    def evaluator_version(self) -> int:
        """The evaluator-sourced version being served (0: none yet, or a file's config)."""
        config = self.control.config
        return config.version if config is not None and self.control.source == "evaluator" else 0

    async def _set_health(self) -> None:
        await self.surface.set_serving(self.dataplane.snapshot is not None)

    async def load_initial_config(self) -> None:
        persisted = self.control.load_persisted()
        path = self.settings.config
        if (
            self.settings.evaluator
            and persisted is not None
            and self.control.persisted_source == "evaluator"
        ):
            # The evaluator's last good snapshot is newer truth than a bootstrap file, and it
            # lets a restart serve while the evaluator is down. Experiment by experiment, as it
            # came: one whose model left this store meanwhile is left out, not the others.
            names = [e.name for e in persisted.experiments]
            await asyncio.to_thread(self.control.apply_each, persisted, {}, names, "")
            await self._set_health()
            log.info("serving the evaluator's persisted snapshot version %d", persisted.version)
            return
        if path is not None:
            try:
                await self._apply(load_config_file(path))
                return
            except AbgateError as exc:
                if persisted is None:
                    raise ConfigFileError(f"{path}: {exc.message}") from None
                log.error("config %s rejected (%s); serving the last good snapshot", path, exc)
        if persisted is not None:
            await self._apply(persisted)
            log.info("serving persisted snapshot version %d", persisted.version)
        else:
            log.warning("no experiments config yet: Predict answers UNAVAILABLE until one loads")

    async def reload(self) -> bool:
        """Re-read the config file; a bad file is logged and the old config keeps serving."""
        path = self.settings.config
        if path is None:
            log.warning("reload requested but no --config file was given")
            return False
        if self.settings.evaluator:
            log.warning("reload ignored: the config comes from the evaluator (--evaluator)")
            return False
        try:
            await self._apply(load_config_file(path))
            return True
        except AbgateError as exc:
            serving = self.control.config.version if self.control.config else None
            log.error("config %s rejected, still serving version %s: %s", path, serving, exc)
            return False

    async def _watch_loop(self) -> None:
        assert self._watch is not None
        while True:
            await asyncio.sleep(self.settings.watch_interval)
            if self._watch.changed():
                await self.reload()

    def _spawn(self, coro: asyncio.Future[None] | asyncio.Task[None] | object) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> int:
        s = self.settings
        options: list[tuple[str, int]] = [
            ("grpc.max_receive_message_length", s.max_message_bytes),
            ("grpc.max_send_message_length", s.max_message_bytes),
            # Off for a lone process so a second gateway on the same port fails loudly.
            ("grpc.so_reuseport", 1 if s.reuse_port else 0),
        ]
        if s.max_pending_calls > 0:
            # gRPC core's queue of calls the event loop has not taken yet, which the surface
            # cannot see (it accepts one call per loop turn): above the soft limit core refuses
            # new calls with a probability that reaches 1 at twice it (gRPC's backlog
            # protector). They end CANCELLED before any of our code runs; benchmarks/
            # bench_overload.py measures what this bound does to an admitted call's wait.
            options += [
                ("grpc.server.max_pending_requests", s.max_pending_calls),
                ("grpc.server.max_pending_requests_hard_limit", 2 * s.max_pending_calls),
            ]
        # --max-concurrent-rpcs is enforced by the surface, which counts what it refuses.
        server = grpc.aio.server(options=options)
        # --log-durability local: answers wait for their log row's fsync.
        durable = s.log_predictions and s.log_durability == "local"
        servicer = GatewayServicer(
            self.dataplane,
            self.executor,
            max_batch_rows=s.max_batch_rows,
            offload_rows=s.offload_rows,
            allow_cross_identity_outcomes=s.allow_cross_identity_outcomes,
            durable=durable,
        )
        self.surface.add(SERVICE_NAME, servicer.method_handlers(), limited=True)
        # The Open Inference Protocol V2 beside the native API, on the same port.
        oip_handlers, self.oip_servicer = oip.method_handlers(
            self.dataplane, self.executor, max_batch_rows=s.max_batch_rows,
            offload_rows=s.offload_rows, durable=durable, stats=self.prediction_stats,
        )  # fmt: skip
        self.surface.add(oip.OIP_SERVICE_NAME, oip_handlers, limited=True)
        self.surface.install(server)  # + health and reflection, for the same names
        await self._set_health()
        await self._start_log()
        self.mirror = ShadowMirror(
            asyncio.get_running_loop(),
            self._log_shadow_rows if self.logwriter is not None else None,
            self.gateway_id,
            max_queued_rows=s.shadow_queue_rows,
            batch_rows=s.shadow_batch_rows,
            timeout=s.shadow_timeout,
            linger=s.shadow_linger,
        )
        self.dataplane.mirror = self.mirror
        await self.load_initial_config()
        host, port = split_listen(s.listen)
        try:
            self.port = server.add_insecure_port(
                f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            )
        except RuntimeError as exc:
            raise Unavailable(f"cannot listen on {s.listen} (address in use?): {exc}") from None
        await server.start()
        self._server = server
        if s.http_listen:
            from gateway.oip_http import OipHttp, OipHttpServer

            hhost, hport = split_listen(s.http_listen)
            rest = OipHttp(
                self.oip_servicer,
                asyncio.get_running_loop(),
                self.client_tokens,
                surface=self.surface,
                max_pending=s.max_pending_calls,
            )
            self.oip_http = await asyncio.to_thread(OipHttpServer, rest.app(), hhost, hport)
            self.http_port = self.oip_http.port
        if s.metrics_listen:
            mhost, mport = split_listen(s.metrics_listen)
            collectors = (GatewayCollector(self), self.surface.metrics)
            self.metrics_httpd = serve_collectors(collectors, mhost, mport)
            self.metrics_port = int(self.metrics_httpd.server_port)
        if s.evaluator:
            self.subscriber = ConfigSubscriber(
                s.evaluator,
                s.evaluator_token,
                self.gateway_id,
                self._apply_from_evaluator,
                self.evaluator_version,
                channel_credentials(s.evaluator_ca, s.evaluator_cert, s.evaluator_key),
            )
            self._spawn(self.subscriber.run())
        elif s.config is not None and s.watch_interval > 0:
            self._watch = _FileWatch(s.config)
            self._spawn(self._watch_loop())
        loop_kind = type(asyncio.get_running_loop()).__module__.partition(".")[0]  # uvloop|asyncio
        log.info(
            "gateway %s listening on %s:%d (event loop %s)", self.gateway_id, host, self.port,
            loop_kind,
        )  # fmt: skip
        return self.port

    def _log_shadow_rows(self, rows: list[tuple[object, ...]]) -> None:
        """Shadow rows take at most half of the log queue: they must never be the reason a
        client's call is refused."""
        w = self.logwriter
        mirror = self.mirror
        if w is None or mirror is None:
            return
        if w.queued + len(rows) > w.max_queued_rows // 2:
            mirror.counters.log_dropped += len(rows)
            return
        for row in rows:
            w.append(row)

    async def _start_log(self) -> None:
        s = self.settings
        if not s.log_predictions:
            log.warning("prediction logging is off (--no-log-predictions)")
            return
        url = s.database_url
        if not url:
            self._embedded = EmbeddedPostgres(s.pg_data)
            url = await asyncio.to_thread(self._embedded.start)
        spool_root = s.spool_dir or s.state_dir / "spool" / "main"

        local = s.log_durability == "local"

        def writer(table: str, columns: tuple[str, ...]) -> LogWriter:
            spool = Spool(spool_root / table, max_bytes=s.spool_max_bytes)
            return LogWriter(
                PostgresSink(url, table=table, columns=columns, on_connect=prepare),
                batch_rows=s.log_batch_rows,
                max_age=s.log_max_age,
                max_queued_rows=s.log_max_queued_rows,
                spool=spool,
                gateway_id=self.gateway_id,
                local=LocalLog(spool, interval=s.log_sync_interval) if local else None,
            )

        self.logwriter = writer("predictions", COLUMNS)
        self.logwriter.observe = self.prediction_stats.observe
        self.outcome_writer = writer("outcomes", OUTCOME_COLUMNS)
        self.feature_writer = writer("prediction_features", FEATURE_COLUMNS)
        for w in (self.logwriter, self.outcome_writer, self.feature_writer):
            await w.start()
        self.dataplane.log = self.logwriter
        self.dataplane.outcomes = self.outcome_writer
        self.dataplane.features = self.feature_writer
        try:
            # Serve right away if the database is down (rows queue), but when it is up, have
            # the schema in place before the first call so readers never race the migration.
            await asyncio.wait_for(self.logwriter.connected(), DB_STARTUP_WAIT)
        except TimeoutError:
            log.warning("prediction log database not reachable yet; queueing rows meanwhile")

    async def stop(self, grace: float | None = None) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        # From now on the handlers refuse new calls themselves (UNAVAILABLE "draining", which
        # clients and load balancers retry elsewhere); calls already running finish. gRPC's own
        # stop would answer a call that races it with CANCELLED or UNAVAILABLE at random.
        self.dataplane.draining = True
        await self.surface.drain()
        if self.oip_http is not None:
            await asyncio.to_thread(self.oip_http.stop)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.settings.grace_seconds if grace is None else grace)
        while self.dataplane.offloaded and loop.time() < deadline:
            await asyncio.sleep(0.01)
        # A client whose call just finished often sends its next one within milliseconds.
        await asyncio.sleep(min(DRAIN_LINGER, max(0.0, deadline - loop.time())))
        if self._server is not None:
            await self._server.stop(max(0.0, deadline - loop.time()))
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.mirror is not None:
            self.dataplane.mirror = None
            await asyncio.to_thread(self.mirror.stop)
            await asyncio.sleep(0)  # the last shadow rows reach the log writer
        for writer in (self.logwriter, self.outcome_writer, self.feature_writer):
            if writer is not None:
                await writer.stop()
        if self._embedded is not None:
            await asyncio.to_thread(self._embedded.stop)
        if self.metrics_httpd is not None:
            self.metrics_httpd.shutdown()
            self.metrics_httpd.server_close()
        self.executor.shutdown(wait=True)
        log.info("gateway %s stopped", self.gateway_id)

    async def run_until_signalled(self) -> None:
        """Serve until SIGTERM/SIGINT; SIGHUP reloads the config file."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self.reload()))
        await self.start()
        await stop.wait()
        log.info("signal received: draining")
        await self.stop()


def serve(settings: GatewaySettings) -> int:
    """Run one gateway process, or supervise ``settings.workers`` of them."""
    loop_factory = event_loop_factory(settings.event_loop)
    if settings.workers > 1:
        return _supervise(settings)
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(GatewayServer(settings).run_until_signalled())
    return 0


def event_loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop the gateway runs on. uvloop by default where it is installed: grpc.aio and
    asyncpg both run their callbacks on it; measured +2–17 % req/s for the gateway and
    +14–30 % for a bare grpc.aio server here (benchmarks/README.md)."""
    if name not in ("auto", "uvloop", "asyncio"):
        raise ValueError(f"--event-loop: unknown loop {name!r}, use auto, uvloop or asyncio")
    if name == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if name == "uvloop":
            raise ValueError("--event-loop uvloop: uvloop is not installed") from None
        return None
    return uvloop.new_event_loop


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _supervise(settings: GatewaySettings) -> int:
    """N worker processes on one port (SO_REUSEPORT); restarts a worker that dies."""
    host, port = split_listen(settings.listen)
    if port == 0:
        port = _free_port(host)
    base_id = settings.resolved_gateway_id()
    env_base = dict(os.environ)
    for name, value in {
        "ABGATE_LISTEN": f"{host}:{port}",
        "ABGATE_WORKERS": "1",
        "ABGATE_REUSE_PORT": "1",
        "ABGATE_MODEL_STORE": str(settings.model_store),
        "ABGATE_STATE_DIR": str(settings.state_dir),
        "ABGATE_MAX_MESSAGE_BYTES": str(settings.max_message_bytes),
        "ABGATE_MAX_BATCH_ROWS": str(settings.max_batch_rows),
        "ABGATE_MAX_CONCURRENT_RPCS": str(settings.max_concurrent_rpcs),
        "ABGATE_MAX_PENDING_CALLS": str(settings.max_pending_calls),
        "ABGATE_GRACE_SECONDS": str(settings.grace_seconds),
        "ABGATE_EVENT_LOOP": settings.event_loop,
        "ABGATE_ORT_INTRA_OP_THREADS": str(settings.ort_intra_op_threads),
        "ABGATE_ORT_SPINNING": "1" if settings.ort_spinning else "0",
        "ABGATE_OFFLOAD_ROWS": str(settings.offload_rows),
        "ABGATE_WATCH_INTERVAL": str(settings.watch_interval),
        "ABGATE_SPOOL_MAX_BYTES": str(settings.spool_max_bytes),
        "ABGATE_SHADOW_QUEUE_ROWS": str(settings.shadow_queue_rows),
        "ABGATE_SHADOW_BATCH_ROWS": str(settings.shadow_batch_rows),
        "ABGATE_SHADOW_TIMEOUT": str(settings.shadow_timeout),
        "ABGATE_SHADOW_LINGER": str(settings.shadow_linger),
        "ABGATE_ALLOW_CROSS_IDENTITY_OUTCOMES": str(int(settings.allow_cross_identity_outcomes)),
        "ABGATE_IDEMPOTENCY_WINDOW": str(settings.idempotency_window),
        "ABGATE_IDEMPOTENCY_MAX_ENTRIES": str(settings.idempotency_max_entries),
    }.items():
        env_base[name] = value
    if settings.config is not None:
        env_base["ABGATE_CONFIG"] = str(settings.config)
    if settings.client_tokens_file is not None:
        env_base["ABGATE_CLIENT_TOKENS_FILE"] = str(settings.client_tokens_file)
    for name in ("evaluator", "evaluator_token", "evaluator_ca", "evaluator_cert", "evaluator_key"):
        value = getattr(settings, name)
        if value:
            env_base["ABGATE_" + name.upper()] = str(value)
    # The CLI read --evaluator-token-file into evaluator_token: workers get the token (and not
    # the file as well, which they would refuse as a second source).
    env_base.pop("ABGATE_EVALUATOR_TOKEN_FILE", None)
    env_base["ABGATE_LOG_LEVEL"] = logging.getLevelName(logging.getLogger().level)
    env_base["ABGATE_LOG_PREDICTIONS"] = "1" if settings.log_predictions else "0"
    for name in ("log_batch_rows", "log_max_age", "log_max_queued_rows", "log_durability",
                 "log_sync_interval"):  # fmt: skip
        env_base["ABGATE_" + name.upper()] = str(getattr(settings, name))
    embedded = None
    if settings.log_predictions:
        url = settings.database_url
        if not url:
            # One embedded server for all workers, started (and stopped) here.
            embedded = EmbeddedPostgres(settings.pg_data)
            url = embedded.start()
        env_base["ABGATE_DATABASE_URL"] = url

    def start_worker(i: int) -> subprocess.Popen[bytes]:
        env = dict(env_base, ABGATE_GATEWAY_ID=f"{base_id}-w{i}")
        # A stable spool per worker slot, so a restarted worker replays what its slot spooled.
        spool_base = settings.spool_dir or settings.state_dir / "spool"
        env["ABGATE_SPOOL_DIR"] = str(spool_base / f"w{i}")
        if settings.metrics_listen:
            mhost, mport = split_listen(settings.metrics_listen)
            env["ABGATE_METRICS_LISTEN"] = f"{mhost}:{mport + i if mport else 0}"
        return subprocess.Popen([sys.executable, "-m", "abgate", "serve"], env=env)

    workers = {i: start_worker(i) for i in range(settings.workers)}
    log.info("supervising %d workers on %s:%d", settings.workers, host, port)
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for proc in workers.values():
            if proc.poll() is None:
                proc.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    restarts: list[float] = []
    exit_code = 0
    while workers:
        time.sleep(0.2)
        for i, proc in list(workers.items()):
            rc = proc.poll()
            if rc is None:
                continue
            if stopping:
                del workers[i]
                exit_code = exit_code or (rc if rc > 0 else 0)
                continue
            if rc == 2:  # a usage error (its config file, say): a restart would repeat it
                log.error("worker %d exited with 2 (usage error); stopping", i)
                stopping = True
                forward(signal.SIGTERM, None)
                exit_code = 2
                del workers[i]
                continue
            now = time.monotonic()
            restarts = [t for t in restarts if now - t < 60] + [now]
            if len(restarts) > 5 * settings.workers:
                log.error("workers keep dying (last exit %d); stopping", rc)
                stopping = True
                forward(signal.SIGTERM, None)
                exit_code = 1
                continue
            log.error("worker %d exited with %d; restarting it", i, rc)
            workers[i] = start_worker(i)
    if embedded is not None:
        embedded.stop()
    return exit_code
