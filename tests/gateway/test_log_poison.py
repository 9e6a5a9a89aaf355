"""No request can poison the prediction log: text PostgreSQL cannot store is refused at the edge
(native API and OIP V2, the field named), and a row the database refuses for any other reason
is isolated into ``dead_letters`` while every other row of its batch is written — on a flush
and on a spool replay, so neither the log nor the spool is ever blocked by one row."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import grpc
import numpy as np
import pytest

from abgate.db.migrate import migrate
from abgate.oip.v2 import grpc_predict_v2_pb2_grpc as oip_grpc
from abgate.v1 import gateway_pb2 as pb
from gateway import codec
from gateway.logwriter import LogWriter
from gateway.metrics import GatewayCollector
from gateway.pgsink import PostgresSink, refused_for_content
from gateway.spool import DEAD_LETTERS, Spool
from tests.conftest import DemoStore, InProcessGateway, execute_sql
from tests.gateway.test_logwriter import row
from tests.gateway.test_oip import infer_request
from tests.gateway.test_spool import drain_spool

INVALID = grpc.StatusCode.INVALID_ARGUMENT
OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
# The statement docs/operations.md gives for re-inserting dead-lettered predictions.
REINSERT_SQL = re.search(
    r"```sql\n(INSERT INTO predictions .*?)```", OPERATIONS.read_text(), re.S
).group(1)  # type: ignore[union-attr]


async def fetch(url: str, sql: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(url)
    try:
        return [dict(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


def id_counts(url: str, table: str) -> dict[str, int]:
    rows = asyncio.run(fetch(url, f"SELECT request_id, count(*) AS n FROM {table} GROUP BY 1"))
    return {r["request_id"]: r["n"] for r in rows}


def dead_letters(url: str) -> list[dict[str, Any]]:
    rows = asyncio.run(fetch(url, "SELECT * FROM dead_letters ORDER BY id"))
    for r in rows:
        r["content"] = json.loads(r["content"])
    return rows


def wait_until(check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def predict_request(rid: str, row: np.ndarray) -> pb.PredictRequest:
    features = codec.encode_tensor(row)
    return pb.PredictRequest(
        experiment="demo", user_id=f"user-{rid!r}", request_id=rid, features=features
    )


def batch_request(rids: list[str], rows: np.ndarray) -> pb.PredictBatchRequest:
    users = [f"user-{r!r}" for r in rids]
    features = codec.encode_tensor(rows)
    return pb.PredictBatchRequest(
        experiment="demo", user_ids=users, request_ids=rids, features=features
    )


def outcomes_request(*outcomes: tuple[str, str]) -> pb.RecordOutcomeRequest:
    return pb.RecordOutcomeRequest(
        outcomes=[pb.Outcome(request_id=r, value=1, source=s) for r, s in outcomes]
    )


def refused(method: Any, request: Any) -> str:
    """The details of a call that must fail with INVALID_ARGUMENT."""
    with pytest.raises(grpc.RpcError) as err:
        method(request, timeout=10)
    assert err.value.code() == INVALID, err.value.details()
    return str(err.value.details())


def test_nul_in_logged_text_is_refused_naming_the_field(
    gateway: InProcessGateway, demo_store: DemoStore
) -> None:
    """A NUL in a request id (Predict, PredictBatch, PredictStream, OIP ModelInfer) or in an
    outcome's request id or source is INVALID_ARGUMENT naming the field, and the innocent rows
    sent among those calls are all written: no batch went to the spool."""
    stub, oip = gateway.stub, oip_grpc.GRPCInferenceServiceStub(gateway.channel)
    X = demo_store.X
    nul = f"request_id: {codec.NUL_MESSAGE}"
    good: list[str] = []
    for i in range(10):
        good.append(f"good-{i}")
        stub.Predict(predict_request(f"good-{i}", X[i]), timeout=10)
        assert refused(stub.Predict, predict_request(f"bad\x00{i}", X[i])) == nul
        batch = [f"good-b{i}-0", f"bad-b{i}\x00", f"good-b{i}-2"]
        details = refused(stub.PredictBatch, batch_request(batch, X[:3]))
        assert details == f"request_ids[1]: {codec.NUL_MESSAGE}"
        # A stream answers each message; a bad one fails alone.
        rids = (f"good-s{i}-0", f"bad-s\x00{i}", f"good-s{i}-2")
        answers = list(
            stub.PredictStream(iter([predict_request(r, X[i]) for r in rids]), timeout=10)
        )
        assert [a.error_code for a in answers] == [0, INVALID.value[0], 0]
        assert answers[1].error_message == nul
        good += [rids[0], rids[2]]
        rows = X[i : i + 1]
        details = refused(oip.ModelInfer, infer_request(rows, f"u{i}", request_id=f"o\x00{i}"))
        assert details == f"id: {codec.NUL_MESSAGE}"
        good.append(
            oip.ModelInfer(infer_request(rows, f"u{i}", request_id=f"good-o{i}"), timeout=10).id
        )
        details = refused(
            stub.RecordOutcome, outcomes_request((f"good-{i}", ""), (f"good-{i}", "s\x00"))
        )
        assert details == f"outcomes[1].source: {codec.NUL_MESSAGE}"
        details = refused(stub.RecordOutcome, outcomes_request((f"good\x00{i}", "")))
        assert details == f"outcomes[0].request_id: {codec.NUL_MESSAGE}"
        stub.RecordOutcome(outcomes_request((f"good-{i}", "")), timeout=10)
    url = gateway.server.settings.database_url
    wait_until(lambda: len(id_counts(url, "predictions")) >= len(good))
    wait_until(lambda: len(id_counts(url, "outcomes")) >= 10)
    assert id_counts(url, "predictions") == dict.fromkeys(good, 1)
    assert id_counts(url, "outcomes") == {f"good-{i}": 1 for i in range(10)}
    for w in (gateway.server.logwriter, gateway.server.outcome_writer):
        assert w is not None
        c = w.counters
        assert (c.failed_flushes, c.spooled, c.dead_lettered, w.queued) == (0, 0, 0, 0)


def dead_lettered_metric(gw: InProcessGateway) -> dict[str, float]:
    """abgate_log_rows_dead_lettered_total per table, as /metrics exports it."""
    for family in GatewayCollector(gw.server).collect():
        if family.name == "abgate_log_rows_dead_lettered":
            return {s.labels["table"]: s.value for s in family.samples}
    raise AssertionError("abgate_log_rows_dead_lettered not exported")


def test_rows_the_database_refuses_are_dead_lettered_the_rest_written(
    gateway: InProcessGateway, demo_store: DemoStore
) -> None:
    """A constraint nobody foresaw (added by hand here) refuses some rows: every good row lands
    in its table exactly once, each refused one is in dead_letters with the reason, the
    counter counts them, nothing goes to the spool, and later traffic flows on."""
    url = gateway.server.settings.database_url
    for table, check in (("predictions", "request_id NOT LIKE 'poison-%'"),
                         ("outcomes", "source <> 'poison'")):  # fmt: skip
        sql = f"ALTER TABLE {table} ADD CONSTRAINT test_no_poison CHECK ({check})"
        asyncio.run(execute_sql(url, sql))
    stub, X = gateway.stub, demo_store.X
    good: list[str] = []
    poison: list[str] = []
    for i in range(5):
        # One call, one log batch: good rows and poisoned ones side by side.
        rids = [f"{'poison' if j % 10 == 3 else 'good'}-b{i}-{j}" for j in range(40)]
        stub.PredictBatch(batch_request(rids, X[:40]), timeout=10)
        for j in range(8):
            rid = f"{'poison' if j == 5 else 'good'}-{i}-{j}"
            stub.Predict(predict_request(rid, X[j]), timeout=10)
            rids.append(rid)
        good += [r for r in rids if r.startswith("good")]
        poison += [r for r in rids if r.startswith("poison")]
    sources = ["poison" if k % 7 == 0 else "labels" for k in range(len(good))]
    outcomes = [
        pb.Outcome(request_id=r, value=1, source=s) for r, s in zip(good, sources, strict=True)
    ]
    stub.RecordOutcome(pb.RecordOutcomeRequest(outcomes=outcomes), timeout=10)
    pw, ow = gateway.server.logwriter, gateway.server.outcome_writer
    assert pw is not None and ow is not None
    n_bad_outcomes = len(outcomes[::7])
    wait_until(lambda: pw.counters.dead_lettered == len(poison) and pw.queued == 0)
    wait_until(lambda: ow.counters.dead_lettered == n_bad_outcomes and ow.queued == 0)
    # The log is not blocked: rows sent after the poisoned ones are written as before.
    stub.Predict(predict_request("good-after", X[0]), timeout=10)
    good.append("good-after")
    wait_until(lambda: "good-after" in id_counts(url, "predictions"))

    assert id_counts(url, "predictions") == dict.fromkeys(good, 1)
    assert sorted(id_counts(url, "outcomes")) == sorted(
        o.request_id for o in outcomes if o.source == "labels"
    )
    letters = dead_letters(url)
    by_table = {t: [d for d in letters if d["log_table"] == t] for t in ("predictions", "outcomes")}
    assert sorted(d["content"]["request_id"] for d in by_table["predictions"]) == sorted(poison)
    assert sorted(d["content"]["request_id"] for d in by_table["outcomes"]) == sorted(
        o.request_id for o in outcomes[::7]
    )
    for d in letters:
        assert (d["sqlstate"], d["error"]) == ("23514", "CheckViolationError")
        assert "test_no_poison" in d["message"] and d["gateway_id"] == gateway.server.gateway_id
    # The whole row is kept: a prediction's columns, scores as float32 bytes.
    kept = by_table["predictions"][0]["content"]
    assert kept["experiment"] == "demo" and kept["shadow"] is False
    assert len(np.frombuffer(base64.b64decode(kept["scores"]["b64"]), "<f4")) == 2
    assert by_table["outcomes"][0]["content"]["source"] == "poison"
    assert dead_lettered_metric(gateway) == {
        "predictions": len(poison),
        "outcomes": n_bad_outcomes,
        "prediction_features": 0,  # capture is off in the demo config
    }
    for w in (pw, ow):
        assert (w.counters.spooled, w.counters.failed_flushes) == (0, 0)
        assert w.spool is not None and w.spool.segments() == []
    # Nothing is lost: once the cause is gone, docs/operations.md's statement puts them back,
    # every column as served (twice: replays add nothing).
    asyncio.run(execute_sql(url, "ALTER TABLE predictions DROP CONSTRAINT test_no_poison"))
    nul_letter = (  # as test_a_poisoned_spool_replays_around_its_bad_rows makes them
        "INSERT INTO dead_letters (log_table, content, error, message) VALUES "
        """('predictions', '{"request_id": "nul\\u0000"}', 'CharacterNotInRepertoireError', '')"""
    )
    asyncio.run(execute_sql(url, nul_letter))  # left out by the statement, not failing it
    for _ in range(2):
        asyncio.run(execute_sql(url, REINSERT_SQL))
    assert id_counts(url, "predictions") == dict.fromkeys(good + poison, 1)
    back = asyncio.run(fetch(url, "SELECT * FROM predictions WHERE request_id = 'poison-0-5'"))
    twin = asyncio.run(fetch(url, "SELECT * FROM predictions WHERE request_id = 'good-0-4'"))
    for column in ("experiment", "config_version", "arm", "model_sha256", "shadow", "status"):
        assert back[0][column] == twin[0][column], column
    (queued,) = [d["content"] for d in letters if d["content"]["request_id"] == "poison-0-5"]
    assert back[0]["ts"].timestamp() == pytest.approx(queued["ts"], abs=1e-6)
    scores = np.frombuffer(base64.b64decode(queued["scores"]["b64"]), "<f4")
    assert np.array_equal(np.asarray(back[0]["scores"], "<f4"), scores)


def test_a_poisoned_spool_replays_around_its_bad_rows(
    fresh_db: str, pg_url: str, tmp_path: Path
) -> None:
    """Rows spooled while the database was down, poisoned ones among them (a CHECK violation,
    a NUL an older gateway let through, a lone surrogate the gateway cannot even encode, one
    that dead_letters refuses too), replay after a restart: every good row once, each bad one
    dead-lettered (the last in the spool's dead-letters.jsonl), the spool emptied. Replaying
    the same spool again — through the staging path this time — adds nothing anywhere."""
    name = urlsplit(fresh_db).path.lstrip("/")
    spool_dir, kept = tmp_path / "spool", tmp_path / "kept"
    bad = {17: "poison-17", 230: "nul\x00230", 455: "sur\ud800455", 901: "poison-doomed"}
    rows = [row(i) if i not in bad else (bad[i], *row(i)[1:]) for i in range(1000)]

    async def outage() -> LogWriter:
        await migrate(fresh_db)
        for sql in (
            "ALTER TABLE predictions ADD CONSTRAINT test_no_poison "
            "CHECK (request_id NOT LIKE 'poison-%')",
            "ALTER TABLE dead_letters ADD CONSTRAINT test_refuse "
            "CHECK (content::text NOT LIKE '%doomed%')",
        ):
            await execute_sql(fresh_db, sql)
        await execute_sql(pg_url, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        w = LogWriter(PostgresSink(fresh_db), batch_rows=100, max_age=0.05, spool=Spool(spool_dir))
        await w.start()
        for i, r in enumerate(rows):
            w.append(r)
            if i % 100 == 0:
                await asyncio.sleep(0.01)
        await w.stop(timeout=30)
        await execute_sql(pg_url, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        return w

    w = asyncio.run(outage())
    assert w.counters.spooled == 1000 and w.counters.dead_lettered == 0
    shutil.copytree(spool_dir, kept)

    first = asyncio.run(drain_spool(fresh_db, spool_dir))  # a restarted gateway's writer
    assert Spool(spool_dir).segments() == [], "the poisoned spool must not stay blocked"
    good = [r[0] for i, r in enumerate(rows) if i not in bad]
    assert id_counts(fresh_db, "predictions") == dict.fromkeys(good, 1)
    assert first.counters.replayed == len(good) and first.counters.dead_lettered == len(bad)
    letters = {d["content"]["request_id"]: d for d in dead_letters(fresh_db)}
    assert sorted(letters) == sorted(["poison-17", "nul\x00230", "sur\ud800455"])
    assert (letters["poison-17"]["sqlstate"], letters["poison-17"]["error"]) == (
        "23514", "CheckViolationError",
    )  # fmt: skip
    assert letters["nul\x00230"]["sqlstate"] == "22021"  # invalid byte sequence: 0x00
    assert (letters["sur\ud800455"]["sqlstate"], letters["sur\ud800455"]["error"]) == (
        "", "UnicodeEncodeError",
    )  # fmt: skip
    assert letters["nul\x00230"]["content"]["ts"] == rows[230][1]  # the row as it was queued
    (doomed,) = [json.loads(line) for line in (spool_dir / DEAD_LETTERS).read_text().splitlines()]
    assert doomed["content"]["request_id"] == "poison-doomed" and doomed["sqlstate"] == "23514"
    assert "test_refuse" in doomed["dead_letters_error"]

    again = asyncio.run(drain_spool(fresh_db, kept))
    assert Spool(kept).segments() == [] and again.counters.staged_batches >= 1
    assert id_counts(fresh_db, "predictions") == dict.fromkeys(good, 1)
    assert len(dead_letters(fresh_db)) == 3  # each refused row recorded once


def test_only_refusals_for_content_are_dead_lettered() -> None:
    """Connection loss, timeouts, too many connections, a server shutting down or read-only, a
    missing table: the rows are fine, keep and retry them. Data and integrity errors, a
    trigger's RAISE, a value the gateway cannot encode: isolate."""
    exc = asyncpg.exceptions
    for keep in (exc.ConnectionDoesNotExistError, exc.TooManyConnectionsError,
                 exc.CannotConnectNowError, exc.AdminShutdownError, exc.QueryCanceledError,
                 exc.ReadOnlySQLTransactionError, exc.DiskFullError, exc.UndefinedTableError,
                 exc.InsufficientPrivilegeError, exc.DeadlockDetectedError,
                 exc.StatementTooComplexError):  # fmt: skip
        assert not refused_for_content(keep("x")), keep
    for other in (TimeoutError(), ConnectionResetError(), OSError(), asyncpg.InterfaceError("x")):
        assert not refused_for_content(other), other
    for isolate in (exc.CheckViolationError, exc.NotNullViolationError,
                    exc.CharacterNotInRepertoireError, exc.NumericValueOutOfRangeError,
                    exc.InvalidTextRepresentationError, exc.RaiseError,
                    exc.ProgramLimitExceededError):  # fmt: skip
        assert refused_for_content(isolate("x")), isolate
    assert refused_for_content(UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates"))
