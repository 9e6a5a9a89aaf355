"""benchmarks/e2e_compare (its parts in benchmarks/e2e/) without a load generator: the request
body it hands h2load, the parsing of h2load's report and per-request log, the py-spy summary and
the report rendering."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from abgate.v1 import gateway_pb2 as pb
from benchmarks import e2e_compare
from benchmarks.bare_server import typical_response
from benchmarks.e2e.h2load import (
    duration_us,
    h2load_command,
    parse_h2load,
    parse_h2load_log,
    percentiles,
)
from benchmarks.e2e.measure import RunResult, summarise
from benchmarks.e2e.profile import profile_summary
from benchmarks.e2e.report import markdown
from benchmarks.e2e.wire import bare_response, build_request, check_answer, grpc_frame, grpc_unframe

# h2load 1.52 (nghttp2-client in Debian 12), timing-based run against the bare server.
H2LOAD_OUTPUT = """\
starting benchmark...
spawning thread #0: 4 total client(s). Timing-based test with 0s of warm-up time and 10s of \
main duration for measurements.
Application protocol: h2c
Main benchmark duration is started for thread #0.
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 10.00s, 5479.33 req/s, 1.08MB/s
requests: 54793 total, 54857 started, 54793 done, 54790 succeeded, 3 failed, 0 errored, 0 timeout
status codes: 54790 2xx, 0 3xx, 0 4xx, 3 5xx
traffic: 10.78MB (11304504) total, 161.57KB (165450) headers (space savings 96.27%), \
7.79MB (8164157) data
                     min         max         mean         sd        +/- sd
time for request:      250us     23.73ms     11.53ms      2.58ms    68.86%
time for connect:      210us       1.02s       255.12ms      0us     100.00%
time to 1st byte:     1.02s      1.02s       1.02s         0us     100.00%
req/s           :    1369.52     1370.81     1369.83        0.55    75.00%
"""

H2LOAD_LOG = "\n".join(
    f"{1795499266921010 + i}\t{200 if i != 3 else 503}\t{us}"
    for i, us in enumerate([100, 200, 300, 999_999, 400, 500, 600, 700, 800, 900, 1000])
)

PY_SPY_RAW = """\
thread (11): MainThread;<module> (abgate/__main__.py:1);serve (gateway/server.py:282);\
Handle._run (asyncio/events.py:78) 60
thread (11): MainThread;<module> (abgate/__main__.py:1);serve (gateway/server.py:282);\
Handle._run (asyncio/events.py:78);GatewayServicer.Predict (gateway/servicer.py:76);\
decode_row (gateway/codec.py:40) 30
thread (11): MainThread;<module> (abgate/__main__.py:1);serve (gateway/server.py:282);\
Handle._run (asyncio/events.py:78);GatewayServicer.Predict (gateway/servicer.py:76) 8
thread (12): Thread-1 (_poll_wrapper);Thread.run (threading.py:971) 2
"""


def test_grpc_frame_has_the_5_byte_prefix() -> None:
    message = b"\x0a\x04demo"
    frame = grpc_frame(message)
    assert frame[:1] == b"\x00"  # not compressed
    assert frame[1:5] == struct.pack(">I", len(message)) == b"\x00\x00\x00\x06"
    assert frame[5:] == message
    assert grpc_unframe(frame) == message
    big = bytes(70_000)
    assert grpc_frame(big)[1:5] == b"\x00\x01\x11\x70"  # big-endian 70,000


@pytest.mark.parametrize(
    "bad", [b"", b"\x00\x00\x00", b"\x01\x00\x00\x00\x00", b"\x00\x00\x00\x00\x02x"]
)
def test_grpc_unframe_rejects_what_is_not_one_uncompressed_frame(bad: bytes) -> None:
    with pytest.raises(ValueError):
        grpc_unframe(bad)


def test_request_body_is_a_real_predict_request() -> None:
    row = np.linspace(-1.0, 1.0, 30, dtype=np.float64)  # converted to float32 on the wire
    request = build_request(row, "bench-user-7")
    body = grpc_frame(request.SerializeToString())
    parsed = pb.PredictRequest.FromString(grpc_unframe(body))
    assert (parsed.experiment, parsed.user_id) == ("demo", "bench-user-7")
    assert list(parsed.features.shape) == [30] and parsed.features.datatype == "FP32"
    values = np.frombuffer(parsed.features.raw, dtype="<f4")
    np.testing.assert_array_equal(values, row.astype(np.float32))
    assert len(body) == 5 + len(parsed.SerializeToString())


def test_h2load_command_sends_the_body_as_grpc(tmp_path: Path) -> None:
    cmd = h2load_command(
        "h2load", 5000, tmp_path / "b.grpc", duration=10, warmup=0, connections=4, streams=16,
        log_file=tmp_path / "log",
    )  # fmt: skip
    joined = " ".join(cmd)
    assert cmd[-1] == "http://127.0.0.1:5000/abgate.v1.InferenceGateway/Predict"
    assert "-d " + str(tmp_path / "b.grpc") in joined
    assert "-H content-type: application/grpc" in joined and "-H te: trailers" in joined
    assert "-c 4 -m 16" in joined and "-D 10" in joined and "-t 1" in joined
    assert f"--log-file={tmp_path / 'log'}" in cmd


def test_parse_h2load_report() -> None:
    r = parse_h2load(H2LOAD_OUTPUT)
    assert r.req_per_s == 5479.33
    assert (r.done, r.succeeded, r.failed, r.errored, r.timeout) == (54793, 54790, 3, 0, 0)
    assert r.status_2xx == 54790
    assert r.data_bytes == 8164157
    assert r.data_bytes_per_request == pytest.approx(149.0, abs=0.01)
    assert r.latency_min_us == 250.0
    assert r.latency_max_us == pytest.approx(23_730.0)
    assert r.latency_mean_us == pytest.approx(11_530.0)
    assert r.latency_sd_us == pytest.approx(2_580.0)
    assert r.latency_within_sd_pct == 68.86


def test_parse_h2load_rejects_other_output() -> None:
    with pytest.raises(ValueError, match="unrecognised h2load output"):
        parse_h2load("connect: Connection refused\n")


@pytest.mark.parametrize(
    ("text", "us"), [("250us", 250.0), ("13.94ms", 13_940.0), ("1.5s", 1_500_000.0)]
)
def test_duration_units(text: str, us: float) -> None:
    assert duration_us(text) == pytest.approx(us)


def test_per_request_log_gives_percentiles_of_2xx_answers() -> None:
    times = parse_h2load_log(H2LOAD_LOG + "\n\ngarbage line\n")
    assert times == [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000]  # the 503 is left out
    p = percentiles(times)
    assert p["p50"] == 500 and p["p90"] == 900 and p["p99"] == 1000 and p["p99.9"] == 1000
    assert list(p) == ["p50", "p75", "p90", "p95", "p99", "p99.9"]
    assert percentiles([]) == {}


def test_bare_response_matches_the_gateway_answer_under_load() -> None:
    answer = typical_response()
    answer.request_id = "0123456789abcdef-3"
    bare = bare_response(answer)
    assert bare.request_id == "0123456789abcdef-10000"
    assert bare.ByteSize() - answer.ByteSize() == 4
    assert check_answer(bare.SerializeToString(), arm="treatment").model.id == "demo-gbdt"


def test_check_answer_refuses_something_else() -> None:
    wrong = typical_response()
    wrong.experiment = "other"
    with pytest.raises(AssertionError, match="experiment"):
        check_answer(wrong.SerializeToString())
    with pytest.raises(AssertionError, match="arm"):
        check_answer(typical_response().SerializeToString(), arm="control")


def test_profile_summary_in_us_per_request() -> None:
    # 100 samples at 200 Hz = 0.5 s of GIL time over 1,000 requests = 500 µs/request.
    s = profile_summary(PY_SPY_RAW, requests=1000)
    assert s["samples"] == 100 and s["gil_us_per_req"] == 500.0
    assert s["threads_us_per_req"] == {"MainThread": 490.0, "Thread-1 (_poll_wrapper)": 10.0}
    top = dict(s["top_self_us_per_req"])
    assert top["Handle._run (asyncio/events.py:78)"] == 300.0
    assert top["decode_row (gateway/codec.py:40)"] == 150.0
    project = dict(s["project_total_us_per_req"])
    assert project == {
        "GatewayServicer.Predict (gateway/servicer.py:76)": 190.0,
        "decode_row (gateway/codec.py:40)": 150.0,
    }  # the entry point frames under every sample are left out


def _run(rate: float, p50: float) -> RunResult:
    h = parse_h2load(H2LOAD_OUTPUT)
    h.req_per_s = rate
    h.percentiles_us = {"p50": p50, "p90": 2 * p50, "p99": 3 * p50}
    return RunResult(h, 250.0, 0.0, 40.0, 0.0, {"main": (150.0, 40.0)})


def test_summary_takes_medians_and_renders() -> None:
    results = {
        "bare": summarise([_run(5000, 9000), _run(5200, 8000), _run(4000, 11000)]),
        "gateway": summarise([_run(4100, 12000), _run(4300, 11000), _run(3900, 14000)]),
    }
    assert results["bare"]["req_per_s"] == 5000
    assert results["bare"]["latency_us"]["p50"] == 9000
    assert results["gateway"]["server_threads_us_per_req"] == {"main": [150.0, 40.0]}
    report = {
        "date": "2026-01-01 00:00:00 UTC",
        "machine": {"nproc": 2, "cpu": "x", "python": "3", "grpcio": "1", "onnxruntime": "1"},
        "load": {
            "connections": 4, "streams": 16, "duration_s": 10, "warmup_s": 2, "rounds": 3,
            "request_bytes": 154, "response_bytes": 140, "arm": "treatment", "model": "m:1",
        },
        "variants": {"bare": [], "gateway": []},
        "results": results,
        "ratio_vs_bare": {"bare": 1.0, "gateway": 0.82},
        "ratio": 0.82,
        "warnings": ["round 1 gateway: something"],
        "profile": {
            "bare": {"error": "py-spy failed"},
            "gateway": {
                "raw": "profile-gateway.txt",
                "req_per_s_while_profiled": 4000.0,
                **profile_summary(PY_SPY_RAW, requests=1000),
            },
        },
    }  # fmt: skip
    md = markdown(report)
    assert "| gateway | 4100 | 0.82 | 11.53 | 12.00 | 24.00 | 36.00 | 23.73 | 250 |" in md
    assert "gateway/bare req/s ratio: 0.82" in md and "round 1 gateway: something" in md
    assert "| `Handle._run (asyncio/events.py:78)` | 300.0 |" in md


def test_missing_h2load_exits_2_with_a_clear_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert e2e_compare.main(["--h2load", "/nonexistent/h2load", "--out", "/nonexistent/out"]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "nghttp2-client" in err


def test_logwriter_benchmark_writes_rows_of_the_log_layout(fresh_db: str) -> None:
    """benchmarks/bench_logwriter, tiny: its rows have the writer's columns and every batch size
    writes through the real writer."""
    import asyncio

    from benchmarks import bench_logwriter
    from gateway.logwriter import COLUMNS

    assert len(bench_logwriter.make_rows(1, 0)[0]) == len(COLUMNS)
    rates = asyncio.run(bench_logwriter.main_async(fresh_db, 300, 1))
    assert set(rates) == {"100", "1000", "10000"} and all(r > 0 for r in rates.values())


def test_serving_report_renders_every_measure() -> None:
    """benchmarks/bench_serving's markdown from a report of the shape run() returns (figures of
    the 2026-11-26 run): every measure, including one request in flight, gets its row."""
    from benchmarks import bench_serving

    report = {
        "date": "2026-11-26 03:22:26 UTC",
        "duration": 10.0,
        "rounds": 2,
        "cpus": 2,
        "unloaded": {
            "rate": 100.0, "p50_ms": 1.74, "p99_ms": 3.033, "bare_p50_ms": 1.446,
            "bare_p99_ms": 2.633, "serial_p50_ms": 0.526, "serial_p99_ms": 2.076,
            "bare_serial_p50_ms": 0.438, "bare_serial_p99_ms": 0.681,
            "loadtest_50rps_p50_ms": 2.617, "loadtest_50rps_p99_ms": 5.603,
        },
        "shadow": {
            "saturated_off": 2275.15, "saturated_on": 2146.0, "saturated_ratio": 0.943,
            "half_rate": 1082.1, "p99_off_ms": 7.19, "p99_on_ms": 6.93, "p99_increase": -0.037,
        },
        "batch_rows_per_s": 63967.3,
        "batch_calls_refused": 496,
        "stream_rows_per_s": 2835.7,
        "workers": {"one": 2273.7, "two": 3222.7, "ratio": 1.417},
        "targets": bench_serving.TARGETS,
    }  # fmt: skip
    text = bench_serving.markdown(report)
    assert "| one request in flight (h2load closed loop" in text
    assert "0.526 / 2.076 ms | ≤ 0.5 / 0.8 ms |" in text
    assert "| one request in flight, bare grpc.aio server: p50 / p99 | 0.438 / 0.681 ms |" in text
    assert "| 63967 | ≥ 150000 |" in text and "(×1.42)" in text and "(-4%)" in text


def test_overload_benchmark_table_and_missing_h2load(capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks/bench_overload without a load generator: its table shows each load's
    goodput, the admitted p99 against the unloaded one and the probe's refusals."""
    from benchmarks import bench_overload

    assert bench_overload.main(["--h2load", "/nonexistent/h2load", "--out", "/nonexistent"]) == 2
    assert "nghttp2-client" in capsys.readouterr().err
    cell = {
        "goodput_per_s": 2700.0,
        "goodput_share_of_saturation": 0.93,
        "admitted_p99_ms": 250.0,
        "admitted_p99_over_unloaded": 28.0,
        "probe_answered_share": 0.309,
        "probe_errors": [{"CANCELLED": 170}],
    }
    report = {
        "saturation_req_per_s": 2897.0,
        "unloaded_probe": {"admission": {"p99_ms": 8.9}},
        "summary": {"admission": {"3x": cell}},
    }
    text = bench_overload.table(report)
    assert "saturation (closed loop, gRPC's default bound): 2897 req/s" in text
    assert "admission        3x       2700   0.93   250.00      28.00     0.309" in text
    assert set(bench_overload.variants([256, 32])) == {"pending-256", "pending-32", "grpc-default"}
    assert "{'CANCELLED': 170}" in text


def test_scaleout_benchmark_counts_every_row_of_its_writers(fresh_db: str) -> None:
    """benchmarks/bench_scaleout, tiny: two writer processes into one PostgreSQL; the rows they
    report are the rows the table held (run() checks it), and a bad --writers is refused."""
    from benchmarks import bench_scaleout

    report = bench_scaleout.run(fresh_db, [2], seconds=0.3, batch=100)
    (step,) = report["steps"]
    assert step["writers"] == 2 and len(step["per_writer_rows_per_s"]) == 2
    assert step["rows"] > 0 and all(r > 0 for r in step["per_writer_rows_per_s"])
    assert "| 2 |" in bench_scaleout.markdown(report)
    with pytest.raises(SystemExit) as exc:
        bench_scaleout.main(["--writers", "0"])
    assert exc.value.code == 2
