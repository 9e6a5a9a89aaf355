"""Side virtualenvs for third-party software that cannot live in ``.venv``: ``.venv-interop``
holds the real clients of the interop tests (``tritonclient`` pins protobuf < 7, we need 7, and
its own ``inference`` protos would clash with ours in one process, so its scripts run in their
own interpreter); ``benchmarks/mlserver`` keeps MLServer in another one the same way.

Each is created on first use and reused after: a stamp file records what was installed. It
installs exactly a hashed requirements file (written by ``make lock`` from its
``requirements.in``) with the uv of our own virtualenv.
"""

from __future__ import annotations

import fcntl
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".venv-interop"
REQUIREMENTS = Path(__file__).with_name("requirements.txt")
UV = Path(sys.executable).parent / "uv"
INSTALL_TIMEOUT = 240.0  # seconds; a first install downloads ~30 MB


class InteropVenvError(RuntimeError):
    """A side virtualenv could not be created."""


def _run(args: list[str], what: str) -> None:
    try:
        proc = subprocess.run(
            args, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InteropVenvError(f"{what} failed: {exc}") from exc
    if proc.returncode != 0:
        raise InteropVenvError(
            f"{what} failed (exit {proc.returncode}): {' '.join(args)}\n"
            f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        )


def side_venv(venv: Path, requirements: Path, check: str) -> Path:
    """The interpreter of ``venv`` holding exactly ``requirements``, created if needed;
    ``check`` is a Python statement that must run in it (an import)."""
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    wanted = requirements.read_text(encoding="utf-8")
    venv.parent.mkdir(parents=True, exist_ok=True)
    # Concurrent test runs would otherwise build the same directory at once. The lock lives
    # outside the venv (``--clear`` empties it) and outside the repo (nothing to commit).
    with open(Path(tempfile.gettempdir()) / f"abgate-{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if python.exists() and stamp.exists() and stamp.read_text() == wanted:
            return python
        _run(
            [str(UV), "venv", "--quiet", "--clear", "--python", sys.executable, str(venv)],
            f"creating {venv}",
        )
        _run(
            [str(UV), "pip", "sync", "--quiet", "--require-hashes", "--python", str(python),
             str(requirements)],
            f"installing {requirements.name} into {venv}",
        )  # fmt: skip
        _run([str(python), "-c", check], f"checking {venv} ({check})")
        stamp.write_text(wanted)
        return python


def interop_python() -> Path:
    """The interpreter of ``.venv-interop``, creating the virtualenv if needed."""
    return side_venv(VENV, REQUIREMENTS, "import tritonclient.grpc")
