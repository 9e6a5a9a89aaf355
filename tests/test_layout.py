"""The architecture's import contracts (``[tool.importlinter]`` in pyproject.toml) hold on this
tree, and each of them fails when the import it forbids is added to a copy of the tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-logo", "--no-cache", str(tree / "pyproject.toml")],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_contracts_hold_on_this_tree() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    names = [c["name"] for c in _config()["contracts"]]
    for name in names:
        assert f"{name} KEPT" in result.stdout


def test_contracts_name_the_architecture() -> None:
    config = _config()
    contracts = {c["id"]: c for c in config["contracts"]}
    assert set(config["root_packages"]) >= {"abgate", "gateway", "evaluator", "loadtest",
                                            "converters"}  # fmt: skip
    layers = contracts["layers"]["layers"]
    order = {name: i for i, layer in enumerate(layers) for name in layer.split(" | ")}
    # The command line on top, then the areas, then the gateway, then the ground.
    assert order["abgate.cli"] < order["evaluator"] == order["loadtest"] == order["converters"]
    assert order["converters"] < order["gateway"]
    for ground in ("abgate.cli_common", "abgate.errors", "abgate.settings", "abgate.db",
                   "abgate.v1"):  # fmt: skip
        assert order["gateway"] < order[ground]
    assert contracts["no-cycles"]["type"] == "acyclic_siblings"


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's packages and its pyproject.toml, copied (sources only)."""
    dest = tmp_path_factory.mktemp("tree")
    for package in _config()["root_packages"]:
        shutil.copytree(
            ROOT / package, dest / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


@pytest.mark.parametrize(
    ("module", "added", "broken"),
    [
        # A cycle inside a package (the metrics module importing its server).
        ("gateway/metrics.py", "import gateway.server", "no-cycles"),
        # The ground importing a command line above it.
        ("abgate/errors.py", "import abgate.cli", "layers"),
        # The gateway importing the evaluator.
        ("gateway/hashing.py", "import evaluator.policy", "gateway-not-evaluator"),
        # The statistics importing the project.
        ("evaluator/stats.py", "import abgate.errors", "stats-pure"),
        # The results model drawing (even lazily: the graph has every import).
        ("evaluator/results.py", "def f():\n    import matplotlib.dates", "results-draw-nothing"),
        # A wire codec reaching for grpc.
        ("gateway/oip_codec.py", "import grpc", "codecs-no-grpc"),
        # The log writer talking to PostgreSQL itself rather than through its sink.
        ("gateway/logwriter.py", "import asyncpg", "log-writer-knows-no-database"),
    ],
)
def test_each_contract_fails_on_the_import_it_forbids(
    tree_copy: Path, module: str, added: str, broken: str
) -> None:
    path = tree_copy / module
    original = path.read_text()
    try:
        path.write_text(original + f"\n{added}  # noqa\n")
        result = _lint(tree_copy)
    finally:
        path.write_text(original)
    assert result.returncode != 0, result.stdout
    name = next(c["name"] for c in _config()["contracts"] if c["id"] == broken)
    assert f"{name} BROKEN" in result.stdout, result.stdout
