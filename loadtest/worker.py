"""One worker's share of the load on its event loop: the open loop (requests at their scheduled
times, latency counted from the intended send time), the closed loop, and each request's
accounting into the worker's histograms and per-second ticks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from hdrh.histogram import HdrHistogram

from loadtest.outcomes import OutcomeSender
from loadtest.results import HIGHEST_US, LOWEST_US, Tick, WorkerResult, new_histogram
from loadtest.schedule import CHUNK, UserSampler, user_id, worker_arrivals, worker_seed
from loadtest.settings import LoadTestSettings
from loadtest.targets import RequestBuilder, Target, status_name

# Not a gRPC status: a scheduled request that could not be sent before the drain ended.
UNSENT = "UNSENT"
# The event loop's timers wake up to 1 ms late (epoll counts milliseconds), so a request is due
# from 1 ms before its intended time: sent up to 1 ms early rather than ~0.5 ms late on average.
EARLY_S = 0.001


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
