"""A registered model's recipe: what it is and how it was made, kept with its metadata so its
lineage can be printed and retrained from (issue #16).

A recipe holds the estimator (class and parameters; for a pipeline, each step's), the feature
names, the training data (``training``: a window, a row count, a dataset name: whatever the
caller knows), holdout metrics measured at registration on the same rows as the parity check,
and the parent's sha256 (the model it was retrained from). Parameters are kept as JSON values
where they are JSON values and as their ``repr`` otherwise (an estimator inside a parameter,
a numpy scalar): a recipe describes, it is never unpickled or executed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gateway.modelstore import ModelMetadata, ModelStore, ModelStoreError, check_sha

RECIPE_VERSION = 1


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, np.generic):
        return _json_value(value.item())
    if isinstance(value, list | tuple) and all(
        v is None or isinstance(v, bool | int | float | str) for v in value
    ):
        return [_json_value(v) for v in value]
    return repr(value)


def _class_name(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _estimator(obj: Any) -> dict[str, Any]:
    params = obj.get_params(deep=False) if hasattr(obj, "get_params") else {}
    return {
        "class": _class_name(obj),
        "params": {k: _json_value(v) for k, v in sorted(params.items()) if k != "steps"},
    }


def holdout_metrics(y_true: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy, and for two classes precision, recall and false-positive rate of class 1."""
    y = np.asarray(y_true).ravel().astype(np.int64)
    p = np.asarray(labels).ravel().astype(np.int64)
    if y.shape != p.shape or y.size == 0:
        raise ValueError(f"holdout labels: {y.size} rows for {p.size} predictions")
    out = {"rows": float(y.size), "accuracy": float(np.mean(y == p))}
    if set(np.unique(y)) | set(np.unique(p)) <= {0, 1}:
        tp = int(np.sum((p == 1) & (y == 1)))
        fp = int(np.sum((p == 1) & (y == 0)))
        fn = int(np.sum((p == 0) & (y == 1)))
        tn = int(np.sum((p == 0) & (y == 0)))
        out["precision"] = tp / (tp + fp) if tp + fp else 0.0
        out["recall"] = tp / (tp + fn) if tp + fn else 0.0
        out["fpr"] = fp / (fp + tn) if fp + tn else 0.0
    return out


def recipe_of(
    model: Any,
    *,
    feature_names: Sequence[str],
    training: Mapping[str, Any] | None = None,
    holdout: Mapping[str, float] | None = None,
    parent: str | None = None,
) -> dict[str, Any]:
    """The recipe of a fitted scikit-learn ``model`` (see the module docstring)."""
    steps = getattr(model, "steps", None)
    recipe: dict[str, Any] = {
        "recipe_version": RECIPE_VERSION,
        "estimator": _estimator(model),
        "steps": (
            [{"name": name, **_estimator(step)} for name, step in steps]
            if isinstance(steps, list)
            else []
        ),
        "feature_names": list(feature_names),
        "training": {k: _json_value(v) for k, v in sorted((training or {}).items())},
        "holdout": {k: float(v) for k, v in sorted((holdout or {}).items())},
        "parent_sha256": check_sha(parent) if parent else None,
    }
    return recipe


def lineage(store: ModelStore, ref: str, *, limit: int = 100) -> list[ModelMetadata]:
    """``ref`` and its ancestors, newest first, following each recipe's parent. A parent that
    is not in this store ends the chain (its sha256 is still in the last recipe); a cycle
    cannot happen (a parent is registered before its child), but a hand-edited store could
    hold one: ``limit`` ends the walk."""
    chain = [store.resolve(ref)]
    seen = {chain[0].sha256}
    while len(chain) < limit:
        parent = chain[-1].recipe.get("parent_sha256") if chain[-1].recipe else None
        if not parent or parent in seen:
            break
        try:
            chain.append(store.get(parent))
        except ModelStoreError:
            break
        seen.add(parent)
    return chain


def describe(meta: ModelMetadata) -> str:
    """One model of a lineage, a few lines for the terminal."""
    r = meta.recipe or {}
    head = f"{meta.id}:{meta.version}  sha256={meta.sha256[:12]}  created {meta.created_at}"
    if not r:
        return head + "\n  (no recipe: registered as ONNX, or before recipes were kept)"
    est = r.get("estimator", {})
    steps = " → ".join(s["class"].rsplit(".", 1)[-1] for s in r.get("steps", []))
    lines = [head, f"  estimator: {est.get('class', '?')}" + (f" ({steps})" if steps else "")]
    if r.get("training"):
        lines.append("  training: " + ", ".join(f"{k}={v}" for k, v in r["training"].items()))
    if r.get("holdout"):
        lines.append("  holdout: " + ", ".join(f"{k}={v:.4g}" for k, v in r["holdout"].items()))
    parent = r.get("parent_sha256")
    lines.append(f"  parent: {parent[:12] if parent else '-'}")
    return "\n".join(lines)
