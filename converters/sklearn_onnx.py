"""scikit-learn → ONNX (float32 input, no ZipMap), a parity check against the source model, and
registration in the model store only when parity holds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from skl2onnx import to_onnx
from sklearn.base import BaseEstimator, ClassifierMixin, is_classifier
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted

from converters.recipe import holdout_metrics, recipe_of
from gateway.modelstore import ModelMetadata, ModelStore, check_self_contained
from gateway.variants import SessionOptions

# Probabilities in [0, 1]: the source computes in float64, the ONNX model in float32 over sums of
# up to ~100 terms (trees, features), so ~1e-6 apart; 1e-5 is ~80 float32 eps, and a converter
# bug (a lost scaler, swapped classes) is orders of magnitude more.
DEFAULT_ATOL = 1e-5


class ConversionError(Exception):
    """The model cannot be converted (unsupported, unfitted, non-integer classes...)."""


class ParityError(Exception):
    """The ONNX model does not reproduce the source model; nothing was registered."""


@dataclass(frozen=True)
class ParityReport:
    max_abs_diff: float
    rows: int
    labels_equal: bool
    atol: float

    @property
    def ok(self) -> bool:
        return self.labels_equal and self.max_abs_diff <= self.atol


def _final_estimator(model: Any) -> Any:
    return model.steps[-1][1] if isinstance(model, Pipeline) else model


def convert(
    model: Any,
    X_sample: np.ndarray,
    *,
    feature_names: Sequence[str] | None = None,
    target_opset: int | None = None,
) -> tuple[bytes, dict[str, Any]]:
    """Convert a fitted classifier; returns ONNX bytes and the metadata fields it determines."""
    final = _final_estimator(model)
    for part in (model, final):
        if not isinstance(part, BaseEstimator):
            # is_classifier/check_is_fitted would raise AttributeError/TypeError on it.
            raise ConversionError(f"{type(part).__name__} is not a scikit-learn estimator")
    if not is_classifier(final) or not isinstance(final, ClassifierMixin):
        raise ConversionError(
            f"{type(final).__name__} is not a classifier; only classifiers convert"
        )
    try:
        check_is_fitted(model)
    except NotFittedError:
        raise ConversionError(f"{type(model).__name__} is not fitted") from None
    classes = np.asarray(final.classes_)
    if not np.issubdtype(classes.dtype, np.integer):
        raise ConversionError(
            f"class labels must be integers, got {classes.dtype} (encode them first)"
        )
    X = np.asarray(X_sample, dtype=np.float32)
    if X.ndim != 2:
        raise ConversionError("X_sample must be a 2-D array of rows")
    n_features = X.shape[1]
    kwargs: dict[str, Any] = {"options": {id(final): {"zipmap": False}}}
    if target_opset is not None:
        kwargs["target_opset"] = target_opset
    try:
        onx = to_onnx(model, X[:1], **kwargs)
    except Exception as exc:  # skl2onnx raises many types for unsupported models
        raise ConversionError(f"skl2onnx cannot convert {type(model).__name__}: {exc}") from exc
    # skl2onnx lists opset imports in set order (varies with PYTHONHASHSEED); sort them so the
    # same model always serializes to the same bytes and hence the same sha256.
    imports = sorted((o.domain, o.version) for o in onx.opset_import)
    del onx.opset_import[:]
    for domain, version in imports:
        onx.opset_import.add(domain=domain, version=version)
    outputs = [o.name for o in onx.graph.output]
    if len(outputs) != 2:
        raise ConversionError(f"expected label and probability outputs, got {outputs}")
    opset = max((o.version for o in onx.opset_import if o.domain in ("", "ai.onnx")), default=0)
    names = (
        tuple(feature_names)
        if feature_names is not None
        else tuple(f"f{i}" for i in range(n_features))
    )
    if len(names) != n_features:
        raise ConversionError(f"{len(names)} feature names for {n_features} features")
    meta = {
        "input_name": onx.graph.input[0].name,
        "n_features": n_features,
        "feature_names": names,
        "label_output": outputs[0],
        "scores_output": outputs[1],
        "classes": tuple(int(c) for c in classes),
        "opset": int(opset),
        "source": f"{type(model).__module__.split('._')[0]}.{type(model).__name__}",
    }
    return onx.SerializeToString(), meta


def check_parity(
    model: Any,
    onnx_bytes: bytes,
    X_holdout: np.ndarray,
    *,
    atol: float = DEFAULT_ATOL,
    session_options: SessionOptions | None = None,
) -> ParityReport:
    """Compare probabilities and labels of the ONNX model with the source on held-out rows.

    The model runs with the gateway's session options (default: the gateway's defaults), so
    parity is checked on the numbers the gateway serves.
    """
    X = np.asarray(X_holdout, dtype=np.float32)
    if X.ndim != 2 or len(X) == 0:
        raise ParityError("parity needs a non-empty 2-D array of held-out rows")
    onnx.checker.check_model(onnx.load_from_string(onnx_bytes))
    opts = (session_options or SessionOptions()).build()
    sess = ort.InferenceSession(onnx_bytes, sess_options=opts, providers=["CPUExecutionProvider"])
    labels, probs = sess.run(None, {sess.get_inputs()[0].name: X})
    # The source sees the same float32 rows the ONNX model sees.
    ref_probs = model.predict_proba(X)
    ref_labels = model.predict(X)
    if probs.shape != ref_probs.shape:
        return ParityReport(float("inf"), len(X), False, atol)
    diff = float(np.max(np.abs(probs.astype(np.float64) - ref_probs)))
    equal = bool(np.array_equal(np.asarray(labels).ravel(), np.asarray(ref_labels).ravel()))
    return ParityReport(diff, len(X), equal, atol)


@dataclass(frozen=True)
class Converted:
    """A converted model whose parity held, not yet registered (``convert_checked``)."""

    onnx_bytes: bytes
    fields: dict[str, Any]
    parity: ParityReport


def convert_checked(
    model: Any,
    X_holdout: np.ndarray,
    *,
    feature_names: Sequence[str] | None = None,
    atol: float = DEFAULT_ATOL,
    session_options: SessionOptions | None = None,
) -> Converted:
    """Convert and check parity on ``X_holdout``; raises ParityError on a mismatch. Nothing is
    stored: a caller that still has to decide (the trainer's no-worse check) registers the
    result with ``register_converted``."""
    onnx_bytes, fields = convert(model, X_holdout, feature_names=feature_names)
    check_self_contained(onnx_bytes)  # ExternalData: what the gateway would refuse to load
    report = check_parity(model, onnx_bytes, X_holdout, atol=atol, session_options=session_options)
    if not report.ok:
        raise ParityError(
            f"ONNX output differs from the source model: max |Δprob| = {report.max_abs_diff:.3g} "
            f"(limit {atol:g}), labels equal: {report.labels_equal}, on {report.rows} rows; "
            "not registered"
        )
    return Converted(onnx_bytes, fields, report)


def register_converted(
    model: Any,
    converted: Converted,
    X_holdout: np.ndarray,
    store: ModelStore,
    *,
    id: str,
    version: str | None = None,
    y_holdout: np.ndarray | None = None,
    training: Mapping[str, Any] | None = None,
    parent: str | None = None,
) -> ModelMetadata:
    """Register what ``convert_checked`` made, with the model's recipe."""
    holdout = (
        holdout_metrics(y_holdout, model.predict(X_holdout)) if y_holdout is not None else None
    )
    meta = ModelMetadata(
        sha256="",
        id=id,
        version=version or "",
        parity_max_abs_diff=converted.parity.max_abs_diff,
        parity_rows=converted.parity.rows,
        recipe=recipe_of(
            model,
            feature_names=converted.fields["feature_names"],
            training=training,
            holdout=holdout,
            parent=parent,
        ),
        **converted.fields,
    )
    return store.put(converted.onnx_bytes, meta)


def convert_and_register(
    model: Any,
    X_holdout: np.ndarray,
    store: ModelStore,
    *,
    id: str,
    version: str | None = None,
    feature_names: Sequence[str] | None = None,
    atol: float = DEFAULT_ATOL,
    session_options: SessionOptions | None = None,
    y_holdout: np.ndarray | None = None,
    training: Mapping[str, Any] | None = None,
    parent: str | None = None,
) -> ModelMetadata:
    """Convert, check parity, and register with the model's recipe (``converters.recipe``:
    ``training`` as the caller knows it, holdout metrics when ``y_holdout`` labels
    ``X_holdout``, the ``parent`` it was retrained from); raises ParityError (nothing stored)
    on a mismatch."""
    converted = convert_checked(
        model, X_holdout, feature_names=feature_names, atol=atol, session_options=session_options
    )
    return register_converted(
        model, converted, X_holdout, store, id=id, version=version, y_holdout=y_holdout,
        training=training, parent=parent,
    )  # fmt: skip
