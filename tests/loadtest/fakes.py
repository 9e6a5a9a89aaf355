"""A tiny grpc.aio server for load-test tests: native Predict and OIP V2 ModelInfer, with an
optional per-request delay, recording what it received."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import grpc

from abgate.oip.v2 import grpc_predict_v2_pb2 as oip
from abgate.v1 import gateway_pb2 as pb


class FakeServer:
    """Runs on its own event loop thread. ``delay(request_count) -> seconds`` slows answers."""

    def __init__(self, delay: Callable[[int], float] | None = None) -> None:
        self.delay = delay
        self.predicts: list[pb.PredictRequest] = []
        self.infers: list[oip.ModelInferRequest] = []
        self.outcomes: list[pb.Outcome] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = self._call(self._start())
        self.target = f"127.0.0.1:{self.port}"

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    async def _slow(self, n: int) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay is not None and (d := self.delay(n)) > 0:
                await asyncio.sleep(d)
        finally:
            self.in_flight -= 1

    async def _predict(self, request: pb.PredictRequest, context: Any) -> pb.PredictResponse:
        self.predicts.append(request)
        await self._slow(len(self.predicts))
        if request.experiment != "demo":
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"unknown experiment {request.experiment!r}"
            )
        return pb.PredictResponse(
            request_id=request.request_id, experiment=request.experiment, arm="a"
        )

    async def _infer(self, request: oip.ModelInferRequest, context: Any) -> oip.ModelInferResponse:
        self.infers.append(request)
        await self._slow(len(self.infers))
        return oip.ModelInferResponse(model_name=request.model_name, id=request.id)

    async def _record(self, request: pb.RecordOutcomeRequest, context: Any) -> Any:
        self.outcomes.extend(request.outcomes)
        return pb.RecordOutcomeResponse(accepted=len(request.outcomes))

    async def _start(self) -> int:
        self.server = grpc.aio.server()
        native = grpc.method_handlers_generic_handler(
            "abgate.v1.InferenceGateway",
            {
                "Predict": grpc.unary_unary_rpc_method_handler(
                    self._predict,
                    request_deserializer=pb.PredictRequest.FromString,
                    response_serializer=pb.PredictResponse.SerializeToString,
                ),
                "RecordOutcome": grpc.unary_unary_rpc_method_handler(
                    self._record,
                    request_deserializer=pb.RecordOutcomeRequest.FromString,
                    response_serializer=pb.RecordOutcomeResponse.SerializeToString,
                ),
            },
        )
        infer = grpc.method_handlers_generic_handler(
            "inference.GRPCInferenceService",
            {
                "ModelInfer": grpc.unary_unary_rpc_method_handler(
                    self._infer,
                    request_deserializer=oip.ModelInferRequest.FromString,
                    response_serializer=oip.ModelInferResponse.SerializeToString,
                )
            },
        )
        self.server.add_generic_rpc_handlers((native, infer))
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        return port

    def close(self) -> None:
        self._call(self.server.stop(0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
