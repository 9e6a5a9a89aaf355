"""Pure scheduling: intended send times (constant or Poisson arrivals), user ids and feature rows.

Nothing here does I/O or reads a clock, so every function is deterministic for a given seed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

ARRIVALS = ("constant", "poisson")
USER_DISTS = ("uniform", "zipf")
# Arrivals are generated lazily in chunks so an hour-long run never holds its whole schedule.
CHUNK = 4096


@dataclass(frozen=True)
class Arrivals:
    """One stream of intended send times, in seconds from the run's start.

    ``constant``: ``phase + i / rate`` for i = 0, 1, …; ``poisson``: exponential gaps of mean
    ``1 / rate`` (the first arrival one gap after ``phase``).
    """

    rate: float
    kind: str = "constant"
    phase: float = 0.0
    seed: int | np.random.SeedSequence = 0

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise ValueError(f"rate must be > 0, got {self.rate}")
        if self.kind not in ARRIVALS:
            raise ValueError(f"arrival must be one of {', '.join(ARRIVALS)}, got {self.kind!r}")

    def chunks(self, end: float, chunk: int = CHUNK) -> Iterator[np.ndarray]:
        """Arrays of increasing times in [phase, end), ``chunk`` at a time (the last shorter)."""
        if self.kind == "constant":
            i = 0
            while True:
                # From the index each time (not by accumulating 1/rate), so spacing stays exact.
                times = self.phase + np.arange(i, i + chunk, dtype=np.float64) / self.rate
                times = times[times < end]
                if times.size:
                    yield times
                if times.size < chunk:
                    return
                i += chunk
        rng = np.random.default_rng(self.seed)
        last = self.phase
        while True:
            times = last + np.cumsum(rng.exponential(1.0 / self.rate, chunk))
            last = float(times[-1])
            times = times[times < end]
            if times.size:
                yield times
            if times.size < chunk:
                return

    def count(self, end: float) -> int:
        return sum(len(c) for c in self.chunks(end))


def worker_arrivals(rate: float, kind: str, workers: int, worker: int, seed: int = 0) -> Arrivals:
    """Worker ``worker``'s share (rate / workers) of a total arrival rate.

    Constant streams are interleaved (worker k starts at k / rate), so together the workers send
    exactly every 1 / rate seconds; independent Poisson streams add up to one Poisson stream.
    """
    if not 0 <= worker < workers:
        raise ValueError(f"worker {worker} not in 0..{workers - 1}")
    phase = worker / rate if kind == "constant" else 0.0
    return Arrivals(rate / workers, kind, phase, worker_seed(seed, worker, "arrivals"))


def worker_seed(seed: int, worker: int, purpose: str) -> np.random.SeedSequence:
    """Independent, reproducible random streams per (run seed, worker, purpose)."""
    tag = int.from_bytes(purpose.encode()[:8].ljust(8, b"\0"), "little")
    return np.random.SeedSequence(seed, spawn_key=(worker, tag))


class UserSampler:
    """User indices 0..n-1: uniform, or Zipf (P(k) ∝ 1 / (k + 1)^s, so index 0 is the most
    frequent user): a finite Zipf, so every id recurs and routing stickiness is exercised."""

    def __init__(
        self,
        n_users: int,
        dist: str = "uniform",
        zipf_s: float = 1.1,
        seed: int | np.random.SeedSequence = 0,
    ) -> None:
        if n_users < 1:
            raise ValueError(f"users must be >= 1, got {n_users}")
        if dist not in USER_DISTS:
            raise ValueError(f"user-dist must be one of {', '.join(USER_DISTS)}, got {dist!r}")
        if dist == "zipf" and not zipf_s > 0:
            raise ValueError(f"zipf-s must be > 0, got {zipf_s}")
        self.n_users = n_users
        self.dist = dist
        self._rng = np.random.default_rng(seed)
        self._cdf: np.ndarray | None = None
        if dist == "zipf":
            weights = 1.0 / np.arange(1, n_users + 1, dtype=np.float64) ** zipf_s
            self._cdf = np.cumsum(weights) / weights.sum()

    def sample(self, k: int) -> np.ndarray:
        if self._cdf is None:
            return self._rng.integers(0, self.n_users, k)
        idx = np.searchsorted(self._cdf, self._rng.random(k), side="right")
        # The last cdf value may round to just under 1.0.
        return np.minimum(idx, self.n_users - 1)


def user_id(index: int) -> str:
    return f"user-{index}"


def zipf_share(n_users: int, zipf_s: float, top: int) -> float:
    """Expected share of traffic of the ``top`` most frequent users (for docs and tests)."""
    weights = 1.0 / np.arange(1, n_users + 1, dtype=np.float64) ** zipf_s
    return float(weights[:top].sum() / weights.sum())
