"""Feature capture (issue #16) through a real gateway and a real PostgreSQL: the request features
of a sampled share of served predictions land in ``prediction_features`` exactly as sent, keyed
by request id, sampled by a hash of the request id (the same ids on every run), spooled while
the database is away and replayed once, and dropped by retention with their predictions."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import shutil
import time
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest

from abgate.db.embedded import EmbeddedPostgres
from abgate.db.partitions import drop_partitions_before
from abgate.errors import ConfigError
from abgate.oip.v2 import grpc_predict_v2_pb2_grpc as oip_grpc
from abgate.v1 import gateway_pb2 as pb
from gateway.config import parse_config
from gateway.hashing import feature_sampled, feature_threshold
from tests.conftest import DemoStore, InProcessGateway, gateway_settings
from tests.gateway.test_log_durability import kill_9_under_traffic, predict_call
from tests.gateway.test_oip import infer_request


def capture_config(demo_store: DemoStore, path: Path, rate: float) -> Path:
    """The demo experiments config with ``feature_sample_rate = rate`` on experiment "demo"."""
    text = demo_store.config.read_text()
    marked = text.replace('name = "demo"\n', f'name = "demo"\nfeature_sample_rate = {rate!r}\n', 1)
    assert marked != text
    path.write_text(marked)
    return path


def start(demo_store: DemoStore, tmp: Path, url: str, rate: float, **kw: Any) -> InProcessGateway:
    config = capture_config(demo_store, tmp / f"capture-{rate}.toml", rate)
    return InProcessGateway(gateway_settings(demo_store, tmp, url, config=config, **kw))


async def _fetch(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def fetch(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    return asyncio.run(_fetch(url, sql, *args))


def count(url: str, table: str) -> int:
    return int(fetch(url, f"SELECT count(*) AS n FROM {table}")[0]["n"])


def wait_rows(url: str, table: str, n: int, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        got = count(url, table)
        if got >= n or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def settle(gw: InProcessGateway) -> None:
    """Wait until every writer has nothing queued (then no more rows are coming)."""
    writers = (gw.server.logwriter, gw.server.feature_writer)
    deadline = time.monotonic() + 30
    while any(w is not None and w.queued for w in writers) and time.monotonic() < deadline:
        time.sleep(0.05)


def tensor(rows: np.ndarray) -> pb.Tensor:
    raw = np.ascontiguousarray(rows, dtype="<f4")
    return pb.Tensor(shape=list(raw.shape), raw=raw.tobytes())


def odd_rows(demo_store: DemoStore, n: int, seed: int) -> np.ndarray:
    """Demo rows nudged by float32 noise down to the last bit, subnormals included: any
    rounding on the way to the table would show."""
    rng = np.random.default_rng(seed)
    X = demo_store.X[np.arange(n) % len(demo_store.X)].astype(np.float32)
    noise = rng.standard_normal(X.shape).astype(np.float32) * np.float32(1e-3)
    rows = (X + noise).astype(np.float32)
    rows[0, 0] = np.float32(1e-40)  # subnormal
    rows[-1, -1] = np.float32(-0.0)
    return rows


def test_rate_0_writes_no_feature_rows(
    demo_store: DemoStore, tmp_path: Path, fresh_db: str
) -> None:
    gw = start(demo_store, tmp_path, fresh_db, 0.0)
    try:
        rows = odd_rows(demo_store, 200, 1)
        resp = gw.stub.PredictBatch(
            pb.PredictBatchRequest(
                experiment="demo", user_ids=[f"u{i}" for i in range(200)], features=tensor(rows)
            ),
            timeout=30,
        )
        for i in range(20):
            gw.stub.Predict(
                pb.PredictRequest(experiment="demo", user_id=f"s{i}", features=tensor(rows[i])),
                timeout=10,
            )
        assert wait_rows(fresh_db, "predictions", 220) == 220
        settle(gw)
        assert len(resp.request_ids) == 200
        fw = gw.server.feature_writer
        assert fw is not None and fw.queued == 0 and fw.counters.written == 0
    finally:
        gw.close()
    assert count(fresh_db, "prediction_features") == 0


def test_rate_1_writes_one_exact_row_per_served_prediction(
    demo_store: DemoStore, tmp_path: Path, fresh_db: str
) -> None:
    gw = start(demo_store, tmp_path, fresh_db, 1.0)
    sent: dict[str, np.ndarray] = {}
    try:
        rows = odd_rows(demo_store, 300, 2)
        # Predict
        for i in range(50):
            rid = f"single-{i}"
            gw.stub.Predict(
                pb.PredictRequest(
                    experiment="demo", user_id=f"p{i}", features=tensor(rows[i]), request_id=rid
                ),
                timeout=10,
            )
            sent[rid] = rows[i]
        # A retry of the same request id is the same prediction: no second row.
        gw.stub.Predict(
            pb.PredictRequest(
                experiment="demo", user_id="p0", features=tensor(rows[0]), request_id="single-0"
            ),
            timeout=10,
        )
        # PredictBatch: every row is its own prediction.
        batch = rows[50:250]
        resp = gw.stub.PredictBatch(
            pb.PredictBatchRequest(
                experiment="demo", user_ids=[f"b{i}" for i in range(200)], features=tensor(batch)
            ),
            timeout=30,
        )
        sent.update(zip(resp.request_ids, batch, strict=True))
        # PredictStream
        stream = [
            pb.PredictRequest(
                experiment="demo", user_id=f"st{i}", features=tensor(rows[250 + i]),
                request_id=f"stream-{i}",
            )
            for i in range(30)
        ]  # fmt: skip
        answers = list(gw.stub.PredictStream(iter(stream), timeout=30))
        assert [a.error_code for a in answers] == [0] * 30
        sent.update((f"stream-{i}", rows[250 + i]) for i in range(30))
        # OIP ModelInfer: one row, and many rows of one user.
        stub = oip_grpc.GRPCInferenceServiceStub(gw.channel)
        stub.ModelInfer(infer_request(rows[280:281], "o1", request_id="oip-one"), timeout=10)
        sent["oip-one"] = rows[280]
        stub.ModelInfer(infer_request(rows[281:300], "o2", request_id="oip-many"), timeout=10)
        sent.update((f"oip-many:{i}", rows[281 + i]) for i in range(19))
        assert wait_rows(fresh_db, "prediction_features", len(sent)) == len(sent)
        settle(gw)
    finally:
        gw.close()
    got = fetch(
        fresh_db,
        "SELECT f.request_id, f.features, f.arm = p.arm AS same_arm, f.ts = p.ts AS same_ts, "
        "f.experiment FROM prediction_features f JOIN predictions p USING (request_id)",
    )
    assert len(got) == len(sent) == count(fresh_db, "predictions")
    assert {r["request_id"] for r in got} == set(sent)
    for r in got:
        assert r["same_arm"] and r["same_ts"] and r["experiment"] == "demo"
        stored = np.asarray(r["features"], dtype=np.float64).astype(np.float32)
        expected = sent[r["request_id"]]
        assert stored.tobytes() == expected.tobytes(), r["request_id"]  # bit for bit, -0 too


def test_rate_0_1_samples_a_binomial_share_and_the_same_ids_every_run(
    demo_store: DemoStore, tmp_path: Path, fresh_db: str
) -> None:
    n, rate = 5000, 0.1
    rids = [f"req-{i:05d}" for i in range(n)]
    users = [f"user-{i}" for i in range(n)]
    rows = odd_rows(demo_store, n, 3)

    def captured() -> set[str]:
        return {
            r["request_id"] for r in fetch(fresh_db, "SELECT request_id FROM prediction_features")
        }

    # Run 1: PredictBatch.
    gw = start(demo_store, tmp_path, fresh_db, rate)
    try:
        for lo in range(0, n, 1000):
            gw.stub.PredictBatch(
                pb.PredictBatchRequest(
                    experiment="demo", user_ids=users[lo : lo + 1000],
                    request_ids=rids[lo : lo + 1000], features=tensor(rows[lo : lo + 1000]),
                ),
                timeout=60,
            )  # fmt: skip
        assert wait_rows(fresh_db, "predictions", n) == n
        settle(gw)
    finally:
        gw.close()
    first = captured()
    # Binomial(5000, 0.1): mean 500, sd 21.2; ±5 sd is a false failure once in ~3.5 million.
    sd = math.sqrt(n * rate * (1 - rate))
    assert abs(len(first) - n * rate) <= 5 * sd, len(first)
    # The rule is the published hash of the request id, nothing else.
    threshold = feature_threshold(rate)
    assert first == {r for r in rids if feature_sampled(r, threshold)}

    # Run 2: a new gateway, the same request ids, through PredictStream this time.
    fetch(fresh_db, "TRUNCATE predictions, prediction_features")
    gw = start(demo_store, tmp_path, fresh_db, rate)
    try:
        stream = (
            pb.PredictRequest(
                experiment="demo", user_id=users[i], features=tensor(rows[i]), request_id=rids[i]
            )
            for i in range(n)
        )
        answers = list(gw.stub.PredictStream(stream, timeout=120))
        assert sum(a.error_code == 0 for a in answers) == n
        assert wait_rows(fresh_db, "predictions", n) == n
        settle(gw)
    finally:
        gw.close()
    assert captured() == first


def test_database_down_then_up_spools_and_replays_feature_rows_once(
    demo_store: DemoStore, tmp_path: Path
) -> None:
    pg = EmbeddedPostgres(tmp_path / "pg")
    url = pg.start()
    try:
        _down_then_up(demo_store, tmp_path, pg, url)
    finally:
        pg.stop()


def _down_then_up(demo_store: DemoStore, tmp_path: Path, pg: EmbeddedPostgres, url: str) -> None:
    n = 400
    rows = odd_rows(demo_store, n, 4)
    saved = tmp_path / "saved-spool"
    gw = start(demo_store, tmp_path, url, 1.0, log_batch_rows=100)
    try:
        fw = gw.server.feature_writer
        assert fw is not None and fw.spool is not None
        gw.call(fw.connected())
        pg.stop()
        rids = []
        for lo in range(0, n, 100):
            resp = gw.stub.PredictBatch(
                pb.PredictBatchRequest(
                    experiment="demo", user_ids=[f"u{i}" for i in range(lo, lo + 100)],
                    features=tensor(rows[lo : lo + 100]),
                ),
                timeout=30,
            )  # fmt: skip
            rids.extend(resp.request_ids)
        deadline = time.monotonic() + 30
        while fw.counters.spooled < n and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fw.counters.spooled == n and fw.counters.failed_flushes > 0
        # Keep a copy of the spooled segments, to replay them a second time below.
        shutil.copytree(fw.spool.root, saved, ignore=shutil.ignore_patterns("wal"))
        pg.start()  # same data directory: the writers reconnect and replay by themselves
        assert wait_rows(url, "prediction_features", n) == n
        deadline = time.monotonic() + 30
        while fw.spool.pending and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not fw.spool.pending and fw.counters.replayed == n
    finally:
        gw.close()
    got = fetch(url, "SELECT request_id, features FROM prediction_features")
    assert len(got) == n and {r["request_id"] for r in got} == set(rids)
    by_id = dict(zip(rids, rows, strict=True))
    for r in got:
        stored = np.asarray(r["features"], dtype=np.float64).astype(np.float32)
        assert stored.tobytes() == by_id[r["request_id"]].tobytes()

    # The same segments again (a crash after the commit, before the segment was deleted): a
    # gateway starting on them replays them, and no row is stored twice.
    spool_dir = tmp_path / "state" / "spool" / "main" / "prediction_features"
    for segment in saved.glob("seg-*.spool"):
        shutil.copy(segment, spool_dir / segment.name)
    gw = start(demo_store, tmp_path, url, 1.0)
    try:
        fw = gw.server.feature_writer
        assert fw is not None and fw.spool is not None
        deadline = time.monotonic() + 30
        while (fw.spool.pending or fw.counters.duplicates < n) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fw.counters.duplicates == n and fw.counters.written == 0
    finally:
        gw.close()
    assert count(url, "prediction_features") == n


def test_retention_drops_the_features_partition_with_the_predictions_partition(
    demo_store: DemoStore, tmp_path: Path, fresh_db: str
) -> None:
    gw = start(demo_store, tmp_path, fresh_db, 1.0)
    try:
        rows = odd_rows(demo_store, 100, 5)
        gw.stub.PredictBatch(
            pb.PredictBatchRequest(
                experiment="demo", user_ids=[f"u{i}" for i in range(100)], features=tensor(rows)
            ),
            timeout=30,
        )
        assert wait_rows(fresh_db, "prediction_features", 100) == 100
        settle(gw)
    finally:
        gw.close()
    today = dt.datetime.now(dt.UTC).date()
    where = fetch(
        fresh_db,
        "SELECT DISTINCT tableoid::regclass::text AS p FROM prediction_features UNION "
        "SELECT DISTINCT tableoid::regclass::text FROM predictions",
    )
    # The gateway created the day's partition of both tables; the rows are in them.
    days = {today, today + dt.timedelta(days=1)}  # a run across midnight
    assert {r["p"] for r in where} <= {
        f"{t}_{d:%Y%m%d}" for t in ("predictions", "prediction_features") for d in days
    }

    async def drop() -> list[str]:
        conn = await asyncpg.connect(fresh_db)
        try:
            return await drop_partitions_before(conn, today + dt.timedelta(days=1))
        finally:
            await conn.close()

    tomorrow = dt.datetime.combine(today + dt.timedelta(days=1), dt.time(), dt.UTC)
    later = int(
        fetch(fresh_db, "SELECT count(*) AS n FROM predictions WHERE ts >= $1", tomorrow)[0]["n"]
    )
    dropped = asyncio.run(drop())
    assert f"prediction_features_{today:%Y%m%d}" in dropped
    assert f"predictions_{today:%Y%m%d}" in dropped
    # Both tables lose the day together (only rows written past midnight remain: normally none).
    assert count(fresh_db, "predictions") == count(fresh_db, "prediction_features") == later


def test_config_file_format_takes_and_checks_the_rate() -> None:
    arms = [{"name": "a", "model": "m", "weight": 100}]
    doc = {"version": 1, "experiments": [{"name": "e", "arms": arms, "feature_sample_rate": 0.3}]}
    config = parse_config(doc)
    assert config.experiments[0].feature_sample_rate == 0.3
    assert parse_config(config.to_dict()) == config  # round trip (persisted snapshots)
    off = parse_config({"version": 1, "experiments": [{"name": "e", "arms": arms}]})
    assert off.experiments[0].feature_sample_rate == 0.0
    for bad in (1.01, -1, math.nan, "0.5", True):
        doc["experiments"][0]["feature_sample_rate"] = bad  # type: ignore[index]
        with pytest.raises(ConfigError, match="feature_sample_rate"):
            parse_config(doc)


@pytest.mark.slow
def test_kill_9_in_local_mode_loses_no_answered_feature_row(
    gateway_process: Any, demo_store: DemoStore, tmp_path: Path
) -> None:
    """--log-durability local: a captured row is fsynced before its answer leaves, like its
    prediction row; after kill -9 and a restart on the same state directory every answered
    request's features are in PostgreSQL exactly once."""
    config = capture_config(demo_store, tmp_path / "capture-local.toml", 1.0)
    args = ("--config", str(config), "--log-durability", "local", "--log-batch-rows", "200",
            "--log-max-age", "0.2")  # fmt: skip
    gp = gateway_process(*args)
    answered = kill_9_under_traffic(gp, predict_call(demo_store.X[0]), 2.0)
    gateway_process(*args)  # same state dir: replays both local logs
    url = gateway_process.database_url
    deadline = time.monotonic() + 20
    while True:
        got = fetch(url, "SELECT request_id FROM prediction_features")
        ids = {r["request_id"] for r in got}
        if set(answered) <= ids or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(answered) > 100
    assert set(answered) <= ids, f"{len(set(answered) - ids)} answered feature rows lost"
    assert len(got) == len(ids), "a replayed feature row was stored twice"
