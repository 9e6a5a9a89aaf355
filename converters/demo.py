"""Demo models trained on scikit-learn's bundled breast-cancer data (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier
from threadpoolctl import threadpool_limits

from converters.sklearn_onnx import convert_and_register
from gateway.modelstore import ModelMetadata, ModelStore
from gateway.variants import SessionOptions

HOLDOUT_FILE = "demo_holdout.npz"


def demo_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    data = load_breast_cancer()
    X = data.data.astype(np.float32)
    y = data.target.astype(np.int64)
    X_train, X_hold, y_train, y_hold = train_test_split(
        X, y, test_size=0.3, stratify=y, random_state=seed
    )
    names = [str(n).replace(" ", "_") for n in data.feature_names]
    return X_train, X_hold, y_train, y_hold, names


def demo_estimators(seed: int = 0) -> dict[str, BaseEstimator]:
    """The demo's scikit-learn models by id, fitted on ``demo_data(seed)``'s training split."""
    X_train, _, y_train, _, _ = demo_data(seed)
    models: dict[str, BaseEstimator] = {
        "demo-logreg": Pipeline(
            [("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=2000))]
        ),
        "demo-forest": RandomForestClassifier(n_estimators=50, max_depth=6, random_state=seed),
        "demo-gbdt": GradientBoostingClassifier(n_estimators=60, max_depth=3, random_state=seed),
    }
    for model in models.values():
        # One thread, so no parallel reduction can vary the fit between runs.
        with threadpool_limits(limits=1):
            model.fit(X_train, y_train)
    return models


def train_demo_models(
    store: ModelStore, *, seed: int = 0, session_options: SessionOptions | None = None
) -> list[ModelMetadata]:
    """Train, convert, parity-check (with ``session_options``, default the gateway's) and
    register the demo models; deterministic per seed."""
    X_train, X_hold, _, y_hold, names = demo_data(seed)
    metas = []
    for model_id, model in demo_estimators(seed).items():
        meta = convert_and_register(
            model, X_hold, store, id=model_id, feature_names=names,
            session_options=session_options, y_holdout=y_hold, training=_training(seed, X_train),
        )  # fmt: skip
        metas.append(meta)
    store.root.mkdir(parents=True, exist_ok=True)
    np.savez(store.root / HOLDOUT_FILE, X=X_hold, y=y_hold)
    return metas


def train_demo_stump(store: ModelStore, *, seed: int = 0) -> ModelMetadata:
    """A deliberately weak model (a one-split decision tree, ~90% accurate where the others
    reach ~95%): the control the demo's challenger truly beats."""
    X_train, X_hold, y_train, y_hold, names = demo_data(seed)
    model = DecisionTreeClassifier(max_depth=1, random_state=seed).fit(X_train, y_train)
    return convert_and_register(
        model, X_hold, store, id="demo-stump", feature_names=names, y_holdout=y_hold,
        training=_training(seed, X_train),
    )  # fmt: skip


def _training(seed: int, X_train: np.ndarray) -> dict[str, object]:
    """What a demo model's recipe says of its training data."""
    return {"dataset": "sklearn.datasets.load_breast_cancer", "rows": len(X_train), "seed": seed}


def load_demo_holdout(store_root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Held-out rows (float32) and their true labels, saved by ``train_demo_models``."""
    with np.load(Path(store_root) / HOLDOUT_FILE) as data:
        return data["X"].astype(np.float32), data["y"].astype(np.int64)


# The cycle demo's changed world (``write_shifted_traffic``): the outcome now follows the mean
# texture (above the dataset's median: 1) instead of the diagnosis, and for a share of the rows
# the area features read higher (a new instrument).
SHIFTED_LABEL_FEATURE = "mean_texture"
SHIFTED_FEATURES = ("mean_area", "worst_area", "area_error")


def write_shifted_traffic(
    out_root: Path, *, seed: int = 0, shifted_share: float = 0.4, scale: float = 1.6
) -> Path:
    """Traffic after the world changed, for the cycle demo (``abgate demo --cycle``), as a
    holdout file the load generator reads (``--model-store out_root``): every row of the
    breast-cancer data, labelled by a new concept (mean texture above its median), and for
    ``shifted_share`` of the rows the ``SHIFTED_FEATURES`` multiplied by ``scale`` (a covariate
    shift). A model trained on the old labels scores near chance on it; one retrained on it
    learns the new concept."""
    data = load_breast_cancer()
    names = [str(n).replace(" ", "_") for n in data.feature_names]
    X = data.data.astype(np.float32)
    texture = X[:, names.index(SHIFTED_LABEL_FEATURE)]
    y = (texture > np.median(texture)).astype(np.int64)
    rng = np.random.default_rng(seed)
    shifted = rng.random(len(X)) < shifted_share
    for name in SHIFTED_FEATURES:
        X[shifted, names.index(name)] *= np.float32(scale)
    out_root.mkdir(parents=True, exist_ok=True)
    path = out_root / HOLDOUT_FILE
    np.savez(path, X=X, y=y)
    return path


DEMO_EXPERIMENTS = {
    # name: (salt, [(arm, model id, weight %)])
    "demo": ("demo-v1", [("control", "demo-logreg", 50.0), ("treatment", "demo-gbdt", 50.0)]),
    "demo-3way": (
        "demo-3way",
        [
            ("logreg", "demo-logreg", 34.0),
            ("forest", "demo-forest", 33.0),
            ("gbdt", "demo-gbdt", 33.0),
        ],
    ),
}


def write_demo_config(path: Path, metas: list[ModelMetadata], version: int = 1) -> Path:
    """An experiments config (TOML): "demo" (logreg vs gbdt, 50/50) and "demo-3way"."""
    by_id = {m.id: m.sha256 for m in metas}
    lines = [f"version = {version}"]
    for name, (salt, arms) in DEMO_EXPERIMENTS.items():
        lines += ["", "[[experiments]]", f'name = "{name}"', f'salt = "{salt}"']
        for arm, model_id, weight in arms:
            lines += [
                "[[experiments.arms]]",
                f'name = "{arm}"',
                f'model = "{by_id[model_id]}"',
                f"weight = {weight}",
            ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path
