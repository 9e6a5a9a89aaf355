"""The load test's settings: one frozen object built by the CLI, checked once, sent to workers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from abgate.addresses import check_target
from abgate.settings import doc
from loadtest.schedule import ARRIVALS, USER_DISTS
from loadtest.targets import PROTOCOLS

MODES = ("open", "closed")


@dataclass(frozen=True)
class LoadTestSettings:
    target: str = doc("HOST:PORT of the server under test", "127.0.0.1:50051")
    protocol: str = doc("native (abgate Predict) or oip (Open Inference Protocol V2)", "native")
    experiment: str = doc("experiment name (native) / model name (OIP)", "demo")
    oip_input_name: str = doc(
        "name of the OIP input tensor (abgate's metadata says features)", "features"
    )
    mode: str = doc("open: a fixed arrival rate; closed: C loops, next request on answer", "open")
    rate: float = doc("target arrival rate, requests/s over all workers (open mode)", 0.0)
    arrival: str = doc("constant or poisson inter-arrival times (open mode)", "poisson")
    connections: int = doc("in-flight request loops over all workers (closed mode)", 16)
    duration: float = doc("measured seconds", 10.0)
    warmup: float = doc("seconds of load before the measured window, not counted", 1.0)
    workers: int = doc("load generator processes, each sending rate/workers", 1)
    concurrency: int = doc("most requests in flight per worker (open mode)", 256)
    channels: int = doc("gRPC connections per worker", 1)
    timeout: float = doc("deadline of each request, seconds", 10.0)
    drain: float = doc("seconds after the schedule ends to still send late requests", 5.0)
    connect_timeout: float = doc("seconds to wait for the target to accept connections", 5.0)
    users: int = doc("size of the user population", 10_000)
    user_dist: str = doc("uniform or zipf popularity of users", "uniform")
    zipf_s: float = doc("Zipf exponent s (P(k) ∝ 1/k^s)", 1.1)
    # `doc` wraps dataclasses.field(); None is immutable.
    model_store: Path | None = doc("store with the demo holdout (features, labels)", None)  # noqa: RUF009
    features: int = doc("send random normal rows of this many features (0: use the store)", 0)
    outcomes: bool = doc("send each answered row's true label as its outcome", False)
    outcome_rate: float = doc("share of answered requests that get an outcome", 1.0)
    outcome_flip: float = doc("probability an outcome's label is replaced by another", 0.0)
    outcome_source: str = doc("source recorded with each outcome", "loadtest")
    outcome_batch: int = doc("outcomes per RecordOutcome call, at most", 500)
    outcome_interval: float = doc("seconds between outcome flushes, at most", 0.1)
    seed: int = doc("seed of arrivals, users, rows and outcome sampling", 0)
    run_id: str = doc("tag in every request id: lt-RUN-WORKER-SEQ", "")
    client_token: str = doc(
        "bearer token sent with every call (a gateway run with --client-tokens-file)", ""
    )

    def check(self) -> None:
        """Raise ValueError naming the flag for settings that cannot run."""
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"--protocol must be one of {', '.join(PROTOCOLS)}")
        if self.mode not in MODES:
            raise ValueError(f"--mode must be one of {', '.join(MODES)}")
        check_target(self.target, "--target")
        if self.mode == "open":
            if not self.rate > 0:
                raise ValueError(f"--rate must be > 0 in open mode, got {self.rate}")
            if self.arrival not in ARRIVALS:
                raise ValueError(f"--arrival must be one of {', '.join(ARRIVALS)}")
        elif self.connections < self.workers:
            raise ValueError("--connections must be at least --workers (>= 1 loop per worker)")
        if not self.experiment:
            raise ValueError("--experiment must not be empty")
        if not self.duration > 0:
            raise ValueError(f"--duration must be > 0, got {self.duration}")
        checks = [
            (self.warmup >= 0, "--warmup must be >= 0"),
            (self.workers >= 1, "--workers must be >= 1"),
            (self.concurrency >= 1, "--concurrency must be >= 1"),
            (self.channels >= 1, "--channels must be >= 1"),
            (self.timeout > 0, "--timeout must be > 0"),
            (self.drain >= 0, "--drain must be >= 0"),
            (self.connect_timeout > 0, "--connect-timeout must be > 0"),
            (self.users >= 1, "--users must be >= 1"),
            (self.user_dist in USER_DISTS, f"--user-dist must be one of {', '.join(USER_DISTS)}"),
            (self.zipf_s > 0, "--zipf-s must be > 0"),
            (self.features >= 0, "--features must be >= 1"),
            (0.0 <= self.outcome_rate <= 1.0, "--outcome-rate must be in 0..1"),
            (0.0 <= self.outcome_flip <= 1.0, "--outcome-flip must be in 0..1"),
            (self.outcome_batch >= 1, "outcome batch must be >= 1"),
            (self.outcome_interval > 0, "outcome interval must be > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if self.features == 0 and self.model_store is None:
            raise ValueError("give --features N or a --model-store with the demo holdout")
        if self.outcomes and self.features:
            raise ValueError(
                "--outcomes needs true labels: use the store's holdout, not --features"
            )
