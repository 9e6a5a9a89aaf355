"""Experiments config as plain data: parsing (TOML or JSON) and structural validation.

This is what a file (today) or a config-stream snapshot (later) carries. Turning it into a
serving snapshot (models resolved, sessions warmed, allocations built) is ``gateway.control``.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from abgate.errors import ConfigError
from gateway.allocation import WEIGHT_TOLERANCE

# Experiment, arm and shadow names (also what the evaluator accepts).
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


@dataclass(frozen=True)
class ArmSpec:
    name: str
    model: str  # full sha256, "id" or "id:version"; resolved through the model store
    weight: float  # percent


@dataclass(frozen=True)
class ShadowSpec:
    """A model that sees a sample of the experiment's requests after the answer is sent; its
    outputs are logged (shadow flag set), never returned."""

    name: str
    model: str
    sample_rate: float = 1.0  # share of requests mirrored, 0..1


@dataclass(frozen=True)
class ExperimentSpec:
    name: str
    salt: str
    arms: tuple[ArmSpec, ...]
    # Optional explicit bucket ranges (as persisted snapshots carry them); else from weights.
    ranges: Mapping[str, tuple[tuple[int, int], ...]] | None = None
    shadows: tuple[ShadowSpec, ...] = ()
    # The evaluator's own version of this experiment (config stream); 0 from a file.
    version: int = 0
    # Share of served predictions whose request features are logged (0..1; 0: off).
    feature_sample_rate: float = 0.0


@dataclass(frozen=True)
class ExperimentsConfig:
    version: int
    experiments: tuple[ExperimentSpec, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "experiments": [
                {
                    "name": e.name,
                    "salt": e.salt,
                    "arms": [
                        {"name": a.name, "model": a.model, "weight": a.weight} for a in e.arms
                    ],
                    **(
                        {"ranges": {k: [list(r) for r in v] for k, v in e.ranges.items()}}
                        if e.ranges is not None
                        else {}
                    ),
                    **({"shadows": [shadow_dict(s) for s in e.shadows]} if e.shadows else {}),
                    **({"version": e.version} if e.version else {}),
                    **(
                        {"feature_sample_rate": e.feature_sample_rate}
                        if e.feature_sample_rate
                        else {}
                    ),
                }
                for e in self.experiments
            ],
        }


def shadow_dict(s: ShadowSpec) -> dict[str, Any]:
    return {"name": s.name, "model": s.model, "sample_rate": s.sample_rate}


def _at(where: str, key: str) -> str:
    """The path of ``key`` under ``where`` ("experiments[0]" + "salt"; "" + "salt": "salt")."""
    return f"{where}.{key}" if where else key


def _parse_shadows(raw: Any, where: str, arm_names: set[str]) -> tuple[ShadowSpec, ...]:
    if not isinstance(raw, list):
        raise ConfigError(f"{_at(where, 'shadows')} must be a list of tables/objects")
    out: list[ShadowSpec] = []
    names: set[str] = set()
    for k, item in enumerate(raw):
        swhere = _at(where, f"shadows[{k}]")
        if not isinstance(item, Mapping):
            raise ConfigError(f"{swhere} must be a table/object")
        name = _check_name(_require(item, "name", str, swhere), f"{swhere}.name")
        if name in names or name in arm_names:
            raise ConfigError(f"{swhere}.name {name!r} is already an arm or shadow name")
        names.add(name)
        model = _require(item, "model", str, swhere)
        if not model:
            raise ConfigError(f"{swhere}.model must not be empty")
        rate = item.get("sample_rate", 1.0)
        if isinstance(rate, bool) or not isinstance(rate, (int, float)):
            raise ConfigError(f"{swhere}.sample_rate must be a number")
        if not math.isfinite(rate) or not 0.0 <= rate <= 1.0:
            raise ConfigError(f"{swhere}.sample_rate must be between 0 and 1")
        out.append(ShadowSpec(name, model, float(rate)))
    return tuple(out)


def _require(obj: Mapping[str, Any], key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if key not in obj:
        raise ConfigError(f"{_at(where, key)} is missing")
    value = obj[key]
    if not isinstance(value, typ) or (isinstance(value, bool) and typ is not bool):
        raise ConfigError(f"{_at(where, key)} has the wrong type ({type(value).__name__})")
    return value


def _check_name(value: str, where: str) -> str:
    if not NAME.fullmatch(value):
        raise ConfigError(
            f"{where} {value!r} must be 1-128 characters of letters, digits, '_', '.', '-'"
        )
    return value


def _parse_version(data: Mapping[str, Any], where: str, *, least: int) -> int:
    version = _require(data, "version", int, where)
    if version < least:
        kind = "a positive" if least > 0 else "a non-negative"
        raise ConfigError(f"{_at(where, 'version')} must be {kind} integer")
    return int(version)


def _parse_experiment(raw: Mapping[str, Any], name: str, where: str) -> ExperimentSpec:
    """One experiment's structure (its ``name`` already checked). ``where`` prefixes field
    names in errors ("experiments[2]"; "" names the fields alone: "arms[1].model")."""
    salt = raw.get("salt", name)
    if not isinstance(salt, str) or not salt:
        raise ConfigError(f"{_at(where, 'salt')} must be a non-empty string")
    raw_arms = _require(raw, "arms", list, where)
    if not raw_arms:
        raise ConfigError(f"{_at(where, 'arms')} must name at least one arm")
    arms: list[ArmSpec] = []
    arm_names: set[str] = set()
    for j, raw_arm in enumerate(raw_arms):
        awhere = _at(where, f"arms[{j}]")
        if not isinstance(raw_arm, Mapping):
            raise ConfigError(f"{awhere} must be a table/object")
        arm_name = _check_name(_require(raw_arm, "name", str, awhere), f"{awhere}.name")
        if arm_name in arm_names:
            raise ConfigError(f"{awhere}.name {arm_name!r} is defined twice")
        arm_names.add(arm_name)
        model = _require(raw_arm, "model", str, awhere)
        if not model:
            raise ConfigError(f"{awhere}.model must not be empty")
        weight = float(_require(raw_arm, "weight", (int, float), awhere))
        if not math.isfinite(weight) or weight < 0 or weight > 100:
            raise ConfigError(f"{awhere}.weight must be between 0 and 100 percent")
        arms.append(ArmSpec(arm_name, model, weight))
    total = sum(a.weight for a in arms)
    if abs(total - 100.0) > WEIGHT_TOLERANCE:
        raise ConfigError(f"{_at(where, 'arms')} weights sum to {total:g}%, not 100%")
    ranges = None
    if "ranges" in raw:
        raw_ranges = raw["ranges"]
        if not isinstance(raw_ranges, Mapping):
            raise ConfigError(f"{_at(where, 'ranges')} must map arm names to [start, end) lists")
        try:
            ranges = {str(k): tuple((int(s), int(e)) for s, e in v) for k, v in raw_ranges.items()}
        except (TypeError, ValueError):
            raise ConfigError(
                f"{_at(where, 'ranges')} must hold [start, end) integer pairs"
            ) from None
    shadows = _parse_shadows(raw.get("shadows", []), where, arm_names)
    # The evaluator's version of the experiment (files have none).
    version = _parse_version(raw, where, least=0) if "version" in raw else 0
    rate = raw.get("feature_sample_rate", 0.0)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)):
        raise ConfigError(f"{_at(where, 'feature_sample_rate')} must be a number")
    if not math.isfinite(rate) or not 0.0 <= rate <= 1.0:
        raise ConfigError(f"{_at(where, 'feature_sample_rate')} must be between 0 and 1")
    return ExperimentSpec(name, salt, tuple(arms), ranges, shadows, version, float(rate))


def _experiment_names(data: Mapping[str, Any]) -> tuple[int, list[tuple[Mapping[str, Any], str]]]:
    """The version and each experiment with its checked, unique name: what every config needs
    before anything can be said about one experiment."""
    if not isinstance(data, Mapping):
        raise ConfigError("config must be a table/object at the top level")
    version = _parse_version(data, "config", least=1)
    raw_experiments = _require(data, "experiments", list, "config")
    out: list[tuple[Mapping[str, Any], str]] = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_experiments):
        where = f"experiments[{i}]"
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where} must be a table/object")
        name = _check_name(_require(raw, "name", str, where), f"{where}.name")
        if name in seen:
            raise ConfigError(f"{where}.name {name!r} is defined twice")
        seen.add(name)
        out.append((raw, name))
    return version, out


def parse_config(data: Mapping[str, Any]) -> ExperimentsConfig:
    """Validate the structure of a config document and return it as frozen dataclasses; any
    error refuses the whole document (a config file is applied whole or not at all)."""
    version, named = _experiment_names(data)
    experiments = [
        _parse_experiment(raw, name, f"experiments[{i}]") for i, (raw, name) in enumerate(named)
    ]
    return ExperimentsConfig(version, tuple(experiments))


@dataclass(frozen=True)
class ParsedSnapshot:
    """A config-stream snapshot parsed experiment by experiment: ``config`` holds the ones whose
    structure is valid, ``invalid`` the others (name -> (their version, the error)), and
    ``names`` every experiment in the snapshot's order."""

    config: ExperimentsConfig
    invalid: Mapping[str, tuple[int, ConfigError]]
    names: tuple[str, ...]


def parse_snapshot(data: Mapping[str, Any]) -> ParsedSnapshot:
    """Like ``parse_config``, but one experiment's bad structure (weights summing to 120 %, say)
    is kept aside with its error instead of refusing the snapshot. What cannot be pinned on one
    experiment (no version, no list, a missing or duplicate name) still raises."""
    version, named = _experiment_names(data)
    good: list[ExperimentSpec] = []
    invalid: dict[str, tuple[int, ConfigError]] = {}
    for raw, name in named:
        try:
            good.append(_parse_experiment(raw, name, ""))
        except ConfigError as exc:
            v = raw.get("version", 0)
            invalid[name] = (v if isinstance(v, int) and not isinstance(v, bool) else 0, exc)
    return ParsedSnapshot(
        ExperimentsConfig(version, tuple(good)), invalid, tuple(name for _, name in named)
    )


class ConfigFileError(ConfigError):
    """The ``--config`` file was refused at start-up with no saved snapshot to serve instead;
    ``message`` starts with the path. The CLI exits 2 for it (bad local input), not 1."""


def load_config_file(path: Path) -> ExperimentsConfig:
    """Read and validate a TOML (``.toml``) or JSON (anything else) experiments file. The
    messages leave the path to the caller, which names it."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read it: {exc.strerror}") from None
    kind = "TOML" if path.suffix == ".toml" else "JSON"
    try:
        data = tomllib.loads(text.decode()) if kind == "TOML" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"not valid {kind}: {exc}") from None
    return parse_config(data)
