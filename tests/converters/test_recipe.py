"""A registered model's recipe and lineage: what `models convert` records (estimator, steps,
features, training, holdout metrics, parent) and what `models lineage` prints from the store."""

from __future__ import annotations

import json
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from abgate.cli import main
from converters.demo import demo_data
from converters.recipe import holdout_metrics, recipe_of
from gateway.modelstore import ModelStore

DATA = demo_data(0)


def test_recipe_of_a_pipeline_is_json_and_names_each_step() -> None:
    X_train, _, y_train, _, names = DATA
    model = Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(C=0.5))])
    model.fit(X_train, y_train)
    r = recipe_of(model, feature_names=names, training={"rows": np.int64(398), "window": "7d"})
    assert json.loads(json.dumps(r)) == r  # JSON through and through (numpy scalars too)
    assert r["estimator"]["class"] == "sklearn.pipeline.Pipeline"
    assert [(s["name"], s["class"]) for s in r["steps"]] == [
        ("scale", "sklearn.preprocessing._data.StandardScaler"),
        ("clf", "sklearn.linear_model._logistic.LogisticRegression"),
    ]
    assert r["steps"][1]["params"]["C"] == 0.5
    assert r["training"] == {"rows": 398, "window": "7d"}
    assert r["feature_names"] == list(names) and r["parent_sha256"] is None
    with pytest.raises(Exception, match="sha256"):
        recipe_of(model, feature_names=names, parent="not-a-sha")


def test_holdout_metrics_of_two_classes() -> None:
    m = holdout_metrics(np.array([1, 1, 0, 0, 0]), np.array([1, 0, 1, 0, 0]))
    assert m["rows"] == 5 and m["accuracy"] == pytest.approx(0.6)
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(0.5)
    assert m["fpr"] == pytest.approx(1 / 3)
    three = holdout_metrics(np.array([0, 1, 2]), np.array([0, 2, 2]))
    assert set(three) == {"rows", "accuracy"}
    with pytest.raises(ValueError):
        holdout_metrics(np.array([0, 1]), np.array([0]))


def test_convert_records_the_recipe_and_lineage_follows_parents(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    X_train, X_hold, y_train, y_hold, _ = DATA
    store = str(tmp_path / "store")
    holdout = tmp_path / "holdout.npz"
    np.savez(holdout, X=X_hold, y=y_hold)
    paths = []
    for i, c in enumerate((1.0, 0.1)):
        path = tmp_path / f"m{i}.joblib"
        model = Pipeline([("s", StandardScaler()), ("c", LogisticRegression(C=c, max_iter=2000))])
        joblib.dump(model.fit(X_train, y_train), path)
        paths.append(path)
    base = ["models", "convert", "--store", store, "--holdout", str(holdout), "--id", "churn"]
    assert main([*base, "--input", str(paths[0]), "--train-rows", "398", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)[0]
    assert first["recipe"]["training"] == {"rows": 398}
    acc = float(np.mean(joblib.load(paths[0]).predict(X_hold) == y_hold))
    assert first["recipe"]["holdout"]["accuracy"] == pytest.approx(acc) and acc > 0.9
    assert first["recipe"]["holdout"]["rows"] == len(y_hold)
    # The retrained one names its parent by reference; the store resolves it to a sha256.
    args = [*base, "--input", str(paths[1]), "--parent", "churn:1", "--train-window", "7d"]
    assert main([*args, "--json"]) == 0
    second = json.loads(capsys.readouterr().out)[0]
    assert second["recipe"]["parent_sha256"] == first["sha256"]
    assert main(["models", "lineage", "churn", "--store", store, "--json"]) == 0
    chain = json.loads(capsys.readouterr().out)
    assert [m["sha256"] for m in chain] == [second["sha256"], first["sha256"]]
    assert main(["models", "lineage", "churn:2", "--store", store]) == 0
    text = capsys.readouterr().out
    assert text.index("churn:2") < text.index("churn:1")
    assert f"parent: {first['sha256'][:12]}" in text and "window=7d" in text
    assert "estimator: sklearn.pipeline.Pipeline (StandardScaler → LogisticRegression)" in text
    # The recipe lives in the metadata only: the model is still its ONNX bytes' sha256.
    meta = ModelStore(Path(store)).get(second["sha256"])
    assert meta.recipe["parent_sha256"] == first["sha256"]
    # An unknown parent, and lineage of an unknown model: clear errors.
    assert main([*base, "--input", str(paths[1]), "--parent", "nope:9"]) == 2
    assert "--parent nope:9" in capsys.readouterr().err
    assert main(["models", "lineage", "nope", "--store", store]) == 1
    assert "no model 'nope'" in capsys.readouterr().err
