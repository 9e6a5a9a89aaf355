"""The trainer through real processes: ``abgate evaluator`` and ``abgate trainer`` on a real
PostgreSQL, driven by the CLI (``abgate retrain``, ``experiments show/approve``, ``models
lineage``); the logged traffic (captured features and outcomes) is written with SQL as a
gateway writes it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from abgate.addresses import free_port
from abgate.demo import wait_serving
from abgate.trainer.core import TEST_HOLD_ENV, holdout_mask
from gateway.modelstore import ModelStore
from tests.evaluator.conftest import TOKEN, fetch
from tests.trainer.conftest import concept_rows, insert_rows, register_models, window_rows

pytestmark = pytest.mark.slow
ENV = {**os.environ, "ABGATE_TOKEN": TOKEN}


def abgate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "abgate", *args], env=env or ENV, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class Cycle:
    """An evaluator process, the trainers started from here, and the CLI pointed at both."""

    def __init__(self, url: str, tmp: Path) -> None:
        self.url, self.tmp = url, tmp
        self.store = tmp / "models"
        self.champion, self.control = register_models(self.store)
        self.target = f"127.0.0.1:{free_port()}"
        self.logs: list[Path] = []
        self.trainers: list[subprocess.Popen[str]] = []
        self.evaluator = self._spawn("evaluator", [
            "evaluator", "--listen", self.target, "--database-url", url, "--model-store",
            str(self.store), "--round-cooldown", "0", "--tick-interval", "0.5",
        ])  # fmt: skip
        wait_serving(self.target, timeout=60, proc=self.evaluator)  # type: ignore[arg-type]

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Any:
        log = self.tmp / f"{name}-{len(self.logs)}.log"
        self.logs.append(log)
        return subprocess.Popen(
            [sys.executable, "-m", "abgate", *args], env=env or ENV, text=True,
            stdout=log.open("w"), stderr=subprocess.STDOUT,
        )  # fmt: skip

    def trainer(self, name: str, *extra: str, hold: Path | None = None) -> subprocess.Popen[str]:
        env = {**ENV, **({TEST_HOLD_ENV: str(hold)} if hold is not None else {})}
        proc = self._spawn(f"trainer-{name}", [
            "trainer", "--database-url", self.url, "--model-store", str(self.store),
            "--evaluator", self.target, "--poll-interval", "0.2", "--trainer-id", name, *extra,
        ], env)  # fmt: skip
        self.trainers.append(proc)
        return proc

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return abgate(*args, "--evaluator", self.target)

    def experiment(self, name: str, *extra: str) -> None:
        """``name``: churn-stump vs churn, churn promoted (round 1 ended); ``extra``: more
        `experiments create` flags."""
        r = self.cli("experiments", "create", "--name", name, "--arm",
                     f"control={self.control}", "--arm", f"treatment={self.champion}",
                     *extra)  # fmt: skip
        assert r.returncode == 0, r.stderr
        r = self.cli("experiments", "promote", name, "--arm", "treatment")
        assert r.returncode == 0, r.stderr

    def request(self, request_id: int) -> dict[str, Any]:
        (row,) = fetch(self.url, "SELECT * FROM retrain_requests WHERE id = $1", request_id)
        row["result"] = json.loads(row["result"])
        return row

    def answered(self, request_id: int, timeout: float = 60.0) -> dict[str, Any]:
        return wait_for(
            lambda: (r := self.request(request_id))["state"] != "pending" and r,
            timeout, f"request {request_id} answered",
        )  # fmt: skip

    def actions(self, experiment: str) -> list[str]:
        rows = fetch(self.url, "SELECT action FROM decisions WHERE experiment = $1 ORDER BY id",
                     experiment)  # fmt: skip
        return [r["action"] for r in rows]

    def close(self) -> None:
        for proc in [*self.trainers, self.evaluator]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in [*self.trainers, self.evaluator]:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def cycle(fresh_db: str, tmp_path: Path) -> Iterator[Cycle]:
    c = Cycle(fresh_db, tmp_path)
    try:
        yield c
    finally:
        c.close()


def _request_id(out: str) -> int:
    return int(out.split("retrain request ")[1].split()[0])


def test_manual_retrain_end_to_end(cycle: Cycle) -> None:
    """Too few rows: the request waits for more (--wait-for-rows), saying the counts; then,
    with the rows, the same request registers a model as the champion's child, round 2 running,
    shown by `experiments show` and `models lineage`; SIGTERM stops the trainer cleanly."""
    c = cycle
    c.experiment("exp")
    trainer = c.trainer("t1", "--recheck-interval", "0.3")
    ids, X, y = window_rows()
    insert_rows(c.url, "exp", ids[:50], X[:50], y[:50])
    r = c.cli("retrain", "--experiment", "exp", "--reason", "weekly", "--json")
    assert r.returncode == 0, r.stderr
    request_id = json.loads(r.stdout)["id"]
    wait_for(lambda: c.request(request_id)["waits"] >= 2, 30, "the request waited twice")
    (waiting,) = fetch(c.url, "SELECT recommendation FROM decisions WHERE action = $1",
                       "retrain_waiting")  # fmt: skip
    assert "too few labelled rows: 50" in waiting["recommendation"]
    assert "at least 200 needed" in waiting["recommendation"]
    assert c.request(request_id)["state"] == "pending"
    r = c.cli("retrain", "--experiment", "exp")  # one open request per experiment
    assert r.returncode == 0 and "already pending" in r.stdout, r.stdout

    insert_rows(c.url, "exp", ids[50:], X[50:], y[50:])
    second = c.answered(request_id)
    assert second["state"] == "registered", second["result"]
    sha = second["result"]["model"]["sha256"]
    assert second["result"]["rows"]["labelled"] == 600
    assert second["result"]["round"]["round"] == 2

    r = c.cli("experiments", "show", "exp")
    assert r.returncode == 0, r.stderr
    assert "exp: running" in r.stdout
    assert f"round 2: treatment ({c.champion[:12]}) vs r2 ({sha[:12]})" in r.stdout
    r = c.cli("experiments", "show", "exp", "--json", "--full")
    view = json.loads(r.stdout)
    assert view["details"]["round"] == 2 and view["weights"] == {"treatment": 50.0, "r2": 50.0}
    r = abgate("models", "lineage", sha, "--store", str(c.store))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("sha256=") == 2
    assert f"parent: {c.champion[:12]}" in r.stdout
    assert f"retrain_request={request_id}" in r.stdout
    cycle_actions = [a for a in c.actions("exp") if a.startswith(("retrain", "round"))]
    assert cycle_actions == [
        "retrain_requested", "retrain_started", "retrain_waiting", "round_started", "retrained",
    ]  # fmt: skip
    trainer.send_signal(signal.SIGTERM)
    assert trainer.wait(30) == 0
    assert "trainer t1 stopped" in c.logs[-1].read_text()


def test_retrain_cli_errors(cycle: Cycle) -> None:
    r = cycle.cli("retrain", "--experiment", "nope")
    assert r.returncode == 1 and "NOT_FOUND" in r.stderr
    r = abgate("retrain", "--experiment", "exp", "--evaluator", cycle.target,
               env={k: v for k, v in ENV.items() if k != "ABGATE_TOKEN"})  # fmt: skip
    assert r.returncode == 2 and "ABGATE_TOKEN" in r.stderr
    r = abgate("trainer", "--model-store", str(cycle.store))
    assert r.returncode == 2 and "--database-url" in r.stderr
    r = abgate("trainer", "--database-url", cycle.url, "--model-store", str(cycle.store),
               "--approve", "sometimes")  # fmt: skip
    assert r.returncode == 2 and "--approve must be auto or manual" in r.stderr
    r = abgate("trainer", "--database-url", cycle.url, "--model-store", str(cycle.tmp / "no"))
    assert r.returncode == 2 and "no such directory" in r.stderr
    for flag, value, message in (
        ("--base-dataset", "sklearn:nope", "not one of sklearn:breast_cancer"),
        ("--base-dataset", str(cycle.tmp / "none.csv"), "no such file"),
        ("--no-worse-metric", "f1", "--no-worse-metric must be one of"),
    ):
        r = abgate("trainer", "--database-url", cycle.url, "--model-store", str(cycle.store),
                   flag, value)  # fmt: skip
        assert r.returncode == 2 and message in r.stderr, r.stderr


def test_a_trainer_killed_mid_training_is_retried_once(cycle: Cycle, tmp_path: Path) -> None:
    c = cycle
    c.experiment("exp")
    ids, X, y = window_rows()
    insert_rows(c.url, "exp", ids, X, y)
    hold = tmp_path / "hold"
    hold.mkdir()
    doomed = c.trainer("doomed", hold=hold)
    r = c.cli("retrain", "--experiment", "exp")
    request_id = _request_id(r.stdout)
    wait_for(lambda: list(hold.glob(f"claimed-{request_id}-*")), what="the claim")
    before = {m.sha256 for m in ModelStore(c.store).list()}
    doomed.send_signal(signal.SIGKILL)  # after the claim, before registering
    doomed.wait(10)
    row = c.request(request_id)
    assert (row["state"], row["attempts"], row["claimed_by"]) == ("pending", 1, "doomed")
    c.trainer("heir")
    row = c.answered(request_id)
    assert (row["state"], row["attempts"], row["claimed_by"]) == ("registered", 2, "heir")
    new = {m.sha256 for m in ModelStore(c.store).list()} - before
    assert new == {row["result"]["model"]["sha256"]}
    assert c.actions("exp").count("round_started") == 1
    assert c.actions("exp").count("retrain_started") == 2
    (count,) = fetch(
        c.url, "SELECT count(*) AS n FROM experiment_versions WHERE experiment = 'exp'"
    )
    assert count["n"] == 3  # create, promote, round 2


def test_two_trainers_never_take_the_same_request(cycle: Cycle, tmp_path: Path) -> None:
    c = cycle
    ids, X, y = window_rows()
    for name in ("a", "b"):
        c.experiment(name)
        insert_rows(c.url, name, [f"{name}-{i}" for i in ids], X, y)
    hold = tmp_path / "hold"
    hold.mkdir()
    c.trainer("t1", hold=hold)
    c.trainer("t2", hold=hold)
    request_ids = [_request_id(c.cli("retrain", "--experiment", n).stdout) for n in ("a", "b")]
    claims = wait_for(lambda: len(found := list(hold.glob("claimed-*"))) == 2 and found,
                      what="two claims")  # fmt: skip
    by_request = {int(p.name.split("-")[1]): p.read_text() for p in claims}
    assert sorted(by_request) == sorted(request_ids)
    assert sorted(by_request.values()) == ["t1", "t2"]
    (hold / "release").touch()
    for rid in request_ids:
        row = c.answered(rid)
        assert (row["state"], row["attempts"]) == ("registered", 1)
        assert row["claimed_by"] == by_request[rid]


def test_a_worse_model_is_not_registered_and_is_audited(cycle: Cycle) -> None:
    c = cycle
    c.experiment("exp")
    ids, X, y = window_rows()
    hold = holdout_mask(ids, 0.2)
    insert_rows(c.url, "exp", ids, X, np.where(hold, y, 1 - y))  # the training side flipped
    before = ModelStore(c.store).list()
    c.trainer("t1")
    row = c.answered(_request_id(c.cli("retrain", "--experiment", "exp").stdout))
    assert row["state"] == "rejected"
    assert "worse than the champion" in row["result"]["reason"]
    assert ModelStore(c.store).list() == before
    assert [a for a in c.actions("exp") if a.startswith("retrain")][-1] == "retrain_rejected"
    r = c.cli("experiments", "show", "exp")
    assert "exp: promoted" in r.stdout and "round 2" not in r.stdout

    # The same rows with a base dataset of true rows beside them (a trainer started with
    # --base-dataset): the model learns the concept and registers, round 2 starts.
    Xb, yb = concept_rows(2000, shifted=True, seed=11)
    base = c.tmp / "base.npz"
    np.savez(base, X=Xb, y=yb)
    for proc in c.trainers:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    c.trainer("t2", "--base-dataset", str(base))
    row = c.answered(_request_id(c.cli("retrain", "--experiment", "exp").stdout))
    assert row["state"] == "registered", row["result"]
    assert row["result"]["rows"]["base"] == 2000
    assert row["result"]["round"]["round"] == 2


def test_manual_approval(cycle: Cycle) -> None:
    c = cycle
    c.experiment("exp")
    ids, X, y = window_rows()
    insert_rows(c.url, "exp", ids, X, y)
    c.trainer("t1", "--approve", "manual")
    row = c.answered(_request_id(c.cli("retrain", "--experiment", "exp").stdout))
    assert row["state"] == "registered" and row["result"]["round"]["status"] == "awaiting_approval"
    r = c.cli("experiments", "show", "exp")
    assert "exp: awaiting_approval" in r.stdout and "treatment=100%, r2=0%" in r.stdout
    r = c.cli("experiments", "approve", "exp", "--reason", "looks good")
    assert r.returncode == 0, r.stderr
    assert "exp: running" in r.stdout and "treatment=50%, r2=50%" in r.stdout
    r = c.cli("experiments", "approve", "exp")
    assert r.returncode == 1 and "FAILED_PRECONDITION" in r.stderr


def test_a_canary_experiments_next_round_is_a_canary(cycle: Cycle) -> None:
    """The round the trainer starts follows the experiment's policy: a canary experiment's
    round 2 starts at the first canary stage (its stages are decided as round 1's were:
    tests/evaluator/test_canary_e2e.py drives one through a gateway)."""
    c = cycle
    c.experiment("can", "--kind", "canary", "--stage-hold", "60")
    ids, X, y = window_rows()
    insert_rows(c.url, "can", ids, X, y)
    c.trainer("t1")
    row = c.answered(_request_id(c.cli("retrain", "--experiment", "can").stdout))
    assert row["state"] == "registered", row["result"]
    assert row["result"]["round"]["status"] == "running"
    r = c.cli("experiments", "show", "can", "--json", "--full")
    view = json.loads(r.stdout)
    assert view["definition"]["kind"] == "CANARY" and view["weights"] == {
        "treatment": 99.0,
        "r2": 1.0,
    }
    r = c.cli("experiments", "show", "can")
    assert "can: running" in r.stdout and "treatment=99%, r2=1%" in r.stdout


def test_sigterm_mid_training_leaves_the_request_pending(cycle: Cycle, tmp_path: Path) -> None:
    c = cycle
    c.experiment("exp")
    ids, X, y = window_rows()
    insert_rows(c.url, "exp", ids, X, y)
    hold = tmp_path / "hold"
    hold.mkdir()
    trainer = c.trainer("t1", hold=hold)
    request_id = _request_id(c.cli("retrain", "--experiment", "exp").stdout)
    wait_for(lambda: list(hold.glob(f"claimed-{request_id}-*")), what="the claim")
    trainer.send_signal(signal.SIGTERM)
    assert trainer.wait(30) == 0
    row = c.request(request_id)
    assert (row["state"], row["attempts"]) == ("pending", 1)
    c.trainer("t2")
    assert c.answered(request_id)["state"] == "registered"
