"""`abgate serve` and `abgate predict` as real processes: restarts, workers, signals, exit codes."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from abgate.client import GatewayClient, RpcFailure
from tests.conftest import DemoStore

pytestmark = pytest.mark.slow


def arms_for(
    target: str, users: list[str], row: np.ndarray, fresh_channels: bool = False
) -> dict[str, tuple[str, str]]:
    """user -> (arm, request id)."""
    out: dict[str, tuple[str, str]] = {}
    client = GatewayClient(target)
    try:
        for user in users:
            if fresh_channels:  # SO_REUSEPORT spreads connections, not calls, over workers
                client.close()
                client = GatewayClient(target)
            r = client.predict("demo", user, row)
            out[user] = (r["arm"], r["request_id"])
    finally:
        client.close()
    return out


async def _fetch(url: str, sql: str, *args: Any) -> list[Any]:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def test_same_arm_across_restart_and_workers(gateway_process: Any, demo_store: DemoStore) -> None:
    users = [f"user-{i}" for i in range(60)]
    row = demo_store.X[0]
    first = gateway_process()
    before = arms_for(first.target, users, row)
    rc, _ = first.stop()
    assert rc == 0
    again = gateway_process()
    after = arms_for(again.target, users, row)
    again.stop()
    assert {u: a for u, (a, _) in before.items()} == {u: a for u, (a, _) in after.items()}

    workers = gateway_process("--workers", "2")
    spread = arms_for(workers.target, users, row, fresh_channels=True)
    rc, out = workers.stop()
    assert rc == 0, out
    assert {u: a for u, (a, _) in spread.items()} == {u: a for u, (a, _) in before.items()}
    # Request ids are random: the log row names the worker (gateway id ...-w0, ...-w1).
    rids = [rid for _, rid in spread.values()]
    rows = asyncio.run(_fetch(gateway_process.database_url,
                              "SELECT DISTINCT gateway_id FROM predictions WHERE request_id ="
                              " ANY($1::text[])", rids))  # fmt: skip
    assert len(rows) == 2, "both worker processes should have served some connections"


def test_sigterm_drains_in_flight_calls(gateway_process: Any, demo_store: DemoStore) -> None:
    gp = gateway_process("--grace-seconds", "10")
    X = demo_store.X
    results: list[str] = []
    errors: list[str] = []
    started = threading.Event()

    def big_batches() -> None:
        with GatewayClient(gp.target, timeout=30) as client:
            for k in range(3):
                ids = [f"drain-{k}-{i}" for i in range(10_000)]
                rows = X[np.arange(10_000) % len(X)]
                started.set()
                try:
                    resp = client.predict_batch("demo", ids, rows)
                    results.append(str(len(resp.labels)))
                except RpcFailure as exc:
                    errors.append(str(exc))
                    return

    t = threading.Thread(target=big_batches)
    t.start()
    started.wait(10)
    time.sleep(0.05)
    gp.signal(signal.SIGTERM)
    t.join(60)
    rc, out = gp.stop()
    assert rc == 0, out
    # The call in flight at SIGTERM completed; later ones were refused, never cut half-way.
    assert results and results[0] == "10000", (results, errors)
    assert all("UNAVAILABLE" in e for e in errors), errors


def test_sighup_reloads_and_a_bad_file_keeps_serving(
    gateway_process: Any, demo_store: DemoStore, tmp_path: Path
) -> None:
    logreg = demo_store.metas["demo-logreg"].sha256
    gbdt = demo_store.metas["demo-gbdt"].sha256

    def write(version: int, w: float) -> None:
        (tmp_path / "e.json").write_text(
            json.dumps(
                {
                    "version": version,
                    "experiments": [
                        {
                            "name": "demo",
                            "arms": [
                                {"name": "control", "model": logreg, "weight": w},
                                {"name": "treatment", "model": gbdt, "weight": 100 - w},
                            ],
                        }
                    ],
                }
            )
        )

    write(1, 50)
    gp = gateway_process("--config", str(tmp_path / "e.json"), "--watch-interval", "0")
    row = demo_store.X[0]
    with GatewayClient(gp.target) as client:
        assert client.predict("demo", "u", row)["config_version"] == 1
        write(2, 0)
        gp.signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while client.predict("demo", "u", row)["config_version"] != 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.predict("demo", "someone", row)["arm"] == "treatment"
        (tmp_path / "e.json").write_text("{ broken")
        gp.signal(signal.SIGHUP)
        time.sleep(1.0)
        r = client.predict("demo", "u", row)
        assert r["config_version"] == 2
    rc, out = gp.stop()
    assert rc == 0
    assert "rejected, still serving version 2" in out


def test_unknown_model_in_config_is_a_usage_error(demo_store: DemoStore, tmp_path: Path) -> None:
    """Exit 2 (bad local input), in one line, before anything starts."""
    cfg = tmp_path / "e.json"
    cfg.write_text(
        json.dumps(
            {
                "version": 1,
                "experiments": [
                    {"name": "demo", "arms": [{"name": "a", "model": "0" * 64, "weight": 100}]}
                ],
            }
        )
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "abgate",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
            str(cfg),
            "--no-log-predictions",
            "--model-store",
            str(demo_store.root),
            "--state-dir",
            str(tmp_path / "s"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"abgate: error: --config {cfg}: experiments[0].arms[0].model: no model 000000000000… "
        f"in the store at {demo_store.root} (--model-store)"
    ]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_config_refused_after_start_exits_2(
    demo_store: DemoStore, tmp_path: Path, workers: str
) -> None:
    """A model whose bytes no longer match their sha256 is found only when the server loads
    it, after the CLI's checks: still exit 2 naming the file, and --workers does not restart
    workers that would fail the same way."""
    import shutil

    store = tmp_path / "store"
    shutil.copytree(demo_store.root, store)
    for obj in (store / "objects").glob("*.onnx"):
        obj.write_bytes(obj.read_bytes() + b"tampered")
    proc = subprocess.run(
        [sys.executable, "-m", "abgate", "serve", "--listen", "127.0.0.1:0",
         "--config", str(demo_store.config), "--model-store", str(store), "--no-log-predictions",
         "--state-dir", str(tmp_path / "s"), "--workers", workers, "--log-level", "CRITICAL"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    prefix = f"abgate: error: --config {demo_store.config}: "
    assert 1 <= len(lines) <= int(workers), lines  # one line from each worker that got there
    assert all(x.startswith(prefix) and "does not match its sha256" in x for x in lines), lines


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "abgate", *args], capture_output=True, text=True, timeout=60
    )


def test_predict_cli_output_and_exit_codes(gateway_process: Any, demo_store: DemoStore) -> None:
    gp = gateway_process()
    row = ",".join(str(v) for v in demo_store.X[0])
    ok = run_cli(
        "predict",
        "--target",
        gp.target,
        "--experiment",
        "demo",
        "--user",
        "alice",
        "--features",
        row,
        "--json",
    )
    assert ok.returncode == 0, ok.stderr
    answer = json.loads(ok.stdout)
    assert answer["arm"] in {"control", "treatment"}
    assert len(answer["model"]["sha256"]) == 64 and len(answer["scores"]) == 2
    text = run_cli(
        "predict",
        "--target",
        gp.target,
        "--experiment",
        "demo",
        "--user",
        "alice",
        "--features",
        row,
    )
    assert f"arm={answer['arm']}" in text.stdout

    missing = run_cli(
        "predict", "--target", gp.target, "--experiment", "nope", "--user", "a", "--features", row
    )
    assert missing.returncode == 1
    assert "NOT_FOUND" in missing.stderr and "nope" in missing.stderr
    short = run_cli(
        "predict",
        "--target",
        gp.target,
        "--experiment",
        "demo",
        "--user",
        "a",
        "--features",
        "1,2,3",
    )
    assert (
        short.returncode == 1 and "INVALID_ARGUMENT" in short.stderr and "features" in short.stderr
    )
    usage = run_cli(
        "predict", "--target", gp.target, "--experiment", "demo", "--user", "a", "--features", "1,x"
    )
    assert usage.returncode == 2 and "--features" in usage.stderr
    assert run_cli("predict", "--experiment", "demo").returncode == 2
    port = gp.target.rpartition(":")[2]
    for form in (f"dns:///127.0.0.1:{port}", f"ipv4:127.0.0.1:{port}", f"localhost:{port}"):
        via = run_cli("predict", "--target", form, "--experiment", "demo", "--user", "alice",
                      "--features", row, "--json")  # fmt: skip
        assert via.returncode == 0 and json.loads(via.stdout)["arm"] == answer["arm"], form
    no_port = run_cli("predict", "--target", "127.0.0.1", "--experiment", "demo", "--user", "a",
                      "--features", row)  # fmt: skip
    assert no_port.returncode == 2
    assert no_port.stderr == "abgate: error: --target '127.0.0.1' needs a port (HOST:PORT)\n"
    down = run_cli(
        "predict",
        "--target",
        "127.0.0.1:1",
        "--experiment",
        "demo",
        "--user",
        "a",
        "--features",
        row,
        "--timeout",
        "2",
    )
    assert down.returncode == 1 and "UNAVAILABLE" in down.stderr


def test_serve_usage_errors_and_busy_port(
    gateway_process: Any, demo_store: DemoStore, tmp_path: Path
) -> None:
    gp = gateway_process()
    common = [
        "--config", str(demo_store.config), "--model-store", str(demo_store.root),
        "--no-log-predictions", "--state-dir", str(tmp_path / "busy"),
    ]  # fmt: skip
    busy = run_cli("serve", "--listen", gp.target, *common)
    assert busy.returncode == 1 and "UNAVAILABLE" in busy.stderr and "cannot listen" in busy.stderr
    assert run_cli("serve", "--listen", "nope", *common).returncode == 2
    assert run_cli("serve", "--workers", "0", *common).returncode == 2
    bad_loop = run_cli("serve", "--event-loop", "tokio", *common)
    assert bad_loop.returncode == 2 and "tokio" in bad_loop.stderr
    nonexistent = run_cli("serve", "--listen", gp.target, "--config", "/nonexistent")
    assert nonexistent.returncode == 2


@pytest.mark.parametrize(
    ("flag", "loop"), [((), "uvloop"), (("--event-loop", "asyncio"), "asyncio")]
)
def test_gateway_runs_on_the_event_loop_chosen(
    gateway_process: Any, demo_store: DemoStore, flag: tuple[str, ...], loop: str
) -> None:
    """uvloop by default (it is a dependency on Linux), asyncio's own loop on request; both
    serve the same answers."""
    gp = gateway_process(*flag)
    with GatewayClient(gp.target) as client:
        assert client.predict("demo", "user-1", demo_store.X[0])["arm"] in {"control", "treatment"}
    code, out = gp.stop()
    assert code == 0 and f"(event loop {loop})" in out, out[-2000:]
