"""Incremental aggregation on a real PostgreSQL: any interleaving of predictions, outcomes
(before or after their prediction) and ticks gives exactly the totals of one full pass."""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

import asyncpg
import pytest

from abgate.db.migrate import migrate
from evaluator.aggregate import aggregate, arm_totals, reset

INSERT_PREDICTION = (
    "INSERT INTO predictions (request_id, ts, experiment, config_version, bucket, hash_version,"
    " arm, model_id, model_version, model_sha256, label, scores, latency_us, shadow,"
    " gateway_id, status) VALUES ($1, now(), $2, $3, 0, 1, $4, 'm', '1', $5, $6, $7, $8, $9,"
    " 'gw', $10)"
)


def expected(preds: list[dict[str, Any]], outcomes: list[tuple[str, float, str]]) -> dict[str, Any]:
    """What one full pass should give, computed in Python (scores are float32 in the table:
    sums agree to 1e-5 relative)."""
    out: dict[str, dict[str, float]] = {}
    by_id = {p["rid"]: p for p in preds if not p["shadow"]}
    for p in by_id.values():
        a = out.setdefault(p["arm"], dict.fromkeys(
            ("served", "errors", "score_sum", "outcome_n", "outcome_sum", "outcome_sumsq",
             "correct"), 0.0))  # fmt: skip
        a["served"] += 1
        if p["status"]:
            a["errors"] += 1
        else:
            a["score_sum"] += p["scores"][1]
    for rid, value, _source in outcomes:
        p = by_id.get(rid)
        if p is None or p["status"]:
            continue
        a = out[p["arm"]]
        a["outcome_n"] += 1
        a["outcome_sum"] += value
        a["outcome_sumsq"] += value * value
        a["correct"] += value == p["label"]
    return out


def observed(totals: dict[str, Any]) -> dict[str, Any]:
    return {
        arm: {
            "served": t.served,
            "errors": t.errors,
            "score_sum": t.score_sum,
            "outcome_n": t.outcome_n,
            "outcome_sum": t.outcome_sum,
            "outcome_sumsq": t.outcome_sumsq,
            "correct": t.correct,
        }
        for arm, t in totals.items()
    }


def close(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].keys() == b[k].keys()
        and all(abs(a[k][f] - b[k][f]) <= 1e-5 * max(1.0, abs(b[k][f])) for f in a[k])
        for k in a
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_interleaved_ticks_equal_one_full_pass(fresh_db: str, seed: int) -> None:
    rng = random.Random(seed)

    async def run() -> None:
        await migrate(fresh_db)
        conn = await asyncpg.connect(fresh_db)
        try:
            preds: list[dict[str, Any]] = []
            outcomes: list[tuple[str, float, str]] = []
            pending_outcomes: list[str] = []
            for step in range(60):
                # A few predictions; some outcomes arrive before their prediction is logged.
                for _ in range(rng.randint(0, 20)):
                    rid = f"r{len(preds)}"
                    p = {
                        "rid": rid,
                        "arm": rng.choice(["control", "treatment"]),
                        "label": rng.randint(0, 1),
                        "scores": [0.0, rng.random()],
                        "latency": rng.randint(50, 5000),
                        "shadow": rng.random() < 0.1,
                        "status": 13 if rng.random() < 0.05 else 0,
                        "version": 1 + step // 20,
                    }
                    p["scores"][0] = 1 - p["scores"][1]
                    if rng.random() < 0.2:
                        pending_outcomes.append(rid)  # its outcome is written first
                        value = float(rng.randint(0, 1))
                        await conn.execute(
                            "INSERT INTO outcomes (request_id, value, source) VALUES ($1, $2, '')",
                            rid,
                            value,
                        )
                        outcomes.append((rid, value, ""))
                    preds.append(p)
                    await conn.execute(
                        INSERT_PREDICTION, rid, "exp", p["version"], p["arm"], "a" * 64,
                        p["label"], p["scores"], p["latency"], p["shadow"], p["status"],
                    )  # fmt: skip
                # Outcomes for earlier predictions, some from a second source.
                for p in rng.sample(preds, min(len(preds), rng.randint(0, 8))):
                    source = rng.choice(["", "", "audit"])
                    if any(o[0] == p["rid"] and o[2] == source for o in outcomes):
                        continue
                    value = float(rng.randint(0, 1))
                    await conn.execute(
                        "INSERT INTO outcomes (request_id, value, source) VALUES ($1, $2, $3)",
                        p["rid"],
                        value,
                        source,
                    )
                    outcomes.append((p["rid"], value, source))
                if rng.random() < 0.4:
                    await aggregate(conn, settle=0.0, now=time.time() + 1)
            await aggregate(conn, settle=0.0, now=time.time() + 1)
            incremental = observed(await arm_totals(conn, "exp"))
            want = expected(preds, outcomes)
            assert close(incremental, want), (incremental, want)
            # A full pass from scratch gives the same totals.
            await reset(conn)
            await aggregate(conn, settle=0.0, now=time.time() + 1)
            assert close(observed(await arm_totals(conn, "exp")), want)
            # Versions can be selected (SRM counts since the split changed).
            since = await arm_totals(conn, "exp", since_version=3)
            late = [p for p in preds if not p["shadow"] and p["version"] >= 3]
            assert sum(t.served for t in since.values()) == len(late) > 0
            # Latency histogram covers every non-shadow row.
            totals = await arm_totals(conn, "exp")
            assert sum(sum(t.latency.values()) for t in totals.values()) == sum(
                1 for p in preds if not p["shadow"]
            )
        finally:
            await conn.close()

    asyncio.run(run())


def test_rows_inside_the_settle_window_wait_for_the_next_tick(fresh_db: str) -> None:
    async def run() -> None:
        await migrate(fresh_db)
        conn = await asyncpg.connect(fresh_db)
        try:
            await conn.execute(
                INSERT_PREDICTION, "r1", "exp", 1, "control", "a" * 64, 1, [0.2, 0.8], 100,
                False, 0,
            )  # fmt: skip
            first = await aggregate(conn, settle=60.0)
            assert first.prediction_seq == 0 and await arm_totals(conn, "exp") == {}
            second = await aggregate(conn, settle=0.0, now=time.time() + 1)
            assert second.prediction_seq > 0
            totals = await arm_totals(conn, "exp")
            assert totals["control"].served == 1
            assert totals["control"].latency_quantile_us(0.99) >= 100
            assert (
                totals["control"].slower_than(50) == 1 and totals["control"].slower_than(200) == 0
            )
        finally:
            await conn.close()

    asyncio.run(run())


@pytest.mark.parametrize("seed", [0, 1])
def test_shadow_pairs_are_counted_once_whatever_arrives_first(fresh_db: str, seed: int) -> None:
    from evaluator.aggregate import shadow_totals

    rng = random.Random(seed)

    async def run() -> None:
        await migrate(fresh_db)
        conn = await asyncpg.connect(fresh_db)
        try:
            events: list[tuple[str, str, Any]] = []
            truth: dict[str, dict[str, Any]] = {}
            for i in range(150):
                rid = f"q{i}"
                t = {
                    "pl": rng.randint(0, 1), "sl": rng.randint(0, 1),
                    "sst": 13 if rng.random() < 0.1 else 0, "outcome": None,
                }  # fmt: skip
                events += [("primary", rid, None), ("shadow", rid, None)]
                if rng.random() < 0.7:
                    t["outcome"] = float(rng.randint(0, 1))
                    events.append(("outcome", rid, t["outcome"]))
                truth[rid] = t
            rng.shuffle(events)
            for kind, rid, value in events:
                t = truth[rid]
                if kind == "outcome":
                    await conn.execute(
                        "INSERT INTO outcomes (request_id, value) VALUES ($1, $2)", rid, value
                    )
                else:
                    shadow = kind == "shadow"
                    await conn.execute(
                        INSERT_PREDICTION, rid, "exp", 1, "s1" if shadow else "control",
                        "a" * 64, t["sl"] if shadow else t["pl"], [0.5, 0.5], 100, shadow,
                        t["sst"] if shadow else 0,
                    )  # fmt: skip
                if rng.random() < 0.1:
                    await aggregate(conn, settle=0.0, now=time.time() + 1)
            await aggregate(conn, settle=0.0, now=time.time() + 1)
            got = (await shadow_totals(conn, "exp"))["s1"]
            ok = [t for t in truth.values() if t["sst"] == 0]
            lab = [t for t in ok if t["outcome"] is not None]
            assert got["pairs"] == len(ok)
            assert got["shadow_errors"] == len(truth) - len(ok)
            assert got["agree"] == sum(t["pl"] == t["sl"] for t in ok)
            assert got["labelled"] == len(lab)
            assert got["served_only_right"] == sum(t["outcome"] == t["pl"] != t["sl"] for t in lab)
            assert got["shadow_only_right"] == sum(t["outcome"] == t["sl"] != t["pl"] for t in lab)
            assert got["both_right"] == sum(t["outcome"] == t["pl"] == t["sl"] for t in lab)
        finally:
            await conn.close()

    asyncio.run(run())


@pytest.mark.parametrize("seed", [0, 1])
def test_each_request_id_and_only_its_clients_outcome_count_once(fresh_db: str, seed: int) -> None:
    """Request ids logged twice (served and shadow rows), outcomes from other client
    identities, several per request and source: in any interleaving with ticks, each request id
    is served once (its first row), an outcome counts only for its first served row's identity
    (or when accepted for any identity) and only the first such per source, and what is left
    out is counted in ignored_rows — the same totals as one full pass."""
    from evaluator.aggregate import ignored_totals, shadow_totals

    rng = random.Random(seed)
    insert = INSERT_PREDICTION.replace(
        " gateway_id, status)", " gateway_id, status, client_identity)"
    ).replace("'gw', $10)", "'gw', $10, $11)")
    insert_outcome = (
        "INSERT INTO outcomes (request_id, value, source, client_identity, any_identity)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING"
    )

    async def run() -> None:
        await migrate(fresh_db)
        conn = await asyncpg.connect(fresh_db)
        try:
            events: list[tuple[str, tuple[Any, ...]]] = []
            for i in range(120):
                rid = f"r{i % 90}"  # 30 ids are used twice
                who = rng.choice(["a", "b"])
                arm = rng.choice(["control", "treatment"])
                events.append(("p", (rid, arm, rng.randint(0, 1), 13 if rng.random() < 0.05
                                     else 0, who, False)))  # fmt: skip
                if rng.random() < 0.5:
                    events.append(("p", (rid, "s1", rng.randint(0, 1), 0, "", True)))
                for _ in range(rng.randint(0, 3)):
                    events.append(("o", (rid, float(rng.randint(0, 1)), rng.choice(["", "x"]),
                                         rng.choice(["a", "b"]), rng.random() < 0.2)))  # fmt: skip
            rng.shuffle(events)
            done_p: list[tuple[Any, ...]] = []
            done_o: list[tuple[Any, ...]] = []
            for kind, e in events:
                if kind == "p":
                    rid, arm, label, status, who, shadow = e
                    await conn.execute(insert, rid, "exp", 1, arm, "a" * 64, label, [0.5, 0.5],
                                       100, shadow, status, who)  # fmt: skip
                    done_p.append(e)
                else:
                    if await conn.execute(insert_outcome, *e) == "INSERT 0 1":
                        done_o.append(e)
                if rng.random() < 0.1:
                    await aggregate(conn, settle=0.0, now=time.time() + 1)
            await aggregate(conn, settle=0.0, now=time.time() + 1)
            # What should count, from the insertion order (= ingest order here).
            served: dict[str, tuple[Any, ...]] = {}
            shadow_first: dict[str, tuple[Any, ...]] = {}
            duplicates = 0
            for e in done_p:
                if e[5]:
                    shadow_first.setdefault(e[0], e)
                elif e[0] in served:
                    duplicates += 1
                else:
                    served[e[0]] = e
            want = {"outcome_n": 0, "outcome_sum": 0.0, "correct": 0, "foreign": 0, "dup": 0}
            counted: set[tuple[str, str]] = set()
            labelled = 0
            for rid, value, source, who, anyone in done_o:
                p = served.get(rid)
                if p is None or p[3] != 0:
                    continue
                if not (who == p[4] or anyone):
                    want["foreign"] += 1
                elif (rid, source) in counted:
                    want["dup"] += 1
                else:
                    counted.add((rid, source))
                    want["outcome_n"] += 1
                    want["outcome_sum"] += value
                    want["correct"] += value == p[2]
                    s = shadow_first.get(rid)
                    labelled += s is not None and s[3] == 0
            for full_pass in (False, True):
                if full_pass:
                    await reset(conn)
                    await aggregate(conn, settle=0.0, now=time.time() + 1)
                totals = (await arm_totals(conn, "exp")).values()
                assert sum(t.served for t in totals) == len(served) == 90
                assert sum(t.errors for t in totals) == sum(p[3] != 0 for p in served.values())
                assert sum(t.outcome_n for t in totals) == want["outcome_n"]
                assert sum(t.outcome_sum for t in totals) == want["outcome_sum"]
                assert sum(t.correct for t in totals) == want["correct"]
                ignored = await ignored_totals(conn, "exp")
                assert ignored.get(("exp", "duplicate_prediction"), 0) == duplicates > 0
                assert ignored.get(("exp", "foreign_outcome"), 0) == want["foreign"] > 0
                assert ignored.get(("exp", "duplicate_outcome"), 0) == want["dup"]
                pairs = (await shadow_totals(conn, "exp"))["s1"]
                both_ok = [r for r, s in shadow_first.items() if r in served
                           and served[r][3] == 0 and s[3] == 0]  # fmt: skip
                assert pairs["pairs"] == len(both_ok)
                assert pairs["labelled"] == labelled
        finally:
            await conn.close()

    asyncio.run(run())


def test_stale_log_tables_are_analyzed_before_a_tick(fresh_db: str) -> None:
    """A log table filled faster than autovacuum looks at it is planned from a tiny estimate
    (the tick's joins then become nested loops over every pair); ``analyze_stale`` ANALYZEs the
    tables that changed by more than its threshold, and only those."""
    from evaluator.aggregate import analyze_stale

    async def estimated_rows(conn: asyncpg.Connection, table: str) -> float:
        plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) SELECT * FROM {table}")
        return float(json.loads(plan)[0]["Plan"]["Plan Rows"])

    async def run() -> None:
        await migrate(fresh_db)
        conn = await asyncpg.connect(fresh_db)
        try:
            await analyze_stale(conn)  # whatever the migrations left
            await conn.execute(
                INSERT_PREDICTION.split(" VALUES ")[0]
                + " SELECT 'r' || i, now(), 'exp', 1, 0, 1, 'control', 'm', '1', $1, 1,"
                " '{0.2,0.8}', 100, false, 'gw', 0 FROM generate_series(1, 6000) i",
                "a" * 64,
            )
            await conn.execute(
                "INSERT INTO outcomes (request_id, value, source)"
                " SELECT 'r' || i, 1, '' FROM generate_series(1, 3000) i"
            )
        finally:
            await conn.close()  # a backend reports its counts to the statistics when it exits
        conn = await asyncpg.connect(fresh_db)
        try:
            deadline = time.monotonic() + 10
            stale: list[str] = []
            while time.monotonic() < deadline:
                await conn.execute("SELECT pg_stat_clear_snapshot()")
                stale = [
                    r[0]
                    for r in await conn.fetch(
                        "SELECT relname FROM pg_stat_user_tables WHERE n_mod_since_analyze >= 3000"
                    )
                ]
                if "outcomes" in stale:
                    break
                await asyncio.sleep(0.1)
            assert "outcomes" in stale, stale
            analyzed = await analyze_stale(conn)
            assert "public.outcomes" in analyzed
            assert any(t.startswith("public.predictions_") for t in analyzed), analyzed
            assert await estimated_rows(conn, "outcomes") == pytest.approx(3000, rel=0.05)
            assert await estimated_rows(conn, "predictions") == pytest.approx(6000, rel=0.05)
            await conn.execute("SELECT pg_stat_clear_snapshot()")
            # Nothing changed since: nothing to analyze; a few rows stay under the threshold.
            await conn.execute(
                "INSERT INTO outcomes (request_id, value, source) VALUES ('x', 1, '')"
            )
            assert await analyze_stale(conn) == []
        finally:
            await conn.close()

    asyncio.run(run())


_AGGREGATE_TABLES = (
    "arm_stats", "arm_latency", "shadow_stats", "ignored_rows", "duplicate_rows",
    "drift_windows", "drift_bins", "feature_windows", "feature_reference", "feature_edges",
    "feature_bins", "decay_windows", "decay_bins", "drift_slots",
)  # fmt: skip


async def _aggregates(conn: asyncpg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Every aggregate table's rows, sorted by their columns that are not floats."""

    def key(row: tuple[Any, ...]) -> tuple[str, ...]:
        return tuple(repr(v) for v in row if not isinstance(v, float | list))

    out = {}
    for table in _AGGREGATE_TABLES:
        rows = [tuple(r) for r in await conn.fetch(f"SELECT * FROM {table}")]
        out[table] = sorted(rows, key=key)
    return out


async def _decay_pairs(conn: asyncpg.Connection) -> list[tuple[Any, ...]]:
    """Labelled pairs per arm, kind and bin, whichever window holds them."""
    rows = await conn.fetch(
        "SELECT experiment, arm, kind, bin, sum(n) FROM decay_bins GROUP BY 1, 2, 3, 4"
        " ORDER BY 1, 2, 3, 4"
    )
    return [tuple(r) for r in rows]


def _same(a: Any, b: Any) -> bool:
    # Scores are float32 in the table; a sum in float32 order differs by 1e-7 relative.
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-5 * max(1.0, abs(a), abs(b))
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def test_a_long_log_read_in_bounded_ticks_counts_what_one_tick_does(fresh_db: str) -> None:
    """``catch_up`` with ``max_rows`` far below the log's length reads it in many
    transactions and leaves every aggregate (arms, latency, shadows, duplicates, ignored
    outcomes, drift, feature and decay windows) as one unbounded tick does."""
    from evaluator.aggregate import catch_up

    rng = random.Random(7)
    options: dict[str, Any] = {"settle": 0.0, "drift_reference_rows": 40}

    async def run() -> None:
        await migrate(fresh_db)
        conn = await asyncpg.connect(fresh_db)
        try:
            for i in range(400):
                rid = f"r{i % 380}"  # twenty request ids logged twice
                arm = rng.choice(["control", "treatment"])
                p1 = rng.random()
                if rng.random() < 0.3:  # an outcome before its prediction, some from elsewhere
                    await conn.execute(
                        "INSERT INTO outcomes (request_id, value, source, client_identity)"
                        " VALUES ($1, $2, '', $3) ON CONFLICT DO NOTHING",
                        rid, float(rng.randint(0, 1)), rng.choice(["", "", "other"]),
                    )  # fmt: skip
                await conn.execute(
                    INSERT_PREDICTION, rid, "exp", 1 + i // 150, arm, "a" * 64, int(p1 > 0.5),
                    [1 - p1, p1], rng.randint(50, 5000), False, 13 if rng.random() < 0.05 else 0,
                )  # fmt: skip
                if rng.random() < 0.3:  # a shadow's answer to the same request
                    q = rng.random()
                    await conn.execute(
                        INSERT_PREDICTION, rid, "exp", 1 + i // 150, "shadow", "b" * 64,
                        int(q > 0.5), [1 - q, q], rng.randint(50, 5000), True, 0,
                    )  # fmt: skip
                await conn.execute(
                    "INSERT INTO prediction_features (request_id, ts, experiment, arm, features)"
                    " VALUES ($1, now(), 'exp', $2, $3)",
                    rid, arm, [rng.gauss(0, 1), rng.random()],
                )  # fmt: skip
                if rng.random() < 0.4:  # an outcome after it
                    await conn.execute(
                        "INSERT INTO outcomes (request_id, value, source) VALUES ($1, $2, $3)"
                        " ON CONFLICT DO NOTHING",
                        rid, float(rng.randint(0, 1)), rng.choice(["", "audit"]),
                    )  # fmt: skip
            now = time.time() + 1
            one = await catch_up(conn, now=now, **options)
            assert one.ticks == 1 and one.predictions > 400
            want = await _aggregates(conn)
            decay_pairs = await _decay_pairs(conn)
            assert all(want[t] for t in ("duplicate_rows", "feature_edges", "decay_bins")), want
            await reset(conn)
            bounded = await catch_up(conn, now=now, max_rows=7, **options)
            assert bounded.ticks > 60
            assert (bounded.predictions, bounded.outcomes) == (one.predictions, one.outcomes)
            assert (bounded.prediction_seq, bounded.outcome_seq) == (
                one.prediction_seq,
                one.outcome_seq,
            )
            got = await _aggregates(conn)
            for table in _AGGREGATE_TABLES:
                if table not in ("decay_windows", "decay_bins", "drift_slots"):
                    assert _same(got[table], want[table]), (table, got[table], want[table])
            # Decay's reference is an arm's first labelled pairs in the order they are counted,
            # and a pair is counted by the tick that reads the later of its two rows: the
            # reference's last pairs (and so when its current window starts) follow the ticks.
            # Its size and every pair's bin do not.
            assert [r[:4] for r in got["decay_windows"]] == [r[:4] for r in want["decay_windows"]]
            assert await _decay_pairs(conn) == decay_pairs
            not_decay = [r for r in got["drift_slots"] if not r[2].startswith("decay:")]
            assert not_decay == [r for r in want["drift_slots"] if not r[2].startswith("decay:")]
        finally:
            await conn.close()

    asyncio.run(run())
