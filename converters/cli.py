"""``abgate models …``: demo training, convert, register, list."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from abgate.cli_common import EXIT_FAILURE, EXIT_OK, UsageError, error, readable_file, writable_dir
from gateway.modelstore import (
    ExternalData,
    ModelMetadata,
    ModelStore,
    ModelStoreError,
    check_self_contained,
)

if TYPE_CHECKING:
    from gateway.variants import SessionOptions


def _store(args: argparse.Namespace, *, writing: bool = True) -> ModelStore:
    root = Path(args.store or os.environ.get("ABGATE_MODEL_STORE") or "var/models")
    return ModelStore(writable_dir(root, "--store") if writing else root)


def _print(metas: list[ModelMetadata], as_json: bool) -> None:
    if as_json:
        print(json.dumps([m.to_dict() for m in metas], indent=1))
        return
    print(f"{'id':<16} {'version':<8} {'sha256':<14} {'source':<46} parity max|Δp| (rows)")
    for m in metas:
        parity = f"{m.parity_max_abs_diff:.1e} ({m.parity_rows})" if m.parity_rows else "unchecked"
        print(f"{m.id:<16} {m.version:<8} {m.sha256[:12]:<14} {m.source:<46} {parity}")


def _session_options() -> SessionOptions:
    """The gateway's onnxruntime settings from the environment (ABGATE_ORT_INTRA_OP_THREADS,
    ABGATE_ORT_SPINNING): parity is checked on the numbers a gateway so configured serves."""
    from abgate.settings import GatewaySettings, load_settings
    from gateway.variants import SessionOptions

    try:
        settings = load_settings(GatewaySettings, fields=SessionOptions.SETTINGS)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return SessionOptions.from_settings(settings)


def cmd_demo(args: argparse.Namespace) -> int:
    from converters.demo import train_demo_models, write_demo_config

    store = _store(args)
    config_out = Path(args.config_out)
    writable_dir(config_out.parent, f"--config-out {config_out}: directory")
    metas = train_demo_models(store, session_options=_session_options())
    config = write_demo_config(config_out, metas)
    _print(metas, args.json)
    if not args.json:
        print(f"experiments config written to {config}")
    return EXIT_OK


def _load_holdout(path: Path | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The held-out rows X, and their labels y when the file has them (holdout metrics)."""
    if path is None:
        raise UsageError("--holdout FILE.npz (an array X of held-out rows) is required")
    readable_file(path, "--holdout")
    try:
        data = np.load(path)  # allow_pickle stays off: arrays only, never code
    except (ValueError, OSError, EOFError):
        raise UsageError(f"--holdout {path}: not an .npz file (numpy.savez)") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise UsageError(f"--holdout {path}: one array, not an .npz file with an array X")
    with data:
        if "X" not in data:
            raise UsageError(f"--holdout {path}: has no array named X")
        X = np.asarray(data["X"])
        y = np.asarray(data["y"]) if "y" in data else None
    if y is not None and (y.ndim != 1 or len(y) != len(X)):
        raise UsageError(f"--holdout {path}: y must be one label per row of X")
    return X, y


def cmd_convert(args: argparse.Namespace) -> int:
    import joblib
    from sklearn.base import BaseEstimator

    from converters.sklearn_onnx import ConversionError, ParityError, convert_and_register

    readable_file(Path(args.input), "--input")
    X, y = _load_holdout(args.holdout)
    store = _store(args)
    parent = None
    if args.parent:
        try:
            parent = store.resolve(args.parent).sha256
        except ModelStoreError as exc:
            raise UsageError(f"--parent {args.parent}: {exc}") from None
    training: dict[str, Any] = {}
    if args.train_rows is not None:
        if args.train_rows < 0:
            raise UsageError("--train-rows must not be negative")
        training["rows"] = args.train_rows
    if args.train_window:
        training["window"] = args.train_window
    # Unpickling runs whatever code the file names (README: only files you trust). It is
    # acceptable here: an offline tool run on the user's own file, never the serving path,
    # which loads only sha-verified ONNX.
    try:
        model = joblib.load(args.input)
    except Exception as exc:  # unpickling raises whatever the bytes lead it to
        raise UsageError(
            f"--input {args.input}: not a model saved with joblib ({type(exc).__name__})"
        ) from None
    if not isinstance(model, BaseEstimator):
        raise UsageError(
            f"--input {args.input}: holds a {type(model).__name__}, not a scikit-learn model "
            "(save a fitted classifier or pipeline with joblib.dump)"
        )
    try:
        meta = convert_and_register(
            model, X, store, id=args.id, version=args.version, session_options=_session_options(),
            y_holdout=y, training=training, parent=parent,
        )  # fmt: skip
    except ExternalData as exc:
        raise UsageError(f"--input {args.input}: {exc}") from None
    except (ConversionError, ParityError, ModelStoreError) as exc:
        error(str(exc))
        return EXIT_FAILURE
    _print([meta], args.json)
    return EXIT_OK


def _inspect_onnx(data: bytes) -> dict[str, Any]:
    import onnxruntime as ort

    from gateway.variants import SessionOptions

    # Before onnxruntime reads it: an external-data file would be opened relative to here.
    check_self_contained(data)
    opts = SessionOptions().build()
    sess = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
    inputs = sess.get_inputs()
    if len(inputs) != 1 or inputs[0].type != "tensor(float)":
        raise ValueError("model must have exactly one float32 input")
    shape = inputs[0].shape
    if len(shape) != 2 or not isinstance(shape[1], int):
        raise ValueError(f"input shape {shape} must be [N, n_features] with a known n_features")
    outputs = sess.get_outputs()
    if len(outputs) != 2 or outputs[1].type != "tensor(float)":
        raise ValueError("model must have a label output and a float probabilities output")
    n_classes = outputs[1].shape[1] if len(outputs[1].shape) == 2 else None
    if not isinstance(n_classes, int):
        raise ValueError("probabilities output must be [N, n_classes] (convert without ZipMap)")
    return {
        "input_name": inputs[0].name,
        "n_features": int(shape[1]),
        "feature_names": tuple(f"f{i}" for i in range(int(shape[1]))),
        "label_output": outputs[0].name,
        "scores_output": outputs[1].name,
        "classes": tuple(range(n_classes)),
        "opset": 0,
        "source": "onnx",
    }


def cmd_register(args: argparse.Namespace) -> int:
    path = readable_file(Path(args.onnx), "--onnx")
    data = path.read_bytes()
    try:
        fields = _inspect_onnx(data)
    except ExternalData as exc:
        raise UsageError(f"--onnx {path}: {exc}") from None
    except Exception as exc:  # onnxruntime raises assorted types for bad files
        raise UsageError(f"--onnx {path}: not a usable classifier model: {exc}") from None
    meta = ModelMetadata(
        sha256="",
        id=args.id,
        version=args.version or "",
        parity_max_abs_diff=float("nan"),
        parity_rows=0,
        **fields,
    )
    try:
        stored = _store(args).put(data, meta)
    except ModelStoreError as exc:
        error(str(exc))
        return EXIT_FAILURE
    _print([stored], args.json)
    if not args.json:
        print("note: parity was not checked (no source model); prefer `abgate models convert`")
    return EXIT_OK


def cmd_lineage(args: argparse.Namespace) -> int:
    from converters.recipe import describe, lineage

    store = _store(args, writing=False)
    try:
        chain = lineage(store, args.ref)
    except ModelStoreError as exc:
        error(str(exc))
        return EXIT_FAILURE
    if args.json:
        print(json.dumps([m.to_dict() for m in chain], indent=1))
    else:
        print("\n".join(describe(m) for m in chain))
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    _print(_store(args, writing=False).list(), args.json)
    return EXIT_OK


def add_models_parser(subparsers: Any) -> None:
    models = subparsers.add_parser("models", help="train demo models, convert, register, list")
    sub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--store", default=None, help="model store (env ABGATE_MODEL_STORE)")
        p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("demo", help="train and register the breast-cancer demo models")
    common(p)
    p.add_argument("--config-out", default="var/experiments.toml", help="experiments file")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("convert", help="convert a scikit-learn model (joblib) with parity check")
    common(p)
    p.add_argument("--input", required=True, help="fitted model saved with joblib")
    p.add_argument("--id", required=True, help="model name in the registry")
    p.add_argument("--version", default=None, help="version (default: next integer)")
    p.add_argument(
        "--holdout",
        type=Path,
        default=None,
        help=".npz with held-out rows X (and labels y: holdout metrics in the recipe)",
    )
    p.add_argument("--parent", default=None, help="model it was retrained from (sha256, id[:v])")
    p.add_argument("--train-rows", type=int, default=None, help="rows it was trained on")
    p.add_argument("--train-window", default=None, help="training data window, as text")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("lineage", help="a model's recipe and its ancestors', newest first")
    common(p)
    p.add_argument("ref", help="sha256, id (latest version) or id:version")
    p.set_defaults(func=cmd_lineage)

    p = sub.add_parser("register", help="register an existing ONNX classifier")
    common(p)
    p.add_argument("--onnx", required=True, help="ONNX file")
    p.add_argument("--id", required=True, help="model name in the registry")
    p.add_argument("--version", default=None, help="version (default: next integer)")
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("list", help="list registered models")
    common(p)
    p.set_defaults(func=cmd_list)
