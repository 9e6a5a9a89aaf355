"""The interop virtualenv ``.venv-interop``: real third-party clients that cannot live in
``.venv``. ``tritonclient`` pins protobuf < 7 (we need 7) and its own ``inference`` protos would
clash with ours in one process, so its scripts run in their own interpreter.

Created on first use and reused after: a stamp file records what was installed.
"""

from __future__ import annotations

import fcntl
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".venv-interop"
REQUIREMENTS = ("tritonclient[grpc]", "numpy")
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
    wanted = "\n".join(REQUIREMENTS) + "\n"
    VENV.parent.mkdir(parents=True, exist_ok=True)
    # Concurrent test runs would otherwise build the same directory at once. The lock lives
    # outside the venv (``--clear`` empties it) and outside the repo (nothing to commit).
    with open(Path(tempfile.gettempdir()) / "abgate-venv-interop.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if python.exists() and STAMP.exists() and STAMP.read_text() == wanted:
            return python
        _run([sys.executable, "-m", "venv", "--clear", str(VENV)], f"creating {VENV}")
        _run(
            [str(python), "-m", "pip", "install", "-q", *REQUIREMENTS],
            f"installing {', '.join(REQUIREMENTS)} into {VENV}",
        )
        _run([str(python), "-c", "import tritonclient.grpc"], "importing tritonclient.grpc")
        STAMP.write_text(wanted)
        return python
