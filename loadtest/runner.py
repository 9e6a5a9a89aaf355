"""Worker processes that send the load (one grpc.aio event loop each) and the parent that starts
them on a common clock, shows their per-second progress and merges their HDR histograms."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import queue as queue_mod
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from hdrh.histogram import HdrHistogram

from loadtest.schedule import CHUNK, UserSampler, user_id, worker_arrivals, worker_seed
from loadtest.settings import LoadTestSettings
from loadtest.targets import RequestBuilder, Target, status_name

# Microseconds, 1 µs .. 60 s, 3 significant digits.
LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS = 1, 60_000_000, 3
# Not a gRPC status: a scheduled request that could not be sent before the drain ended.
UNSENT = "UNSENT"
RANDOM_ROWS = 1024
HOLDOUT_FILE = "demo_holdout.npz"  # converters.demo.HOLDOUT_FILE
# The event loop's timers wake up to 1 ms late (epoll counts milliseconds), so a request is due
# from 1 ms before its intended time: sent up to 1 ms early rather than ~0.5 ms late on average.
EARLY_S = 0.001
# Time the parent gives workers between "go" and the first arrival, so none starts late.
START_DELAY_S = 0.2
GO_TIMEOUT_S = 300.0


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


def decode_histogram(encoded: bytes) -> HdrHistogram:
    h = new_histogram()
    h.decode_and_add(encoded)
    return h


class TargetError(Exception):
    """The target cannot be used (unreachable, or the probe request failed): exit code 1.
    ``str()`` starts with the gRPC status name."""


# -- messages from workers to the parent ------------------------------------------------------
@dataclass(frozen=True)
class Ready:
    worker: int
    error: str = ""  # "STATUS_NAME: details" when the target cannot be used
    probe_ok: int = 0  # worker 0 sends one probe request before the run (a warm-up request)


@dataclass(frozen=True)
class Tick:
    """What one worker saw during one second of the run (counts are not cumulative)."""

    worker: int
    second: int
    sent: int
    ok: int
    errors: int
    latency: bytes  # encoded histogram of this second's OK latencies


@dataclass(frozen=True)
class Failed:
    worker: int
    error: str


@dataclass
class WorkerResult:
    worker: int
    latency: bytes = b""  # OK answers of the measured window, from the intended send time
    service: bytes = b""  # the same answers from the actual send time
    send_lag: bytes = b""  # actual − intended send time of every measured request
    sent: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    queued: int = 0  # waited for a free slot under --concurrency
    unsent: int = 0
    clamped: int = 0  # latencies above the histogram's 60 s, recorded as 60 s
    warmup_sent: int = 0
    warmup_ok: int = 0
    warmup_errors: Counter[str] = field(default_factory=Counter)
    outcomes_sent: int = 0
    outcomes_accepted: int = 0
    outcome_errors: Counter[str] = field(default_factory=Counter)
    last_done: float = 0.0  # seconds from the start to the last measured answer


# -- the merged result ----------------------------------------------------------------------
@dataclass
class Second:
    """One second of the run over all workers."""

    t: int  # seconds since the start, at the end of this second
    warmup: bool
    sent: int
    ok: int
    errors: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    total_sent: int = 0
    total_ok: int = 0
    total_errors: int = 0
    partial: bool = False  # the run ended during this second (its counts are not a rate)


@dataclass
class RunResult:
    settings: LoadTestSettings
    latency: HdrHistogram
    service: HdrHistogram
    send_lag: HdrHistogram
    sent: int
    ok: int
    errors: dict[str, int]
    queued: int
    unsent: int
    clamped: int
    warmup: dict[str, Any]
    outcomes: dict[str, Any]
    elapsed: float  # the measured window, stretched to its last answer
    timeline: list[Second]
    workers: list[WorkerResult]

    @property
    def achieved_rate(self) -> float:
        """OK answers per second of the measured window."""
        return self.ok / self.elapsed if self.elapsed > 0 else 0.0


# -- features -------------------------------------------------------------------------------
def load_rows(settings: LoadTestSettings) -> tuple[np.ndarray, np.ndarray | None]:
    """Feature rows and their true labels (None for random rows)."""
    if settings.features:
        rng = np.random.default_rng(worker_seed(settings.seed, 0, "features"))
        return rng.standard_normal((RANDOM_ROWS, settings.features)).astype(np.float32), None
    assert settings.model_store is not None
    return load_holdout(settings.model_store)


def load_holdout(store_root: Path) -> tuple[np.ndarray, np.ndarray]:
    """The demo holdout, as ``converters.demo.load_demo_holdout`` reads it (a test keeps the two
    equal). Not imported from there: that module pulls in scikit-learn, 3 s per process."""
    with np.load(Path(store_root) / HOLDOUT_FILE) as data:
        return data["X"].astype(np.float32), data["y"].astype(np.int64)


# -- outcomes -------------------------------------------------------------------------------
class OutcomeSender:
    """Sends the true label of answered rows back as outcomes, in batches (every ``interval``
    seconds or ``batch`` outcomes, whichever comes first)."""

    def __init__(
        self, target: Target, labels: np.ndarray, settings: LoadTestSettings, worker: int
    ) -> None:
        self.target = target
        self.labels = labels
        self.classes = np.unique(labels)
        self.share = settings.outcome_rate
        self.flip = settings.outcome_flip
        self.source = settings.outcome_source
        self.batch = settings.outcome_batch
        self.interval = settings.outcome_interval
        self.rng = np.random.default_rng(worker_seed(settings.seed, worker, "outcomes"))
        self.pending: list[tuple[str, float]] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.sent = 0
        self.accepted = 0
        self.errors: Counter[str] = Counter()
        self._ticker: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._ticker = asyncio.get_running_loop().create_task(self._tick())

    def offer(self, request_id: str, row: int) -> None:
        if self.share < 1.0 and self.rng.random() >= self.share:
            return
        value = self.labels[row]
        if self.flip > 0.0 and self.classes.size > 1 and self.rng.random() < self.flip:
            value = self.rng.choice(self.classes[self.classes != value])
        self.pending.append((request_id, float(value)))
        if len(self.pending) >= self.batch:
            self._flush_in_background()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self._flush_in_background()

    def _flush_in_background(self) -> None:
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _send(self, batch: list[tuple[str, float]]) -> None:
        self.sent += len(batch)
        try:
            # Not `self.accepted += await …`: that reads the counter before the await, and
            # concurrent flushes would overwrite each other's counts.
            accepted = await self.target.record_outcomes(batch, self.source)
            self.accepted += accepted
        except Exception as exc:  # counted and reported; the load goes on
            self.errors[status_name(exc)] += len(batch)

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        self._flush_in_background()
        if self.tasks:
            await asyncio.gather(*self.tasks)


# -- one worker -----------------------------------------------------------------------------
class Worker:
    """Sends one worker's share of the load from ``start`` (a time.monotonic() value)."""

    def __init__(
        self,
        settings: LoadTestSettings,
        index: int,
        target: Target,
        builder: RequestBuilder,
        labels: np.ndarray | None,
        emit: Callable[[Any], None],
    ) -> None:
        self.s = settings
        self.index = index
        self.target = target
        self.builder = builder
        self.emit = emit
        self.n_rows = len(builder.templates)
        self.users = UserSampler(
            settings.users,
            settings.user_dist,
            settings.zipf_s,
            worker_seed(settings.seed, index, "users"),
        )
        self.row_rng = np.random.default_rng(worker_seed(settings.seed, index, "rows"))
        self.outcomes = (
            OutcomeSender(target, labels, settings, index)
            if settings.outcomes and labels is not None
            else None
        )
        self.r = WorkerResult(index)
        self.latency = new_histogram()
        self.service = new_histogram()
        self.send_lag = new_histogram()
        self.tick_hist = new_histogram()
        self.tick_counts = [0, 0, 0]  # sent, ok, errors
        self.tick_second = 0
        self.seq = 0
        self.sem: asyncio.Semaphore | None = None
        self.start = 0.0

    # .. recording ..
    @staticmethod
    def _record(h: HdrHistogram, seconds: float) -> bool:
        """Record in µs; False when the value was above the histogram's range (recorded as
        its highest value instead)."""
        us = int(seconds * 1e6 + 0.5)
        h.record_value(min(max(us, LOWEST_US), HIGHEST_US))
        return us <= HIGHEST_US

    def _emit_tick(self) -> None:
        sent, ok, errors = self.tick_counts
        self.emit(Tick(self.index, self.tick_second, sent, ok, errors, self.tick_hist.encode()))
        self.tick_hist.reset()
        self.tick_counts = [0, 0, 0]
        self.tick_second += 1

    async def _ticker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(max(0.0, self.start + self.tick_second + 1 - loop.time()))
            self._emit_tick()

    def _next_request(self, user: int, row: int) -> tuple[str, bytes]:
        self.seq += 1
        rid = f"lt-{self.s.run_id}-{self.index}-{self.seq}"
        return rid, self.builder.build(row, user_id(user), rid)

    async def _one(self, intended: float, measured: bool, user: int, row: int) -> None:
        """Send one request; its latency counts from ``intended`` (coordinated omission)."""
        rid, payload = self._next_request(user, row)
        sent_at = time.monotonic()
        # A request sent early (by at most EARLY_S) is timed from its actual send.
        origin = min(intended, sent_at)
        self.tick_counts[0] += 1
        if measured:
            self.r.sent += 1
            self._record(self.send_lag, max(0.0, sent_at - intended))
        else:
            self.r.warmup_sent += 1
        status = ""
        try:
            await self.target.call(payload)
        except Exception as exc:
            status = status_name(exc)
        finally:
            if self.sem is not None:
                self.sem.release()
        done = time.monotonic()
        if status:
            self.tick_counts[2] += 1
            (self.r.errors if measured else self.r.warmup_errors)[status] += 1
            return
        self.tick_counts[1] += 1
        self._record(self.tick_hist, done - origin)
        if measured:
            self.r.ok += 1
            if not self._record(self.latency, done - origin):
                self.r.clamped += 1
            self._record(self.service, done - sent_at)
            self.r.last_done = max(self.r.last_done, done - self.start)
        else:
            self.r.warmup_ok += 1
        if self.outcomes is not None:
            self.outcomes.offer(rid, row)

    # .. open loop ..
    async def _open_loop(self) -> None:
        s = self.s
        loop = asyncio.get_running_loop()
        self.sem = asyncio.Semaphore(s.concurrency)
        window_start = self.start + s.warmup
        hard_stop = window_start + s.duration + s.drain
        arrivals = worker_arrivals(s.rate, s.arrival, s.workers, self.index, s.seed)
        tasks: set[asyncio.Task[None]] = set()
        chunks = arrivals.chunks(s.warmup + s.duration)
        for chunk in chunks:
            users = self.users.sample(len(chunk)).tolist()
            rows = self.row_rng.integers(0, self.n_rows, len(chunk)).tolist()
            offsets = chunk.tolist()
            for j in range(len(chunk)):
                intended = self.start + offsets[j]
                delay = intended - loop.time()
                if delay > EARLY_S:
                    await asyncio.sleep(delay - EARLY_S)
                measured = intended >= window_start
                if self.sem.locked():
                    # The cap is reached: wait for a slot. The wait is part of this request's
                    # latency, since it is measured from its intended time.
                    self.r.queued += measured
                    try:
                        await asyncio.wait_for(
                            self.sem.acquire(), max(0.0, hard_stop - loop.time())
                        )
                    except TimeoutError:
                        self._count_unsent(chunk[j:], chunks)
                        break
                else:
                    await self.sem.acquire()
                task = loop.create_task(self._one(intended, measured, users[j], rows[j]))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            else:
                continue
            break
        if tasks:
            await asyncio.gather(*tasks)

    def _count_unsent(self, rest: np.ndarray, chunks: Any) -> None:
        # Scheduled but never sent: errors (UNSENT) of their phase, so the count adds up.
        for times in [rest, *chunks]:
            measured = int(np.count_nonzero(times >= self.s.warmup))
            self.r.unsent += measured
            if measured:
                self.r.errors[UNSENT] += measured
            if len(times) - measured:
                self.r.warmup_errors[UNSENT] += len(times) - measured

    # .. closed loop ..
    async def _closed_loop(self) -> None:
        s = self.s
        n_loops = s.connections // s.workers + (self.index < s.connections % s.workers)
        window_start = self.start + s.warmup
        window_end = window_start + s.duration

        picks: list[tuple[int, int]] = []

        def pick() -> tuple[int, int]:
            # Drawn in blocks: one numpy call per request would cost more than the rest of
            # the generator's own work.
            if not picks:
                users = self.users.sample(CHUNK).tolist()
                rows = self.row_rng.integers(0, self.n_rows, CHUNK).tolist()
                picks.extend(zip(users, rows, strict=True))
                picks.reverse()
            return picks.pop()

        async def one_loop() -> None:
            while True:
                now = time.monotonic()
                if now >= window_end:
                    return
                user, row = pick()
                # In a closed loop the send time is the intended time: there is no schedule.
                await self._one(now, now >= window_start, user, row)

        await asyncio.gather(*(one_loop() for _ in range(n_loops)))

    async def run(self, start: float) -> WorkerResult:
        self.start = start
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, start - loop.time()))
        ticker = loop.create_task(self._ticker())
        if self.outcomes is not None:
            self.outcomes.start()
        try:
            if self.s.mode == "open":
                await self._open_loop()
            else:
                await self._closed_loop()
            if self.outcomes is not None:
                await self.outcomes.close()
        finally:
            ticker.cancel()
        self._emit_tick()  # the last, partial second
        r = self.r
        r.latency, r.service, r.send_lag = (
            self.latency.encode(),
            self.service.encode(),
            self.send_lag.encode(),
        )
        if self.outcomes is not None:
            r.outcomes_sent = self.outcomes.sent
            r.outcomes_accepted = self.outcomes.accepted
            r.outcome_errors = self.outcomes.errors
        return r


# -- worker process -------------------------------------------------------------------------
async def _worker_main(
    settings: LoadTestSettings, index: int, out: Any, go: Any, start_wall: Any
) -> None:
    rows, labels = load_rows(settings)
    builder = RequestBuilder(settings.protocol, settings.experiment, rows, settings.oip_input_name)
    target = Target(
        settings.target, builder.path, channels=settings.channels, timeout=settings.timeout
    )
    try:
        try:
            await target.wait_ready(settings.connect_timeout)
        except TimeoutError:
            out.put(Ready(index, error=(
                f"UNAVAILABLE: cannot connect to {settings.target} "
                f"within {settings.connect_timeout:g} s"
            )))  # fmt: skip
            return
        probe_ok = 0
        if index == 0:
            # One request before any load, so a wrong experiment or protocol fails in a second
            # with the server's own status instead of after a whole run of errors.
            rid = f"lt-{settings.run_id}-probe"
            try:
                await target.call(builder.build(0, user_id(0), rid))
                probe_ok = 1
            except grpc.aio.AioRpcError as exc:
                out.put(Ready(index, error=f"{exc.code().name}: {exc.details() or ''}"))
                return
        out.put(Ready(index, probe_ok=probe_ok))
        # Bounded, so a worker whose parent was killed does not wait forever.
        started = await asyncio.to_thread(go.wait, GO_TIMEOUT_S)
        if not started or start_wall.value < 0:  # the parent gave up
            return
        start = time.monotonic() + (start_wall.value - time.time())
        worker = Worker(settings, index, target, builder, labels, out.put)
        out.put(await worker.run(start))
    finally:
        await target.close()


def _worker_process(
    settings: LoadTestSettings, index: int, out: Any, go: Any, start_wall: Any
) -> None:
    try:
        asyncio.run(_worker_main(settings, index, out, go, start_wall))
    except KeyboardInterrupt:
        pass
    except BaseException:
        out.put(Failed(index, traceback.format_exc()))


# -- parent ---------------------------------------------------------------------------------
def _percentile_ms(h: HdrHistogram, p: float) -> float:
    return h.get_value_at_percentile(p) / 1000.0 if h.get_total_count() else 0.0


def _merge_second(settings: LoadTestSettings, second: int, ticks: list[Tick]) -> Second:
    h = new_histogram()
    for t in ticks:
        h.decode_and_add(t.latency)
    return Second(
        t=second + 1,
        warmup=second < settings.warmup,
        sent=sum(t.sent for t in ticks),
        ok=sum(t.ok for t in ticks),
        errors=sum(t.errors for t in ticks),
        p50_ms=_percentile_ms(h, 50),
        p99_ms=_percentile_ms(h, 99),
        max_ms=h.get_max_value() / 1000.0 if h.get_total_count() else 0.0,
    )


class _Collector:
    """Per-second ticks from all workers → progress callbacks and the timeline."""

    def __init__(self, settings: LoadTestSettings, on_second: Callable[[Second], None] | None):
        self.settings = settings
        self.on_second = on_second
        self.pending: dict[int, list[Tick]] = {}
        self.timeline: list[Second] = []
        self.totals = [0, 0, 0]

    def _add(self, second: Second) -> None:
        self.totals[0] += second.sent
        self.totals[1] += second.ok
        self.totals[2] += second.errors
        second.total_sent, second.total_ok, second.total_errors = self.totals
        self.timeline.append(second)

    def tick(self, t: Tick) -> None:
        ticks = self.pending.setdefault(t.second, [])
        ticks.append(t)
        if len(ticks) == self.settings.workers and t.second == min(self.pending):
            self._add(_merge_second(self.settings, t.second, self.pending.pop(t.second)))
            if self.on_second is not None:
                self.on_second(self.timeline[-1])

    def finish(self) -> list[Second]:
        # Seconds some worker ended in: each worker's last tick is cut short by its end.
        for second in sorted(self.pending):
            sec = _merge_second(self.settings, second, self.pending[second])
            sec.partial = True
            self._add(sec)
        self.pending.clear()
        return self.timeline


def run_load(
    settings: LoadTestSettings, on_second: Callable[[Second], None] | None = None
) -> RunResult:
    """Start the workers, run the load, return the merged result.

    Raises TargetError when the target cannot be used, RuntimeError when a worker fails.
    """
    settings.check()
    # spawn, not fork: a forked child would inherit whatever gRPC state the parent holds.
    ctx = mp.get_context("spawn")
    out: Any = ctx.Queue()
    go = ctx.Event()
    start_wall: Any = ctx.Value("d", 0.0)
    procs = [
        ctx.Process(
            target=_worker_process,
            args=(settings, i, out, go, start_wall),
            name=f"loadtest-worker-{i}",
            daemon=True,
        )
        for i in range(settings.workers)
    ]
    for p in procs:
        p.start()
    try:
        return _drive(settings, procs, out, go, start_wall, on_second)
    finally:
        go.set()
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join()


def _get(out: Any, procs: list[Any], timeout: float) -> Any:
    """The next worker message; raises RuntimeError when a worker died without a word."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return out.get(timeout=0.2)
        except queue_mod.Empty:
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"{dead[0].name} exited with code {dead[0].exitcode}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"no word from the workers in {timeout:.0f} s") from None


def _drive(
    settings: LoadTestSettings,
    procs: list[Any],
    out: Any,
    go: Any,
    start_wall: Any,
    on_second: Callable[[Second], None] | None,
) -> RunResult:
    ready: dict[int, Ready] = {}
    # Workers import numpy and grpc and connect before they answer.
    ready_timeout = settings.connect_timeout + settings.timeout + 60.0
    while len(ready) < settings.workers:
        msg = _get(out, procs, ready_timeout)
        if isinstance(msg, Failed):
            raise RuntimeError(f"worker {msg.worker} failed:\n{msg.error}")
        if isinstance(msg, Ready):
            if msg.error:
                start_wall.value = -1.0
                go.set()
                raise TargetError(msg.error)
            ready[msg.worker] = msg
    start_wall.value = time.time() + START_DELAY_S
    go.set()

    collector = _Collector(settings, on_second)
    results: list[WorkerResult] = []
    run_timeout = (
        START_DELAY_S + settings.warmup + settings.duration + settings.drain
        + 2 * settings.timeout + 30.0
    )  # fmt: skip
    while len(results) < settings.workers:
        msg = _get(out, procs, run_timeout)
        if isinstance(msg, Tick):
            collector.tick(msg)
        elif isinstance(msg, WorkerResult):
            results.append(msg)
        elif isinstance(msg, Failed):
            raise RuntimeError(f"worker {msg.worker} failed:\n{msg.error}")
    results.sort(key=lambda r: r.worker)
    return merge_results(
        settings, results, collector.finish(), probe_ok=sum(r.probe_ok for r in ready.values())
    )


def merge_results(
    settings: LoadTestSettings,
    results: list[WorkerResult],
    timeline: list[Second],
    probe_ok: int = 0,
) -> RunResult:
    """One result from the workers': histograms added, counts summed."""
    latency, service, send_lag = new_histogram(), new_histogram(), new_histogram()
    errors: Counter[str] = Counter()
    warmup_errors: Counter[str] = Counter()
    outcome_errors: Counter[str] = Counter()
    for r in results:
        latency.decode_and_add(r.latency)
        service.decode_and_add(r.service)
        send_lag.decode_and_add(r.send_lag)
        errors.update(r.errors)
        warmup_errors.update(r.warmup_errors)
        outcome_errors.update(r.outcome_errors)
    last_done = max((r.last_done for r in results), default=0.0)
    return RunResult(
        settings=settings,
        latency=latency,
        service=service,
        send_lag=send_lag,
        sent=sum(r.sent for r in results),
        ok=sum(r.ok for r in results),
        errors=dict(errors),
        queued=sum(r.queued for r in results),
        unsent=sum(r.unsent for r in results),
        clamped=sum(r.clamped for r in results),
        warmup={
            # The probe request is sent (and logged by the server) before the run: count it
            # here, so "requests the server saw" = warm-up + measured.
            "sent": sum(r.warmup_sent for r in results) + probe_ok,
            "ok": sum(r.warmup_ok for r in results) + probe_ok,
            "errors": dict(warmup_errors),
            "probe": probe_ok,
        },
        outcomes={
            "sent": sum(r.outcomes_sent for r in results),
            "accepted": sum(r.outcomes_accepted for r in results),
            "errors": dict(outcome_errors),
        },
        elapsed=max(settings.duration, last_done - settings.warmup),
        timeline=timeline,
        workers=results,
    )
