"""Hot-path routing: hash + bucket, bucket → arm lookup, and batch bucketing."""

from __future__ import annotations

from typing import Any

from gateway.allocation import Allocation
from gateway.hashing import bucket_v1, buckets_v1

USERS = [f"user-{i}" for i in range(1000)]


def test_bench_bucket_v1(benchmark: Any) -> None:
    assert 0 <= benchmark(bucket_v1, "demo-v1", "user-123456") < 10_000


def test_bench_route_single(benchmark: Any) -> None:
    alloc = Allocation.initial({"control": 34, "a": 33, "b": 33})
    table, arms = alloc.table(), alloc.arms

    def route() -> str:
        return arms[table[bucket_v1("demo-v1", "user-123456")]]

    assert benchmark(route) in arms


def test_bench_buckets_batch_1000(benchmark: Any) -> None:
    assert len(benchmark(buckets_v1, "demo-v1", USERS)) == 1000


def test_bench_reweight(benchmark: Any) -> None:
    alloc = Allocation.initial({"control": 50, "treatment": 50})
    assert alloc.moved(benchmark(alloc.reweight, {"control": 30, "treatment": 70})) == 2000
