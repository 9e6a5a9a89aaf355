"""False alarms and power of every decision the evaluator takes on each tick, by simulation
through ``evaluator.policy.decide`` (``evaluator.simulate``: one tick per second, 100 rows per
tick, the tick's own data path). Each figure with its 95 % Clopper–Pearson interval.

    python -m benchmarks.bench_decisions --runs 1000 --out benchmarks/results/decisions.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from evaluator.simulate import ArmTruth, Outcome, Scenario, clopper_pearson, run

GUARDED = {"max_error_rate": 0.01, "max_p99_latency_ms": 250.0, "rollback_threshold": 0.05}
HEALTHY = ArmTruth(accuracy=0.8, error_rate=0.002, slow_rate=0.001)


def _canary(treatment: ArmTruth, control: ArmTruth = HEALTHY) -> Scenario:
    return Scenario("canary", {"control": control, "treatment": treatment}, ticks=2400, **GUARDED)


IDENTICAL_CANARY = _canary(HEALTHY)
# name -> (scenario, what counts, goal as text, goal test on the share)
SCENARIOS: dict[str, tuple[Scenario, tuple[str, ...], str, Callable[[float], bool]]] = {
    "canary, identical arms (0.2 % errors, limit 1 %): wrongly rolled back": (
        IDENTICAL_CANARY, ("rollback",), "<= 2.5 %", lambda x: x <= 0.025,
    ),
    "canary, identical arms: paused by SRM": (
        IDENTICAL_CANARY, ("pause",), "(with the above) <= 5 %", lambda x: x <= 0.05,
    ),
    "canary, identical arms: any wrong end (rollback or pause)": (
        IDENTICAL_CANARY, ("rollback", "pause"), "<= 5 %", lambda x: x <= 0.05,
    ),
    "canary, both arms 0.8 % errors under a 1 % limit: rolled back": (
        _canary(
            ArmTruth(0.8, 0.008, 0.001), control=ArmTruth(0.8, 0.008, 0.001)
        ), ("rollback",), "<= 5 %", lambda x: x <= 0.05,
    ),
    "canary, treatment at 3 % errors: caught": (
        _canary(ArmTruth(0.8, 0.03, 0.001)), ("rollback",), ">= 99 %", lambda x: x >= 0.99,
    ),
    "canary, treatment 3 % slower than the p99 limit: caught": (
        _canary(ArmTruth(0.8, 0.002, 0.03)), ("rollback",), ">= 99 %", lambda x: x >= 0.99,
    ),
    "SRM, correct 50/50, looked at every 100 rows up to 100k: false pause": (
        Scenario("ab", {"a": HEALTHY, "b": HEALTHY}, ticks=1000, min_samples=10**9),
        ("pause",), "<= 1 %", lambda x: x <= 0.01,
    ),
    "SRM, 50.5/49.5 split bug, 100k rows: detected": (
        Scenario(
            "ab", {"a": HEALTHY, "b": HEALTHY}, ticks=1000, min_samples=10**9,
            skew={"a": 1.01, "b": 0.99},
        ),
        ("pause",), ">= 95 % (not reachable, see docs/statistics.md)", lambda x: x >= 0.95,
    ),
    "A/B, A/A at 80 % accuracy: promoted": (
        Scenario("ab", {"a": HEALTHY, "b": HEALTHY}, ticks=400),
        ("promote",), "<= 1 %", lambda x: x <= 0.01,
    ),
    "A/B, +1.6 pt at 80 %: promoted within 1.7x the fixed-horizon n (33,300 rows)": (
        Scenario("ab", {"a": HEALTHY, "b": ArmTruth(0.816, 0.002, 0.001)}, ticks=333),
        ("promote",), ">= 85 %", lambda x: x >= 0.85,
    ),
    "A/B, 4 identical arms: any promoted (FWER)": (
        Scenario("ab", {k: HEALTHY for k in "abcd"}, ticks=400),
        ("promote",), "<= 5 %", lambda x: x <= 0.05,
    ),
}  # fmt: skip


def _one(args: tuple[str, int, int]) -> Outcome:
    name, seed, _ = args
    return run(SCENARIOS[name][0], np.random.default_rng(seed))


def measure(runs: int, processes: int, only: str = "") -> list[dict[str, Any]]:
    # Scenarios that share a Scenario object share their runs (one simulation, three counts).
    groups: dict[int, list[str]] = {}
    for name, (scenario, *_) in SCENARIOS.items():
        if only and only not in name:
            continue
        groups.setdefault(id(scenario), []).append(name)
    rows = []
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        for names in groups.values():
            started = time.perf_counter()
            seeds = [(names[0], 1_000_003 * k + 17, k) for k in range(runs)]
            outcomes = pool.map(_one, seeds, chunksize=max(1, runs // (4 * processes)))
            seconds = time.perf_counter() - started
            for name in names:
                _, actions, goal, ok = SCENARIOS[name]
                k = sum(o.action in actions for o in outcomes)
                lo, hi = clopper_pearson(k, runs)
                stages = Counter(o.stage for o in outcomes if o.action in actions)
                ticks = [o.tick for o in outcomes if o.action in actions]
                rows.append(
                    {
                        "scenario": name,
                        "share": k / runs,
                        "ci95": [lo, hi],
                        "k": k,
                        "runs": runs,
                        "goal": goal,
                        "met": ok(k / runs),
                        "median_tick": float(np.median(ticks)) if ticks else None,
                        "stages": {int(s): n for s, n in sorted(stages.items())},
                        "seconds": round(seconds, 1),
                    }
                )
                print(_line(rows[-1]), flush=True)
    return rows


def _line(r: dict[str, Any]) -> str:
    lo, hi = r["ci95"]
    extra = f", canary stages {r['stages']}" if "canary" in r["scenario"] and r["k"] else ""
    return (
        f"{r['share']:7.2%} [{lo:.2%}, {hi:.2%}] {r['k']}/{r['runs']}  goal {r['goal']}"
        f"{'' if r['met'] else '  NOT MET'}  {r['scenario']}{extra}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=1000, help="experiments per scenario")
    p.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    p.add_argument("--only", default="", help="scenarios whose name contains this")
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    args = p.parse_args(argv)
    rows = measure(args.runs, args.processes, args.only)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"runs": args.runs, "scenarios": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
