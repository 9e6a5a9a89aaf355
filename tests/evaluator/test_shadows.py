"""McNemar's exact test and the shadow summary, against independent numbers."""

from __future__ import annotations

import math

import pytest
from scipy.stats import binomtest

from evaluator.shadows import compare
from evaluator.stats import mcnemar


@pytest.mark.parametrize(("b", "c"), [(10, 2), (2, 10), (0, 7), (25, 25), (1, 0), (300, 240)])
def test_mcnemar_is_the_exact_binomial_test_of_discordant_pairs(b: int, c: int) -> None:
    assert mcnemar(b, c) == pytest.approx(binomtest(min(b, c), b + c, 0.5).pvalue)
    assert mcnemar(b, c) == mcnemar(c, b)


def test_mcnemar_textbook_value_and_edges() -> None:
    # b = 3, c = 12: two-sided exact p = 2·P(X ≤ 3 | n = 15, ½) = 0.03515625.
    assert mcnemar(3, 12) == pytest.approx(2 * sum(math.comb(15, k) for k in range(4)) / 2**15)
    assert mcnemar(0, 0) == 1.0
    with pytest.raises(ValueError):
        mcnemar(-1, 2)


def test_compare_summarises_pairwise_sums() -> None:
    sums = {
        "pairs": 4.0, "shadow_errors": 1.0, "agree": 3.0,
        "score_delta_sum": 0.4, "score_delta_sumsq": 0.1,
        "latency_delta_sum": 400.0, "latency_delta_sumsq": 50_000.0,
        "labelled": 4.0, "both_right": 2.0, "served_only_right": 1.0,
        "shadow_only_right": 0.0, "both_wrong": 1.0,
    }  # fmt: skip
    out = compare(sums)
    assert out["agreement"] == 0.75 and out["shadow_error_rate"] == 0.2
    assert out["score_delta"]["mean"] == pytest.approx(0.1)
    var = (0.1 - 0.4**2 / 4) / 3
    assert out["score_delta"]["ci"][1] == pytest.approx(0.1 + 1.96 * math.sqrt(var / 4))
    assert out["latency_delta_us"]["mean"] == 100.0
    assert out["served_accuracy"] == 0.75 and out["shadow_accuracy"] == 0.5
    assert out["mcnemar"]["p_value"] == 1.0
    assert compare({**sums, "pairs": 0.0, "labelled": 0.0})["agreement"] is None
