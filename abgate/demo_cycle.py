"""``abgate demo --cycle``: the continuous-learning cycle through the real processes.

An embedded PostgreSQL, the evaluator, a gateway and a trainer. Round 1 (a weak stump against a
logistic regression, every request's features captured) is decided and promoted. Then the world
changes (``converters.demo.write_shifted_traffic``: the outcome follows a new concept, and the
area features of 40 % of the rows read higher): the evaluator sees the promoted champion's
decay and drift against the reference it took after the promotion, asks for a retrain; the
trainer trains the champion's recipe on the logged features and outcomes since the drift,
checks parity and that it is no worse than the champion on the same holdout, registers it
(lineage: parent = the champion) and starts round 2; round 2 is decided. The audit trail
(``abgate experiments history``) and the new model's lineage are printed at the end.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from abgate.addresses import free_port
from abgate.demo import _abgate, _cli, _count_rows, _report, _start, _stop, wait_serving

# The evaluator's and trainer's settings for a demo's minutes (the defaults are for days).
REFERENCE_ROWS = 300  # drift and decay references: rows after the promotion
RATE = 300  # requests per second, each with its outcome
TRAIN_ROWS = 2000  # labelled rows the trainer waits for after the change


class _Watch:
    """The evaluator's view of one experiment, read in process (a CLI process per second
    would take a core from the traffic)."""

    def __init__(self, target: str, token: str, name: str) -> None:
        from abgate.v1 import control_pb2 as cpb
        from evaluator.cli import AdminClient
        from evaluator.service import view_json

        self.cpb, self.view_json = cpb, view_json
        self.admin = AdminClient(target, token)
        self.name = name

    def view(self) -> dict[str, Any]:
        view = self.admin.call("GetExperiment", self.cpb.ExperimentRequest(name=self.name))
        out: dict[str, Any] = self.view_json(view)
        return out

    def steps(self) -> list[Any]:
        request = self.cpb.HistoryRequest(name=self.name, steps_only=True)
        return list(self.admin.call("History", request).entries)

    def close(self) -> None:
        self.admin.close()


def _loadtest(
    target: str, name: str, store: Path, seed: int, seconds: int
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        _abgate("loadtest", "--target", target, "--experiment", name, "--rate", str(RATE),
                "--duration", str(seconds), "--users", "50000", "--outcomes",
                "--model-store", str(store), "--seed", str(seed), "--quiet", "--json"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip


def _line(view: dict[str, Any], steps: list[Any]) -> str:
    """One live line: round, status, accuracy per arm, the champion's drift and decay, the
    latest step of the cycle."""
    details = view.get("details", {})
    arms = details.get("statistics", {}).get("arms", {})
    parts = [f"round {details.get('round', 1)} {view.get('status')}"]
    parts += [
        f"{a}: n={s['n']} acc={s['mean']:.3f}" if s.get("n") else f"{a}: n=0"
        for a, s in arms.items()
        if s.get("mean") is not None
    ]
    champion = details.get("champion", "")
    psi = [
        m.get("psi", 0.0)
        for key in ("drift", "feature_drift")
        for m in details.get(key, {}).get(champion, {}).get("measures", {}).values()
    ]
    if psi:
        parts.append(f"{champion} drift: max PSI {max(psi):.2f}")
    accuracy = _decay(details)
    if accuracy is not None and accuracy.get("current_rows"):
        parts.append(
            f"decay: acc {accuracy['current_rate']:.2f} vs {accuracy['reference_rate']:.2f},"
            f" p={accuracy.get('p_value', 1.0):.2g}"
        )
    if steps:
        parts.append(f"last step: {steps[-1].action}")
    return " | ".join(parts)


def _wait(
    watch: _Watch, until: Callable[[dict[str, Any], list[Any]], bool], timeout: float
) -> tuple[dict[str, Any], list[Any]]:
    deadline = time.monotonic() + timeout
    view: dict[str, Any] = {}
    steps: list[Any] = []
    while time.monotonic() < deadline:
        view, steps = watch.view(), watch.steps()
        print("\r   " + _line(view, steps)[:180].ljust(180), end="", flush=True)
        if until(view, steps):
            print()
            return view, steps
        time.sleep(1.0)
    print()
    raise TimeoutError(
        f"the cycle did not get there in {timeout:.0f} s (last: {_line(view, steps)})"
    )


def _decay(details: dict[str, Any]) -> dict[str, Any] | None:
    """The champion's accuracy decay measure, once its reference is complete."""
    window = details.get("decay", {}).get(details.get("champion", ""), {})
    measure = window.get("measures", {}).get("accuracy")
    return measure if isinstance(measure, dict) else None


def _reference_full(view: dict[str, Any], _steps: list[Any]) -> bool:
    """The promoted champion's fresh decay reference holds its rows: its windows restarted at
    the promotion (a monitor epoch; until then the view shows its round-1 windows) and filled."""
    details = view.get("details", {})
    restarted = details.get("champion", "") in details.get("monitor_epochs", {})
    return restarted and _decay(details) is not None


def run_cycle_demo(*, workdir: Path, quick: bool = False) -> int:
    from converters.demo import (
        SHIFTED_FEATURES,
        SHIFTED_LABEL_FEATURE,
        train_demo_models,
        train_demo_stump,
        write_shifted_traffic,
    )
    from gateway.modelstore import ModelStore

    workdir.mkdir(parents=True, exist_ok=True)
    store_dir = workdir / "models"
    print(f"== 1. training and converting demo models into {store_dir}")
    models = [*train_demo_models(ModelStore(store_dir)), train_demo_stump(ModelStore(store_dir))]
    # Round 1 names these versions: a name alone means its latest version, which after a first
    # run is the model that run retrained.
    ref = {m.id: f"{m.id}:{m.version}" for m in models}
    for m in models:
        print(f"   {m.id:<12} v{m.version:<3} sha256={m.sha256[:12]}  {m.source}")
    shifted = write_shifted_traffic(workdir / "shifted").parent

    from abgate.db.embedded import EmbeddedPostgres

    pg = EmbeddedPostgres(workdir / "pg")
    database_url = pg.start()
    print(f"== 2. embedded PostgreSQL, data in {pg.data_dir}")
    token = secrets.token_hex(16)
    # By environment, never on a command line (which `ps` shows to every user).
    os.environ.update({"ABGATE_TOKEN": token, "ABGATE_EVALUATOR_TOKEN": token})
    evaluator_target = f"127.0.0.1:{free_port()}"
    target = f"127.0.0.1:{free_port()}"
    procs: dict[str, subprocess.Popen[bytes] | None] = {"gateway": None, "trainer": None}
    evaluator = None
    watch: _Watch | None = None
    rc = 1
    try:
        print("== 3. the evaluator (drift and decay references of 300 rows, no round cooldown)")
        evaluator = _start(
            _abgate("--log-level", "WARNING", "evaluator", "--listen", evaluator_target,
                    "--database-url", database_url, "--model-store", str(store_dir),
                    "--tick-interval", "0.5", "--settle", "0.5",
                    "--drift-reference-rows", str(REFERENCE_ROWS),
                    "--decay-reference-rows", str(REFERENCE_ROWS), "--round-cooldown", "0",
                    "--drift-history-interval", "2"),
            workdir / "evaluator.log",
        )  # fmt: skip
        wait_serving(evaluator_target, proc=evaluator)
        name = f"cycle-{int(time.time())}"
        print(f"== 4. round 1 of {name!r}: control = demo-stump, treatment = demo-logreg,")
        print("   every request's features captured (--feature-sample-rate 1)")
        _cli("experiments", "create", "--evaluator", evaluator_target, "--name", name,
             "--arm", f"control={ref['demo-stump']}", "--arm", f"treatment={ref['demo-logreg']}",
             "--metric", "accuracy", "--min-samples", "200", "--min-effect", "0.02",
             "--feature-sample-rate", "1")  # fmt: skip
        procs["gateway"] = _start(
            _abgate("--log-level", "WARNING", "serve", "--listen", target,
                    "--model-store", str(store_dir), "--state-dir", str(workdir / "state"),
                    "--database-url", database_url, "--evaluator", evaluator_target,
                    "--log-max-age", "0.1"),
            workdir / "gateway.log",
        )  # fmt: skip
        wait_serving(target, proc=procs["gateway"])
        print("== 5. a gateway subscribed to the evaluator, and a trainer taking retrain requests")
        procs["trainer"] = _start(
            _abgate("--log-level", "WARNING", "trainer", "--database-url", database_url,
                    "--model-store", str(store_dir), "--evaluator", evaluator_target,
                    "--poll-interval", "1", "--min-rows", str(TRAIN_ROWS),
                    "--recheck-interval", "1"),
            workdir / "trainer.log",
        )  # fmt: skip

        watch = _Watch(evaluator_target, token, name)
        print(f"== 6. traffic as it was ({RATE} req/s with outcomes) until round 1 is decided")
        print("   and the promoted champion's fresh reference holds its rows")
        before = _loadtest(target, name, store_dir, seed=1, seconds=600)
        try:
            _wait(watch, lambda v, s: v.get("status") == "promoted", 120)
            _wait(watch, _reference_full, 60)
        finally:
            before.terminate()
            before.wait(30)
        print(f"== 7. the world changes: the outcome now follows {SHIFTED_LABEL_FEATURE}, and")
        print(f"   {', '.join(SHIFTED_FEATURES)} read 1.6x higher for 40 % of the rows")
        print("   the evaluator watches the champion: decay -> retrain request -> the trainer")
        print("   trains on the logged rows -> registers -> round 2 -> decided")
        after = _loadtest(target, name, shifted, seed=2, seconds=900)
        try:
            view, _ = _wait(
                watch,
                lambda v, s: (
                    v.get("status") == "promoted" and any(e.action == "round_started" for e in s)
                ),
                240 if quick else 420,
            )
        finally:
            after.terminate()
            after.wait(30)
        print(f"== 8. the cycle in the audit trail (`abgate experiments history {name}`)")
        print(_cli("experiments", "history", name, "--evaluator", evaluator_target).rstrip())
        new_model = next(
            (a["model"] for a in view["definition"]["arms"] if a["name"].startswith("r")), ""
        )
        if new_model:
            print(f"== 9. the retrained model's lineage (`abgate models lineage {new_model[:12]}`)")
            print(_cli("models", "lineage", new_model, "--store", str(store_dir)).rstrip())
        (workdir / "cycle.json").write_text(json.dumps(view, indent=1, sort_keys=True))
        _report(workdir, name, database_url, step=10)
        rc = 0
    except (RuntimeError, TimeoutError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", None) or ""
        print(f"abgate: error: the cycle demo failed: {exc} {detail}".rstrip(), file=sys.stderr)
    finally:
        if watch is not None:
            watch.close()
        print("== 11. stopping everything")
        for proc_name in ("trainer", "gateway"):
            if _stop(proc_name, procs[proc_name]) != 0 and proc_name == "gateway":
                rc = 1
        _stop("evaluator", evaluator)
        try:
            print(f"   prediction log: {asyncio_run_count(database_url)} rows in PostgreSQL")
        except Exception as exc:  # the story already ended; say what we can
            print(f"   prediction log not readable: {exc}")
        finally:
            pg.stop()
    return rc


def asyncio_run_count(url: str) -> int:
    import asyncio

    return asyncio.run(_count_rows(url))
