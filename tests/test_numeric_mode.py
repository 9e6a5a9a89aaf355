"""``make test-numeric`` really runs down other float code paths: numpy's dispatched functions on
their baseline code, OpenBLAS on another kernel set, and the gateway's (and the converters')
onnxruntime sessions with another thread count."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import numeric
from tests.conftest import DemoStore, gateway_settings


@pytest.mark.numeric
def test_the_numeric_mode_is_in_effect(demo_store: DemoStore, tmp_path: Path) -> None:
    if not numeric.in_mode():
        pytest.skip(f"checks the numeric mode only: run `make test-numeric` ({numeric.MODE})")
    planned = numeric.planned_env()  # afresh, in a child without the mode's variables
    assert {k: os.environ.get(k) for k in planned} == planned

    # numpy: the features read as absent, and every optimised function runs its baseline code.
    import numpy as np

    features = planned.get(numeric.NUMPY_VARIABLE, "")
    cpu = numeric._umath().__cpu_features__
    assert all(cpu[f] is False for f in features.split(",") if f)
    current = {
        target["current"]
        for signatures in np.lib.introspect.opt_func_info().values()
        for target in signatures.values()
    }
    assert all(t.startswith("baseline") for t in current), current

    # OpenBLAS (numpy's and, once imported, scipy's): the kernel set asked for.
    import scipy.linalg  # noqa: F401  (loads scipy's OpenBLAS too)
    from threadpoolctl import threadpool_info

    core = planned.get(numeric.OPENBLAS_VARIABLE)
    if core is not None:
        blas = [lib for lib in threadpool_info() if lib["internal_api"] == "openblas"]
        assert blas and {lib["architecture"].lower() for lib in blas} == {core.lower()}

    # onnxruntime: a gateway's sessions, and the converters' parity check, get the thread count.
    from converters.cli import _session_options
    from gateway.server import GatewayServer

    threads = int(planned[numeric.ORT_VARIABLE])
    assert threads != 1
    settings = gateway_settings(demo_store, tmp_path)
    assert settings.ort_intra_op_threads == threads
    server = GatewayServer(settings)
    try:
        variant = server.variants.get_or_load(demo_store.metas["demo-forest"])
        assert variant.session.get_session_options().intra_op_num_threads == threads
    finally:
        server.executor.shutdown()
    assert numeric.session_options().intra_op_threads == threads
    assert _session_options().intra_op_threads == threads
