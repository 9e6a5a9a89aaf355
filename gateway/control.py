"""Control plane of one gateway: validate a config, load and warm its models, swap the snapshot.

A config file goes through ``ControlPlane.apply``: whole or not at all, a file that fails
anywhere leaves the old config serving. The evaluator's snapshots go through ``apply_each``:
experiment by experiment, so one that this gateway cannot serve is rejected alone (its last
good version keeps serving, or none) while the others are applied.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from abgate.errors import AbgateError, ConfigError, FailedPrecondition, NotFound
from gateway.allocation import Allocation, AllocationError, weights_to_counts
from gateway.codec import model_ref_message, response_prefix
from gateway.config import ExperimentsConfig, ExperimentSpec, parse_config
from gateway.dataplane import (
    ArmRuntime,
    DataPlane,
    ExperimentRuntime,
    ShadowRuntime,
    Snapshot,
    build_experiment,
)
from gateway.hashing import CURRENT_HASH_VERSION
from gateway.modelstore import ModelMetadata, ModelNotFound, ModelStore, ModelStoreError
from gateway.variants import Variant, VariantCache

log = logging.getLogger(__name__)

SNAPSHOT_FILE = "snapshot.json"


@dataclass(frozen=True)
class Rejection:
    """One experiment of a snapshot this gateway refused: the version refused, and why."""

    version: int  # the evaluator's version of the experiment (ExperimentSpec.version)
    code: grpc.StatusCode
    message: str

    @classmethod
    def of(cls, version: int, exc: AbgateError) -> Rejection:
        return cls(version, exc.code, exc.message)


@dataclass(frozen=True)
class ExperimentStatus:
    """How this gateway serves one experiment of the latest snapshot."""

    name: str
    version: int  # the version of it served (0: none)
    rejection: Rejection | None = None


def snapshot_digest(doc: Mapping[str, Any]) -> str:
    """What tells two snapshots of one version apart (the same version must mean the same
    content): the sha256 of the document as received, canonical JSON."""
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


class ControlPlane:
    def __init__(
        self,
        dataplane: DataPlane,
        store: ModelStore,
        variants: VariantCache,
        state_dir: Path | None = None,
    ) -> None:
        self.dataplane = dataplane
        self.store = store
        self.variants = variants
        self.state_dir = state_dir
        self.config: ExperimentsConfig | None = None
        # Where the serving config came from: "file" or "evaluator". Versions are compared only
        # within one source: the evaluator's numbering owes nothing to a bootstrap file's.
        self.source = ""
        self.persisted_source = "file"
        # Allocations the next config is re-weighted from (by experiment name: salt, allocation),
        # so a weight change moves the fewest users, also across restarts (see load_persisted).
        self._previous: dict[str, tuple[str, Allocation]] = {}
        # Evaluator snapshots: the experiments of the serving one that were refused, and the
        # digest of that snapshot as received (its content, refused experiments included).
        # Not persisted: a restarted gateway tries every experiment again.
        self.rejected: dict[str, Rejection] = {}
        self.received_digest = ""
        self._lock = threading.Lock()  # one apply at a time; readers never take it

    # -- building -------------------------------------------------------------------------
    def _allocation(self, spec: ExperimentSpec, where: str) -> Allocation:
        weights = {a.name: a.weight for a in spec.arms}
        try:
            if spec.ranges is not None:
                alloc = Allocation.from_dict(
                    {"arms": [a.name for a in spec.arms], "ranges": spec.ranges}
                )
                if alloc.counts() != weights_to_counts(weights):
                    at = f"{where}." if where else ""
                    raise ConfigError(f"{at}ranges do not match the arms' weights")
                return alloc
            prev = self._previous.get(spec.name)
            if prev is not None and prev[0] == spec.salt:
                return prev[1].reweight(weights)
            return Allocation.initial(weights)
        except AllocationError as exc:
            raise ConfigError(f"{where or 'arms'}: {exc}") from None

    def _load(self, ref: str, field: str) -> tuple[ModelMetadata, Variant]:
        try:
            meta = self.store.resolve(ref)
            return meta, self.variants.get_or_load(meta)
        except ModelNotFound as exc:
            raise NotFound(f"{ref!r} is not in the model store ({exc})", field) from None
        except ModelStoreError as exc:
            raise ConfigError(f"{ref!r}: {exc}", field=field) from None

    def _experiment(self, spec: ExperimentSpec, version: int, where: str) -> ExperimentRuntime:
        """Load, check and build one experiment. ``where`` prefixes the fields in errors
        ("experiments[2]"; "": the experiment's own fields, "arms[1].model")."""
        at = f"{where}." if where else ""
        arms: list[ArmRuntime] = []
        for i, arm in enumerate(spec.arms):
            meta, variant = self._load(arm.model, f"{at}arms[{i}].model")
            model_pb = model_ref_message(meta.id, meta.version, meta.sha256)
            arms.append(
                ArmRuntime(
                    name=arm.name,
                    index=i,
                    variant=variant,
                    model_id=meta.id,
                    model_version=meta.version,
                    model_sha256=meta.sha256,
                    model_pb=model_pb,
                    response_prefix=response_prefix(
                        spec.name, arm.name, model_pb, version, CURRENT_HASH_VERSION
                    ),
                )
            )
        first = arms[0].variant
        for arm_rt in arms[1:]:
            v = arm_rt.variant
            if (v.n_features, v.n_classes) != (first.n_features, first.n_classes):
                raise ConfigError(
                    f"{where or 'arms'}: arm {arm_rt.name!r} takes {v.n_features} features/"
                    f"{v.n_classes} classes but arm {arms[0].name!r} takes "
                    f"{first.n_features}/{first.n_classes}; all arms must share one schema"
                )
        shadows = []
        for k, shadow in enumerate(spec.shadows):
            meta, variant = self._load(shadow.model, f"{at}shadows[{k}].model")
            if (variant.n_features, variant.n_classes) != (first.n_features, first.n_classes):
                raise ConfigError(
                    f"{at}shadows[{k}]: shadow {shadow.name!r} takes {variant.n_features} features/"
                    f"{variant.n_classes} classes but the arms take "
                    f"{first.n_features}/{first.n_classes}"
                )
            shadows.append(
                ShadowRuntime(
                    shadow.name, variant, meta.id, meta.version, meta.sha256, shadow.sample_rate
                )
            )
        allocation = self._allocation(spec, where)
        return build_experiment(
            spec.name,
            spec.salt,
            tuple(arms),
            allocation,
            version,
            CURRENT_HASH_VERSION,
            tuple(shadows),
            spec.feature_sample_rate,
        )

    def build(self, config: ExperimentsConfig) -> Snapshot:
        """Validate against the store and load every model; touches no serving state."""
        experiments = {
            spec.name: self._experiment(spec, config.version, f"experiments[{i}]")
            for i, spec in enumerate(config.experiments)
        }
        return Snapshot(config.version, experiments)

    # -- applying -------------------------------------------------------------------------
    def check_version(self, config: ExperimentsConfig, source: str = "file") -> bool:
        """False when ``config`` is what already serves; raises on a stale or reused version."""
        current = self.config
        if current is None or source != self.source:
            return True
        if config.version < current.version:
            raise FailedPrecondition(
                f"config version {config.version} is older than the serving {current.version}"
            )
        if config.version == current.version:
            if _without_ranges(config) == _without_ranges(current):
                return False
            raise FailedPrecondition(
                f"config version {config.version} is already serving with different content; "
                "bump version for every change"
            )
        return True

    def apply(self, config: ExperimentsConfig, source: str = "file") -> Snapshot | None:
        """Build and swap in ``config``; returns the new snapshot, or None if unchanged."""
        with self._lock:
            if not self.check_version(config, source):
                return None
            snapshot = self.build(config)
            self._swap(snapshot, config, source, {}, "")
            return snapshot

    def apply_each(
        self,
        config: ExperimentsConfig,
        invalid: Mapping[str, tuple[int, AbgateError]],
        names: Iterable[str],
        digest: str,
        source: str = "evaluator",
    ) -> Snapshot | None:
        """Apply a config-stream snapshot experiment by experiment. ``config`` holds the
        experiments whose structure is valid, ``invalid`` the others with their errors, ``names``
        all of them in the snapshot's order, ``digest`` its content (``snapshot_digest``).

        An experiment that fails (bad structure, a model missing or corrupt in this store, arms
        of different schemas...) is refused alone: its last good version from this source keeps
        serving, or it is left out. Only the snapshot as a whole can be stale (FailedPrecondition,
        raised): an older version, or the serving version with another content. Returns the new
        snapshot, or None when this one already serves."""
        with self._lock:
            current = self.config
            same_source = current is not None and self.source == source
            if same_source:
                assert current is not None
                if config.version < current.version:
                    raise FailedPrecondition(
                        f"config version {config.version} is older than the serving "
                        f"{current.version}"
                    )
                # A restarted gateway kept no digest and cannot tell: it applies it again.
                if config.version == current.version and self.received_digest:
                    if digest == self.received_digest:
                        if not self.rejected:
                            return None
                        # The same snapshot again (a redial): what it refused is tried again
                        # (its model may have been copied into this store meanwhile).
                    else:
                        raise FailedPrecondition(
                            f"config version {config.version} is already serving with "
                            "different content; bump version for every change"
                        )
            serving = self.dataplane.snapshot
            last_good = serving.experiments if same_source and serving is not None else {}
            last_specs = {e.name: e for e in current.experiments} if same_source and current else {}
            specs = {e.name: e for e in config.experiments}
            experiments: dict[str, ExperimentRuntime] = {}
            kept: list[ExperimentSpec] = []
            rejected: dict[str, Rejection] = {}
            for name in names:
                if name in invalid:
                    version, exc = invalid[name]
                    rejection = Rejection.of(version, exc)
                else:
                    spec = specs[name]
                    try:
                        experiments[name] = self._experiment(spec, config.version, "")
                        kept.append(spec)
                        continue
                    except AbgateError as exc:
                        rejection = Rejection.of(spec.version, exc)
                rejected[name] = rejection
                if name in last_good and name in last_specs:
                    # Its last good runtime as it was, config version included: its answers
                    # and log rows say which snapshot their split came from.
                    experiments[name] = last_good[name]
                    kept.append(last_specs[name])
                log.error(
                    "experiment %s version %d rejected (%s: %s); %s",
                    name,
                    rejection.version,
                    rejection.code.name,
                    rejection.message,
                    f"still serving its version {last_specs[name].version}"
                    if name in experiments
                    else "not serving it",
                )
            snapshot = Snapshot(
                config.version,
                experiments,
                frozenset(name for name in rejected if name not in experiments),
            )
            served = ExperimentsConfig(config.version, tuple(kept))
            self._swap(snapshot, served, source, rejected, digest)
            return snapshot

    def statuses(self, names: Iterable[str]) -> list[ExperimentStatus]:
        """How each of ``names`` (the latest snapshot's experiments) is served here."""
        config = self.config
        served = {e.name: e.version for e in config.experiments} if config is not None else {}
        return [
            ExperimentStatus(name, served.get(name, 0), self.rejected.get(name)) for name in names
        ]

    def _swap(
        self,
        snapshot: Snapshot,
        config: ExperimentsConfig,
        source: str,
        rejected: dict[str, Rejection],
        digest: str,
    ) -> None:
        self.dataplane.snapshot = snapshot  # the one assignment readers observe
        self.config = config
        self.source = source
        self.rejected = rejected
        self.received_digest = digest
        self._previous = {
            name: (exp.salt, exp.allocation) for name, exp in snapshot.experiments.items()
        }
        self.variants.retain(
            {arm.model_sha256 for exp in snapshot.experiments.values() for arm in exp.arms}
            | {s.model_sha256 for exp in snapshot.experiments.values() for s in exp.shadows}
        )
        self._persist(snapshot, source)
        log.info(
            "serving config version %d from %s (%d experiments%s)",
            config.version,
            source,
            len(snapshot.experiments),
            f", {len(rejected)} rejected" if rejected else "",
        )

    # -- persistence of the last good snapshot --------------------------------------------
    def _persist(self, snapshot: Snapshot, source: str) -> None:
        if self.state_dir is None:
            return
        doc = {**snapshot_document(snapshot, self.config), "source": source}
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.state_dir, prefix=".snapshot-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(doc, fh, indent=1, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.state_dir / SNAPSHOT_FILE)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def load_persisted(self) -> ExperimentsConfig | None:
        """The last good config (with its exact bucket ranges), if one was saved; remembered
        as the base that the next config is re-weighted from."""
        if self.state_dir is None:
            return None
        path = self.state_dir / SNAPSHOT_FILE
        try:
            data = json.loads(path.read_text())
            config = parse_config(data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, ConfigError) as exc:
            log.error("ignoring unreadable persisted snapshot %s: %s", path, exc)
            return None
        self.persisted_source = str(data.get("source", "file"))
        for spec in config.experiments:
            if spec.ranges is None:
                continue
            try:
                alloc = Allocation.from_dict(
                    {"arms": [a.name for a in spec.arms], "ranges": spec.ranges}
                )
            except AllocationError:
                continue
            self._previous[spec.name] = (spec.salt, alloc)
        return config


def _without_ranges(config: ExperimentsConfig) -> ExperimentsConfig:
    return ExperimentsConfig(
        config.version,
        tuple(
            ExperimentSpec(
                e.name, e.salt, e.arms, None, e.shadows, e.version, e.feature_sample_rate
            )
            for e in config.experiments
        ),
    )


def snapshot_document(
    snapshot: Snapshot, config: ExperimentsConfig | None = None
) -> dict[str, object]:
    """A snapshot as config data with models pinned by sha256 and the exact bucket ranges
    (and, given the config it was built from, each experiment's evaluator version)."""
    versions = {e.name: e.version for e in config.experiments} if config is not None else {}
    return {
        "version": snapshot.version,
        "experiments": [
            {
                "name": exp.name,
                "salt": exp.salt,
                "hash_version": exp.hash_version,
                "arms": [
                    {
                        "name": arm.name,
                        "model": arm.model_sha256,
                        "weight": exp.allocation.weights()[arm.name],
                    }
                    for arm in exp.arms
                ],
                "ranges": exp.allocation.to_dict()["ranges"],
                "shadows": [
                    {"name": s.name, "model": s.model_sha256, "sample_rate": s.sample_rate}
                    for s in exp.shadows
                ],
                **({"version": versions[exp.name]} if versions.get(exp.name) else {}),
                **(
                    {"feature_sample_rate": exp.feature_sample_rate}
                    if exp.feature_sample_rate
                    else {}
                ),
            }
            for exp in snapshot.experiments.values()
        ],
    }
