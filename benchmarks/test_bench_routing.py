"""Hot-path routing: hash + bucket, bucket → arm lookup, batch bucketing, and (control plane)
re-weighting."""

from __future__ import annotations

from typing import Any

from gateway.allocation import Allocation
from gateway.hashing import NUM_BUCKETS, bucket_v1, buckets_v1

USERS = [f"user-{i}" for i in range(1000)]
# One non-ASCII id sends the whole batch down buckets_v1's bytes path.
USERS_NON_ASCII = [*USERS[:-1], "ユーザー"]


def test_bench_bucket_v1(benchmark: Any) -> None:
    assert 0 <= benchmark(bucket_v1, "demo-v1", "user-123456") < NUM_BUCKETS


def test_bench_route_single(benchmark: Any) -> None:
    alloc = Allocation.initial({"control": 34, "a": 33, "b": 33})
    table, arms = alloc.table(), alloc.arms

    def route() -> str:
        return arms[table[bucket_v1("demo-v1", "user-123456")]]

    assert benchmark(route) in arms


def test_bench_buckets_batch_1000(benchmark: Any) -> None:
    assert len(benchmark(buckets_v1, "demo-v1", USERS)) == 1000


def test_bench_buckets_batch_1000_non_ascii(benchmark: Any) -> None:
    assert len(benchmark(buckets_v1, "demo-v1", USERS_NON_ASCII)) == 1000


def test_bench_reweight(benchmark: Any) -> None:
    alloc = Allocation.initial({"control": 50, "treatment": 50})
    assert alloc.moved(benchmark(alloc.reweight, {"control": 30, "treatment": 70})) == 2000
