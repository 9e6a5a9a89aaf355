"""Calls a gateway with the real ``tritonclient.grpc`` client; runs in ``.venv-interop`` only.

Reads a JSON scenario on stdin ({target, model, user, rows, row_users, request_id}) and prints
one JSON document with what the client saw; the test compares it with onnxruntime.
"""

from __future__ import annotations

import json
import queue
import sys
import time
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


def parameters(response: Any) -> dict[str, Any]:
    out = {}
    for key, param in response.parameters.items():
        choice = param.WhichOneof("parameter_choice")
        out[key] = getattr(param, choice) if choice else None
    return out


def result_of(result: Any, names: tuple[str, ...]) -> dict[str, Any]:
    response = result.get_response()
    out: dict[str, Any] = {
        "id": response.id,
        "model_name": response.model_name,
        "model_version": response.model_version,
        "parameters": parameters(response),
        "raw_outputs": len(response.raw_output_contents),
    }
    for name in names:
        arr = result.as_numpy(name)
        out[name] = {
            "dtype": str(arr.dtype),
            "shape": list(arr.shape),
            "values": [v.decode() if isinstance(v, bytes) else v for v in arr.tolist()]
            if arr.dtype == object
            else arr.tolist(),
        }
    return out


def features_input(name: str, rows: np.ndarray) -> grpcclient.InferInput:
    inp = grpcclient.InferInput(name, list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows)
    return inp


def error_of(call: Any) -> list[str]:
    try:
        call()
    except InferenceServerException as exc:
        return [str(exc.status()), str(exc.message())]
    return ["OK", ""]


def stream_of(client: Any, model: str, input_name: str, rows: np.ndarray, user: str) -> list[Any]:
    """Three calls on one ModelStreamInfer stream (the middle one bad), answers in order."""
    got: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: got.put((result, error)))
    bad = rows[:1].copy()
    bad[0, 0] = np.nan
    for request_id, data in (("stream-1", rows[:2]), ("stream-bad", bad), ("stream-2", rows[2:3])):
        client.async_stream_infer(
            model,
            [features_input(input_name, data)],
            request_id=request_id,
            parameters={"user_id": user},
        )
    answers = [got.get(timeout=30) for _ in range(3)]
    client.stop_stream()
    return [
        result_of(r, ("label", "probabilities")) if e is None else {"error": str(e.message())}
        for r, e in answers
    ]


def statistics_of(client: Any, model: str, rows: int) -> Any:
    """ModelStatistics once the gateway has counted ``rows`` answered rows (it counts them as
    their log rows leave memory, a moment after the answers), or after 15 s."""
    deadline = time.monotonic() + 15
    while True:
        stats = client.get_inference_statistics(model, as_json=True)
        counted = sum(int(s.get("inference_count", 0)) for s in stats.get("model_stats", []))
        if counted >= rows or time.monotonic() > deadline:
            return stats
        time.sleep(0.1)


def main() -> None:
    spec = json.load(sys.stdin)
    model = spec["model"]
    rows = np.asarray(spec["rows"], dtype=np.float32)
    out: dict[str, Any] = {}
    with grpcclient.InferenceServerClient(url=spec["target"]) as client:
        out["live"] = client.is_server_live()
        out["ready"] = client.is_server_ready()
        out["model_ready"] = client.is_model_ready(model)
        out["unknown_model_ready"] = client.is_model_ready("no-such-model")
        server_meta = client.get_server_metadata(as_json=True)
        out["server_metadata"] = server_meta
        meta = client.get_model_metadata(model, as_json=True)
        out["metadata"] = meta
        # As a generic KServe/Triton client would: the input name comes from the metadata.
        input_name = meta["inputs"][0]["name"]
        default = ("label", "probabilities")

        result = client.infer(
            model,
            [features_input(input_name, rows)],
            request_id=spec["request_id"],
            parameters={"user_id": spec["user"]},
        )
        out["single_user"] = result_of(result, default)

        result = client.infer(
            model, [features_input(input_name, rows[:1])], headers={"x-user-id": spec["user"]}
        )
        out["header_user"] = result_of(result, default)

        users = grpcclient.InferInput("user_id", [len(rows)], "BYTES")
        users.set_data_from_numpy(np.asarray([u.encode() for u in spec["row_users"]], dtype=object))
        wanted = ("label", "probabilities", "arm", "bucket", "request_id")
        result = client.infer(
            model,
            [features_input(input_name, rows), users],
            outputs=[grpcclient.InferRequestedOutput(name) for name in wanted],
        )
        out["row_users"] = result_of(result, wanted)

        bad = rows[:1].copy()
        bad[0, 0] = np.nan
        out["errors"] = {
            "nan": error_of(
                lambda: client.infer(
                    model, [features_input(input_name, bad)], parameters={"user_id": "x"}
                )
            ),
            "missing_user": error_of(
                lambda: client.infer(model, [features_input(input_name, rows[:1])])
            ),
            "unknown_model": error_of(
                lambda: client.infer(
                    "no-such-model",
                    [features_input(input_name, rows[:1])],
                    parameters={"user_id": "x"},
                )
            ),
        }
        # Triton's extensions, as perf_analyzer and tritonclient users call them.
        out["model_config"] = client.get_model_config(model, as_json=True)
        out["repository_index"] = client.get_model_repository_index(as_json=True)
        out["stream"] = stream_of(client, model, input_name, rows, spec["user"])
        out["statistics"] = statistics_of(client, model, spec["answered_rows"])
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
