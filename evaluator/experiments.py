"""Experiments as data: the definition users create, the state each version records, and the
config snapshot gateways serve. Pure: validation and conversions, no database, no gRPC calls.

One experiment version is one JSON document (``ExperimentState.to_json``) in
``experiment_versions``; the snapshot is the latest version of every experiment that is not
archived.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from abgate.errors import AbgateError, InvalidArgument, shown
from abgate.v1 import control_pb2 as cpb
from evaluator.levels import DRIFT_ALPHA, PSI_ACT, PSI_WARN
from gateway.allocation import WEIGHT_TOLERANCE, Allocation, AllocationError
from gateway.config import NAME

KINDS = ("ab", "canary", "bandit")
METRICS = ("accuracy", "outcome", "score")
STATUSES = (
    "running", "paused", "promoted", "rolled_back", "stopped", "awaiting_approval", "archived"
)  # fmt: skip
# Out of every snapshot; versions, decisions and logged predictions stay for audit.
ARCHIVED = "archived"
# Treatment share of a canary at each stage, percent.
CANARY_STAGES: tuple[float, ...] = (1.0, 5.0, 10.0, 25.0, 50.0, 100.0)
_KIND_FROM_PB = {cpb.AB: "ab", cpb.CANARY: "canary", cpb.BANDIT: "bandit"}
_KIND_TO_PB = {v: k for k, v in _KIND_FROM_PB.items()}


@dataclass(frozen=True)
class Guardrails:
    max_error_rate: float = 0.0  # 0..1, 0 = not checked
    max_p99_latency_ms: float = 0.0  # 0 = not checked
    rollback_threshold: float = 0.0  # metric units, 0 = not checked
    max_rate_increase: float = 0.0  # margin over control's error rate / slow share (0..1)


@dataclass(frozen=True)
class Arm:
    name: str
    model: str
    weight: float  # percent


@dataclass(frozen=True)
class Shadow:
    name: str
    model: str
    sample_rate: float = 1.0


@dataclass(frozen=True)
class ExperimentState:
    """One version of one experiment: its definition plus what the evaluator decided so far."""

    name: str
    salt: str
    kind: str
    arms: tuple[Arm, ...]
    primary_metric: str = "accuracy"
    min_effect: float = 0.0
    confidence: float = 0.95
    min_samples: int = 1000
    max_duration_s: float = 0.0
    guardrails: Guardrails = field(default_factory=Guardrails)
    stage_hold_s: float = 60.0
    stage_min_rows: int = 0  # 0: derived from the guardrails (policy.stage_rows_needed)
    bandit_floor: float = 0.05
    bandit_interval_s: float = 60.0
    status: str = "running"
    # Exact buckets per arm (``Allocation.to_dict``); every gateway routes by these.
    allocation: Mapping[str, Any] = field(default_factory=dict)
    canary_stage: int = 0
    created_at: float = 0.0
    stage_started_at: float = 0.0
    # The config version (snapshot seq) the statistics are counted from: set when the
    # split changes so that a sample-ratio check compares counts against the split in force.
    since_version: int = 0
    shadows: tuple[Shadow, ...] = ()
    # While archived: the status it had before, what unarchive restores ("" otherwise).
    archived_from: str = ""
    # Share of served predictions whose request features gateways log, 0..1 (0: off).
    feature_sample_rate: float = 0.0
    # Drift monitoring levels (DriftThresholds): PSI warn and act, the tests' alpha.
    psi_warn: float = PSI_WARN
    psi_act: float = PSI_ACT
    drift_alpha: float = DRIFT_ALPHA
    # The round (issue #16): 1 for the experiment as created, + 1 for each StartRound
    # (evaluator.rounds), and the retrain request the current round comes from (0: none).
    round: int = 1
    round_request: int = 0

    @property
    def archived(self) -> bool:
        return self.status == ARCHIVED

    @property
    def weights(self) -> dict[str, float]:
        return {a.name: a.weight for a in self.arms}

    @property
    def control(self) -> Arm:
        return self.arms[0]

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["arms"] = [asdict(a) for a in self.arms]
        doc["shadows"] = [asdict(s) for s in self.shadows]
        doc["allocation"] = dict(self.allocation)
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ExperimentState:
        d = dict(doc)
        d["arms"] = tuple(Arm(**a) for a in d["arms"])
        d["shadows"] = tuple(Shadow(**s) for s in d.get("shadows", ()))
        d["guardrails"] = Guardrails(**d.get("guardrails", {}))
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})

    def with_weights(self, weights: Mapping[str, float], **changes: Any) -> ExperimentState:
        """A new state with these weights and an allocation re-weighted from this one with the
        fewest buckets moved (a growing canary never moves a treated user back)."""
        arms = tuple(replace(a, weight=float(weights[a.name])) for a in self.arms)
        try:
            previous = Allocation.from_dict(self.allocation)
            allocation = previous.reweight({a.name: a.weight for a in arms})
        except AllocationError as exc:
            raise InvalidArgument(str(exc), field="weights") from None
        return replace(self, arms=arms, allocation=allocation.to_dict(), **changes)


def _check_name(value: str, fld: str) -> str:
    if not NAME.fullmatch(value):
        raise InvalidArgument(
            f"{shown(value)} must be 1-128 characters of letters, digits, '_', '.', '-'", field=fld
        )
    return value


def _finite(value: float, fld: str, lo: float, hi: float) -> float:
    if not math.isfinite(value) or not lo <= value <= hi:
        raise InvalidArgument(f"must be between {lo:g} and {hi:g}, got {value!r}", field=fld)
    return float(value)


def feature_sample_rate(value: float, fld: str) -> float:
    """A valid feature_sample_rate (0..1, NaN refused) or InvalidArgument naming ``fld``."""
    return _finite(value, fld, 0.0, 1.0)


def drift_thresholds(
    t: cpb.DriftThresholds, fld: str, base: ExperimentState | None = None
) -> tuple[float, float, float]:
    """(psi_warn, psi_act, drift_alpha) of an ExperimentState from ``t``: a field it does
    not set keeps ``base``'s value (the defaults without one); InvalidArgument naming
    ``fld.psi_warn`` … unless 0 < psi_warn < psi_act and 0 < alpha < 1."""
    warn = t.psi_warn if t.HasField("psi_warn") else base.psi_warn if base else PSI_WARN
    act = t.psi_act if t.HasField("psi_act") else base.psi_act if base else PSI_ACT
    alpha = t.alpha if t.HasField("alpha") else base.drift_alpha if base else DRIFT_ALPHA
    for name, value in (("psi_warn", warn), ("psi_act", act)):
        if not (math.isfinite(value) and value > 0):
            raise InvalidArgument(f"must be a PSI above 0, got {value!r}", field=f"{fld}.{name}")
    if not warn < act:
        raise InvalidArgument(
            f"must be above psi_warn ({warn:g}), got {act:g}", field=f"{fld}.psi_act"
        )
    if not (math.isfinite(alpha) and 0 < alpha < 1):
        raise InvalidArgument(
            f"must be between 0 and 1 (exclusive), got {alpha!r}", field=f"{fld}.alpha"
        )
    return float(warn), float(act), float(alpha)


def validate_definition(d: cpb.ExperimentDefinition, now: float | None = None) -> ExperimentState:
    """A new experiment from the admin API, or InvalidArgument naming the bad field."""
    name = _check_name(d.name, "definition.name")
    salt = d.salt or name
    kind = _KIND_FROM_PB.get(d.kind)
    if kind is None:
        raise InvalidArgument("must be AB, CANARY or BANDIT", field="definition.kind")
    if len(d.arms) < 2:
        raise InvalidArgument("an experiment needs at least two arms", field="definition.arms")
    if kind == "canary" and len(d.arms) != 2:
        raise InvalidArgument("a canary has exactly two arms", field="definition.arms")
    arms: list[Arm] = []
    seen: set[str] = set()
    for i, a in enumerate(d.arms):
        arm_name = _check_name(a.name, f"definition.arms[{i}].name")
        if arm_name in seen:
            raise InvalidArgument(f"{arm_name!r} is defined twice", f"definition.arms[{i}].name")
        seen.add(arm_name)
        if not a.model:
            raise InvalidArgument("must name a model", field=f"definition.arms[{i}].model")
        weight = _finite(a.weight, f"definition.arms[{i}].weight", 0.0, 100.0)
        arms.append(Arm(arm_name, a.model, weight))
    if kind == "canary":
        first = CANARY_STAGES[0]
        arms = [replace(arms[0], weight=100.0 - first), replace(arms[1], weight=first)]
    total = sum(a.weight for a in arms)
    if abs(total - 100.0) > WEIGHT_TOLERANCE:
        raise InvalidArgument(f"weights sum to {total:g}%, not 100%", field="definition.arms")
    metric = d.primary_metric or "accuracy"
    if metric not in METRICS:
        raise InvalidArgument(
            f"unknown metric {shown(metric)}; one of {', '.join(METRICS)}",
            field="definition.primary_metric",
        )
    confidence = d.confidence or 0.95
    _finite(confidence, "definition.confidence", 0.5, 0.9999)
    if d.min_samples < 0:
        raise InvalidArgument("must not be negative", field="definition.min_samples")
    g = d.guardrails
    guardrails = Guardrails(
        _finite(g.max_error_rate, "definition.guardrails.max_error_rate", 0.0, 1.0),
        _finite(g.max_p99_latency_ms, "definition.guardrails.max_p99_latency_ms", 0.0, 1e7),
        _finite(g.rollback_threshold, "definition.guardrails.rollback_threshold", 0.0, 1e12),
        _finite(g.max_rate_increase, "definition.guardrails.max_rate_increase", 0.0, 1.0),
    )
    floor = d.bandit_floor if d.HasField("bandit_floor") else 0.05
    _finite(floor, "definition.bandit_floor", 0.0, 1.0 / len(arms))
    shadows = [check_shadow(sh, seen, f"definition.shadows[{k}]") for k, sh in enumerate(d.shadows)]
    now = time.time() if now is None else now
    try:
        allocation = Allocation.initial({a.name: a.weight for a in arms})
    except AllocationError as exc:
        raise InvalidArgument(str(exc), field="definition.arms") from None
    levels = drift_thresholds(d.drift, "definition.drift")
    return ExperimentState(
        name=name,
        salt=salt,
        kind=kind,
        arms=tuple(arms),
        primary_metric=metric,
        min_effect=_finite(d.min_effect, "definition.min_effect", 0.0, 1e12),
        confidence=confidence,
        min_samples=d.min_samples or 1000,
        max_duration_s=_finite(d.max_duration_s, "definition.max_duration_s", 0.0, 1e10),
        guardrails=guardrails,
        stage_hold_s=_finite(
            d.stage_hold_s if d.HasField("stage_hold_s") else 60.0,
            "definition.stage_hold_s",
            0.0,
            1e9,
        ),
        stage_min_rows=_stage_min_rows(d),
        bandit_floor=floor,
        bandit_interval_s=_finite(
            d.bandit_interval_s if d.HasField("bandit_interval_s") else 60.0,
            "definition.bandit_interval_s",
            0.0,
            1e9,
        ),
        allocation=allocation.to_dict(),
        created_at=now,
        stage_started_at=now,
        shadows=tuple(shadows),
        feature_sample_rate=feature_sample_rate(
            d.feature_sample_rate, "definition.feature_sample_rate"
        ),
        psi_warn=levels[0],
        psi_act=levels[1],
        drift_alpha=levels[2],
    )


def check_shadow(sh: cpb.ShadowConfig, taken: set[str], path: str) -> Shadow:
    """One shadow of a definition or an update: a name new among ``taken`` (the arms' and
    shadows' names; the name is added), a model, a sample rate in [0, 1] (0: 1)."""
    name = _check_name(sh.name, f"{path}.name")
    if name in taken:
        raise InvalidArgument(f"{name!r} is already an arm or shadow", f"{path}.name")
    taken.add(name)
    if not sh.model:
        raise InvalidArgument("must name a model", field=f"{path}.model")
    rate = sh.sample_rate if sh.sample_rate else 1.0
    _finite(rate, f"{path}.sample_rate", 0.0, 1.0)
    return Shadow(name, sh.model, rate)


def pin_model(ref: str, fld: str, resolve: Callable[[str], str]) -> str:
    """``resolve(ref)``, its domain error re-raised naming ``fld``."""
    try:
        return resolve(ref)
    except AbgateError as exc:
        raise type(exc)(exc.message, field=fld) from None


def pin_models(state: ExperimentState, resolve: Callable[[str], str]) -> ExperimentState:
    """``state`` with every arm's and shadow's model pinned to the sha256 ``resolve`` finds for
    it (the evaluator's model store), so every gateway loads the same bytes. ``resolve`` raises
    a domain error (NotFound, InvalidArgument) for a model it cannot find; it is re-raised
    naming the field (``definition.arms[1].model: no model 'x' in the store``)."""

    def pin(ref: str, fld: str) -> str:
        return pin_model(ref, fld, resolve)

    arms = tuple(
        replace(a, model=pin(a.model, f"definition.arms[{i}].model"))
        for i, a in enumerate(state.arms)
    )
    shadows = tuple(
        replace(s, model=pin(s.model, f"definition.shadows[{k}].model"))
        for k, s in enumerate(state.shadows)
    )
    return replace(state, arms=arms, shadows=shadows)


def _stage_min_rows(d: cpb.ExperimentDefinition) -> int:
    rows = d.stage_min_rows if d.HasField("stage_min_rows") else 0
    if not 0 <= rows <= 10**12:
        raise InvalidArgument(
            f"must be between 0 and 1e12 rows, got {rows}", field="definition.stage_min_rows"
        )
    return int(rows)


def definition_message(state: ExperimentState) -> cpb.ExperimentDefinition:
    g = state.guardrails
    return cpb.ExperimentDefinition(
        name=state.name,
        salt=state.salt,
        kind=_KIND_TO_PB[state.kind],
        arms=[cpb.ArmConfig(name=a.name, model=a.model, weight=a.weight) for a in state.arms],
        primary_metric=state.primary_metric,
        min_effect=state.min_effect,
        confidence=state.confidence,
        min_samples=state.min_samples,
        max_duration_s=state.max_duration_s,
        guardrails=cpb.Guardrails(
            max_error_rate=g.max_error_rate,
            max_p99_latency_ms=g.max_p99_latency_ms,
            rollback_threshold=g.rollback_threshold,
            max_rate_increase=g.max_rate_increase,
        ),
        stage_hold_s=state.stage_hold_s,
        stage_min_rows=state.stage_min_rows,
        bandit_floor=state.bandit_floor,
        bandit_interval_s=state.bandit_interval_s,
        shadows=[_shadow_message(s) for s in state.shadows],
        feature_sample_rate=state.feature_sample_rate,
        drift=cpb.DriftThresholds(
            psi_warn=state.psi_warn, psi_act=state.psi_act, alpha=state.drift_alpha
        ),
    )


def _shadow_message(s: Shadow) -> cpb.ShadowConfig:
    return cpb.ShadowConfig(name=s.name, model=s.model, sample_rate=s.sample_rate)


def experiment_config(state: ExperimentState, version: int = 0) -> cpb.ExperimentConfig:
    """What gateways get: salt, arms, models, the exact bucket ranges and the experiment's
    ``version``. Taken as stored, not re-validated: a version written by other means (SQL) is
    validated by the gateways, which reject what they cannot serve."""
    ranges: Mapping[str, Sequence[Sequence[int]]] = state.allocation.get("ranges", {})
    return cpb.ExperimentConfig(
        name=state.name,
        salt=state.salt,
        version=version,
        arms=[
            cpb.ArmConfig(
                name=a.name,
                model=a.model,
                weight=a.weight,
                ranges=[cpb.BucketRange(start=s, end=e) for s, e in ranges.get(a.name, ())],
            )
            for a in state.arms
        ],
        shadows=[_shadow_message(s) for s in state.shadows],
        feature_sample_rate=state.feature_sample_rate,
    )


def snapshot_message(
    version: int,
    states: Sequence[ExperimentState],
    nonce: str = "",
    versions: Mapping[str, int] | None = None,
) -> cpb.ConfigSnapshot:
    """The snapshot of ``states`` at ``version`` (with each experiment's own version from
    ``versions``); archived experiments are not in it (their archiving still bumps
    ``version``, so gateways get a snapshot without them)."""
    served = sorted((s for s in states if not s.archived), key=lambda s: s.name)
    versions = versions or {}
    return cpb.ConfigSnapshot(
        version=version,
        nonce=nonce,
        experiments=[experiment_config(s, versions.get(s.name, 0)) for s in served],
    )
