"""The anytime-valid statistics of evaluator.stats — ``rate_limit_test``, ``sequential_srm``,
``rate_difference_test`` and ``stratified_sequential_test`` — against the frozen vectors of
tests/vectors/anytime_v1.json (numerical integration, exact rational arithmetic and scipy,
agreed with the closed forms by tests.vectors.generate_anytime)."""

from __future__ import annotations

import ast
import copy
import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from evaluator.stats import (
    ArmStats,
    SequentialResult,
    rate_difference_test,
    rate_limit_test,
    sequential_rho,
    sequential_srm,
    stratified_sequential_test,
)
from tests.vectors import generate_anytime

REPO = Path(__file__).resolve().parents[2]
VECTORS = REPO / "tests" / "vectors" / "anytime_v1.json"
# Float64 statistics held to 1e-9 relative (the expected values carry 12 significant digits).
# A log-scale value also gets the absolute error its closed form carries (lgamma values of up
# to ~10⁷ cancelling, generate_anytime's *_atol), and its exponential (a p-value) that error
# relatively. 1e-15 is the floor of a value that is 0 up to rounding (an effect of 0).
REL = 1e-9
ATOL = 1e-15
# Float statistics throughout: `make test-numeric` reruns them on other numpy/OpenBLAS kernels.
pytestmark = pytest.mark.numeric


def close(got: float, expected: float | str, rel: float = REL, atol: float = ATOL) -> bool:
    """``expected`` may be "inf", "-inf" or "nan" (JSON has no non-finite numbers)."""
    want = float(expected)
    if math.isnan(want):
        return math.isnan(got)
    if math.isinf(want):
        return got == want
    return math.isclose(got, want, rel_tol=rel, abs_tol=atol)


def arm(d: dict[str, Any]) -> ArmStats:
    return ArmStats(d["n"], d["total"], d["total_sq"])


def load() -> dict[str, Any]:
    return dict(json.loads(VECTORS.read_text(encoding="utf-8")))


# --- frozen vectors ---------------------------------------------------------------------------


def check_rate_limit(case: dict[str, Any]) -> None:
    k, n, limit, alpha = case["failures"], case["n"], case["limit"], case["alpha"]
    res = rate_limit_test(k, n, limit, alpha)
    atol = generate_anytime.rate_limit_log_atol(k, n, limit)
    assert close(res.log_e, case["log_e"], atol=atol), (res.log_e, case["log_e"], atol)
    assert close(res.p_value, case["p_value"], rel=max(REL, atol)), (res.p_value, atol)
    assert res.breach is case["breach"]
    assert (res.failures, res.n, res.limit, res.alpha) == (k, n, limit, alpha)


def check_srm_sequential(case: dict[str, Any]) -> None:
    splits = [(s["observed"], s["weights"]) for s in case["splits"]]
    res = sequential_srm(splits, case["alpha"], case["concentration"])
    atol = max(ATOL, generate_anytime.srm_log_bf_atol(case))
    want = case["log_bayes_factor"]
    assert close(res.log_bayes_factor, want, atol=atol), (res.log_bayes_factor, want, atol)
    assert close(res.p_value, case["p_value"], rel=max(REL, atol)), (res.p_value, atol)
    assert res.mismatch is case["mismatch"] and res.alpha == case["alpha"]
    assert list(res.expected) == list(case["expected"])
    assert all(close(res.expected[a], e) for a, e in case["expected"].items())
    last = splits[-1][0] if splits else {}
    assert dict(res.observed) == {a: last.get(a, 0) for a in case["expected"]}


def check_sequential_result(res: SequentialResult, case: dict[str, Any]) -> None:
    assert close(sequential_rho(case["alpha"], case["tuning_n"]), case["rho"])
    assert close(res.effect, case["effect"]), (res.effect, case["effect"])
    assert close(res.ci[0], case["ci"][0]) and close(res.ci[1], case["ci"][1]), res.ci
    assert close(res.relative_lift, case["relative_lift"]), res.relative_lift
    assert close(res.lift_ci[0], case["lift_ci"][0]), res.lift_ci
    assert close(res.lift_ci[1], case["lift_ci"][1]), res.lift_ci
    assert close(res.p_value, case["p_value"]), (res.p_value, case["p_value"])
    assert res.significant is case["significant"]
    assert res.n == case["n"] and res.alpha == case["alpha"]


def check_rate_difference(case: dict[str, Any]) -> None:
    strata = [((c[0], c[1]), (t[0], t[1])) for c, t in case["strata"]]
    res = rate_difference_test(strata, case["alpha"], case["tuning_n"])
    check_sequential_result(res, case)


def check_stratified(case: dict[str, Any]) -> None:
    strata = [(arm(s["control"]), arm(s["treatment"])) for s in case["strata"]]
    res = stratified_sequential_test(strata, case["alpha"], case["tuning_n"])
    check_sequential_result(res, case)


SECTIONS: dict[str, Callable[[dict[str, Any]], None]] = {
    "rate_limit": check_rate_limit,
    "srm_sequential": check_srm_sequential,
    "rate_difference": check_rate_difference,
    "stratified": check_stratified,
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every case in the vector file becomes one test id, e.g. ``rate_limit-3``."""
    if "vector" in metafunc.fixturenames:
        data = load()
        params = [(section, case) for section in SECTIONS for case in data[section]]
        ids = [f"{section}-{i}" for section in SECTIONS for i in range(len(data[section]))]
        metafunc.parametrize("vector", params, ids=ids)


def test_vector(vector: tuple[str, dict[str, Any]]) -> None:
    section, case = vector
    SECTIONS[section](case)


def test_vector_file_has_every_section() -> None:
    data = load()
    assert data["spec_version"] == 1 and data["spec"].startswith("anytime v1")
    assert set(data) == {"spec", "spec_version", *SECTIONS}
    assert list(SECTIONS) == generate_anytime.SECTIONS
    for section in SECTIONS:
        assert 8 <= len(data[section]) <= 20, section
        assert len({c["label"] for c in data[section]}) == len(data[section]), section


def test_vector_file_is_what_the_generator_writes_today() -> None:
    # Within what the computation allows (generate_stats.differences): an arm's Σx² is an
    # OpenBLAS dot whose last bits vary by CPU; the file stays frozen.
    done = subprocess.run(
        [sys.executable, "-m", "tests.vectors.generate_anytime", "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_vectors_cover_the_edge_cases() -> None:
    data = load()
    rate = data["rate_limit"]
    assert {c["breach"] for c in rate} == {True, False}
    assert any(
        (c["failures"], c["n"], c["limit"]) == (1, 1, 0.01) and not c["breach"] for c in rate
    )
    assert any(c["breach"] and float(c["p_value"]) > 0.5 * c["alpha"] for c in rate)  # near α
    assert any(c["n"] == 0 for c in rate)
    assert any(c["log_e"] == "-inf" and c["p_value"] == 1.0 and c["n"] > 0 for c in rate)
    assert any(isinstance(c["log_e"], float) and c["log_e"] < 0.0 for c in rate)
    assert {0.001, 0.01, 0.2} <= {c["limit"] for c in rate}

    srm = data["srm_sequential"]
    assert {c["mismatch"] for c in srm} == {True, False}
    assert any(c["log_bayes_factor"] == "inf" and c["p_value"] == 0.0 for c in srm)
    assert any(len(s["weights"]) == 3 for c in srm for s in c["splits"])
    assert any(s["weights"] == {"a": 1.0, "b": 99.0} for c in srm for s in c["splits"])
    assert any(0.0 in s["weights"].values() for c in srm for s in c["splits"])
    assert any(len(c["splits"]) >= 3 for c in srm)
    assert any(not c["splits"] for c in srm)
    assert any(
        c["splits"] and all(not any(s["observed"].values()) for s in c["splits"]) for c in srm
    )
    assert len({c["concentration"] for c in srm}) >= 3

    diff = data["rate_difference"]
    assert {c["significant"] for c in diff} == {True, False}
    assert any(len(c["strata"]) == 1 for c in diff) and any(len(c["strata"]) >= 3 for c in diff)
    assert any(c["strata"] == [[[0, 1980], [20, 20]]] for c in diff)
    assert any(0 in (s[0][1], s[1][1]) for c in diff if c["n"] > 0 for s in c["strata"])
    assert any(c["n"] == 0 and c["ci"] == ["-inf", "inf"] for c in diff)

    strat = data["stratified"]
    assert {c["significant"] for c in strat} == {True, False}
    assert any("Simpson" in c["label"] for c in strat)
    assert any(len(c["strata"]) == 1 for c in strat) and any(len(c["strata"]) >= 3 for c in strat)
    assert any(c["ci"][0] == "-inf" and c["n"] > 0 for c in strat)
    assert any(c["relative_lift"] == "nan" for c in strat)
    assert any(min(s["control"]["n"], s["treatment"]["n"]) < 2 for c in strat for s in c["strata"])
    for section in ("rate_difference", "stratified"):
        cases = data[section]
        assert len({c["alpha"] for c in cases}) >= 2 and len({c["tuning_n"] for c in cases}) >= 2


# One float per section that a wrong implementation would get wrong, and its boolean.
PERTURBED = {
    "rate_limit": ("p_value", "breach"),
    "srm_sequential": ("log_bayes_factor", "mismatch"),
    "rate_difference": ("effect", "significant"),
    "stratified": ("p_value", "significant"),
}


@pytest.mark.parametrize("section", list(SECTIONS))
def test_a_wrong_vector_fails(section: str) -> None:
    """The checks are not vacuous: a value 1e-6 off, or a flipped outcome, fails them."""
    field, flag = PERTURBED[section]
    case = next(
        c for c in load()[section] if isinstance(c[field], float) and c[field] not in (0.0, 1.0)
    )
    SECTIONS[section](case)
    off = copy.deepcopy(case)
    off[field] = case[field] * (1.0 + 1e-6)
    with pytest.raises(AssertionError):
        SECTIONS[section](off)
    flipped = copy.deepcopy(case)
    flipped[flag] = not case[flag]
    with pytest.raises(AssertionError):
        SECTIONS[section](flipped)


def test_the_generator_is_independent_of_the_code_under_test() -> None:
    for module in ("generate_anytime", "generate_stats"):
        tree = ast.parse((REPO / "tests" / "vectors" / f"{module}.py").read_text("utf-8"))
        imported = {
            name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for name in (
                [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            )
        }
        assert not any(str(name).split(".")[0] == "evaluator" for name in imported), module


def test_the_generator_refuses_to_write_when_numerics_disagree() -> None:
    with pytest.raises(SystemExit):
        generate_anytime.agree_log("demo", 1.0, 1.0 + 1e-9)
    with pytest.raises(SystemExit):
        generate_anytime.decided("demo", 0.01 * (1.0 + 1e-8), 0.01)
    assert generate_anytime.decided("demo", 0.0099, 0.01) is True
    with pytest.raises(SystemExit):
        generate_anytime.log_tail_integral(0.5, 3.0, 0.01)
