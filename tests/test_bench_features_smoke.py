"""benchmarks/bench_features at a tiny size against a fresh test database: it runs end to end,
every configuration wrote every prediction row, capture off wrote no feature row, rate 1 one per
prediction and rate 0.1 the ids the hash picks, the report has its shape. Timings are not
compared (too noisy at this size)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import bench_features as bench
from gateway.hashing import feature_sampled, feature_threshold


def test_bench_features_tiny(fresh_db: str, tmp_path: Path) -> None:
    out = tmp_path / "features.json"
    n = 500
    report = bench.main(
        ["--rows", str(n), "--repeats", "2", "--batch", "50", "--log-batch-rows", "100",
         "--database-url", fresh_db, "--out", str(out)]
    )  # fmt: skip
    assert json.loads(out.read_text()) == report
    picked = sum(feature_sampled(r, feature_threshold(0.1)) for r in bench.Workload(n).request_ids)
    assert 0 < picked < n
    for mode in bench.MODES:
        by_rate = report["modes"][mode]
        assert set(by_rate) == {"none", "0", "0.1", "1"}
        assert by_rate["none"]["feature_rows"] == [0, 0]
        assert by_rate["0"]["feature_rows"] == [0, 0]
        assert by_rate["0.1"]["feature_rows"] == [picked, picked]
        assert by_rate["1"]["feature_rows"] == [n, n]
        assert by_rate["none"]["ratio"] == 1.0
        for r in by_rate.values():
            assert r["us_per_row"] > 0 and r["queue_us_per_row"] > 0 and r["ratio"] > 0
