"""Outcome feedback: the true labels of answered rows (a share of them, some flipped) sent back
with RecordOutcome in batches, in the background of the load."""

from __future__ import annotations

import asyncio
from collections import Counter

import numpy as np

from loadtest.schedule import worker_seed
from loadtest.settings import LoadTestSettings
from loadtest.targets import Target, status_name


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
