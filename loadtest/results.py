"""What a run counts: the HDR histograms' range, one worker's per-second ticks and totals, and
their merge over all workers into the timeline of seconds and one RunResult."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

from loadtest.settings import LoadTestSettings

# Microseconds, 1 µs .. 60 s, 3 significant digits.
LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS = 1, 60_000_000, 3


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


def decode_histogram(encoded: bytes) -> HdrHistogram:
    h = new_histogram()
    h.decode_and_add(encoded)
    return h


# -- what each worker sends the parent -------------------------------------------------------
@dataclass(frozen=True)
class Tick:
    """What one worker saw during one second of the run (counts are not cumulative)."""

    worker: int
    second: int
    sent: int
    ok: int
    errors: int
    latency: bytes  # encoded histogram of this second's OK latencies


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


# -- merging --------------------------------------------------------------------------------
def _percentile_ms(h: HdrHistogram, p: float) -> float:
    return h.get_value_at_percentile(p) / 1000.0 if h.get_total_count() else 0.0


def merge_second(settings: LoadTestSettings, second: int, ticks: list[Tick]) -> Second:
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


class TickCollector:
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
            self._add(merge_second(self.settings, t.second, self.pending.pop(t.second)))
            if self.on_second is not None:
                self.on_second(self.timeline[-1])

    def finish(self) -> list[Second]:
        # Seconds some worker ended in: each worker's last tick is cut short by its end.
        for second in sorted(self.pending):
            sec = merge_second(self.settings, second, self.pending[second])
            sec.partial = True
            self._add(sec)
        self.pending.clear()
        return self.timeline


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
