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
        r = subprocess.run(
            [sys.executable, "-m", "abgate", "demo", "--quick", "--users", "2",
             "--workdir", str(tmp_path)],
            capture_output=True, text=True, timeout=500, env=env,
        )  # fmt: skip
        assert r.returncode == 0, (run, r.stdout[-3000:], r.stderr[-3000:])
        out = r.stdout
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
