"""benchmarks/bench_call_metrics in a few hundred calls: every variant runs, and the ones that
count really count (a variant that skipped its work would look free)."""

from __future__ import annotations

import asyncio

from benchmarks import bench_call_metrics as bench


def test_every_variant_runs() -> None:
    results = bench.measure(calls=200, repeats=1)
    assert set(results) == set(bench.VARIANTS)
    assert all(len(v) == 1 and v[0] > 0 for v in results.values())
    assert bench.main(["--calls", "100", "--repeats", "1", "--asyncio"]) == 0


def test_the_measured_paths_count_each_call() -> None:
    async def calls(variant: str) -> object:
        resolver, interceptors, surface = bench.dispatcher(variant)
        for _ in range(10):
            assert await asyncio.create_task(bench.one_call(resolver, interceptors)) == b"answer"
        return surface if surface is not None else interceptors[0] if interceptors else None

    for variant in ("surface", "surface+limit"):
        surface = asyncio.run(calls(variant))
        assert isinstance(surface, bench.Surface)
        (stats,) = surface.stats
        assert stats.started == 10 and stats.handled_by_code()["OK"] == 10
        assert surface.in_flight == 0
    interceptor = asyncio.run(calls("interceptor"))
    assert isinstance(interceptor, bench.Interceptor)
    started, ok, _ = interceptor.children[f"/{bench.SERVICE}/Predict"]
    assert started._value.get() == ok._value.get() == 10
