"""Calls a gateway's OIP REST side with the real ``tritonclient.http`` client; runs in
``.venv-interop`` only. Reads {url, model, user, row} as JSON on stdin and prints what the client
saw as one JSON document."""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def main() -> None:
    s = json.load(sys.stdin)
    client = httpclient.InferenceServerClient(url=s["url"])
    row = np.asarray([s["row"]], dtype=np.float32)
    features = httpclient.InferInput("features", list(row.shape), "FP32")
    features.set_data_from_numpy(row, binary_data=False)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=False)
               for n in ("label", "probabilities")]  # fmt: skip
    result = client.infer(s["model"], [features], outputs=outputs, request_id="http-1",
                          headers={"x-user-id": s["user"]})  # fmt: skip
    response = result.get_response()
    # tritonclient's defaults: binary tensor data both ways (binary_data_size on the input,
    # binary_data_output on the request, Inference-Header-Content-Length).
    features_bin = httpclient.InferInput("features", list(row.shape), "FP32")
    features_bin.set_data_from_numpy(row)
    binary = client.infer(s["model"], [features_bin], headers={"x-user-id": s["user"]})
    try:
        client.infer("no-such-model", [features], headers={"x-user-id": "u"})
        unknown = "no error"
    except InferenceServerException as exc:
        unknown = str(exc)
    print(json.dumps({
        "live": client.is_server_live(), "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(s["model"]),
        "metadata": client.get_model_metadata(s["model"]),
        "id": response.get("id"), "model_version": response.get("model_version"),
        "label": result.as_numpy("label").tolist(),
        "probabilities": result.as_numpy("probabilities").tolist(),
        "binary_label": binary.as_numpy("label").tolist(),
        "binary_probabilities": binary.as_numpy("probabilities").tolist(),
        "binary_header": binary.get_response().get("outputs"),
        "unknown": unknown,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
