"""abgate.trainer.core on a real PostgreSQL with a real evaluator: the split, recipes rebuilt from
data, the claim (attempts, giving up, two claimers), and each verdict on one request:
registered with lineage and round 2 started, too few rows, one class, a worse model."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import numpy as np
import pytest

from abgate.trainer.base import load_base_dataset
from abgate.trainer.core import (
    TEST_HOLD_ENV,
    Outcome,
    RecipeError,
    TrainerConfig,
    claim,
    estimator_from_recipe,
    holdout_mask,
    process_next,
)
from abgate.trainer.service import round_starter
from abgate.v1 import control_pb2 as cpb
from converters.recipe import lineage, recipe_of
from gateway.modelstore import ModelStore
from tests.conftest import DemoStore
from tests.evaluator.conftest import TOKEN, fetch
from tests.trainer.conftest import (
    N_FEATURES,
    Setup,
    concept_rows,
    insert_rows,
    promoted,
    window_rows,
)


# -- pure parts -------------------------------------------------------------------------------
def test_holdout_mask_is_a_function_of_the_request_id() -> None:
    ids = [f"r-{i}" for i in range(20_000)]
    mask = holdout_mask(ids, 0.2)
    assert abs(mask.mean() - 0.2) < 0.015  # binomial sd 0.0028
    assert np.array_equal(holdout_mask(ids[:500], 0.2), mask[:500])  # the same row, same side
    assert np.array_equal(holdout_mask(list(reversed(ids)), 0.2), mask[::-1])
    assert not holdout_mask(ids[:100], 0.0).any()
    assert holdout_mask(ids[:100], 1.0).all()


def test_recipes_of_the_demo_models_rebuild_the_same_estimators(demo_store: DemoStore) -> None:
    for meta in demo_store.metas.values():
        rebuilt = estimator_from_recipe(meta.recipe)
        again = recipe_of(rebuilt, feature_names=meta.feature_names)
        assert again["estimator"] == meta.recipe["estimator"], meta.id
        assert again["steps"] == meta.recipe["steps"], meta.id


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        ({"estimator": {"class": "os.system", "params": {}}}, "not under sklearn."),
        ({"estimator": {"class": "sklearn.nothere.Model", "params": {}}}, "no module"),
        ({"estimator": {"class": "sklearn.base.clone", "params": {}}}, "not a scikit-learn"),
        ({"estimator": {"class": "sklearn.__import__('os')", "params": {}}}, "dotted class"),
        (
            {"estimator": {"class": "sklearn.linear_model.LogisticRegression",
                           "params": {"class_weight": "{0: 1, 1: 2}"}}},
            "kept only as its repr",
        ),
        (
            {"estimator": {"class": "sklearn.ensemble.RandomForestClassifier",
                           "params": {"random_state": "RandomState(MT19937)"}}},
            "kept only as its repr",
        ),
        (
            {"estimator": {"class": "sklearn.linear_model.LogisticRegression",
                           "params": {"no_such_param": 1}}},
            "does not take its parameters",
        ),
        ({"estimator": {"class": "sklearn.pipeline.Pipeline", "params": {}}}, "without steps"),
        (
            {"estimator": {"class": "sklearn.pipeline.Pipeline", "params": {}},
             "steps": [{"name": "x", "class": "subprocess.Popen", "params": {}}]},
            "steps[0]: class 'subprocess.Popen' is not under sklearn.",
        ),
        ({}, "no estimator"),
    ],
)  # fmt: skip
def test_recipes_that_cannot_be_rebuilt_are_refused_by_name(
    recipe: dict[str, Any], message: str
) -> None:
    with pytest.raises(RecipeError) as info:
        estimator_from_recipe(recipe)
    assert message in str(info.value)


# -- one request through the core -----------------------------------------------------------
def _retrain(s: Setup, experiment: str = "exp") -> cpb.RequestRetrainResponse:
    return s.ev.admin.call(
        "RequestRetrain", cpb.RequestRetrainRequest(experiment=experiment, reason="test")
    )


def _process(s: Setup, config: TrainerConfig, with_round: bool = True) -> Any:
    async def run() -> Any:
        conn = await asyncpg.connect(s.url)
        channel = grpc.aio.insecure_channel(s.ev.target)
        try:
            starter = round_starter(channel, TOKEN) if with_round else None
            return await process_next(conn, ModelStore(s.store), config, starter)
        finally:
            await channel.close(None)
            await conn.close()

    return asyncio.run(run())


def _request(url: str, request_id: int) -> dict[str, Any]:
    (row,) = fetch(url, "SELECT * FROM retrain_requests WHERE id = $1", request_id)
    row["result"] = json.loads(row["result"])
    return row


def _actions(url: str, experiment: str = "exp") -> list[str]:
    rows = fetch(url, "SELECT action FROM decisions WHERE experiment = $1 ORDER BY id", experiment)
    return [r["action"] for r in rows]


CONFIG = TrainerConfig(claimer="test-trainer")


def test_a_retrain_registers_a_child_of_the_champion_and_starts_round_2(setup: Setup) -> None:
    s = setup
    ids, X, y = window_rows()
    insert_rows(s.url, "exp", ids, X, y)
    before = {m.sha256 for m in ModelStore(s.store).list()}
    req = _retrain(s)
    assert req.created and req.state == "pending"
    again = _retrain(s)  # one pending request per experiment
    assert (again.id, again.created) == (req.id, False)

    claimed, outcome = _process(s, CONFIG)
    assert claimed.id == req.id and claimed.attempts == 1
    assert outcome.state == "registered", outcome.reason
    row = _request(s.url, req.id)
    assert row["state"] == "registered" and row["claimed_by"] == "test-trainer"
    result = row["result"]
    hold = holdout_mask(ids, 0.2)
    assert result["rows"] == {"captured": 600, "labelled": 600, "train": int((~hold).sum()),
                              "holdout": int(hold.sum())}  # fmt: skip
    # The champion knows the concept before the shift, the retrained model the one after.
    assert result["holdout"]["champion"]["accuracy"] < 0.7
    assert result["holdout"]["challenger"]["accuracy"] > 0.9
    assert result["round"] == {"round": 2, "status": "running", "version": 3}

    store = ModelStore(s.store)
    new = {m.sha256 for m in store.list()} - before
    assert new == {result["model"]["sha256"]}
    meta = store.get(result["model"]["sha256"])
    assert (meta.id, meta.version) == ("churn", "2")
    assert meta.recipe["parent_sha256"] == s.champion
    assert meta.recipe["training"]["rows"] == result["rows"]["train"]
    assert meta.recipe["training"]["retrain_request"] == req.id
    assert meta.recipe["holdout"]["rows"] == result["rows"]["holdout"]
    assert [m.sha256 for m in lineage(store, meta.sha256)] == [meta.sha256, s.champion]

    view = s.ev.admin.call("GetExperiment", cpb.ExperimentRequest(name="exp"))
    assert view.status == "running"
    assert [(a.name, a.model) for a in view.definition.arms] == [
        ("treatment", s.champion), ("r2", meta.sha256)
    ]  # fmt: skip
    assert dict(view.weights) == {"treatment": 50.0, "r2": 50.0}
    details = json.loads(view.details_json)
    assert details["round"] == 2 and details["round_request"] == req.id
    assert details["since_version"] == view.snapshot_version  # statistics from round 2 on
    # The steps, in order (the evaluator's own ticks may add "continue" rows of round 2 at any
    # time: they are its cadence, not the retrain's).
    steps = [a for a in _actions(s.url) if a != "continue"]
    assert steps == ["create", "promote", "retrain_requested", "retrain_started",
                     "round_started", "retrained"]  # fmt: skip
    # Nothing more to do.
    assert _process(s, CONFIG) is None

    # Again while round 2 runs: the champion (still "treatment") trains to the same bytes on
    # the same rows; no second model, and no round can start while one runs.
    _retrain(s)
    _, outcome = _process(s, CONFIG)
    assert outcome.state == "registered"
    assert outcome.result["model"] == {**result["model"], "already_registered": True}
    assert outcome.result["round"]["error"].startswith("FAILED_PRECONDITION: experiment 'exp' "
                                                       "is running (round 2)")  # fmt: skip
    assert "next round not started" in outcome.reason
    assert {m.sha256 for m in ModelStore(s.store).list()} - before == new


def test_too_few_labelled_rows_is_rejected_naming_the_counts(setup: Setup) -> None:
    s = setup
    ids, X, y = window_rows()
    insert_rows(s.url, "exp", ids[:50], X[:50], y[:50])
    insert_rows(s.url, "exp", [f"nolabel-{i}" for i in range(30)], X[:30], None)  # no outcome
    before = ModelStore(s.store).list()
    req = _retrain(s)
    _, outcome = _process(s, CONFIG)
    assert outcome.state == "rejected"
    assert "too few labelled rows: 50 (of 80 captured" in outcome.reason
    assert "at least 200 needed" in outcome.reason
    assert _request(s.url, req.id)["state"] == "rejected"
    assert ModelStore(s.store).list() == before
    assert _actions(s.url)[-2:] == ["retrain_started", "retrain_rejected"]


def test_a_request_with_too_few_rows_waits_for_more_then_trains_on_them(setup: Setup) -> None:
    """--wait-for-rows: put back (pending, not claimable before the recheck, the claim not
    counted, one retrain_waiting audit row however often it is looked at); then, with the rows,
    the same request trains on every row up to the claim that trains."""
    s = setup
    ids, X, y = window_rows()
    insert_rows(s.url, "exp", ids[:50], X[:50], y[:50])
    waiting = TrainerConfig(claimer="patient", wait_for_rows=3600, recheck_interval=0.3)
    req = _retrain(s)
    claimed, outcome = _process(s, waiting)
    assert claimed.id == req.id and outcome.state == "waiting"
    assert "too few labelled rows: 50" in outcome.reason and "waiting for more" in outcome.reason
    row = _request(s.url, req.id)
    assert (row["state"], row["attempts"], row["waits"], row["claimed_by"]) == (
        "pending", 0, 1, ""
    )  # fmt: skip
    assert row["window_end"] is None and row["not_before"] > row["claimed_at"]
    assert _process(s, waiting) is None  # not before the recheck
    time.sleep(0.4)
    _, outcome = _process(s, waiting)
    assert outcome.state == "waiting" and _request(s.url, req.id)["waits"] == 2
    assert _actions(s.url)[-3:] == ["retrain_requested", "retrain_started", "retrain_waiting"]

    insert_rows(s.url, "exp", ids[50:], X[50:], y[50:])  # after the request was made
    time.sleep(0.4)
    _, outcome = _process(s, waiting)
    assert outcome.state == "registered", outcome.reason
    assert outcome.result["rows"]["labelled"] == len(ids)
    row = _request(s.url, req.id)
    assert (row["state"], row["attempts"]) == ("registered", 1)
    assert row["window_end"] >= row["created_at"]
    # (The evaluator's tick may already have looked at round 2 and written "continue".)
    steps = [a for a in _actions(s.url) if a != "continue"]
    assert steps[-4:] == ["retrain_started", "retrain_waiting", "round_started", "retrained"]


def test_a_request_still_short_of_rows_after_its_wait_is_rejected(setup: Setup) -> None:
    s = setup
    ids, X, y = window_rows()
    insert_rows(s.url, "exp", ids[:50], X[:50], y[:50])
    short = TrainerConfig(claimer="t", wait_for_rows=0.5, recheck_interval=0.2)
    req = _retrain(s)
    assert _process(s, short)[1].state == "waiting"
    time.sleep(0.6)
    _, outcome = _process(s, short)
    assert outcome.state == "rejected"
    assert "too few labelled rows: 50" in outcome.reason
    assert "after waiting" in outcome.reason and "--wait-for-rows 0.5" in outcome.reason
    assert _request(s.url, req.id)["state"] == "rejected"
    assert _actions(s.url)[-3:] == ["retrain_started", "retrain_waiting", "retrain_rejected"]
    with pytest.raises(ValueError, match="--wait-for-rows"):
        TrainerConfig(wait_for_rows=-1)
    with pytest.raises(ValueError, match="--recheck-interval"):
        TrainerConfig(recheck_interval=0)


def test_a_single_class_is_rejected(setup: Setup) -> None:
    s = setup
    ids, X, _ = window_rows()
    insert_rows(s.url, "exp", ids, X, np.ones(len(ids)))
    _retrain(s)
    _, outcome = _process(s, CONFIG)
    assert (outcome.state, outcome.reason) == (
        "rejected",
        "only one class (1) in 600 labelled rows",
    )


def test_a_model_worse_than_the_champion_is_rejected_and_not_registered(setup: Setup) -> None:
    """The outcomes of the rows the split trains on are flipped (the holdout's are true): the
    retrained model learns the opposite of the truth, the champion does not."""
    s = setup
    ids, X, y = window_rows()
    hold = holdout_mask(ids, 0.2)
    insert_rows(s.url, "exp", ids, X, np.where(hold, y, 1 - y))
    before = ModelStore(s.store).list()
    req = _retrain(s)
    _, outcome = _process(s, CONFIG)
    assert outcome.state == "rejected"
    assert "worse than the champion" in outcome.reason and "not registered" in outcome.reason
    result = _request(s.url, req.id)["result"]
    assert result["holdout"]["champion"]["accuracy"] > 0.3
    assert result["holdout"]["challenger"]["accuracy"] < 0.2
    assert ModelStore(s.store).list() == before
    (audit,) = fetch(s.url, "SELECT statistics FROM decisions WHERE action = 'retrain_rejected'")
    assert json.loads(audit["statistics"])["holdout"] == result["holdout"]
    view = s.ev.admin.call("GetExperiment", cpb.ExperimentRequest(name="exp"))
    assert view.status == "promoted" and json.loads(view.details_json)["round"] == 1


def test_claims_are_counted_and_a_request_is_given_up_after_max_attempts(setup: Setup) -> None:
    s = setup
    req = _retrain(s)

    async def dead_claims(n: int) -> None:
        for i in range(n):  # each claimer dies right after counting its claim
            conn = await asyncpg.connect(s.url)
            c = await claim(conn, f"dead-{i}")
            assert c is not None and c.id == req.id and c.attempts == i + 1
            conn.terminate()

    asyncio.run(dead_claims(2))
    assert _request(s.url, req.id)["state"] == "pending"
    claimed, outcome = _process(s, TrainerConfig(claimer="last", max_attempts=2))
    assert claimed.attempts == 3
    assert outcome.state == "failed"
    assert "gave up after 2 attempts" in outcome.reason
    row = _request(s.url, req.id)
    assert (row["state"], row["attempts"]) == ("failed", 3)
    assert _actions(s.url)[-1] == "retrain_failed"


def test_two_trainers_at_once_take_different_requests(
    setup: Setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = setup
    promoted(s.ev, "exp2", s.control, s.champion)
    ids, X, y = window_rows()
    insert_rows(s.url, "exp", ids, X, y)
    insert_rows(s.url, "exp2", [f"b-{i}" for i in ids], X, y)
    first, second = _retrain(s, "exp"), _retrain(s, "exp2")
    hold = tmp_path / "hold"
    hold.mkdir()
    monkeypatch.setenv(TEST_HOLD_ENV, str(hold))

    async def run() -> list[Any]:
        conns = [await asyncpg.connect(s.url) for _ in range(3)]
        store = ModelStore(s.store)
        try:
            tasks = [
                asyncio.ensure_future(process_next(c, store, TrainerConfig(claimer=f"t{i}"), None))
                for i, c in enumerate(conns[:2])
            ]
            for _ in range(400):
                if len(list(hold.glob("claimed-*"))) == 2:
                    break
                await asyncio.sleep(0.05)
            # Both held (claimed, locked, training): a third finds nothing to take.
            assert await claim(conns[2], "t3") is None
            (hold / "release").touch()
            return await asyncio.gather(*tasks)
        finally:
            for c in conns:
                await c.close()

    results = asyncio.run(run())
    claimed = sorted(int(p.name.split("-")[1]) for p in hold.glob("claimed-*"))
    assert claimed == sorted([first.id, second.id])
    assert sorted(c.id for c, _ in results) == claimed
    outcomes: list[Outcome] = [o for _, o in results]
    assert [o.state for o in outcomes] == ["registered", "registered"]
    for rid in claimed:
        assert _request(s.url, rid)["attempts"] == 1


def _champion_experiment(s: Setup, name: str, champion_sha: str) -> None:
    promoted(s.ev, name, s.control, champion_sha)
    ids, X, y = window_rows(prefix=name)
    insert_rows(s.url, name, ids, X, y)


def test_a_champion_whose_recipe_cannot_be_rebuilt_is_refused(setup: Setup, tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    from converters.sklearn_onnx import convert_and_register
    from tests.evaluator.onnx_models import constant_model, register
    from tests.trainer.conftest import N_FEATURES, concept_rows

    s = setup
    X, y = concept_rows(200, shifted=False, seed=5)
    weighted = LogisticRegression(class_weight={0: 1.0, 1: 2.0}).fit(X, y)
    meta = convert_and_register(weighted, X, ModelStore(s.store), id="weighted")
    assert meta.recipe["estimator"]["params"]["class_weight"] == "{0: 1.0, 1: 2.0}"  # a repr
    _champion_experiment(s, "weighted", meta.sha256)
    onnx_only = register(s.store, tmp_path, "onnx-only", constant_model(N_FEATURES))
    _champion_experiment(s, "onnx-only", onnx_only)
    before = ModelStore(s.store).list()
    for name, message in (
        ("weighted", "estimator: parameter class_weight='{0: 1.0, 1: 2.0}' was kept only as its "
                     "repr; it cannot be rebuilt"),
        ("onnx-only", "has no recipe (registered as ONNX): nothing to retrain from"),
    ):  # fmt: skip
        _retrain(s, name)
        _, outcome = _process(s, CONFIG)
        assert outcome.state == "rejected" and message in outcome.reason, outcome.reason
    assert ModelStore(s.store).list() == before


def test_a_request_naming_where_the_change_began_trains_on_what_came_after(
    setup: Setup,
) -> None:
    """details.since (the evaluator's drift/decay request: the start of the window that acted)
    moves the window's start: rows logged before it are not trained on."""
    import time

    from evaluator.retrain import request_retrain

    s = setup
    ids, X, y = window_rows(600, prefix="new")
    insert_rows(s.url, "exp", [f"old-{i}" for i in range(400)], X[:400], 1 - y[:400])
    insert_rows(s.url, "exp", ids, X, y)
    fetch(s.url, "UPDATE prediction_features SET ts = now() - interval '10 seconds' "
                 "WHERE request_id LIKE 'new-%' RETURNING 1")  # fmt: skip

    async def ask() -> int:
        conn = await asyncpg.connect(s.url)
        try:
            r = await request_retrain(
                conn, "exp", "decay", "accuracy fell", details={"since": time.time() - 30}
            )
            return r.id
        finally:
            await conn.close()

    req = asyncio.run(ask())
    _, outcome = _process(s, CONFIG)
    assert outcome.state == "registered", outcome.reason
    row = _request(s.url, req)
    result = json.loads(row["result"]) if isinstance(row["result"], str) else row["result"]
    assert result["rows"]["captured"] == 600 and result["rows"]["labelled"] == 600


def test_a_base_dataset_trains_beside_the_logged_rows_never_in_the_holdout(
    setup: Setup, tmp_path: Path
) -> None:
    """The logged rows' training labels are flipped (as in the worse-model test): alone they
    teach the opposite of the truth and nothing registers; with a base dataset of 2,000 true
    rows beside them the model learns the concept and registers, measured on the same logged
    holdout, its recipe naming the base."""
    s = setup
    ids, X, y = window_rows()
    hold = holdout_mask(ids, 0.2)
    insert_rows(s.url, "exp", ids, X, np.where(hold, y, 1 - y))
    Xb, yb = concept_rows(2000, shifted=True, seed=11)
    path = tmp_path / "base.npz"
    np.savez(path, X=Xb, y=yb)
    config = TrainerConfig(claimer="t", base=load_base_dataset(str(path)))
    req = _retrain(s)
    _, outcome = _process(s, config)
    assert outcome.state == "registered", outcome.reason
    result = _request(s.url, req.id)["result"]
    assert result["rows"]["base"] == 2000
    assert result["rows"]["train"] == 2000 + int((~hold).sum())
    assert result["rows"]["holdout"] == int(hold.sum())  # logged rows only
    assert result["holdout"]["challenger"]["accuracy"] > 0.9
    assert f"(2000 from {path})" in outcome.reason
    meta = ModelStore(s.store).get(result["model"]["sha256"])
    assert meta.recipe["training"]["base_rows"] == 2000
    assert meta.recipe["training"]["data"] == f"prediction_features+outcomes+{path}"
    assert meta.recipe["training"]["rows"] == result["rows"]["train"]

    # A base dataset of another width than the champion's input is refused by name.
    _retrain(s)
    wide = tmp_path / "wide.csv"
    wide.write_text("a,b,label\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(20)))
    _, outcome = _process(s, TrainerConfig(claimer="t", base=load_base_dataset(str(wide))))
    assert outcome.state == "rejected"
    assert outcome.reason == (
        f"the base dataset ({wide}) has 2 features, the champion churn:1 reads {N_FEATURES}"
    )


def test_the_no_worse_check_uses_the_chosen_metric(setup: Setup) -> None:
    """fpr is lower-is-better: the flipped model's higher false-positive rate is its loss, and
    at 0.01 it is refused; with accuracy and a bound of 1 the same model registers."""
    s = setup
    ids, X, y = window_rows()
    hold = holdout_mask(ids, 0.2)
    insert_rows(s.url, "exp", ids, X, np.where(hold, y, 1 - y))
    req = _retrain(s)
    _, outcome = _process(s, TrainerConfig(claimer="t", no_worse_metric="fpr"))
    assert outcome.state == "rejected"
    assert "worse than the champion" in outcome.reason and "fpr " in outcome.reason
    assert "lower is better" in outcome.reason
    result = _request(s.url, req.id)["result"]
    nw = result["no_worse"]
    assert (nw["metric"], nw["higher_is_better"], nw["allowed"]) == ("fpr", False, 0.01)
    assert nw["challenger"] > nw["champion"] + 0.01
    assert nw["champion"] == pytest.approx(result["holdout"]["champion"]["fpr"], abs=1e-6)
    _retrain(s)
    _, outcome = _process(s, TrainerConfig(claimer="t", max_regression=1.0), with_round=False)
    assert outcome.state == "registered", outcome.reason
    with pytest.raises(ValueError, match="--no-worse-metric must be one of"):
        TrainerConfig(no_worse_metric="f1")


def test_base_datasets_load_or_are_refused_by_name(tmp_path: Path) -> None:
    bc = load_base_dataset("sklearn:breast_cancer")  # ships inside scikit-learn
    assert bc.X.shape == (569, 30) and bc.X.dtype == np.float32
    assert set(np.unique(bc.y)) == {0, 1}
    csv = tmp_path / "rows.csv"
    csv.write_text("x0,x1,label\n0.5,1,0\n\n2,3.25,1\n")
    got = load_base_dataset(str(csv))
    assert got.X.tolist() == [[0.5, 1.0], [2.0, 3.25]] and got.y.tolist() == [0, 1]
    headless = tmp_path / "headless.csv"
    headless.write_text("0.5,1,0\n2,3.25,1\n")
    assert load_base_dataset(str(headless)).y.tolist() == [0, 1]
    bad = {
        "bad_label.csv": ("1,2,0\n1,2,0.5\n", "row 2: the label is not an integer"),
        "nan.csv": ("1,2,0\nnan,2,1\n", "row 2 has a value that is not finite"),
        "ragged.csv": ("1,2,0\n1,1\n", "line 2 has 2 columns, expected 3"),
        "text.csv": ("a,b\n1,x\n", "line 2: not a number"),
        "one_class.csv": ("1,2,1\n3,4,1\n", "every row has the same label"),
        "rows.txt": ("1,2,0\n", r"give a \.npz or \.csv file"),
    }
    for name, (text, message) in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=message):
            load_base_dataset(str(tmp_path / name))
    np.savez(tmp_path / "noy.npz", X=np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"needs arrays X and y, has \['X'\]"):
        load_base_dataset(str(tmp_path / "noy.npz"))
    np.savez(tmp_path / "obj.npz", X=np.array([{}], dtype=object), y=np.zeros(1))
    with pytest.raises(ValueError, match=r"not a readable \.npz"):
        load_base_dataset(str(tmp_path / "obj.npz"))  # object arrays are never unpickled
    for spec, message in (("sklearn:nope", "not one of sklearn:breast_cancer"),
                          (str(tmp_path / "missing.npz"), "no such file")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            load_base_dataset(spec)
