"""Questions in plain words (issue #17): ``abgate ask "…"`` and ``POST /nlq``.

A deterministic parser, no language model: a question is cut into words, and each word is an
experiment or model name, an arm (by name, or A/B/C… by position), a metric, part of a time
window, a verb of intent, or a filler word; a misspelling within a small edit distance of a known
word counts as that word (``difflib``, cutoff ``FUZZ``). Any other word is refused, named, with
examples of what can be asked — never a guess. The answer is computed from the results model the
report and the dashboard read (``evaluator.results``): the buckets inside the window, the same
always-valid sequential test the policies run.
"""

from __future__ import annotations

import datetime as dt
import difflib
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from abgate.errors import InvalidArgument

FUZZ = 0.8
EXAMPLES = (
    "compare A and B over the last 7 days and recommend a rollout",
    "how is the treatment doing on accuracy since Monday?",
    "error rate of checkout yesterday",
    "p99 latency of control vs treatment in checkout",
    "should we ship demo-gbdt?",
)

# metric -> (words that name it, higher is better)
METRICS: dict[str, tuple[tuple[str, ...], bool]] = {
    "accuracy": (("accuracy", "acc", "correct"), True),
    "outcome": (("outcome", "conversion", "conversions", "reward", "rewards"), True),
    "score": (("score", "scores", "probability"), True),
    "error_rate": (("errors", "error", "failures", "failure"), False),
    "throughput": (("throughput", "traffic", "volume", "rps", "qps"), True),
    "latency_p50": (("p50", "median"), False),
    "latency_p95": (("p95",), False),
    "latency_p99": (("p99", "latency", "tail"), False),
    "precision": (("precision",), True),
    "recall": (("recall", "sensitivity"), True),
    "fpr": (("fpr", "false-positive", "fallout"), False),
}
UNITS = {"minute": 60, "minutes": 60, "hour": 3600, "hours": 3600, "day": 86400, "days": 86400,
         "week": 7 * 86400, "weeks": 7 * 86400}  # fmt: skip
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "ten": 10,
           "fourteen": 14, "thirty": 30}  # fmt: skip
RECOMMEND = ("recommend", "recommendation", "rollout", "roll", "ship", "should", "promote",
             "deploy", "launch", "decide", "winner", "win", "wins", "better", "best")  # fmt: skip
_FILLER_TEXT = """compare comparison versus vs and or with the a an of on in over for between
    how is are was were doing do does did what whats which who results result show me tell give
    please performance perform performing against to by at from our we it its this that than
    arm arms variant variants experiment experiments test tests model models look looks
    there has have been during out up so far us i rate"""
FILLER = frozenset(_FILLER_TEXT.split())
WINDOW_WORDS = frozenset({"last", "past", "since", "today", "yesterday", "this", "week", "day",
                          "hour", "ago", *UNITS, *WEEKDAYS, *NUMBERS})  # fmt: skip


# metric -> (tp, fp, fn, tn) -> (rows where it is 1, rows it is over): each a rate of 0/1 values
CONFUSION = {
    "accuracy": lambda tp, fp, fn, tn: (tp + tn, tp + fp + fn + tn),
    "precision": lambda tp, fp, fn, tn: (tp, tp + fp),
    "recall": lambda tp, fp, fn, tn: (tp, tp + fn),
    "fpr": lambda tp, fp, fn, tn: (fp, fp + tn),
}


class NotUnderstood(InvalidArgument):
    """A question the parser cannot read; the message names the part and gives examples."""

    def __init__(self, message: str) -> None:
        super().__init__(f"{message}. I can answer, for example: " + "; ".join(
            f"“{e}”" for e in EXAMPLES))  # fmt: skip
        self.examples = EXAMPLES


@dataclass(frozen=True)
class Window:
    label: str
    start: float | None  # epoch s; None: from the first row
    end: float


@dataclass(frozen=True)
class Query:
    experiment: str
    arms: tuple[str, ...]  # (control-like, other) or () for all
    metric: str | None  # None: the experiment's primary metric
    window: Window
    recommend: bool


@dataclass
class Catalog:
    """What a question may name: experiments, their arms and models."""

    experiments: dict[str, list[str]] = field(default_factory=dict)  # name -> arms (control 1st)
    models: dict[str, tuple[str, str]] = field(default_factory=dict)  # model id -> (exp, arm)


# Phrases of several words that name one thing.
_PHRASES = ((r"\bfalse[ -]positive rate\b", "fpr"), (r"\berror rate\b", "errors"),
            (r"\btrue[ -]positive rate\b", "recall"))  # fmt: skip


def _words(question: str) -> list[str]:
    text = question
    for pattern, word in _PHRASES:
        text = re.sub(pattern, word, text, flags=re.IGNORECASE)
    return [w.rstrip(".:") for w in re.findall(r"[A-Za-z0-9][A-Za-z0-9_.:-]*", text)]


def _match(word: str, vocabulary: list[str]) -> str | None:
    w = word.lower()
    for v in vocabulary:
        if v.lower() == w:
            return v
    if len(w) < 4:
        return None
    close = difflib.get_close_matches(w, [v.lower() for v in vocabulary], n=1, cutoff=FUZZ)
    if not close:
        return None
    return next(v for v in vocabulary if v.lower() == close[0])


def _window(words: list[str], now: float) -> tuple[Window, set[int]]:
    """The time window the words name, and the positions they took."""
    low = [w.lower() for w in words]
    today = dt.datetime.fromtimestamp(now, dt.UTC).replace(hour=0, minute=0, second=0,
                                                            microsecond=0)  # fmt: skip
    for i, w in enumerate(low):
        if w in ("last", "past") or (w == "this" and i + 1 < len(low) and low[i + 1] == "week"):
            j = i + 1
            n = 1
            if j < len(low) and (low[j].isdigit() or low[j] in NUMBERS):
                n = int(low[j]) if low[j].isdigit() else NUMBERS[low[j]]
                j += 1
            if w == "this":
                start = today - dt.timedelta(days=today.weekday())
                return Window("this week", start.timestamp(), now), {i, i + 1}
            if j < len(low) and low[j] in UNITS:
                unit = low[j]
                label = f"last {n} {unit if n != 1 else unit.rstrip('s')}"
                return Window(label, now - n * UNITS[unit], now), set(range(i, j + 1))
            raise NotUnderstood(f"“{' '.join(words[i:j + 1])}” names no time window (say "
                                "“last 7 days”, “last 24 hours”)")  # fmt: skip
        if w == "today":
            return Window("today", today.timestamp(), now), {i}
        if w == "yesterday":
            start = today - dt.timedelta(days=1)
            return Window("yesterday", start.timestamp(), today.timestamp()), {i}
        if w == "since" and i + 1 < len(low):
            nxt = low[i + 1]
            day = _match(nxt, list(WEEKDAYS))
            if day is not None:
                back = (today.weekday() - WEEKDAYS.index(day)) % 7
                start = today - dt.timedelta(days=back)
                return Window(f"since {day.capitalize()}", start.timestamp(), now), {i, i + 1}
            try:
                start = dt.datetime.fromisoformat(words[i + 1]).replace(tzinfo=dt.UTC)
            except ValueError:
                raise NotUnderstood(f"“since {words[i + 1]}” is not a day I know (say “since "
                                    "Monday” or “since 2026-12-01”)") from None  # fmt: skip
            return Window(f"since {words[i + 1]}", start.timestamp(), now), {i, i + 1}
    return Window("the whole experiment", None, now), set()


def parse(question: str, catalog: Catalog, now: float) -> Query:
    words = _words(question)
    if not words:
        raise NotUnderstood("the question is empty")
    window, used = _window(words, now)
    names = list(catalog.experiments)
    experiment: str | None = None
    arms: list[str] = []
    metric: str | None = None
    recommend = False
    unknown: list[str] = []
    metric_words = {w: m for m, (ws, _) in METRICS.items() for w in ws}
    for i, word in enumerate(words):
        if i in used:
            continue
        low = word.lower()
        if (e := _match(word, names)) is not None:
            experiment = e
            continue
        if (mid := _match(word.split(":")[0], list(catalog.models))) is not None:
            experiment, arm = catalog.models[mid]
            arms.append(arm)
            continue
        if low in FILLER:
            continue
        if (m := _match(low, list(metric_words))) is not None:
            # "median latency": the quantile named stays; "latency" alone is p99
            if not (m in ("latency", "tail") and metric and metric.startswith("latency_")):
                metric = metric_words[m]
            continue
        if _match(low, list(RECOMMEND)) is not None:
            recommend = True
            continue
        if len(word) == 1 and word.isupper():
            arms.append(word)  # a position, resolved below
            continue
        all_arms = sorted({a for arms_ in catalog.experiments.values() for a in arms_})
        if (a := _match(word, all_arms)) is not None:
            arms.append(a)
            continue
        unknown.append(word)
    if unknown:
        raise NotUnderstood("I did not understand " + ", ".join(f"“{w}”" for w in unknown))
    if experiment is None:
        owners = [e for e, a in catalog.experiments.items() if set(arms) <= set(a) and arms]
        if len(names) == 1:
            experiment = names[0]
        elif len(owners) == 1:
            experiment = owners[0]
        elif not names:
            raise NotUnderstood("there are no experiments yet")
        else:
            raise NotUnderstood("which experiment? name one of " + ", ".join(sorted(names)))
    own = catalog.experiments[experiment]
    resolved: list[str] = []
    for a in arms:
        if len(a) == 1 and a.isupper():
            k = ord(a) - ord("A")
            if k >= len(own):
                raise NotUnderstood(f"{experiment} has no arm {a} (it has {', '.join(own)})")
            a = own[k]
        if a not in own:
            raise NotUnderstood(f"{experiment} has no arm “{a}” (it has {', '.join(own)})")
        if a not in resolved:
            resolved.append(a)
    if len(resolved) == 2 and resolved[1] == own[0]:
        resolved.reverse()  # control first: the effect is the other arm's minus control's
    if len(resolved) == 1 and resolved[0] != own[0]:
        resolved = [own[0], resolved[0]]  # one arm named: against control
    elif len(resolved) == 1:
        resolved = [own[0], own[1]] if len(own) > 1 else resolved
    return Query(experiment, tuple(resolved[:2]), metric, window, recommend)


# -- answering --------------------------------------------------------------------------------
def answer_query(q: Query, data: Any) -> dict[str, Any]:
    """The answer to ``q`` from ``data`` (an ``evaluator.results.ExperimentResults``)."""
    from evaluator.experiments import CANARY_STAGES
    from evaluator.results import histogram_quantile
    from evaluator.stats import ArmStats, sequential_test

    state = data.state
    arms = list(q.arms) or list(data.arms[:2])
    metric = q.metric or state.primary_metric
    confused = metric in CONFUSION and metric != state.primary_metric
    if metric in ("outcome", "score") and metric != state.primary_metric:
        raise NotUnderstood(
            f"{q.experiment} measures {state.primary_metric}, not {metric}: ask for "
            f"{state.primary_metric}, accuracy, precision, recall, FPR, error rate, throughput "
            "or latency"
        )
    ends = data.edges()[1:]
    starts = data.edges()[:-1]
    inside = np.ones(len(ends), dtype=bool)
    if q.window.start is not None:
        inside &= ends > q.window.start
    inside &= starts < q.window.end
    higher = METRICS.get(metric, ((), True))[1]
    values: dict[str, float | None] = {}
    n: dict[str, int] = {}
    stats: dict[str, ArmStats] = {}
    seconds = float(inside.sum()) * data.bucket_s
    for arm in arms:
        served = np.asarray(data.served.get(arm, np.zeros(len(ends))))[inside]
        errors = np.asarray(data.errors.get(arm, np.zeros(len(ends))))[inside]
        if metric == "error_rate":
            s = ArmStats(int(served.sum()), float(errors.sum()), float(errors.sum()))
        elif metric == "throughput" or metric.startswith("latency_"):
            s = ArmStats(int(served.sum()), 0.0, 0.0)
        elif confused:
            tp, fp, fn, tn = np.asarray(data.confusion.get(arm, np.zeros((len(ends), 4))))[
                inside
            ].sum(axis=0)
            hits, rows = CONFUSION[metric](tp, fp, fn, tn)
            s = ArmStats(int(rows), float(hits), float(hits))  # 0/1 values
        else:
            m = np.asarray(data.metric.get(arm, np.zeros((len(ends), 3))))[inside]
            s = ArmStats(int(m[:, 0].sum()), float(m[:, 1].sum()), float(m[:, 2].sum()))
        stats[arm], n[arm] = s, s.n
        if metric == "throughput":
            values[arm] = s.n / seconds if seconds > 0 else None
        elif metric.startswith("latency_"):
            qv = {"latency_p50": 0.5, "latency_p95": 0.95, "latency_p99": 0.99}[metric]
            us = histogram_quantile(data.latency_within(arm, inside), qv)
            values[arm] = None if math.isnan(us) else us / 1000.0
        else:
            values[arm] = s.mean if s.n else None
    out: dict[str, Any] = {
        "experiment": q.experiment,
        "arms": arms,
        "metric": metric,
        "window": {
            **asdict(q.window),
            "buckets": int(inside.sum()),
            "bucket_seconds": data.bucket_s,
        },
        "n": n,
        "values": values,
        "winner": None,
        "p_value": None,
        "effect_size": None,
        "ci": None,
    }
    notes: list[str] = []
    if len(arms) == 2 and metric not in ("throughput",) and not metric.startswith("latency_"):
        a, b = arms
        alpha = 1.0 - state.confidence
        r = sequential_test(stats[a], stats[b], alpha)
        out["p_value"] = r.p_value
        out["effect_size"] = r.effect
        out["ci"] = [r.ci[0] if math.isfinite(r.ci[0]) else None,
                     r.ci[1] if math.isfinite(r.ci[1]) else None]  # fmt: skip
        if r.significant:
            out["winner"] = b if (r.effect > 0) == higher else a
    elif len(arms) == 2 and all(values[x] is not None for x in arms):
        a, b = arms
        va, vb = values[a], values[b]
        assert va is not None and vb is not None
        out["effect_size"] = vb - va
    out["recommendation"] = _recommend(q, out, state, CANARY_STAGES, higher)
    out["answer"] = _sentence(out, notes)
    return out


def _recommend(q: Query, out: dict[str, Any], state: Any, stages: Any, higher: bool) -> str:
    arms, winner = out["arms"], out["winner"]
    if len(arms) < 2:
        return "name two arms to compare"
    a, b = arms
    if out["p_value"] is None:
        return "no test for this measure: compare it beside the primary metric"
    if winner is None:
        total = sum(out["n"].values())
        return (f"no rollout yet: the difference is not conclusive after {total} rows; keep the "
                "split and collect more")  # fmt: skip
    if winner == a:
        return f"keep {a}; roll {b} back to 0 %"
    share = state.weights.get(b, 0.0)
    nxt = next((s for s in stages if s > share), 100.0)
    watch = "error rate and p99" if out["metric"] not in ("error_rate",) else "the primary metric"
    if nxt >= 100.0:
        return f"promote {b} to 100 %; watch {watch} for 24 h"
    return f"increase {b} to {nxt:g} % via the canary ramp; watch {watch} for 24 h"


def _fmt(x: Any) -> str:
    return "–" if x is None else f"{x:.4g}"


def _sentence(out: dict[str, Any], notes: list[str]) -> str:
    arms = out["arms"]
    each = ", ".join(f"{a} {_fmt(out['values'][a])} (n={out['n'][a]})" for a in arms)
    parts = [f"{out['experiment']}, {out['metric']} over {out['window']['label']}: {each}"]
    if out["p_value"] is not None:
        ci = out["ci"] or [None, None]
        parts.append(f"effect {_fmt(out['effect_size'])} [{_fmt(ci[0])}, {_fmt(ci[1])}], "
                     f"always-valid p={_fmt(out['p_value'])}")  # fmt: skip
        parts.append(f"winner: {out['winner']}" if out["winner"] else "no winner yet")
    parts.append(f"recommendation: {out['recommendation']}")
    return "; ".join(parts + notes) + "."


async def catalog_of(url: str) -> Catalog:
    import asyncpg

    from evaluator.experiments import ExperimentState

    conn = await asyncpg.connect(url, timeout=15)
    try:
        rows = await conn.fetch(
            "SELECT DISTINCT ON (experiment) experiment, config::text AS c FROM "
            "experiment_versions ORDER BY experiment, version DESC"
        )
        model_rows = await conn.fetch(
            "SELECT DISTINCT experiment, arm, model_id FROM predictions WHERE NOT shadow "
            "AND model_id <> '' LIMIT 10000"
        )
    finally:
        await conn.close()
    import json

    cat = Catalog()
    for r in rows:
        state = ExperimentState.from_json(json.loads(r["c"]))
        if not state.archived:
            cat.experiments[r["experiment"]] = [a.name for a in state.arms]
    for r in model_rows:
        if r["experiment"] in cat.experiments and r["arm"] in cat.experiments[r["experiment"]]:
            cat.models.setdefault(r["model_id"], (r["experiment"], r["arm"]))
    return cat


async def ask(url: str, question: str, now: float | None = None) -> dict[str, Any]:
    """Parse ``question`` against the experiments in the database at ``url`` and answer it;
    NotUnderstood (InvalidArgument) for a question it cannot read."""
    import time

    from evaluator.results import load_results

    if len(question) > 1000:
        raise NotUnderstood("the question is longer than 1000 characters")
    now = time.time() if now is None else now
    q = parse(question, await catalog_of(url), now)
    data = await load_results(url, q.experiment, None, latency_by_bucket=True)
    out = answer_query(q, data)
    return {"question": question, "understood": {**asdict(q), "window": asdict(q.window)}, **out}
