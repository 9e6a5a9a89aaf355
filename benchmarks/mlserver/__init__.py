"""MLServer (Seldon's Open Inference Protocol V2 server), the reference server of ``make bench``.

It lives in a virtualenv of its own, ``.venv-mlserver``, installed from the hashed
``requirements.txt`` beside this file (``make lock`` writes it from ``requirements.in``) the way
``tests/interop`` installs tritonclient: MLServer pins protobuf < 7 and brings its own FastAPI
stack, neither of which belongs in ``.venv``.

It serves the demo's logistic-regression pipeline through its scikit-learn runtime, which loads a
joblib file: that is MLServer's model format, used here for the reference server only (the
gateway serves the same fitted pipeline converted to ONNX). Settings: MLServer's defaults except
the ports, ``debug`` off and ``parallel_workers`` 0 (inference in the server process). For a model
this small the worker pool only adds a hop: measured on this machine (h2load -c 4 -m 16, three
alternating rounds) 902 req/s with p99 137 ms at the defaults against 923 req/s with p99 91 ms
in-process, so MLServer gets its better setting.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import joblib
from sklearn.base import BaseEstimator

from abgate.addresses import free_port
from abgate.oip.v2 import grpc_predict_v2_pb2 as oip
from abgate.oip.v2 import grpc_predict_v2_pb2_grpc as oip_grpc
from benchmarks.e2e.processes import Server
from tests.interop.venv import REPO, side_venv

VENV = REPO / ".venv-mlserver"
REQUIREMENTS = Path(__file__).with_name("requirements.txt")
MODEL = "demo-logreg"
# The sklearn runtime answers ``predict`` (labels) unless a request names this output.
PROBABILITIES = "predict_proba"


def mlserver_python() -> Path:
    """The interpreter of ``.venv-mlserver``, created (about 380 MB) on first use."""
    return side_venv(VENV, REQUIREMENTS, "import mlserver, mlserver_sklearn")


def write_repository(root: Path, estimator: BaseEstimator) -> int:
    """A model repository with ``estimator`` as model ``MODEL``; the gRPC port it will use."""
    grpc_port = free_port()
    model_dir = root / MODEL
    model_dir.mkdir(parents=True, exist_ok=True)
    settings = {
        "debug": False,
        "parallel_workers": 0,
        "host": "127.0.0.1",
        "grpc_port": grpc_port,
        "http_port": free_port(),
        "metrics_port": free_port(),
    }
    (root / "settings.json").write_text(json.dumps(settings, indent=1))
    model_settings = {
        "name": MODEL,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib"},
    }
    (model_dir / "model-settings.json").write_text(json.dumps(model_settings, indent=1))
    joblib.dump(estimator, model_dir / "model.joblib")
    return grpc_port


class MLServer(Server):
    """``mlserver start`` on a repository from ``write_repository``; up once the OIP
    ModelReady of ``MODEL`` says so (MLServer has no standard gRPC health service)."""

    def __init__(self, root: Path, grpc_port: int, work: Path) -> None:
        mlserver = mlserver_python().parent / "mlserver"
        super().__init__("mlserver", [str(mlserver), "start", str(root)], grpc_port, work)

    def wait_serving(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.target) as channel:
            stub = oip_grpc.GRPCInferenceServiceStub(channel)
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"mlserver exited with {self.proc.returncode}:\n{self.stderr_tail()}"
                    )
                try:
                    if stub.ModelReady(oip.ModelReadyRequest(name=MODEL), timeout=2).ready:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mlserver not ready after {timeout:.0f} s")
                time.sleep(0.3)
