"""load_settings: overrides, then ABGATE_<FIELD>, then defaults; ``fields`` limits the
environment to the fields named."""

from __future__ import annotations

import pytest

from abgate.settings import GatewaySettings, load_settings

ENV = {"ABGATE_ORT_INTRA_OP_THREADS": "3", "ABGATE_WORKERS": "4", "ABGATE_LISTEN": "0.0.0.0:1"}


def test_fields_limits_what_the_environment_sets() -> None:
    s = load_settings(
        GatewaySettings, {"listen": "127.0.0.1:0"}, ENV, fields=["ort_intra_op_threads"]
    )
    assert (s.ort_intra_op_threads, s.workers, s.listen) == (3, 1, "127.0.0.1:0")
    s = load_settings(
        GatewaySettings, {"ort_intra_op_threads": 5}, ENV, fields=["ort_intra_op_threads"]
    )
    assert s.ort_intra_op_threads == 5  # an override still beats the environment
    s = load_settings(GatewaySettings, None, ENV)
    assert (s.ort_intra_op_threads, s.workers, s.listen) == (3, 4, "0.0.0.0:1")


def test_a_bad_value_of_a_named_field_is_refused_and_others_are_not_read() -> None:
    bad = {"ABGATE_ORT_INTRA_OP_THREADS": "two", "ABGATE_WORKERS": "many"}
    with pytest.raises(ValueError, match="ABGATE_ORT_INTRA_OP_THREADS: expected int"):
        load_settings(GatewaySettings, None, bad, fields=["ort_intra_op_threads"])
    assert load_settings(GatewaySettings, None, bad, fields=["ort_spinning"]).workers == 1
