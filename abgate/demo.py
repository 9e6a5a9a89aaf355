"""``abgate demo``: the story so far, end to end on this machine.

Train and convert the demo models, start a real gateway (N workers on one port), route users with
the real ``abgate predict`` command, show stickiness and arm shares, then stop it with SIGTERM.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from abgate.client import GatewayClient, RpcFailure


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_serving(
    target: str, timeout: float = 60.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Block until the gateway's health service says SERVING."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {proc.returncode} before serving")
            try:
                resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"gateway at {target} not SERVING after {timeout:.0f}s")


def _abgate(*args: str) -> list[str]:
    return [sys.executable, "-m", "abgate", *args]


def run_demo(*, workdir: Path, users: int, workers: int) -> int:
    from converters.demo import load_demo_holdout, train_demo_models, write_demo_config
    from gateway.modelstore import ModelStore

    store_dir = workdir / "models"
    config_path = workdir / "experiments.toml"
    state_dir = workdir / "state"
    print(f"== 1. training and converting demo models into {store_dir}")
    metas = train_demo_models(ModelStore(store_dir))
    for m in metas:
        print(
            f"   {m.id:<12} v{m.version:<3} sha256={m.sha256[:12]}  {m.source:<45}"
            f" parity max|Δp|={m.parity_max_abs_diff:.1e} on {m.parity_rows} rows"
        )
    write_demo_config(config_path, metas)
    print(f"   experiments config: {config_path}")

    from abgate.db.embedded import EmbeddedPostgres

    pg = EmbeddedPostgres(workdir / "pg")
    database_url = pg.start()
    print(f"== 2. embedded PostgreSQL for the prediction log, data in {pg.data_dir}")
    port = free_port()
    target = f"127.0.0.1:{port}"
    print(f"== 3. starting the gateway: {workers} workers on {target}")
    cmd = _abgate(
        "--log-level",
        "WARNING",
        "serve",
        "--listen",
        target,
        "--config",
        str(config_path),
        "--model-store",
        str(store_dir),
        "--state-dir",
        str(state_dir),
        "--workers",
        str(workers),
        "--database-url",
        database_url,
    )
    print("   $ abgate " + " ".join(cmd[5:]))
    proc = subprocess.Popen(
        cmd, stderr=subprocess.DEVNULL if os.environ.get("ABGATE_DEMO_QUIET") else None
    )
    try:
        wait_serving(target, proc=proc)
        X, y = load_demo_holdout(store_dir)
        print(f"== 4. routing {users} users with `abgate predict` (each asked twice)")
        for i in range(users):
            user = f"user-{i + 1}"
            row = ",".join(f"{v:.6g}" for v in X[i])
            arms = []
            for _ in range(2):
                out = subprocess.run(
                    _abgate(
                        "predict",
                        "--target",
                        target,
                        "--experiment",
                        "demo",
                        "--user",
                        user,
                        "--features",
                        row,
                    ),
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                fields = dict(kv.split("=", 1) for kv in out.split() if "=" in kv)
                arms.append(fields["arm"])
            sticky = "sticky" if arms[0] == arms[1] else "NOT STICKY"
            print(
                f"   {user:<8} -> arm={arms[0]:<10} model={fields['model']:<15} "
                f"label={fields['label']} (truth {int(y[i])})  {sticky}"
            )
        print("== 5. arm shares over 20,000 users (PredictBatch) against the configured split")
        with GatewayClient(target) as client:
            counts: collections.Counter[str] = collections.Counter()
            for chunk in range(10):
                ids = [f"share-{chunk}-{j}" for j in range(2000)]
                rows = X[np.arange(2000) % len(X)]
                resp = client.predict_batch("demo-3way", ids, rows)
                names = [a.name for a in resp.arms]
                counts.update(names[k] for k in resp.arm_index)
        from gateway.config import load_config_file

        spec = {e.name: e for e in load_config_file(config_path).experiments}["demo-3way"]
        configured = {a.name: a.weight for a in spec.arms}
        for name, n in sorted(counts.items()):
            print(f"   demo-3way {name:<10} {n / 200:6.2f}%  (configured {configured[name]:.0f}%)")
    except (RuntimeError, TimeoutError, RpcFailure, subprocess.CalledProcessError) as exc:
        print(f"abgate: error: demo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        print("== 6. stopping the gateway with SIGTERM (drains calls, then flushes its log)")
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        print(f"   gateway exited with {rc}")
        try:
            n_logged = asyncio.run(_count_rows(database_url))
            print(f"   prediction log: {n_logged} rows in PostgreSQL (all runs of the demo so far)")
        finally:
            pg.stop()
    return 0 if rc == 0 else 1


async def _count_rows(url: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM predictions"))
    finally:
        await conn.close()
