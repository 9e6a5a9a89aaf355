"""Conversion, parity and registration of scikit-learn models."""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
import onnx
import pytest
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from abgate.cli import main
from converters.demo import demo_data, load_demo_holdout, train_demo_models, write_demo_config
from converters.sklearn_onnx import (
    ConversionError,
    ParityError,
    check_parity,
    convert,
    convert_and_register,
)
from gateway.config import load_config_file
from gateway.modelstore import ModelStore
from tests.numeric import session_options

DATA = demo_data(0)
# Training (OpenBLAS), conversion and parity (onnxruntime, with the environment's thread count)
# are float computations throughout; `make test-numeric` reruns them on other kernels.
pytestmark = pytest.mark.numeric


def fitted(model):  # type: ignore[no-untyped-def]
    X_train, _, y_train, _, _ = DATA
    return model.fit(X_train, y_train)


MODELS = {
    "pipeline-logreg": lambda: Pipeline(
        [("s", StandardScaler()), ("c", LogisticRegression(max_iter=2000))]
    ),
    "logreg": lambda: LogisticRegression(max_iter=5000),
    "forest": lambda: RandomForestClassifier(n_estimators=20, max_depth=5, random_state=0),
    "gbdt": lambda: GradientBoostingClassifier(n_estimators=20, random_state=0),
}


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_supported_models_convert_with_parity(kind: str, tmp_path: Path) -> None:
    model = fitted(MODELS[kind]())
    _, X_hold, _, _, names = DATA
    data, meta = convert(model, X_hold, feature_names=names)
    proto = onnx.load_from_string(data)
    assert meta["n_features"] == 30 and meta["classes"] == (0, 1)
    assert meta["input_name"] == proto.graph.input[0].name
    assert not any(n.op_type == "ZipMap" for n in proto.graph.node)
    scores = next(o for o in proto.graph.output if o.name == meta["scores_output"])
    assert scores.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert meta["opset"] > 0
    report = check_parity(model, data, X_hold, session_options=session_options())
    assert report.ok and report.max_abs_diff <= 1e-5 and report.rows == len(X_hold)
    stored = convert_and_register(
        model, X_hold, ModelStore(tmp_path), id=f"m-{kind}", session_options=session_options()
    )
    assert stored.parity_rows == len(X_hold) and len(stored.sha256) == 64


def test_parity_failure_registers_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, X_hold, _, _, _ = DATA
    a = fitted(LogisticRegression(max_iter=5000))
    b = fitted(RandomForestClassifier(n_estimators=5, max_depth=2, random_state=1))
    data_b, _ = convert(b, X_hold)
    assert not check_parity(a, data_b, X_hold).ok
    import converters.sklearn_onnx as mod

    real = mod.convert
    monkeypatch.setattr(mod, "convert", lambda model, X, **kw: (data_b, real(model, X, **kw)[1]))
    store = ModelStore(tmp_path)
    with pytest.raises(ParityError, match="not registered"):
        convert_and_register(a, X_hold, store, id="bad")
    assert store.list() == []
    assert not (tmp_path / "objects").exists() or not any((tmp_path / "objects").iterdir())


def test_unsupported_and_unfitted_models_are_refused() -> None:
    _, X_hold, _, _, _ = DATA
    with pytest.raises(ConversionError, match="not fitted"):
        convert(LogisticRegression(), X_hold)
    X_train, _, y_train, _, _ = DATA
    with pytest.raises(ConversionError, match="not a classifier"):
        convert(LinearRegression().fit(X_train, y_train), X_hold)
    with pytest.raises(ConversionError, match="integers"):
        convert(LogisticRegression(max_iter=5000).fit(X_train, np.where(y_train, "a", "b")), X_hold)
    # What an unpickled file may hold instead of a model: one line, not sklearn's AttributeError.
    for not_a_model in ({"coef": 1}, LogisticRegression, Pipeline([("m", "passthrough")])):
        with pytest.raises(ConversionError, match="is not a scikit-learn estimator"):
            convert(not_a_model, X_hold)


def test_demo_models_are_deterministic(tmp_path: Path) -> None:
    # Exactly: the same training on the same machine is the same computation, so the same bytes.
    first = train_demo_models(ModelStore(tmp_path / "a"), session_options=session_options())
    second = train_demo_models(ModelStore(tmp_path / "b"), session_options=session_options())
    assert [m.sha256 for m in first] == [m.sha256 for m in second]
    assert {m.id for m in first} >= {"demo-logreg", "demo-forest", "demo-gbdt"}
    assert all(m.parity_max_abs_diff <= 1e-5 for m in first)
    cfg = load_config_file(write_demo_config(tmp_path / "demo.toml", first))
    demo = {e.name: e for e in cfg.experiments}["demo"]
    by_id = {m.id: m.sha256 for m in first}
    assert [a.model for a in demo.arms] == [by_id["demo-logreg"], by_id["demo-gbdt"]]
    X, y = load_demo_holdout(tmp_path / "a")
    assert X.dtype == np.float32 and X.shape[1] == 30 and len(X) == len(y)


def test_the_cli_checks_parity_with_the_gateways_onnxruntime_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from abgate.cli_common import UsageError
    from converters.cli import _session_options

    monkeypatch.setenv("ABGATE_ORT_INTRA_OP_THREADS", "3")
    monkeypatch.setenv("ABGATE_ORT_SPINNING", "1")
    opts = _session_options()
    assert (opts.intra_op_threads, opts.spinning) == (3, True)
    assert opts.build().intra_op_num_threads == 3
    monkeypatch.setenv("ABGATE_ORT_INTRA_OP_THREADS", "x")
    with pytest.raises(UsageError, match="ABGATE_ORT_INTRA_OP_THREADS"):
        _session_options()


def run(*argv: str) -> int:
    """Through the real entry point, which maps usage errors to exit code 2."""
    return main(list(argv))


def test_models_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = str(tmp_path / "store")
    assert run("models", "demo", "--store", store, "--config-out", str(tmp_path / "c.toml")) == 0
    assert "demo-logreg" in capsys.readouterr().out
    assert run("models", "list", "--store", store, "--json") == 0
    assert "demo-gbdt" in capsys.readouterr().out

    _, X_hold, _, _, _ = DATA
    model_path = tmp_path / "m.joblib"
    joblib.dump(fitted(LogisticRegression(max_iter=5000)), model_path)
    np.savez(tmp_path / "hold.npz", X=X_hold)
    assert (
        run(
            "models",
            "convert",
            "--store",
            store,
            "--input",
            str(model_path),
            "--id",
            "mine",
            "--holdout",
            str(tmp_path / "hold.npz"),
        )
        == 0
    )
    assert ModelStore(Path(store)).resolve("mine").version == "1"
    assert (
        run(
            "models",
            "convert",
            "--store",
            store,
            "--input",
            str(tmp_path / "nope.joblib"),
            "--id",
            "x",
            "--holdout",
            str(tmp_path / "hold.npz"),
        )
        == 2
    )
    assert run("models", "convert", "--store", store, "--input", str(model_path), "--id", "x") == 2
    joblib.dump(LinearRegression().fit(X_hold, X_hold[:, 0]), tmp_path / "reg.joblib")
    assert (
        run(
            "models",
            "convert",
            "--store",
            store,
            "--input",
            str(tmp_path / "reg.joblib"),
            "--id",
            "x",
            "--holdout",
            str(tmp_path / "hold.npz"),
        )
        == 1
    )
    assert "not a classifier" in capsys.readouterr().err

    meta = ModelStore(Path(store)).resolve("demo-logreg")
    onnx_file = Path(store) / "objects" / f"{meta.sha256}.onnx"
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(onnx_file.read_bytes())
    assert run("models", "register", "--store", store, "--onnx", str(copy), "--id", "other") == 0
    assert (
        run("models", "register", "--store", store, "--onnx", str(tmp_path / "x.onnx"), "--id", "z")
        == 2
    )
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    assert (
        run(
            "models",
            "register",
            "--store",
            store,
            "--onnx",
            str(tmp_path / "junk.onnx"),
            "--id",
            "z",
        )
        == 2
    )
