"""``abgate loadtest``: usage errors, an unreachable target, output files, and a real gateway
logging to PostgreSQL whose rows must match the report."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from hdrh.histogram import HdrHistogram

from abgate.cli import main
from tests.conftest import REPO, DemoStore, InProcessGateway, free_port
from tests.loadtest.fakes import FakeServer


@pytest.mark.parametrize(
    "flags",
    [
        ["--rate", "0"],
        ["--rate", "-10"],
        [],  # open mode needs --rate
        ["--mode", "closed", "--rate", "100"],
        ["--mode", "closed", "--connections", "1", "--workers", "2"],
        ["--rate", "100", "--duration", "0"],
        ["--rate", "100", "--workers", "0"],
        ["--rate", "100", "--concurrency", "0"],
        ["--rate", "100", "--outcome-rate", "1.5"],
        ["--rate", "100", "--user-dist", "zipf", "--zipf-s", "0"],
        ["--rate", "100", "--outcomes"],  # random features have no labels
        ["--rate", "100", "--target", "no-port"],
        ["--rate", "100", "--plot", "/nonexistent/dir/p.png"],
    ],
)
def test_usage_errors_exit_2(flags: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["loadtest", "--features", "30", *flags]) == 2
    assert "abgate: error:" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags", [["--protocol", "rest"], ["--arrival", "bursty"], ["--rate", "fast"]]
)
def test_bad_choices_exit_2(flags: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["loadtest", "--features", "30", "--rate", "10", *flags])
    assert exc.value.code == 2


def test_missing_store_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["loadtest", "--rate", "10", "--model-store", str(tmp_path)]) == 2
    assert "no demo holdout" in capsys.readouterr().err


def test_unreachable_target_exits_1_with_the_status(capsys: pytest.CaptureFixture[str]) -> None:
    target = f"127.0.0.1:{free_port()}"
    code = main(["loadtest", "--target", target, "--features", "30", "--rate", "10",
                 "--connect-timeout", "0.5", "--quiet"])  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert "abgate: error: UNAVAILABLE:" in err and target in err


def test_failing_probe_exits_1_with_the_server_status(
    fake_server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["loadtest", "--target", fake_server.target, "--features", "30", "--rate", "10",
                 "--experiment", "nope", "--quiet"])  # fmt: skip
    assert code == 1
    assert "abgate: error: NOT_FOUND: unknown experiment 'nope'" in capsys.readouterr().err
    assert len(fake_server.predicts) == 1  # only the probe: no run of errors


def test_json_plot_and_histogram_files(
    fake_server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plot, hist = tmp_path / "latency.png", tmp_path / "latency.hdr"
    code = main(["loadtest", "--target", fake_server.target, "--features", "30",
                 "--rate", "300", "--duration", "1.5", "--warmup", "0.5", "--json",
                 "--plot", str(plot), "--histogram-out", str(hist), "--seed", "3"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0
    doc = json.loads(out)
    assert doc["config"]["rate"] == 300 and doc["config"]["workers"] == 1
    assert doc["config"]["protocol"] == "native" and doc["config"]["duration"] == 1.5
    assert doc["errors_total"] == 0 and doc["errors"] == {}
    assert doc["ok"] == doc["sent"] > 300
    lat = doc["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] <= lat["max"]
    assert doc["latency_basis"] == "intended" and doc["outcomes"]["sent"] == 0
    assert [s["t"] for s in doc["timeline"]][:2] == [1, 2] and doc["timeline"][0]["warmup"]
    assert "[   1s] sent" in err  # the progress line, once per second
    decoded = HdrHistogram.decode(hist.read_bytes().strip())
    assert decoded.get_total_count() == doc["ok"]
    assert abs(decoded.get_value_at_percentile(99) / 1000 - lat["p99"]) < 1e-9
    data = plot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_closed_mode_table(fake_server: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["loadtest", "--target", fake_server.target, "--features", "8", "--mode",
                 "closed", "--connections", "2", "--duration", "0.5", "--warmup", "0",
                 "--quiet"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "closed loop, 2 connections" in out and "latency (sent → answer)" in out
    assert "errors by status: none" in out


# -- a real gateway -----------------------------------------------------------------------
async def _count(url: str, sql: str, *args: Any) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval(sql, *args))
    finally:
        await conn.close()


def wait_count(url: str, sql: str, arg: str, want: int, timeout: float = 20.0) -> int:
    """Poll until the count reaches ``want`` (the log writer flushes in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        n = asyncio.run(_count(url, sql, arg))
        if n >= want or time.monotonic() > deadline:
            time.sleep(0.3)  # and make sure no more rows arrive than the report says
            return int(asyncio.run(_count(url, sql, arg)))
        time.sleep(0.1)


def test_against_a_real_gateway_rows_match_the_report(
    gateway: InProcessGateway, demo_store: DemoStore
) -> None:
    cmd = [sys.executable, "-m", "abgate", "loadtest", "--target", gateway.target,
           "--model-store", str(demo_store.root), "--experiment", "demo",
           "--rate", "200", "--arrival", "constant", "--duration", "2", "--warmup", "0.5",
           "--users", "500", "--user-dist", "zipf", "--outcomes", "--json", "--quiet"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["errors_total"] == 0 and doc["warmup"]["errors"] == {}
    assert doc["sent"] == doc["ok"] == 400
    assert abs(doc["achieved_rate"] - 200) <= 0.1 * 200
    served = doc["ok"] + doc["warmup"]["ok"]  # warm-up and probe requests are logged too
    answered = served - doc["warmup"]["probe"]  # every answer but the probe got an outcome
    assert doc["outcomes"] == {"sent": answered, "accepted": answered, "errors": {}}

    url = gateway.server.settings.database_url
    like = f"lt-{doc['run_id']}-%"
    logged = wait_count(
        url, "SELECT count(*) FROM predictions WHERE NOT shadow AND request_id LIKE $1",
        like, served,
    )  # fmt: skip
    assert logged == served
    outcomes = wait_count(
        url, "SELECT count(*) FROM outcomes WHERE source = 'loadtest' AND request_id LIKE $1",
        like, answered,
    )  # fmt: skip
    assert outcomes == answered
    # The outcomes are the holdout's true labels: the models agree with most of them.
    agree = asyncio.run(_count(url, (
        "SELECT count(*) FROM predictions p JOIN outcomes o USING (request_id) "
        "WHERE NOT p.shadow AND p.label = o.value AND p.request_id LIKE $1"), like))  # fmt: skip
    assert agree > 0.8 * answered


def test_oip_protocol_against_a_real_gateway(
    gateway: InProcessGateway, demo_store: DemoStore
) -> None:
    """The same tool drives the gateway's Open Inference Protocol endpoint, outcomes included
    (logged under the OIP request id)."""
    cmd = [sys.executable, "-m", "abgate", "loadtest", "--target", gateway.target,
           "--protocol", "oip", "--model-store", str(demo_store.root), "--experiment", "demo",
           "--rate", "100", "--arrival", "constant", "--duration", "1", "--warmup", "0.2",
           "--users", "200", "--outcomes", "--json", "--quiet"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["errors_total"] == 0 and doc["ok"] == 100
    served = doc["ok"] + doc["warmup"]["ok"]
    answered = served - doc["warmup"]["probe"]
    assert doc["outcomes"]["accepted"] == answered
    url = gateway.server.settings.database_url
    like = f"lt-{doc['run_id']}-%"
    logged = wait_count(
        url, "SELECT count(*) FROM predictions WHERE NOT shadow AND request_id LIKE $1",
        like, served,
    )  # fmt: skip
    assert logged == served
    paired = wait_count(
        url, "SELECT count(*) FROM outcomes o JOIN predictions p USING (request_id) "
        "WHERE o.request_id LIKE $1", like, answered,
    )  # fmt: skip
    assert paired == answered


def test_sigterm_stops_the_workers_load_with_it(fake_server: FakeServer) -> None:
    """SIGTERM to `abgate loadtest` ends its worker processes too: no request arrives after
    it exits (before, the workers went on sending for the rest of --duration)."""
    cmd = [sys.executable, "-m", "abgate", "loadtest", "--target", fake_server.target,
           "--features", "8", "--rate", "200", "--duration", "60", "--workers", "2",
           "--warmup", "0", "--quiet"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while len(fake_server.predicts) < 100:
        assert proc.poll() is None and time.monotonic() < deadline, "no load arrived"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 128 + signal.SIGTERM
    time.sleep(0.3)  # answers already in flight
    stopped = len(fake_server.predicts)
    time.sleep(1.5)  # 300 requests at the workers' rate
    assert len(fake_server.predicts) == stopped
