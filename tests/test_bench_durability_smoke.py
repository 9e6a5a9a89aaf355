"""benchmarks/bench_durability at a tiny size (one round, one second per h2load run, no warm-up)
against the test server: both modes run (the local one really with its write-ahead log, which
the bench checks), the report has the documented shape and its ratios are the ratios of its
medians. Timings are not compared (too noisy at this size)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks import bench_durability as bench
from tests.conftest import DemoStore

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("h2load") is None,
        reason="h2load not installed (Debian's nghttp2-client; .ci/run installs it)",
    ),
]


def test_bench_durability_tiny(demo_store: DemoStore, fresh_db: str, tmp_path: Path) -> None:
    out = tmp_path / "durability.json"
    argv = ["--rounds", "1", "--seconds", "1", "--warmup", "0", "--rate", "100"]
    args = bench.parse_args([*argv, "--database-url", fresh_db, "--out", str(out)])
    report = bench.run(args, store=demo_store.root, config=demo_store.config)
    out.write_text(json.dumps(report))
    assert json.loads(out.read_text())["rounds"] == 1

    assert set(report["modes"]) == {"memory", "local"}
    assert report["modes"]["local"]["args"] == ["--log-durability", "local"]
    for m in report["modes"].values():
        for key in ("p50_ms", "p99_ms", "open_req_per_s", "saturated_req_per_s"):
            (value,) = m[key]["runs"]
            assert value > 0 and m[key]["median"] == value
        assert m["p50_ms"]["median"] <= m["p99_ms"]["median"]
    r = report["ratios_local_over_memory"]
    local, memory = report["modes"]["local"], report["modes"]["memory"]
    for ratio, key in (("open_loop_p99", "p99_ms"), ("saturated_req_per_s", "saturated_req_per_s")):
        expected = local[key]["median"] / memory[key]["median"]
        assert r[ratio] == pytest.approx(expected, rel=1e-12)
    assert "local / memory" in bench.summary(report)
