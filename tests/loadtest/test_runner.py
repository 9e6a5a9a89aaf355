"""The load generator against a fake grpc.aio server: intended-time latency (no coordinated
omission), histograms merged across worker processes, OIP requests, closed loop, outcomes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from abgate.v1 import gateway_pb2 as pb
from loadtest.results import RunResult, decode_histogram
from loadtest.runner import run_load
from loadtest.settings import LoadTestSettings
from tests.loadtest.fakes import FakeServer

BASE = LoadTestSettings(arrival="constant", features=30, connect_timeout=5.0, run_id="t")


def p_ms(h: object, p: float) -> float:
    return h.get_value_at_percentile(p) / 1000.0  # type: ignore[attr-defined]


def test_latency_counts_from_the_intended_send_time() -> None:
    # The server takes 20 ms per request and the generator may keep only one in flight, so it
    # can answer ~45 req/s of the 100 req/s scheduled. Request i (i = 0..99) is intended at
    # i × 10 ms but leaves only when request i−1 has answered, at about i × 22 ms: its latency
    # from the intended time is ~i × 12 ms + 22 ms, up to ~1.2 s. A generator that timed
    # requests from their actual send (coordinated omission) would see ~22 ms for every one.
    server = FakeServer(delay=lambda n: 0.02)
    try:
        s = replace(BASE, target=server.target, rate=100.0, duration=1.0, warmup=0.0,
                    concurrency=1, drain=10.0)  # fmt: skip
        r = run_load(s)
    finally:
        server.close()
    assert server.max_in_flight == 1
    assert r.sent == r.ok == 100 and not r.errors
    service_p99 = p_ms(r.service, 99)
    assert 19 <= service_p99 < 80  # what each request took at the server, plus transport
    assert p_ms(r.latency, 99) > 10 * 20  # well above the server's per-request time …
    assert 800 < p_ms(r.latency, 99) < 3000  # … and about what the queue predicts
    assert 300 < p_ms(r.latency, 50) < 1500
    assert r.queued >= 90  # nearly every request waited for the one slot
    assert p_ms(r.send_lag, 99) > 500
    # Those ~45 answers per second are what the server achieved, not the 100 scheduled.
    assert r.achieved_rate < 60 and r.elapsed > 1.8


def test_undeliverable_requests_count_as_unsent_errors() -> None:
    server = FakeServer(delay=lambda n: 0.05)
    try:
        s = replace(BASE, target=server.target, rate=100.0, duration=0.5, warmup=0.0,
                    concurrency=1, drain=0.2)  # fmt: skip
        r = run_load(s)
    finally:
        server.close()
    # ~0.7 s of sending at 20 req/s: ~14 of the 50 requests leave, the rest never do.
    assert r.unsent > 20 and r.errors == {"UNSENT": r.unsent}
    assert r.sent + r.unsent == 50 and r.ok == r.sent


@pytest.fixture(scope="module")
def two_workers() -> tuple[RunResult, FakeServer]:
    server = FakeServer()
    try:
        s = replace(BASE, target=server.target, rate=300.0, duration=1.0, warmup=0.3, workers=2,
                    users=50, user_dist="zipf")  # fmt: skip
        yield run_load(s), server  # type: ignore[misc]
    finally:
        server.close()


def test_histograms_of_two_worker_processes_merge_to_the_total(
    two_workers: tuple[RunResult, FakeServer],
) -> None:
    r, server = two_workers
    assert len(r.workers) == 2
    per_worker = [decode_histogram(w.latency).get_total_count() for w in r.workers]
    assert all(n == w.ok for n, w in zip(per_worker, r.workers, strict=True))
    assert abs(per_worker[0] - per_worker[1]) <= 1  # the constant stream is split evenly
    assert r.latency.get_total_count() == sum(per_worker) == r.ok == r.sent == 300
    assert r.warmup["ok"] == 90 + 1  # 0.3 s at 300 req/s, plus the probe
    # The server saw exactly the warm-up and the measured requests, from both processes.
    ids = [m.request_id for m in server.predicts]
    assert len(ids) == len(set(ids)) == r.sent + r.warmup["sent"]
    assert {i.split("-")[2] for i in ids} == {"0", "1", "probe"}
    # A zipf population of 50: users recur, the most frequent far more than the rest.
    users = [m.user_id for m in server.predicts]
    counts = sorted((users.count(u) for u in set(users)), reverse=True)
    assert len(counts) <= 50 and counts[0] > 5 * counts[-1]
    assert r.timeline and sum(sec.ok for sec in r.timeline) == r.ok + r.warmup["ok"] - 1
    assert 240 < r.achieved_rate <= 310


def test_oip_target_sends_model_infer(fake_server: FakeServer) -> None:
    s = replace(BASE, target=fake_server.target, protocol="oip", experiment="my-model",
                oip_input_name="x", rate=200.0, duration=0.5, warmup=0.0)  # fmt: skip
    r = run_load(s)
    assert r.ok == r.sent == 100 and not r.errors
    assert not fake_server.predicts
    assert len(fake_server.infers) == 101  # and the probe
    m = fake_server.infers[-1]
    assert m.model_name == "my-model" and m.id.startswith("lt-t-0-")
    assert [(i.name, i.datatype, list(i.shape)) for i in m.inputs] == [("x", "FP32", [1, 30])]
    assert len(m.raw_input_contents[0]) == 30 * 4
    assert m.parameters["user_id"].string_param.startswith("user-")


def test_closed_loop_keeps_c_requests_in_flight() -> None:
    server = FakeServer(delay=lambda n: 0.01)
    try:
        s = replace(BASE, target=server.target, mode="closed", connections=4, duration=1.0,
                    warmup=0.2)  # fmt: skip
        r = run_load(s)
    finally:
        server.close()
    assert server.max_in_flight == 4
    assert not r.errors and r.ok == r.sent
    # 4 loops of ~11 ms round trips: ~360 req/s at most.
    assert 100 < r.achieved_rate < 400
    assert 10 <= p_ms(r.latency, 50) < 100


def test_outcomes_are_sent_for_answered_requests(
    fake_server: FakeServer, label_store: Path
) -> None:
    s = replace(BASE, target=fake_server.target, features=0, model_store=label_store,
                outcomes=True, outcome_flip=1.0, rate=200.0, duration=0.5, warmup=0.1)  # fmt: skip
    r = run_load(s)
    answered = r.ok + r.warmup["ok"] - r.warmup["probe"]
    assert r.outcomes == {"sent": answered, "accepted": answered, "errors": {}}
    got = {o.request_id: o.value for o in fake_server.outcomes}
    predicted = {m.request_id: m.features.raw for m in fake_server.predicts}
    assert len(got) == answered and set(got) <= set(predicted)
    # Each outcome is its row's label, and --outcome-flip 1 replaced every one by the other.
    with np.load(label_store / "demo_holdout.npz") as data:
        label_of = {
            x.astype("<f4").tobytes(): int(y) for x, y in zip(data["X"], data["y"], strict=True)
        }
    assert all(v == 1 - label_of[predicted[rid]] for rid, v in got.items())
    assert {o.source for o in fake_server.outcomes} == {"loadtest"}


def test_outcome_rate_sends_a_share(fake_server: FakeServer, label_store: Path) -> None:
    s = replace(BASE, target=fake_server.target, features=0, model_store=label_store,
                outcomes=True, outcome_rate=0.3, rate=400.0, duration=0.5, warmup=0.0)  # fmt: skip
    r = run_load(s)
    assert r.ok == 200
    # Binomial(200, 0.3): mean 60, sd 6.5.
    assert 30 < r.outcomes["accepted"] == len(fake_server.outcomes) < 90
    assert {o.value for o in fake_server.outcomes} == {0.0, 1.0}


def test_holdout_rows_are_sent_as_features(fake_server: FakeServer, label_store: Path) -> None:
    s = replace(BASE, target=fake_server.target, features=0, model_store=label_store,
                rate=100.0, duration=0.3, warmup=0.0)  # fmt: skip
    run_load(s)
    X = np.load(label_store / "demo_holdout.npz")["X"].astype("<f4")
    rows = {x.tobytes() for x in X}
    sent = [m.features for m in fake_server.predicts]
    assert all(isinstance(t, pb.Tensor) and t.raw in rows and list(t.shape) == [30] for t in sent)
