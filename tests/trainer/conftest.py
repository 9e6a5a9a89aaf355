"""Trainer fixtures: a model store of its own per test (a copy of the demo store: the trainer
registers into it), an evaluator on a fresh database resolving models there, an experiment
whose round 1 has ended, and logged rows (captured features and outcomes) written with SQL as
the gateway would have written them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import numpy as np
import pytest

from abgate.v1 import control_pb2 as cpb
from tests.evaluator.conftest import InProcessEvaluator, ab_definition, evaluator_settings


@dataclass(frozen=True)
class Setup:
    url: str
    store: Path
    ev: InProcessEvaluator
    champion: str  # sha256 of the promoted arm's model
    control: str  # sha256 of the other arm's model


N_FEATURES = 5


def concept_rows(n: int, *, shifted: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic rows: before the shift the label is x0 + x1 > 0, after it x0 - x1 > 0 (a
    concept shift: the champion, fitted before, is right on about half of the new rows)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    y = ((X[:, 0] - X[:, 1] if shifted else X[:, 0] + X[:, 1]) > 0).astype(np.int64)
    return X, y


def register_models(root: Path) -> tuple[str, str]:
    """(champion, control) sha256: a scaler + logistic regression pipeline and a stump, both
    fitted on the concept before the shift, registered with their recipes."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeClassifier

    from converters.sklearn_onnx import convert_and_register
    from gateway.modelstore import ModelStore

    store = ModelStore(root)
    X, y = concept_rows(400, shifted=False, seed=1)
    X_hold, y_hold = concept_rows(100, shifted=False, seed=2)
    names = [f"x{i}" for i in range(N_FEATURES)]
    champion = Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression())]).fit(X, y)
    stump = DecisionTreeClassifier(max_depth=1, random_state=0).fit(X, y)
    shas = []
    for model_id, model in (("churn", champion), ("churn-stump", stump)):
        meta = convert_and_register(
            model, X_hold, store, id=model_id, feature_names=names, y_holdout=y_hold,
            training={"dataset": "synthetic", "rows": len(X)},
        )  # fmt: skip
        shas.append(meta.sha256)
    return shas[0], shas[1]


def promoted(ev: InProcessEvaluator, name: str, control: str, treatment: str) -> cpb.ExperimentView:
    """``name`` created (control vs treatment) and its treatment promoted: round 1 ended."""
    ev.admin.call(
        "CreateExperiment", cpb.CreateExperimentRequest(definition=ab_definition(name, control,
                                                                                 treatment))
    )  # fmt: skip
    return ev.admin.call("Promote", cpb.ExperimentRequest(name=name, arm="treatment"))


def insert_rows(
    url: str, experiment: str, ids: Sequence[str], X: np.ndarray, y: Sequence[float] | None
) -> None:
    """Captured features (a minute ago) and their outcomes (none when ``y`` is None)."""

    async def run() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.executemany(
                """INSERT INTO prediction_features (request_id, ts, experiment, arm, features)
                   VALUES ($1, now() - interval '1 minute', $2, 'treatment', $3)""",
                [
                    (rid, experiment, [float(v) for v in row])
                    for rid, row in zip(ids, X, strict=True)
                ],
            )
            if y is None:
                return
            await conn.executemany(
                "INSERT INTO outcomes (request_id, value, source) VALUES ($1, $2, '')",
                [(rid, float(v)) for rid, v in zip(ids, y, strict=True)],
            )
        finally:
            await conn.close()

    asyncio.run(run())


def window_rows(n: int = 600, prefix: str = "req") -> tuple[list[str], np.ndarray, np.ndarray]:
    """Logged traffic after the shift, with a request id per row."""
    X, y = concept_rows(n, shifted=True, seed=3)
    return [f"{prefix}-{i}" for i in range(n)], X, y


@pytest.fixture
def setup(fresh_db: str, tmp_path: Path) -> Iterator[Setup]:
    """Experiment "exp": churn-stump vs churn, churn promoted (the champion)."""
    store = tmp_path / "models"
    champion, control = register_models(store)
    ev = InProcessEvaluator(evaluator_settings(fresh_db, store, round_cooldown=0.0))
    try:
        promoted(ev, "exp", control, champion)
        yield Setup(fresh_db, store, ev, champion, control)
    finally:
        ev.close()
