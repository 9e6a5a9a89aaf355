"""Shadow mirroring through a real gateway: shadow rows land next to the served ones under the
same request id, sampling works, and a failing, slow or hung shadow model changes nothing for
clients (answers, latency, shutdown)."""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest

from abgate.client import GatewayClient
from abgate.errors import ConfigError
from gateway.config import parse_config
from tests.conftest import DemoStore, InProcessGateway, gateway_settings
from tests.evaluator.onnx_models import constant_model, faulty_model, register


def mirror_config(tmp_path: Path, demo_store: DemoStore, shadow_model: str, rate: float) -> Path:
    shas = {m.id: m.sha256 for m in demo_store.metas.values()}
    doc = {
        "version": 1,
        "experiments": [
            {
                "name": "mirror",
                "arms": [
                    {"name": "control", "model": shas["demo-logreg"], "weight": 50},
                    {"name": "treatment", "model": shas["demo-gbdt"], "weight": 50},
                ],
                "shadows": [{"name": "shadow", "model": shadow_model, "sample_rate": rate}],
            }
        ],
    }
    path = tmp_path / "mirror.json"
    path.write_text(json.dumps(doc))
    return path


async def _rows(url: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT request_id, arm, bucket, shadow, status, label FROM predictions"
        )
        return [dict(r) for r in rows]
    finally:
        await conn.close()


def wait_rows(url: str, predicate: Any, timeout: float = 20.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        rows = asyncio.run(_rows(url))
        if predicate(rows) or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def test_shadow_specs_are_validated() -> None:
    base = {"name": "e", "arms": [{"name": "a", "model": "m", "weight": 100}]}
    for shadows, message in (
        ([{"name": "a", "model": "m"}], "already an arm or shadow"),
        ([{"name": "s", "model": "m", "sample_rate": 1.5}], "between 0 and 1"),
        ([{"name": "s", "model": ""}], "must not be empty"),
        ({"name": "s"}, "must be a list"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_config({"version": 1, "experiments": [{**base, "shadows": shadows}]})
    spec = parse_config(
        {"version": 1, "experiments": [{**base, "shadows": [{"name": "s", "model": "m"}]}]}
    )
    assert spec.experiments[0].shadows[0].sample_rate == 1.0


def test_shadow_rows_share_the_request_id_of_the_answer(
    demo_store: DemoStore, tmp_path: Path, fresh_db: str
) -> None:
    sha = register(demo_store.root, tmp_path, "constant", constant_model(demo_store.X.shape[1]))
    config = mirror_config(tmp_path, demo_store, sha, 1.0)
    gw = InProcessGateway(gateway_settings(demo_store, tmp_path, fresh_db, config=config))
    try:
        answers = {}
        with GatewayClient(gw.target) as client:
            for i in range(200):
                r = client.predict("mirror", f"user-{i}", demo_store.X[i % len(demo_store.X)])
                answers[r["request_id"]] = r
            batch = client.predict_batch(
                "mirror", [f"b-{i}" for i in range(300)], demo_store.X[np.arange(300) % 100]
            )
        ids = set(answers) | set(batch.request_ids)
        rows = wait_rows(fresh_db, lambda rs: sum(r["shadow"] for r in rs) >= 500)
        served = {r["request_id"]: r for r in rows if not r["shadow"]}
        shadow = {r["request_id"]: r for r in rows if r["shadow"]}
        assert set(served) == set(shadow) == ids
        for rid, row in shadow.items():
            assert row["arm"] == "shadow" and row["status"] == 0 and row["label"] == 0
            assert row["bucket"] == served[rid]["bucket"]
        for rid, r in answers.items():
            assert served[rid]["arm"] == r["arm"] != "shadow"
        mirror = gw.server.mirror
        assert mirror is not None
        assert mirror.counters.run == 500 and mirror.counters.shed == 0
    finally:
        gw.close()


def test_sample_rate_mirrors_a_share_of_requests(
    demo_store: DemoStore, tmp_path: Path, fresh_db: str
) -> None:
    sha = register(demo_store.root, tmp_path, "constant", constant_model(demo_store.X.shape[1]))
    config = mirror_config(tmp_path, demo_store, sha, 0.25)
    gw = InProcessGateway(gateway_settings(demo_store, tmp_path, fresh_db, config=config))
    try:
        with GatewayClient(gw.target) as client:
            for i in range(800):
                client.predict("mirror", f"user-{i}", demo_store.X[i % len(demo_store.X)])
        mirror = gw.server.mirror
        assert mirror is not None
        c = mirror.counters
        deadline = time.monotonic() + 10
        while c.run < c.mirrored and time.monotonic() < deadline:
            time.sleep(0.05)
        assert 120 <= c.run == c.mirrored <= 280  # 800 × 0.25 = 200, ±5 sd
    finally:
        gw.close()


def test_failing_shadow_changes_nothing_for_clients(
    demo_store: DemoStore, tmp_path: Path, fresh_db: str
) -> None:
    sha = register(demo_store.root, tmp_path, "faulty", faulty_model(demo_store.X.shape[1]))
    config = mirror_config(tmp_path, demo_store, sha, 1.0)
    gw = InProcessGateway(gateway_settings(demo_store, tmp_path, fresh_db, config=config))
    try:
        with GatewayClient(gw.target) as client:
            for i in range(100):
                r = client.predict("mirror", f"user-{i}", demo_store.X[i % len(demo_store.X)])
                assert r["arm"] in {"control", "treatment"}
        rows = wait_rows(fresh_db, lambda rs: sum(r["shadow"] for r in rs) >= 100)
        shadow = [r for r in rows if r["shadow"]]
        assert len(shadow) == 100 and all(r["status"] == 13 for r in shadow)
        served = [r for r in rows if not r["shadow"]]
        assert len(served) == 100 and all(r["status"] == 0 for r in served)
        assert gw.server.mirror is not None and gw.server.mirror.counters.failed == 100
    finally:
        gw.close()


class _BlockingSession:
    """Stands in for an onnxruntime session that is slow (``delay``) or hangs (``None``)."""

    def __init__(self, delay: float | None) -> None:
        self.delay = delay
        self.release = threading.Event()
        self.calls = 0

    def run(
        self, outputs: Any, feeds: dict[str, np.ndarray], run_options: Any = None
    ) -> list[np.ndarray]:
        self.calls += 1
        if self.delay is None:
            self.release.wait()
        else:
            time.sleep(self.delay)
        n = next(iter(feeds.values())).shape[0]
        return [np.zeros(n, dtype=np.int64), np.full((n, 2), 0.5, dtype=np.float32)]


def _latencies(gw: InProcessGateway, X: np.ndarray, n: int) -> list[float]:
    out = []
    with GatewayClient(gw.target) as client:
        for i in range(n):
            t0 = time.perf_counter()
            client.predict("mirror", f"user-{i}", X[i % len(X)])
            out.append(time.perf_counter() - t0)
    return out


@pytest.mark.parametrize("delay", [0.05, None], ids=["slow", "hung"])
def test_slow_or_hung_shadow_changes_nothing_for_clients(
    demo_store: DemoStore, tmp_path: Path, fresh_db: str, delay: float | None
) -> None:
    sha = register(demo_store.root, tmp_path, "constant", constant_model(demo_store.X.shape[1]))
    config = mirror_config(tmp_path, demo_store, sha, 1.0)
    settings = gateway_settings(
        demo_store, tmp_path, fresh_db, config=config, shadow_queue_rows=50, shadow_timeout=0.2
    )
    gw = InProcessGateway(settings)
    fake = _BlockingSession(delay)
    try:
        baseline = statistics.median(_latencies(gw, demo_store.X, 100))
        snap = gw.server.dataplane.snapshot
        assert snap is not None and gw.server.mirror is not None
        c = gw.server.mirror.counters
        deadline = time.monotonic() + 5
        while c.run + c.failed + c.timed_out < c.mirrored and time.monotonic() < deadline:
            time.sleep(0.02)  # the baseline's shadow rows are all done
        run_before = c.run
        # Variant.run calls the run it bound at load (onnxruntime's binding): swap that.
        snap.experiments["mirror"].shadows[0].variant._run = fake.run  # type: ignore[misc]
        with_shadow = _latencies(gw, demo_store.X, 300)
        median = statistics.median(with_shadow)
        kind = "hung" if delay is None else f"{delay * 1e3:.0f} ms"
        print(
            f"\nmedian latency {baseline * 1e3:.2f} ms, {median * 1e3:.2f} ms with a {kind} shadow"
        )
        assert median < baseline + 0.005
        mirror = gw.server.mirror
        assert mirror is not None and fake.calls >= 1
        if delay is None:
            # The queue bound (50 rows) sheds the rest; nothing waits on the model.
            assert mirror.counters.shed > 0 and mirror.counters.run == run_before
        else:
            # A slow model keeps up by batching: every mirrored row is run or still queued.
            assert mirror.counters.run > 0
        assert mirror.queued_rows <= 50
        t0 = time.monotonic()
    finally:
        gw.close()
        fake.release.set()
    # Shutdown does not wait on a hung model for longer than the shadow stop timeout.
    assert time.monotonic() - t0 < 10
