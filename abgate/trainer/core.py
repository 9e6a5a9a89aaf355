"""The trainer's work on one retrain request (issue #16): claim it, gather the training data,
rebuild and fit the champion's recipe, check the new model against the champion, register it
or say why not, and write the outcome.

The queue is ``retrain_requests`` (migration 0010). A claim is two steps on one connection:
a committed statement takes the oldest pending request no one holds (``FOR UPDATE SKIP
LOCKED``), counts the attempt and names the claimer, so a trainer that dies while training
has still counted its attempt; then a transaction locks that row again (``FOR UPDATE``) and
stays open while training, so no other trainer takes it, and a dead trainer's lock goes with
its connection. The terminal state (registered, rejected, failed) and its audit row are
written in that transaction. ``attempts`` counts claims: a request claimed more than
``max_attempts`` times is given up as failed. The first claim that trains fixes the end of the
training window (``window_end``), so a retry after a crash reads the same rows.

A request whose window holds too few labelled rows waits for more (migration 0013): it is put
back, pending, not to be claimed before ``recheck_interval`` seconds (its claim not counted as
an attempt, its window end cleared), until ``wait_for_rows`` seconds after it was made; then it
is rejected. The evaluator asks on the first sign of drift or decay, when the changed world has
few outcomes yet.

Rebuilding a recipe imports only classes under ``sklearn.`` and sets only JSON parameters: a
recipe is data, never unpickled or executed (``converters.recipe``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import mmh3
import numpy as np

from abgate.trainer.config import NO_WORSE_METRICS, TrainerConfig
from converters.recipe import holdout_metrics
from converters.sklearn_onnx import (
    ConversionError,
    ParityError,
    convert_checked,
    register_converted,
)
from gateway.modelstore import ModelMetadata, ModelStore, ModelStoreError, sha256_hex
from gateway.variants import SessionOptions

log = logging.getLogger(__name__)

# Test-only hook (tests/trainer): when this environment variable names a directory, a trainer
# that has claimed a request writes "claimed-<request id>-<pid>" there and then waits, lock
# held, until a file "release" appears in it. It makes "killed after the claim, before
# registering" a moment a test can reach deterministically. Never set it in production.
TEST_HOLD_ENV = "ABGATE_TRAINER_TEST_HOLD_DIR"

_SPLIT_PREFIX = b"holdout:"
_FULL = 1 << 32


class RecipeError(Exception):
    """A recipe that cannot be rebuilt (a class outside sklearn., a parameter kept as repr)."""


@dataclass(frozen=True)
class Claim:
    id: int
    experiment: str
    source: str
    reason: str
    attempts: int
    created_at: dt.datetime
    claimer: str
    # The request's details.since (Unix seconds), when its asker knows where the changed data
    # begins (the evaluator: the start of the window whose drift or decay acted).
    since: dt.datetime | None = None
    # The end of the training window, fixed by the first claim that trains (now, then).
    window_end: dt.datetime | None = None


@dataclass
class Outcome:
    """What became of one request: its terminal state, a one-line reason, the result JSON."""

    state: str  # registered | rejected | failed | waiting (put back for more rows)
    reason: str
    result: dict[str, Any] = field(default_factory=dict)
    model: ModelMetadata | None = None


# The next round, asked of the evaluator once a model is registered (trainer.service makes it
# a StartRound call): (experiment, model sha256, request id, require approval) -> a summary.
StartRound = Callable[[str, str, int, bool], Awaitable[dict[str, Any]]]


# -- the split ------------------------------------------------------------------------------
def holdout_mask(request_ids: Sequence[str], share: float) -> np.ndarray:
    """True for the rows held out: MurmurHash3 x86_32 (seed 0, unsigned) of b"holdout:" + the
    request id's UTF-8 below ``share`` * 2**32. A function of the request id alone, so a
    retried request and every later retrain put each row on the same side."""
    bound = min(max(round(share * _FULL), 0), _FULL)
    return np.fromiter(
        (mmh3.hash(_SPLIT_PREFIX + rid.encode(), 0, False) < bound for rid in request_ids),
        dtype=bool,
        count=len(request_ids),
    )


# -- recipes --------------------------------------------------------------------------------
# What converters.recipe writes for a value that is no JSON value: its repr ("{0: 1}",
# "(1, 2)", "RandomState(MT19937)", "<function f>", "array([...])", "nan").
_REPR = re.compile(r"^(?:[\[\(\{<]|[A-Za-z_][\w.]*\(|-?(?:nan|inf)$)")
_IDENT = re.compile(r"^[A-Za-z_]\w*$")


def _sklearn_class(name: Any, where: str) -> type:
    from sklearn.base import BaseEstimator

    if not isinstance(name, str) or not name.startswith("sklearn."):
        raise RecipeError(
            f"{where}: class {name!r} is not under sklearn. (only scikit-learn estimators are "
            "rebuilt)"
        )
    module_name, _, attr = name.rpartition(".")
    if not all(_IDENT.match(part) for part in name.split(".")):
        raise RecipeError(f"{where}: {name!r} is not a dotted class name")
    try:
        module = importlib.import_module(module_name)  # under sklearn., checked above
    except ImportError:
        raise RecipeError(f"{where}: no module {module_name!r} in this scikit-learn") from None
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, BaseEstimator)):
        raise RecipeError(f"{where}: {name!r} is not a scikit-learn estimator class")
    return cls


def _params(spec: Mapping[str, Any], where: str) -> dict[str, Any]:
    params = spec.get("params", {})
    if not isinstance(params, Mapping):
        raise RecipeError(f"{where}: params must be an object")
    out: dict[str, Any] = {}
    for key, value in params.items():
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, str) and _REPR.match(v):
                raise RecipeError(
                    f"{where}: parameter {key}={v!r} was kept only as its repr; it cannot be "
                    "rebuilt (retrain this model by hand)"
                )
        out[str(key)] = value
    return out


def _build(cls: type, params: Mapping[str, Any], where: str, **extra: Any) -> Any:
    try:
        return cls(**extra, **params)
    except TypeError as exc:
        raise RecipeError(f"{where}: {cls.__name__} does not take its parameters: {exc}") from None


def estimator_from_recipe(recipe: Mapping[str, Any]) -> Any:
    """An unfitted scikit-learn estimator (a Pipeline with its steps) from a model's recipe;
    RecipeError naming the problem when it cannot be rebuilt faithfully."""
    est = recipe.get("estimator")
    if not isinstance(est, Mapping):
        raise RecipeError("the recipe has no estimator")
    cls = _sklearn_class(est.get("class"), "estimator")
    params = _params(est, "estimator")
    steps = recipe.get("steps") or []
    from sklearn.pipeline import Pipeline

    if issubclass(cls, Pipeline):
        if not steps:
            raise RecipeError("estimator: a Pipeline without steps")
        built = []
        for i, step in enumerate(steps):
            where = f"steps[{i}]"
            if not isinstance(step, Mapping) or not isinstance(step.get("name"), str):
                raise RecipeError(f"{where}: needs a name and a class")
            step_cls = _sklearn_class(step.get("class"), where)
            built.append((step["name"], _build(step_cls, _params(step, where), where)))
        model = _build(cls, params, "estimator", steps=built)
    elif steps:
        raise RecipeError(f"estimator: {cls.__name__} has steps but is no Pipeline")
    else:
        model = _build(cls, params, "estimator")
    return model


def fit(model: Any, X: np.ndarray, y: np.ndarray) -> Any:
    """Fit on one thread (a parallel reduction could vary the fit between runs); a parameter
    value scikit-learn refuses is a RecipeError."""
    from sklearn.utils._param_validation import InvalidParameterError
    from threadpoolctl import threadpool_limits

    try:
        with threadpool_limits(limits=1):
            return model.fit(X, y)
    except InvalidParameterError as exc:
        raise RecipeError(f"the recipe's parameters do not fit this scikit-learn: {exc}") from None


def onnx_labels(store: ModelStore, meta: ModelMetadata, X: np.ndarray) -> np.ndarray:
    """The labels a registered model serves for rows X (onnxruntime, the gateway's options)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(
        store.load_bytes(meta.sha256),
        sess_options=SessionOptions().build(),
        providers=["CPUExecutionProvider"],
    )
    (labels,) = sess.run([meta.label_output], {meta.input_name: X.astype(np.float32)})
    return np.asarray(labels).ravel().astype(np.int64)


# -- the queue ------------------------------------------------------------------------------
_CLAIM = """
UPDATE retrain_requests SET attempts = attempts + 1, claimed_at = now(), claimed_by = $1,
                            window_end = coalesce(window_end, now())
WHERE id = (SELECT id FROM retrain_requests
            WHERE state = 'pending' AND (not_before IS NULL OR not_before <= now())
            ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1)
RETURNING id, experiment, source, reason, attempts, created_at, details, window_end, waits
"""


async def _latest_version(conn: asyncpg.Connection, experiment: str) -> int | None:
    value = await conn.fetchval(
        "SELECT max(version) FROM experiment_versions WHERE experiment = $1", experiment
    )
    return int(value) if value is not None else None


async def audit(
    conn: asyncpg.Connection,
    experiment: str,
    action: str,
    recommendation: str,
    *,
    statistics: Mapping[str, Any] | None = None,
    inputs: Mapping[str, Any] | None = None,
) -> None:
    """A row in ``decisions`` (source "trainer") about the experiment's latest version."""
    await conn.execute(
        """INSERT INTO decisions (experiment, action, recommendation, source, statistics,
                                  inputs, from_version, to_version)
           VALUES ($1, $2, $3, 'trainer', $4::text::jsonb, $5::text::jsonb, $6, NULL)""",
        experiment,
        action,
        recommendation,
        json.dumps(dict(statistics or {})),
        json.dumps(dict(inputs or {})),
        await _latest_version(conn, experiment),
    )


def _since(details: Any) -> dt.datetime | None:
    doc = json.loads(details) if isinstance(details, str) else details or {}
    value = doc.get("since") if isinstance(doc, Mapping) else None
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return dt.datetime.fromtimestamp(float(value), dt.UTC)
    return None


async def claim(conn: asyncpg.Connection, claimer: str) -> Claim | None:
    """Step one of a claim (see the module docstring): the oldest pending request no one
    holds, its attempt counted and a ``retrain_started`` audit row (not on the later looks at
    a request waiting for rows), committed."""
    async with conn.transaction():
        row = await conn.fetchrow(_CLAIM, claimer)
        if row is None:
            return None
        c = Claim(
            row["id"], row["experiment"], row["source"], row["reason"], row["attempts"],
            row["created_at"], claimer, _since(row["details"]), row["window_end"],
        )  # fmt: skip
        if row["waits"] == 0:
            await audit(
                conn, c.experiment, "retrain_started",
                f"retrain request {c.id} claimed by {claimer} (attempt {c.attempts})",
                inputs={"request": c.id, "attempt": c.attempts, "trainer": claimer,
                        "source": c.source, "reason": c.reason},
            )  # fmt: skip
    return c


async def _put_back(
    conn: asyncpg.Connection, c: Claim, outcome: Outcome, config: TrainerConfig
) -> None:
    """A request waiting for rows: pending again, its claim not counted, looked at again
    after ``recheck_interval``; audited the first time only."""
    waits = await conn.fetchval(
        """UPDATE retrain_requests SET attempts = attempts - 1, claimed_by = '',
               window_end = NULL, waits = waits + 1,
               not_before = now() + make_interval(secs => $2)
           WHERE id = $1 RETURNING waits""",
        c.id,
        config.recheck_interval,
    )
    if waits == 1:
        await audit(
            conn, c.experiment, "retrain_waiting", outcome.reason,
            statistics=outcome.result, inputs={"request": c.id, "attempt": c.attempts},
        )  # fmt: skip


async def _finish(conn: asyncpg.Connection, c: Claim, outcome: Outcome) -> None:
    await conn.execute(
        """UPDATE retrain_requests SET state = $2, result = $3::text::jsonb, finished_at = now()
           WHERE id = $1""",
        c.id,
        outcome.state,
        json.dumps({"reason": outcome.reason, **outcome.result}),
    )
    action = {"registered": "retrained", "rejected": "retrain_rejected"}.get(
        outcome.state, "retrain_failed"
    )
    await audit(
        conn, c.experiment, action, outcome.reason,
        statistics=outcome.result, inputs={"request": c.id, "attempt": c.attempts},
    )  # fmt: skip


async def _hold_for_test(c: Claim) -> None:
    """The test-only hook of TEST_HOLD_ENV (see there)."""
    where = os.environ.get(TEST_HOLD_ENV)
    if not where:
        return
    hold = Path(where)
    (hold / f"claimed-{c.id}-{os.getpid()}").write_text(c.claimer)
    while not (hold / "release").exists():
        await asyncio.sleep(0.05)


async def process_next(
    conn: asyncpg.Connection,
    store: ModelStore,
    config: TrainerConfig,
    start_round: StartRound | None = None,
) -> tuple[Claim, Outcome] | None:
    """Claim the oldest pending request, work on it with its row locked, and write its
    terminal state; None when there was nothing to claim (or another trainer won the race
    between the two steps of the claim)."""
    c = await claim(conn, config.claimer)
    if c is None:
        return None
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT state, claimed_by FROM retrain_requests WHERE id = $1 FOR UPDATE", c.id
        )
        if row is None or row["state"] != "pending" or row["claimed_by"] != config.claimer:
            # Another trainer claimed it between our two steps, and trains it.
            return None
        if c.attempts > config.max_attempts:
            outcome = Outcome(
                "failed",
                f"gave up after {c.attempts - 1} attempts (each claimer stopped before "
                f"answering; --max-attempts {config.max_attempts})",
                {"attempts": c.attempts - 1},
            )
        else:
            await _hold_for_test(c)
            try:
                async with conn.transaction():  # a savepoint: a failed query spares the claim
                    outcome = await retrain(conn, store, c, config, start_round)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("retrain request %d failed", c.id)
                outcome = Outcome("failed", f"{type(exc).__name__}: {exc}", {})
        if outcome.state == "waiting":
            await _put_back(conn, c, outcome, config)
        else:
            await _finish(conn, c, outcome)
    log.info("retrain request %d (%s): %s: %s", c.id, c.experiment, outcome.state, outcome.reason)
    return c, outcome


# -- the training ---------------------------------------------------------------------------
_ROWS = """
SELECT DISTINCT ON (f.request_id) f.request_id, f.features, o.value
FROM prediction_features f JOIN outcomes o ON o.request_id = f.request_id
WHERE f.experiment = $1 AND f.ts >= $2 AND f.ts <= $3 AND o.ts <= $3
ORDER BY f.request_id, o.ts, o.source
"""
_CAPTURED = """
SELECT count(DISTINCT request_id) FROM prediction_features
WHERE experiment = $1 AND ts >= $2 AND ts <= $3
"""


@dataclass(frozen=True)
class TrainingData:
    request_ids: list[str]
    X: np.ndarray  # float32
    y: np.ndarray  # int64
    captured: int  # feature rows in the window, labelled or not
    dropped: dict[str, int]  # rows left out, by why
    start: dt.datetime
    end: dt.datetime


async def training_data(
    conn: asyncpg.Connection,
    experiment: str,
    *,
    end: dt.datetime,
    window_days: float,
    n_features: int,
    since: dt.datetime | None = None,
) -> TrainingData:
    """Captured features joined with outcomes (label = the outcome value as a class; a request
    with several outcomes takes its first by time) from ``window_days`` before ``end`` to
    ``end`` (fixed by the first claim that trains: a retry reads the same rows), or from
    ``since`` when that is later (the data after a drift: what the world looks like now)."""
    start = end - dt.timedelta(days=window_days)
    if since is not None and start < since < end:
        start = since
    rows = await conn.fetch(_ROWS, experiment, start, end)
    captured = int(await conn.fetchval(_CAPTURED, experiment, start, end) or 0)
    ids: list[str] = []
    X: list[list[float]] = []
    y: list[int] = []
    dropped = {"wrong_length": 0, "non_integer_outcome": 0}
    for r in rows:
        features, value = r["features"], float(r["value"])
        if len(features) != n_features:
            dropped["wrong_length"] += 1
            continue
        if not value.is_integer():
            dropped["non_integer_outcome"] += 1
            continue
        ids.append(r["request_id"])
        X.append(features)
        y.append(int(value))
    return TrainingData(
        ids,
        np.asarray(X, dtype=np.float32).reshape(len(ids), n_features),
        np.asarray(y, dtype=np.int64),
        captured,
        dropped,
        start,
        end,
    )


def _champion(state: Mapping[str, Any]) -> tuple[str, str]:
    """(arm, model sha256) of the champion of a stored experiment version: the arm serving
    100 %, else the control arm (as evaluator.rounds.champion)."""
    arms = state["arms"]
    for arm in arms:
        if float(arm["weight"]) >= 100.0 - 1e-9:
            return arm["name"], arm["model"]
    return arms[0]["name"], arms[0]["model"]


def _rounded(metrics: Mapping[str, float]) -> dict[str, float]:
    return {k: round(float(v), 6) for k, v in metrics.items()}


async def retrain(
    conn: asyncpg.Connection,
    store: ModelStore,
    c: Claim,
    config: TrainerConfig,
    start_round: StartRound | None = None,
) -> Outcome:
    """Train the champion's recipe on the request's window and register it when it holds up;
    else the reason it was not (rejected). Raises on what is no verdict about the data or the
    model (a missing champion file, the database): the caller writes it as failed."""
    doc = await conn.fetchval(
        "SELECT config FROM experiment_versions WHERE experiment = $1"
        " ORDER BY version DESC LIMIT 1",
        c.experiment,
    )
    if doc is None:
        return Outcome("rejected", f"unknown experiment {c.experiment!r}")
    state = json.loads(doc) if isinstance(doc, str) else doc
    arm, sha = _champion(state)
    try:
        champ = store.get(sha)
    except ModelStoreError as exc:
        return Outcome("rejected", f"champion {arm} ({sha[:12]}): {exc}", {"champion": sha})
    base: dict[str, Any] = {"champion": {"arm": arm, "model": sha}}
    if not champ.recipe:
        return Outcome(
            "rejected",
            f"champion {arm} ({champ.id}:{champ.version}) has no recipe (registered as ONNX): "
            "nothing to retrain from",
            base,
        )
    try:
        model = estimator_from_recipe(champ.recipe)
    except RecipeError as exc:
        return Outcome("rejected", f"champion {champ.id}:{champ.version}: {exc}", base)

    data = await training_data(
        conn, c.experiment, end=c.window_end or c.created_at, window_days=config.window_days,
        n_features=champ.n_features, since=c.since,
    )  # fmt: skip
    hold = holdout_mask(data.request_ids, config.holdout_share)
    window = f"{data.start.isoformat(timespec='seconds')}/{data.end.isoformat(timespec='seconds')}"
    counts = {
        "captured": data.captured, "labelled": len(data.y), "train": int((~hold).sum()),
        "holdout": int(hold.sum()), **{k: v for k, v in data.dropped.items() if v},
    }  # fmt: skip
    base.update(rows=counts, window=window)
    if len(data.y) < config.min_rows:
        few = (
            f"too few labelled rows: {len(data.y)} (of {data.captured} captured feature rows in "
            f"the window {window}); at least {config.min_rows} needed (--min-rows)"
        )
        waited = (data.end - c.created_at).total_seconds()
        if waited < config.wait_for_rows:
            return Outcome(
                "waiting",
                f"{few}; waiting for more, looked at every {config.recheck_interval:g} s until "
                f"{config.wait_for_rows:g} s after the request (--wait-for-rows)",
                base,
            )
        if config.wait_for_rows > 0:
            few += f" after waiting {waited:.0f} s (--wait-for-rows {config.wait_for_rows:g})"
        return Outcome("rejected", few, base)
    classes = np.unique(data.y)
    if len(classes) < 2:
        return Outcome(
            "rejected", f"only one class ({int(classes[0])}) in {len(data.y)} labelled rows", base
        )
    X_train, y_train = data.X[~hold], data.y[~hold]
    X_hold, y_hold = data.X[hold], data.y[hold]
    if (b := config.base) is not None:
        if b.n_features != champ.n_features:
            return Outcome(
                "rejected",
                f"the base dataset ({b.spec}) has {b.n_features} features, the champion "
                f"{champ.id}:{champ.version} reads {champ.n_features}",
                base,
            )
        # Base rows train only: the holdout stays logged rows, the world the model will serve.
        X_train = np.concatenate([b.X, X_train])
        y_train = np.concatenate([b.y, y_train])
        counts.update(base=len(b.y), train=len(y_train))
    if len(X_hold) == 0 or len(np.unique(y_train)) < 2:
        return Outcome(
            "rejected",
            f"the split leaves {len(X_hold)} holdout rows and {len(np.unique(y_train))} "
            "class(es) to train on",
            base,
        )
    started = time.monotonic()
    try:
        model = await asyncio.to_thread(fit, model, X_train, y_train)
        converted = await asyncio.to_thread(
            convert_checked, model, X_hold, feature_names=champ.feature_names
        )
    except RecipeError as exc:
        return Outcome("rejected", f"champion {champ.id}:{champ.version}: {exc}", base)
    except ParityError as exc:
        return Outcome("rejected", f"the retrained model fails the parity check: {exc}", base)
    except ConversionError as exc:
        return Outcome("rejected", f"the retrained model does not convert: {exc}", base)
    base["train_seconds"] = round(time.monotonic() - started, 3)
    base["parity_max_abs_diff"] = converted.parity.max_abs_diff
    champ_metrics = holdout_metrics(y_hold, onnx_labels(store, champ, X_hold))
    new_metrics = holdout_metrics(y_hold, model.predict(X_hold))
    base["holdout"] = {"champion": _rounded(champ_metrics), "challenger": _rounded(new_metrics)}
    metric = config.no_worse_metric
    if metric not in new_metrics or metric not in champ_metrics:
        return Outcome(
            "rejected",
            f"--no-worse-metric {metric} needs two classes (0 and 1) in the holdout and the "
            f"predictions; these have {sorted({int(v) for v in np.unique(y_hold)})}",
            base,
        )
    higher = NO_WORSE_METRICS[metric]
    delta = new_metrics[metric] - champ_metrics[metric]
    loss = -delta if higher else delta  # how much worse the retrained model is
    base["no_worse"] = {
        "metric": metric, "higher_is_better": higher, "champion": round(champ_metrics[metric], 6),
        "challenger": round(new_metrics[metric], 6), "allowed": config.max_regression,
    }  # fmt: skip
    if loss > config.max_regression:
        allowed = f"{'-' if higher else '+'}{config.max_regression:g}"
        return Outcome(
            "rejected",
            f"the retrained model is worse than the champion on the same {len(y_hold)} holdout "
            f"rows: {metric} {new_metrics[metric]:.4f} vs {champ_metrics[metric]:.4f} "
            f"({delta:+.4f}, allowed {allowed}, --max-regression"
            f"{'' if higher else '; lower is better'}); not registered",
            base,
        )
    known = store.contains(sha256_hex(converted.onnx_bytes))  # the same bytes trained before
    meta = register_converted(
        model, converted, X_hold, store, id=champ.id, y_holdout=y_hold, parent=champ.sha256,
        training={"window": window, "rows": len(y_train), "holdout_rows": len(y_hold),
                  "experiment": c.experiment, "retrain_request": c.id,
                  "data": "prediction_features+outcomes"
                          + (f"+{config.base.spec}" if config.base else ""),
                  **({"base_rows": len(config.base.y)} if config.base else {})},
    )  # fmt: skip
    base["model"] = {"sha256": meta.sha256, "ref": f"{meta.id}:{meta.version}"}
    if known:
        base["model"]["already_registered"] = True
    reason = (
        f"{'already registered' if known else 'registered'} {meta.id}:{meta.version} "
        f"({meta.sha256[:12]}), parent {champ.sha256[:12]}: "
        f"{metric} {new_metrics[metric]:.4f} vs champion {champ_metrics[metric]:.4f} "
        f"on {len(y_hold)} holdout rows, trained on {len(y_train)}"
        + (f" ({len(config.base.y)} from {config.base.spec})" if config.base else "")
    )
    if start_round is not None:
        try:
            base["round"] = await start_round(
                c.experiment, meta.sha256, c.id, config.require_approval
            )
            reason += f"; round {base['round'].get('round')} {base['round'].get('status')}"
        except Exception as exc:  # the model stays registered; the round can start later
            base["round"] = {"error": str(exc)}
            reason += f"; next round not started: {exc}"
    return Outcome("registered", reason, base, meta)
