"""Floats in the tests: how model outputs are compared, and the numeric mode of
``make test-numeric``, which reruns the float-sensitive tests (marker ``numeric``) down other
float code paths of this machine, so that an assertion holding only bit for bit on this CPU
fails here rather than on the next one.

    python -m tests.numeric env    # the mode's NAME=value pairs for this machine (Makefile)
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from gateway.variants import SessionOptions

REPO = Path(__file__).resolve().parent.parent
FLOAT32_EPS = float(np.finfo(np.float32).eps)  # 1.19e-7, the spacing of float32 at 1.0

# Class probabilities, compared absolutely: they lie in [0, 1], and a class's probability near 0
# is computed as 1 − p, so its error is a fraction of eps(1.0), not of its own size (2.98e-8 vs
# 0.0 is 855 million ulps apart). The demo models' outputs are float32 sums of at most 60 terms
# each at most 1 in size (60 boosting stages, 50 trees, 30 features); another summation order
# moves such a sum by about √(2n) half-ulps of 1.0, ~5 eps for n = 60. Other orders are what
# other CPUs and shapes get: MLAS picks a GEMM kernel for a batch and GEMV for one row (1 eps
# apart, logreg), and with 2 threads a batch of 51+ rows has its trees split over the threads
# (4.5 eps, forest). 16 eps (1.9e-6) leaves a margin of 3; another model or row is ~1e-2 off.
SCORES_ATOL = 16 * FLOAT32_EPS

# -- the numeric mode --------------------------------------------------------------------------
MODE = "ABGATE_TEST_NUMERIC_MODE"  # set (to 1) by `make test-numeric`
NUMPY_VARIABLE = "NPY_DISABLE_CPU_FEATURES"
OPENBLAS_VARIABLE = "OPENBLAS_CORETYPE"
ORT_VARIABLE = "ABGATE_ORT_INTRA_OP_THREADS"  # the gateway setting ort_intra_op_threads
# Kernel sets of OpenBLAS's DYNAMIC_ARCH builds (numpy's and scipy's wheels) that run on any CPU
# numpy itself runs on (numpy 2.4 needs x86-64-v2, i.e. Nehalem's SSE4.2), in order of choice.
GENERIC_OPENBLAS = {"x86_64": ("Nehalem", "Prescott"), "aarch64": ("ARMV8",)}


def _umath() -> Any:
    try:
        from numpy._core import _multiarray_umath
    except ImportError:  # numpy < 2
        from numpy.core import _multiarray_umath  # type: ignore[no-redef]
    return _multiarray_umath


def numpy_features_to_disable() -> list[str]:
    """The dispatch targets numpy's optimised functions run on this CPU (numpy >= 2 tells each
    function's current target), baseline excluded: numpy refuses to disable those (and a name
    it does not dispatch on is ignored, so it would prove nothing). Valid only in a process
    started without NPY_DISABLE_CPU_FEATURES: a disabled feature reads as absent."""
    umath = _umath()
    dispatch, baseline = list(umath.__cpu_dispatch__), set(umath.__cpu_baseline__)
    try:
        from numpy.lib.introspect import opt_func_info
    except ImportError:  # numpy < 2: whatever the CPU has of what numpy dispatches on
        used = {f for f in dispatch if umath.__cpu_features__.get(f)}
    else:
        used = {
            name
            for signatures in opt_func_info().values()
            for target in signatures.values()
            if not target["current"].startswith("baseline")
            for name in target["current"].replace("(", " ").replace(")", " ").split()
        }
    return [f for f in dispatch if f in used and f not in baseline]


def openblas_coretype() -> str | None:
    """An OpenBLAS kernel set other than the one it picked for this CPU, or None. numpy's
    float64 dot and matmul (Σx² of the stats vectors, ArmStats.from_values, the codec's NaN
    check) run in OpenBLAS, which NPY_DISABLE_CPU_FEATURES does not reach."""
    from threadpoolctl import threadpool_info

    picked = {
        str(lib.get("architecture", "")).lower()
        for lib in threadpool_info()
        if lib.get("internal_api") == "openblas"
    }
    if not picked:
        return None
    return next(
        (c for c in GENERIC_OPENBLAS.get(platform.machine(), ()) if c.lower() not in picked),
        None,
    )


def ort_threads() -> int:
    """onnxruntime intra-op threads other than the gateway's default (1 → 2)."""
    from abgate.settings import GatewaySettings

    return 2 if GatewaySettings().ort_intra_op_threads == 1 else 1


def planned_env() -> dict[str, str]:
    """The mode's environment for this machine. Computed in a child process when this one runs
    with numpy or OpenBLAS already redirected (as under the mode itself), since what they report
    then is what the variables made of them."""
    if {NUMPY_VARIABLE, OPENBLAS_VARIABLE, "NPY_ENABLE_CPU_FEATURES"} & os.environ.keys():
        clean = {
            k: v
            for k, v in os.environ.items()
            if k not in {NUMPY_VARIABLE, OPENBLAS_VARIABLE, "NPY_ENABLE_CPU_FEATURES"}
        }
        done = subprocess.run(
            [sys.executable, "-m", "tests.numeric", "json"],
            cwd=REPO,
            env=clean,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return dict(json.loads(done.stdout))
    env = {MODE: "1"}
    features = numpy_features_to_disable()
    if features:
        env[NUMPY_VARIABLE] = ",".join(features)  # numpy splits on commas or spaces
    core = openblas_coretype()
    if core is not None:
        env[OPENBLAS_VARIABLE] = core
    env[ORT_VARIABLE] = str(ort_threads())
    return env


def in_mode() -> bool:
    return os.environ.get(MODE) == "1"


# -- comparisons -------------------------------------------------------------------------------
def assert_scores_close(got: Any, want: Any, err_msg: str = "") -> None:
    """Class probabilities of the same rows by the same model, computed by another call
    (another batch, session or thread count): within SCORES_ATOL."""
    np.testing.assert_allclose(
        np.asarray(got, dtype=np.float64),
        np.asarray(want, dtype=np.float64),
        rtol=0,
        atol=SCORES_ATOL,
        err_msg=err_msg,
    )


def session_options() -> SessionOptions:
    """onnxruntime options as a gateway started in this environment builds them (the mode sets
    ABGATE_ORT_INTRA_OP_THREADS), for tests that make sessions of their own."""
    from abgate.settings import GatewaySettings, load_settings
    from gateway.variants import SessionOptions

    settings = load_settings(GatewaySettings, fields=SessionOptions.SETTINGS)
    return SessionOptions.from_settings(settings)


def main(argv: list[str]) -> int:
    if argv == ["env"]:
        print(" ".join(f"{k}={v}" for k, v in planned_env().items()))
        return 0
    if argv == ["json"]:
        print(json.dumps(planned_env()))
        return 0
    print("usage: python -m tests.numeric env|json", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
