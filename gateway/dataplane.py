"""The request path: route a user to an arm of an immutable snapshot and run that arm's model.

The control plane (``gateway.control``) builds ``Snapshot`` objects and swaps
``DataPlane.snapshot`` in one assignment; nothing here locks or repairs a config.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from abgate.errors import InvalidArgument, NotFound, Unavailable, shown
from gateway.allocation import Allocation
from gateway.auth import CLIENT_IDENTITY
from gateway.hashing import (
    BUCKET_FUNCTIONS,
    NUM_BUCKETS,
    buckets_v1,
    feature_sampled,
    feature_threshold,
    features_sampled,
)
from gateway.idempotency import RecentRequests
from gateway.logwriter import SCORES_DTYPE, LogWriter, scores_rows
from gateway.variants import Variant

T = TypeVar("T")

# Generated request ids: 128 random bits as 32 hex digits, sliced from one os.urandom call per
# RID_BATCH ids (one syscall and one hex conversion per 256 ids: as cheap as the per-process
# prefix and counter they replace, which any client could extrapolate).
RID_HEX = 32
RID_BATCH = 256


@dataclass(frozen=True, slots=True)
class ArmRuntime:
    name: str
    index: int
    variant: Variant
    model_id: str
    model_version: str
    model_sha256: str
    # The encoded ModelRef, built once per snapshot by the codec so responses just reference it.
    model_pb: Any = field(compare=False)
    # Serialized PredictResponse fields that are the same for every answer of this arm.
    response_prefix: bytes = field(compare=False)


@dataclass(frozen=True, slots=True)
class ShadowRuntime:
    name: str
    variant: Variant
    model_id: str
    model_version: str
    model_sha256: str
    sample_rate: float


@dataclass(frozen=True, slots=True)
class ExperimentRuntime:
    name: str
    salt: str
    arms: tuple[ArmRuntime, ...]
    allocation: Allocation
    # bucket -> arm index; a tuple for single lookups, an array for vectorised batches.
    table: tuple[int, ...]
    table_np: np.ndarray
    n_features: int
    n_classes: int
    config_version: int
    hash_version: int
    bucket_of: Callable[[str, str], int]
    shadows: tuple[ShadowRuntime, ...] = ()
    feature_sample_rate: float = 0.0
    # gateway.hashing.feature_threshold of the rate: 0 = capture off (one int test a call).
    feature_threshold: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    version: int
    experiments: Mapping[str, ExperimentRuntime]
    # Experiments of the evaluator's snapshot this gateway refused and has no good version of.
    rejected: frozenset[str] = frozenset()


@dataclass(slots=True)
class Prediction:
    request_id: str
    experiment: str
    arm: ArmRuntime
    label: int
    scores: list[float]
    config_version: int
    bucket: int
    hash_version: int


@dataclass(slots=True)
class BatchResult:
    experiment: str
    config_version: int
    hash_version: int
    arms: tuple[ArmRuntime, ...]
    arm_index: np.ndarray
    buckets: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    request_ids: Sequence[str]


def build_experiment(
    name: str,
    salt: str,
    arms: tuple[ArmRuntime, ...],
    allocation: Allocation,
    config_version: int,
    hash_version: int = 1,
    shadows: tuple[ShadowRuntime, ...] = (),
    feature_sample_rate: float = 0.0,
) -> ExperimentRuntime:
    table = tuple(allocation.table())
    if len(table) != NUM_BUCKETS:
        raise ValueError("allocation table must cover every bucket")
    first = arms[0].variant
    return ExperimentRuntime(
        name=name,
        salt=salt,
        arms=arms,
        allocation=allocation,
        table=table,
        table_np=np.asarray(table, dtype=np.intp),
        n_features=first.n_features,
        n_classes=first.n_classes,
        config_version=config_version,
        hash_version=hash_version,
        bucket_of=BUCKET_FUNCTIONS[hash_version],
        shadows=shadows,
        feature_sample_rate=feature_sample_rate,
        feature_threshold=feature_threshold(feature_sample_rate),
    )


class DataPlane:
    """Routes and runs predictions against whatever snapshot is current when a call starts."""

    def __init__(
        self,
        gateway_id: str = "",
        log: LogWriter | None = None,
        recent: RecentRequests | None = None,
    ) -> None:
        self.snapshot: Snapshot | None = None
        # Set at SIGTERM: calls starting from then on are refused with UNAVAILABLE.
        self.draining = False
        self.offloaded = 0  # calls waiting on the executor (a drain waits for them)
        self.gateway_id = gateway_id
        self.log = log
        self.outcomes: LogWriter | None = None
        # Captured request features (prediction_features); None: logging is off.
        self.features: LogWriter | None = None
        # Runs shadow models off the request path (gateway.shadow); None: shadows are off.
        self.mirror: Any = None
        # Recent answers by request id: a repeat answers the original (gateway.idempotency).
        self.recent = recent if recent is not None else RecentRequests()
        # Unused random hex digits for generated request ids, from _rid_at on (event loop only).
        self._rid_hex = ""
        self._rid_at = 0

    async def offload(self, executor: Executor, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on ``executor`` (big batches, off the event loop), counted so that a
        drain can wait for it."""
        self.offloaded += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
        finally:
            self.offloaded -= 1

    def experiment(self, name: str) -> ExperimentRuntime:
        snap = self.snapshot
        if snap is None or self.draining:
            raise Unavailable("draining" if self.draining else "no experiments config loaded yet")
        exp = snap.experiments.get(name)
        if exp is None:
            if not name:
                raise InvalidArgument("must not be empty", field="experiment")
            if name in snap.rejected:
                # It exists, but not here: UNAVAILABLE, which clients and load balancers retry
                # on another gateway (one that could load its models).
                raise Unavailable(
                    f"experiment {shown(name)} is not served by this gateway: "
                    "it rejected its config",
                    field="experiment",
                )
            raise NotFound(f"unknown experiment {shown(name)}", field="experiment")
        return exp

    def new_request_ids(self, n: int) -> list[str]:
        """``n`` fresh request ids (random, 128 bits each)."""
        if n <= 8:
            return [self.next_request_id() for _ in range(n)]
        raw = os.urandom(16 * n).hex()
        return [raw[i : i + RID_HEX] for i in range(0, RID_HEX * n, RID_HEX)]

    def route(self, exp: ExperimentRuntime, user_id: str) -> tuple[int, ArmRuntime]:
        bucket = exp.bucket_of(exp.salt, user_id)
        return bucket, exp.arms[exp.table[bucket]]

    def next_request_id(self) -> str:
        """A fresh request id: 128 random bits as 32 hex digits, unguessable by other clients."""
        at = self._rid_at
        if at >= len(self._rid_hex):
            self._rid_hex = os.urandom(16 * RID_BATCH).hex()
            at = 0
        self._rid_at = at + RID_HEX
        return self._rid_hex[at : at + RID_HEX]

    def prediction(
        self,
        exp: ExperimentRuntime,
        arm: ArmRuntime,
        bucket: int,
        label: int,
        scores: np.ndarray,
        request_id: str,
    ) -> Prediction:
        if not request_id:
            request_id = self.next_request_id()
        return Prediction(
            request_id,
            exp.name,
            arm,
            label,
            scores.tolist(),
            exp.config_version,
            bucket,
            exp.hash_version,
        )

    def predict_row(
        self, exp: ExperimentRuntime, user_id: str, row: np.ndarray, request_id: str
    ) -> Prediction:
        """Route and run one row and build its Prediction (benchmarks and tests use this; the
        servicer inlines the same steps to hand-encode its answer)."""
        bucket, arm = self.route(exp, user_id)
        labels, scores = arm.variant.run(row)
        return self.prediction(exp, arm, bucket, int(labels[0]), scores[0], request_id)

    def log_prediction(
        self,
        exp: ExperimentRuntime,
        arm: ArmRuntime,
        bucket: int,
        request_id: str,
        label: int,
        scores: np.ndarray,
        started: float,
        row: np.ndarray | None = None,
    ) -> None:
        """Queue the log row of an answer about to be sent (never awaits the database), and
        when the experiment captures features and samples this request id, ``row``'s."""
        log = self.log
        if log is None:
            return
        now = time.time()
        if exp.feature_threshold and row is not None:
            self._capture(exp, arm, request_id, now, row)
        log.append(
            (
                request_id,
                now,
                exp.name,
                exp.config_version,
                bucket,
                exp.hash_version,
                arm.name,
                arm.model_id,
                arm.model_version,
                arm.model_sha256,
                label,
                scores.astype(SCORES_DTYPE, copy=False).tobytes(),  # as logwriter.scores_rows
                int((now - started) * 1e6),
                False,
                self.gateway_id,
                0,
                CLIENT_IDENTITY.get(),
            )
        )

    def _capture(
        self, exp: ExperimentRuntime, arm: ArmRuntime, request_id: str, now: float, row: np.ndarray
    ) -> None:
        features = self.features
        if features is not None and feature_sampled(request_id, exp.feature_threshold):
            raw = row.astype(SCORES_DTYPE, copy=False).tobytes()
            # A full queue (database and spool both away) drops the sample, counted as refused
            # by that writer: capture never fails the call whose prediction is logged.
            with contextlib.suppress(Unavailable):
                features.append((request_id, now, exp.name, arm.name, raw))

    def _capture_batch(
        self, result: BatchResult, now: float, matrix: np.ndarray, threshold: int
    ) -> None:
        features = self.features
        if features is None:
            return
        rids = result.request_ids
        picked = features_sampled(rids, threshold)
        if not picked:
            return
        raws = scores_rows(matrix if len(picked) == len(rids) else matrix[picked])
        names = [arm.name for arm in result.arms]
        arm_index = result.arm_index.tolist()
        exp = result.experiment
        with contextlib.suppress(Unavailable):  # as in _capture
            features.extend(
                [
                    (rids[i], now, exp, names[arm_index[i]], raw)
                    for i, raw in zip(picked, raws, strict=True)
                ]
            )

    def log_failure(
        self,
        exp: ExperimentRuntime,
        arm: ArmRuntime,
        bucket: int,
        request_id: str,
        code: int,
        started: float,
    ) -> None:
        """Queue the log row of a call that reached a model and failed there: guardrails count
        these (label -1, no scores, ``status`` the gRPC code)."""
        log = self.log
        if log is None:
            return
        now = time.time()
        log.append(
            (
                request_id, now, exp.name, exp.config_version, bucket, exp.hash_version,
                arm.name, arm.model_id, arm.model_version, arm.model_sha256, -1, b"",
                int((now - started) * 1e6), False, self.gateway_id, code, CLIENT_IDENTITY.get(),
            )
        )  # fmt: skip

    def log_batch(
        self,
        result: BatchResult,
        started: float,
        matrix: np.ndarray | None = None,
        feature_threshold: int = 0,
    ) -> None:
        """Queue one log row per prediction of ``result``, and the features (rows of
        ``matrix``) of those ``feature_threshold`` samples (0: none)."""
        log = self.log
        if log is None:
            return
        now = time.time()
        latency = int((now - started) * 1e6)
        arms = [
            (arm.name, arm.model_id, arm.model_version, arm.model_sha256) for arm in result.arms
        ]
        exp, version, hash_version = result.experiment, result.config_version, result.hash_version
        gid = self.gateway_id
        who = CLIENT_IDENTITY.get()
        # One row per prediction: the batch is one call but many users and decisions.
        rows = [
            (rid, now, exp, version, bucket, hash_version, *arms[arm_i], label, scores, latency,
             False, gid, 0, who)
            for rid, arm_i, bucket, label, scores in zip(
                result.request_ids,
                result.arm_index.tolist(),
                result.buckets.tolist(),
                result.labels.tolist(),
                scores_rows(result.scores),
                strict=True,
            )
        ]  # fmt: skip
        log.extend(rows)
        if feature_threshold and matrix is not None:
            self._capture_batch(result, now, matrix, feature_threshold)

    def admit_rows(self, n: int) -> None:
        """UNAVAILABLE, before any work, when the log cannot take ``n`` more rows: a batch that
        the full queue would refuse after its model ran spends the CPU the writer (and
        PostgreSQL, on the same cores) needs to drain it. Measured: under a sustained flood of
        1,000-row PredictBatch calls, more rows were computed and then refused than answered."""
        if self.log is not None:
            self.log.ensure_room(n)

    def route_batch(self, exp: ExperimentRuntime, user_ids: Sequence[str]) -> np.ndarray:
        if exp.hash_version != 1:  # pragma: no cover - only v1 exists today
            return np.fromiter(
                (exp.bucket_of(exp.salt, u) for u in user_ids), dtype=np.intp, count=len(user_ids)
            )
        return buckets_v1(exp.salt, user_ids)

    def predict_batch(
        self,
        exp: ExperimentRuntime,
        buckets: np.ndarray,
        matrix: np.ndarray,
        request_ids: Sequence[str],
    ) -> BatchResult:
        """Vectorised per arm: one onnxruntime call per arm that has rows. Thread-safe."""
        arm_index = exp.table_np[buckets]
        n = len(arm_index)
        labels = np.empty(n, dtype=np.int64)
        scores = np.empty((n, exp.n_classes), dtype=np.float32)
        for arm in exp.arms:
            rows = np.flatnonzero(arm_index == arm.index)
            if rows.size == 0:
                continue
            sub = matrix if rows.size == n else matrix[rows]
            arm_labels, arm_scores = arm.variant.run(sub)
            labels[rows] = arm_labels
            scores[rows] = arm_scores
        return BatchResult(
            exp.name,
            exp.config_version,
            exp.hash_version,
            exp.arms,
            arm_index,
            buckets,
            labels,
            scores,
            request_ids,
        )


async def synced(dp: DataPlane) -> None:
    """--log-durability local: wait until every log row queued so far is on local disk."""
    for log in (dp.log, dp.features):
        fut = log.synced() if log is not None else None
        if fut is not None:
            await fut
