"""The interop virtualenv ``.venv-interop``: real third-party clients that cannot live in
``.venv``. ``tritonclient`` pins protobuf < 7 (we need 7) and its own ``inference`` protos would
clash with ours in one process, so its scripts run in their own interpreter.

Created on first use and reused after: a stamp file records what was installed. It installs
exactly ``requirements.txt`` (hashed, written by ``make lock`` from ``requirements.in``) with the
uv of our own virtualenv.
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
STAMP = VENV / ".installed"
INSTALL_TIMEOUT = 240.0  # seconds; a first install downloads ~30 MB


class InteropVenvError(RuntimeError):
    """The interop virtualenv could not be created."""


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


def interop_python() -> Path:
    """The interpreter of ``.venv-interop``, creating the virtualenv if needed."""
    python = VENV / "bin" / "python"
    wanted = REQUIREMENTS.read_text(encoding="utf-8")
    VENV.parent.mkdir(parents=True, exist_ok=True)
    # Concurrent test runs would otherwise build the same directory at once. The lock lives
    # outside the venv (``--clear`` empties it) and outside the repo (nothing to commit).
    with open(Path(tempfile.gettempdir()) / "abgate-venv-interop.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if python.exists() and STAMP.exists() and STAMP.read_text() == wanted:
            return python
        _run(
            [str(UV), "venv", "--quiet", "--clear", "--python", sys.executable, str(VENV)],
            f"creating {VENV}",
        )
        _run(
            [str(UV), "pip", "sync", "--quiet", "--require-hashes", "--python", str(python),
             str(REQUIREMENTS)],
            f"installing {REQUIREMENTS.name} into {VENV}",
        )  # fmt: skip
        _run([str(python), "-c", "import tritonclient.grpc"], "importing tritonclient.grpc")
        STAMP.write_text(wanted)
        return python
