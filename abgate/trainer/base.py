"""A base dataset (``abgate trainer --base-dataset``): labelled rows merged into the training
side of every retrain, beside the logged features and outcomes of the window.

``sklearn:NAME`` is one of the datasets that ship inside scikit-learn (no download); a path
ending ``.npz`` holds arrays ``X`` (rows × features) and ``y`` (integer labels); a path ending
``.csv`` has one row per line, the label in the last column, and an optional header line. Every
value must be finite and every label an integer: a file that breaks that is refused at start,
with the line or the array named, never half-read.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# The datasets scikit-learn ships (sklearn.datasets.load_<name>), classification ones only.
SKLEARN_DATASETS = ("breast_cancer", "digits", "iris", "wine")


@dataclass(frozen=True, eq=False)
class BaseDataset:
    spec: str  # what --base-dataset said
    X: np.ndarray  # float32, rows × features
    y: np.ndarray  # int64

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1])


def _checked(spec: str, X: np.ndarray, y: np.ndarray) -> BaseDataset:
    where = f"--base-dataset {spec}"
    if X.ndim != 2 or y.ndim != 1 or X.shape[0] != y.shape[0] or X.shape[0] == 0:
        raise ValueError(
            f"{where}: X must be rows × features and y one label per row, got X {X.shape} and "
            f"y {y.shape}"
        )
    if X.shape[1] == 0:
        raise ValueError(f"{where}: no feature columns")
    try:
        Xf = X.astype(np.float32)
        yf = y.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: values must be numbers ({exc})") from None
    bad = np.flatnonzero(~np.isfinite(Xf).all(axis=1))
    if bad.size:
        raise ValueError(f"{where}: row {int(bad[0]) + 1} has a value that is not finite")
    bad = np.flatnonzero(~(np.isfinite(yf) & (yf == np.round(yf))))
    if bad.size:
        raise ValueError(f"{where}: row {int(bad[0]) + 1}: the label is not an integer")
    if np.unique(yf).size < 2:
        raise ValueError(f"{where}: every row has the same label")
    return BaseDataset(spec, Xf, yf.astype(np.int64))


def _csv(spec: str, path: Path) -> BaseDataset:
    rows: list[list[float]] = []
    width = None
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            cells = [c.strip() for c in line.split(",")]
            try:
                values = [float(c) for c in cells]
            except ValueError:
                if i == 1 and not rows:
                    continue  # the header
                raise ValueError(f"--base-dataset {spec}: line {i}: not a number") from None
            if width is None:
                width = len(values)
            if len(values) != width or width < 2:
                raise ValueError(
                    f"--base-dataset {spec}: line {i} has {len(values)} columns, expected "
                    f"{width} (the features, then the label) and at least 2"
                )
            rows.append(values)
    if not rows:
        raise ValueError(f"--base-dataset {spec}: no rows")
    a = np.asarray(rows, dtype=np.float64)
    return _checked(spec, a[:, :-1], a[:, -1])


def load_base_dataset(spec: str) -> BaseDataset:
    """The rows ``spec`` names, or ValueError naming --base-dataset and what is wrong."""
    if spec.startswith("sklearn:"):
        name = spec.removeprefix("sklearn:")
        if name not in SKLEARN_DATASETS:
            raise ValueError(
                f"--base-dataset {spec}: not one of sklearn:{', sklearn:'.join(SKLEARN_DATASETS)}"
            )
        import sklearn.datasets

        X, y = getattr(sklearn.datasets, f"load_{name}")(return_X_y=True)
        return _checked(spec, np.asarray(X), np.asarray(y))
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"--base-dataset {spec}: no such file (or give sklearn:NAME)")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                files = sorted(z.files)
                arrays = (z["X"], z["y"]) if "X" in files and "y" in files else None
        except (OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
            # ValueError: pickled data or object arrays (never unpickled here).
            raise ValueError(f"--base-dataset {spec}: not a readable .npz ({exc})") from None
        if arrays is None:
            raise ValueError(f"--base-dataset {spec}: an .npz needs arrays X and y, has {files}")
        return _checked(spec, *arrays)
    if path.suffix == ".csv":
        try:
            return _csv(spec, path)
        except UnicodeDecodeError:
            raise ValueError(f"--base-dataset {spec}: not UTF-8 text") from None
    raise ValueError(f"--base-dataset {spec}: give a .npz or .csv file, or sklearn:NAME")
