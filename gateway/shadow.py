"""Shadow mirroring: after the answer is built, a sample of requests is queued for the
experiment's shadow models, which run in their own thread, in batches, and are logged under the
same request id with the shadow flag set. Nothing here can delay or fail an answer: the request
path only appends to a queue (or sheds when it is full); a slow, failing or hung shadow model
only ever costs shadow rows, which are counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from gateway.dataplane import ExperimentRuntime, ShadowRuntime
from gateway.logwriter import scores_rows

log = logging.getLogger(__name__)

INTERNAL = 13  # gRPC status code recorded on shadow rows whose model failed


@dataclass
class ShadowCounters:
    mirrored: int = 0  # rows queued for a shadow model
    run: int = 0  # rows a shadow model answered (logged)
    shed: int = 0  # rows not queued because the queue was full (gateway busy)
    timed_out: int = 0  # rows that waited longer than the timeout and were dropped
    failed: int = 0  # rows whose shadow model raised (logged with status INTERNAL)
    log_dropped: int = 0  # shadow rows not logged: the log queue is over half full


@dataclass(slots=True)
class _Item:
    exp: ExperimentRuntime
    shadow: ShadowRuntime
    rows: np.ndarray  # [n, features]
    request_ids: Sequence[str]
    buckets: Sequence[int]
    queued_at: float


class ShadowMirror:
    """One worker thread per gateway process. ``submit`` runs on the event loop; everything
    else on the worker. Log rows go back to the loop with one ``call_soon_threadsafe`` per batch
    (the log writer is not thread-safe)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        log_rows: Callable[[list[tuple[object, ...]]], None] | None,
        gateway_id: str,
        *,
        max_queued_rows: int = 10_000,
        batch_rows: int = 256,
        timeout: float = 1.0,
        linger: float = 0.02,
    ) -> None:
        self._loop = loop
        self._log_rows = log_rows
        self.gateway_id = gateway_id
        self.max_queued_rows = max_queued_rows
        self.batch_rows = batch_rows
        self.timeout = timeout
        self.linger = linger
        self.counters = ShadowCounters()
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        # Written by one thread each, so no lock: queued = _in - _out.
        self._in = 0
        self._out = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="abgate-shadow", daemon=True)
        self._thread.start()

    @property
    def queued_rows(self) -> int:
        return self._in - self._out

    # -- request path (event loop thread) -----------------------------------------------------
    def submit(
        self,
        exp: ExperimentRuntime,
        rows: np.ndarray,
        request_ids: Sequence[str],
        buckets: Sequence[int],
    ) -> None:
        """Queue ``rows`` (answered already) for each of the experiment's shadows it samples."""
        now = time.monotonic()
        n = len(request_ids)
        for shadow in exp.shadows:
            rate = shadow.sample_rate
            if rate < 1.0:
                if n == 1:
                    if random.random() >= rate:
                        continue
                    sub_rows, sub_ids, sub_buckets = rows, request_ids, buckets
                else:
                    keep = np.flatnonzero(np.random.random(n) < rate).tolist()
                    if not keep:
                        continue
                    sub_rows = rows[keep]
                    sub_ids = [request_ids[i] for i in keep]
                    sub_buckets = [buckets[i] for i in keep]
            else:
                sub_rows, sub_ids, sub_buckets = rows, request_ids, buckets
            k = len(sub_ids)
            if self._stopping or self._in - self._out + k > self.max_queued_rows:
                self.counters.shed += k
                continue
            self._in += k
            self.counters.mirrored += k
            self._queue.put(_Item(exp, shadow, sub_rows, sub_ids, sub_buckets, now))

    # -- worker thread ------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            # Let rows accumulate first: every run costs Python work under the GIL that the
            # event loop waits for, and shadow answers are not waited on, so batches are cheap
            # latency-wise (measured: per-row runs cost the served path a third of its req/s).
            if self.linger > 0:
                time.sleep(self.linger)
            batch = [item]
            rows = len(item.request_ids)
            while rows < self.batch_rows:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._run(batch)
                    return
                batch.append(nxt)
                rows += len(nxt.request_ids)
            self._run(batch)

    def _run(self, batch: list[_Item]) -> None:
        groups: dict[tuple[str, str], list[_Item]] = {}
        deadline = time.monotonic() - self.timeout
        for item in batch:
            self._out += len(item.request_ids)
            if item.queued_at < deadline:
                self.counters.timed_out += len(item.request_ids)
                continue
            groups.setdefault((item.exp.name, item.shadow.name), []).append(item)
        for items in groups.values():
            self._run_group(items)

    def _run_group(self, items: list[_Item]) -> None:
        shadow = items[0].shadow
        matrix = items[0].rows if len(items) == 1 else np.concatenate([i.rows for i in items])
        ids = [rid for i in items for rid in i.request_ids]
        buckets = [b for i in items for b in i.buckets]
        started = time.perf_counter()
        try:
            labels_arr, scores_arr = shadow.variant.run(matrix)
            status = 0
        except Exception:
            log.exception("shadow model %s failed", shadow.name)
            status = INTERNAL
        elapsed = time.perf_counter() - started
        # Batched: each row carries the batch's model time divided by its rows.
        latency_us = int(elapsed * 1e6 / len(ids))
        now = time.time()
        if status == 0:
            self.counters.run += len(ids)
            labels, scores = labels_arr.tolist(), scores_rows(scores_arr)
        else:
            self.counters.failed += len(ids)
            labels, scores = [-1] * len(ids), [b""] * len(ids)
        if self._log_rows is None:
            return
        exp = items[0].exp
        rows: list[tuple[object, ...]] = [
            (
                rid, now, exp.name, exp.config_version, bucket, exp.hash_version, shadow.name,
                shadow.model_id, shadow.model_version, shadow.model_sha256, label, score,
                latency_us, True, self.gateway_id, status, "",
            )
            for rid, bucket, label, score in zip(ids, buckets, labels, scores, strict=True)
        ]  # fmt: skip
        with contextlib.suppress(RuntimeError):  # the loop is closed: shutting down
            self._loop.call_soon_threadsafe(self._log_rows, rows)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop accepting, finish what is queued (up to ``timeout``), then let go: a hung model
        must not hold the process (the thread is a daemon)."""
        self._stopping = True
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("shadow worker still busy after %.1fs (hung model?); not waiting", timeout)
