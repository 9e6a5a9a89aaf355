"""`abgate demo --quick` as a new user runs it: the whole story ends with a promoted winner,
its verdict written, and everything stopped — twice in the same work directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.timeout(600)
def test_demo_story_twice(tmp_path: Path) -> None:
    env = {**os.environ, "ABGATE_DEMO_QUIET": "1"}
    for run in range(2):
        cmd = [sys.executable, "-m", "abgate", "demo", "--quick", "--users", "2",
               "--workdir", str(tmp_path)]  # fmt: skip
        if run == 0:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=500, env=env)
            assert r.returncode == 0, (run, r.stdout[-3000:], r.stderr[-3000:])
            out = r.stdout
        else:
            out = _kept([*cmd, "--keep"], env)
        assert "dashboard: http://127.0.0.1:" in out
        assert "sticky" in out and "NOT STICKY" not in out
        assert "status: promoted" in out and "gateway exited with 0" in out
        assert "evaluator exited with 0" in out
        # Every process it starts is shown; none takes a secret on its command line (`ps`).
        started = [line for line in out.splitlines() if line.strip().startswith("$ abgate ")]
        assert len(started) >= 2 and not any("token" in line for line in started), started
        # The live line shows the SRM check and the guardrails as they are evaluated.
        assert "SRM p=" in out and "guardrails: ok (errors 0/" in out
        # It ends with the report's paths and the verdict JSON.
        html = next(line.split("report: ", 1)[1] for line in out.splitlines() if "report: " in line)
        assert Path(html).parent == tmp_path / "report" and Path(html).stat().st_size > 10_000
        assert Path(html).with_suffix(".pdf").read_bytes().startswith(b"%PDF")
        assert out.index("report: ") < out.index("verdict (") < out.index("== 10. stopping")
        verdict = json.loads((tmp_path / "verdict.json").read_text())
        assert verdict["winner"] == "treatment"
        assert verdict["recommendation"].startswith("promote treatment")
        assert verdict["ci"][0] > 0
    # Nothing the demo started is left running.
    left = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert left.stdout.strip() == ""


def _kept(cmd: list[str], env: dict[str, str]) -> str:
    """``demo --keep``: once the story is told it keeps running; the dashboard link it printed
    serves the page, its token the API; Ctrl-C (SIGINT) then stops everything cleanly."""
    import re
    import signal
    import urllib.request

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)  # fmt: skip
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("== running until Ctrl-C"):
                break
        out = "".join(lines)
        link = re.search(r"dashboard: (http://127\.0\.0\.1:\d+)/#token=([0-9a-f]+)", out)
        assert link, out[-3000:]
        with urllib.request.urlopen(link[1] + "/", timeout=30) as r:
            assert b"/static/app.js" in r.read()
        req = urllib.request.Request(link[1] + "/api/v1/experiments")
        req.add_header("Authorization", f"Bearer {link[2]}")
        with urllib.request.urlopen(req, timeout=30) as r:
            names = [e["definition"]["name"] for e in json.loads(r.read())["experiments"]]
        assert names, names
        assert proc.poll() is None  # still running
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, (out[-2000:], rest[-2000:], err[-3000:])
    return out + rest
