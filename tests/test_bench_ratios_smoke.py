"""benchmarks/ratios (what `make bench` runs) at a tiny size: one round of one-second runs, MLServer
built into .venv-mlserver from its hashed lock and serving the same pipeline as the gateway
(ratios.run checks their probabilities agree). Every ratio of the table is there, is the ratio
of the two figures it names, and has its target; the Markdown names each figure. Timings are not
compared (too noisy at this size)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from benchmarks import ratios

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("h2load") is None,
        reason="h2load not installed (Debian's nghttp2-client; .ci/run installs it)",
    ),
]


def test_ratios_report_has_every_target_measured_side_by_side(tmp_path: Path) -> None:
    argv = ["--duration", "1", "--warmup", "0", "--rounds", "1", "--copy-rows", "20000"]
    assert ratios.main([*argv, "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "ratios.json").read_text())
    # Every target, plus the one-row-a-message stream reported beside its multi-row one.
    assert set(report["ratios"]) == {t.key for t in ratios.TARGETS} | {"row_stream_vs_batch"}
    assert report["ratios"]["row_stream_vs_batch"]["value"] > 0
    for t in ratios.TARGETS:
        r = report["ratios"][t.key]
        num, den = r["numerator"]["value"], r["denominator"]["value"]
        assert num > 0 and den > 0, t.key
        assert math.isclose(r["value"], num / den, rel_tol=1e-12), t.key
        assert r["target"] == f"{t.op} {t.bound:g}"
        assert r["met"] == (r["value"] >= t.bound if t.op == ">=" else r["value"] <= t.bound)
    runs = report["runs"]
    assert set(runs["saturated"]) == {"bare-uvloop", "gateway", "gateway-oip", "mlserver"}
    assert set(runs["rows"]) == {"gateway-batch", "gateway-batch-nolog", "copy", "batch-stream",
                                 "stream"}  # fmt: skip
    assert runs["at_mlserver_rate"]["rate"] == runs["saturated"]["mlserver"]["req_per_s"]
    assert report["settings"]["mlserver"] == "1.7.1"
    text = (tmp_path / "ratios.md").read_text()
    for t in ratios.TARGETS:
        assert t.figure in text


def test_ratios_refuses_bad_usage_and_a_missing_load_tool(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exc:
        ratios.main(["--rounds", "0"])
    assert exc.value.code == 2
    assert ratios.main(["--h2load", "no-such-h2load"]) == ratios.EXIT_USAGE
    assert "nghttp2-client" in capsys.readouterr().err
