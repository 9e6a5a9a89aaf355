"""The gateway's end of the config stream: dial the evaluator, apply each snapshot through the
control plane experiment by experiment, answer ACK (with each experiment's status, refused ones
with their error) or NACK (a snapshot refused whole), and keep serving the last good config
whatever happens to the stream (redial with jittered exponential backoff)."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from abgate.errors import AbgateError
from abgate.v1 import control_pb2 as cpb
from abgate.v1 import control_pb2_grpc as cpb_grpc
from gateway.config import ParsedSnapshot, parse_snapshot
from gateway.control import ExperimentStatus, snapshot_digest

log = logging.getLogger(__name__)

BACKOFF_INITIAL = 0.1
BACKOFF_MAX = 10.0


def config_document(snapshot: cpb.ConfigSnapshot) -> dict[str, Any]:
    """A ConfigSnapshot as the gateway's config document (``gateway.config.parse_config``), so
    the stream and the file share one validation path."""
    return {
        "version": snapshot.version,
        "experiments": [
            {
                "name": e.name,
                "salt": e.salt,
                "arms": [{"name": a.name, "model": a.model, "weight": a.weight} for a in e.arms],
                **(
                    {"ranges": {a.name: [[r.start, r.end] for r in a.ranges] for a in e.arms}}
                    if any(a.ranges for a in e.arms)
                    else {}
                ),
                "shadows": [
                    {"name": s.name, "model": s.model, "sample_rate": s.sample_rate}
                    for s in e.shadows
                ],
                **({"version": e.version} if e.version else {}),
                **({"feature_sample_rate": e.feature_sample_rate} if e.feature_sample_rate else {}),
            }
            for e in snapshot.experiments
        ],
    }


def channel_credentials(
    ca: Path | None, cert: Path | None, key: Path | None
) -> grpc.ChannelCredentials | None:
    """TLS to the evaluator when a CA is given; a client certificate too for mTLS."""
    if ca is None:
        if cert is not None or key is not None:
            raise ValueError("--evaluator-cert/--evaluator-key need --evaluator-ca")
        return None
    if (cert is None) != (key is None):
        raise ValueError("give both --evaluator-cert and --evaluator-key")
    return grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=key.read_bytes() if key is not None else None,
        certificate_chain=cert.read_bytes() if cert is not None else None,
    )


class ConfigSubscriber:
    """One long-lived task per gateway process. ``apply`` validates, warms and swaps a parsed
    snapshot (given with its digest) experiment by experiment and returns each experiment's
    status; it raises ``AbgateError`` to refuse the snapshot whole. ``serving`` tells the
    evaluator-sourced version now served (0: none)."""

    def __init__(
        self,
        target: str,
        token: str,
        node_id: str,
        apply: Callable[[ParsedSnapshot, str], Awaitable[Sequence[ExperimentStatus]]],
        serving: Callable[[], int],
        credentials: grpc.ChannelCredentials | None = None,
        backoff_initial: float = BACKOFF_INITIAL,
        backoff_max: float = BACKOFF_MAX,
    ) -> None:
        self.target = target
        self.token = token
        self.node_id = node_id
        self._apply = apply
        self._serving = serving
        self._credentials = credentials
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.acks = 0
        self.nacks = 0
        self.connects = 0
        self.connected = False
        self.last_error = ""
        self.last_applied_at = 0.0
        self.rejected = 0  # experiments the latest ACK refused

    async def run(self) -> None:
        """Forever: keep a stream open; on any failure wait, then redial."""
        delay = self.backoff_initial
        while True:
            got_message = False
            try:
                got_message = await self._session()
                log.warning("config stream to %s ended; redialling", self.target)
            except grpc.aio.AioRpcError as exc:
                self.last_error = f"{exc.code().name}: {exc.details()}"
                log.warning("config stream to %s failed (%s)", self.target, self.last_error)
            finally:
                self.connected = False
            if got_message:
                delay = self.backoff_initial
            # Full jitter (AWS architecture blog): gateways that lost the same evaluator do not
            # come back in lockstep.
            await asyncio.sleep(random.uniform(0.5, 1.0) * delay)
            delay = min(self.backoff_max, delay * 2)

    def _channel(self) -> grpc.aio.Channel:
        if self._credentials is None:
            return grpc.aio.insecure_channel(self.target)
        return grpc.aio.secure_channel(self.target, self._credentials)

    async def _session(self) -> bool:
        """One stream: hello, then snapshot → apply → ACK/NACK until it ends. True if at least
        one snapshot arrived (the connection worked, so backoff starts over)."""
        outbox: asyncio.Queue[cpb.ConfigRequest] = asyncio.Queue()
        outbox.put_nowait(cpb.ConfigRequest(node_id=self.node_id, version=self._serving()))

        async def requests() -> AsyncIterator[cpb.ConfigRequest]:
            while True:
                yield await outbox.get()

        got_message = False
        async with self._channel() as channel:
            stub = cpb_grpc.ConfigStreamStub(channel)
            call = stub.StreamConfig(
                requests(), metadata=(("authorization", f"Bearer {self.token}"),)
            )
            self.connects += 1
            async for snapshot in call:
                if not got_message:
                    self.connected = True
                    self.last_error = ""
                    got_message = True
                outbox.put_nowait(await self._answer(snapshot))
        return got_message

    async def _answer(self, snapshot: cpb.ConfigSnapshot) -> cpb.ConfigRequest:
        try:
            doc = config_document(snapshot)
            statuses = await self._apply(parse_snapshot(doc), snapshot_digest(doc))
        except AbgateError as exc:
            return self._nack(snapshot, exc.code, exc.message)
        except Exception as exc:
            log.exception("applying config version %d failed", snapshot.version)
            return self._nack(snapshot, grpc.StatusCode.INTERNAL, f"internal error: {exc}")
        self.acks += 1
        self.last_applied_at = time.time()
        self.rejected = sum(1 for s in statuses if s.rejection is not None)
        return cpb.ConfigRequest(
            node_id=self.node_id,
            version=snapshot.version,
            response_nonce=snapshot.nonce,
            experiments=[_status_message(s) for s in statuses],
        )

    def _nack(
        self, snapshot: cpb.ConfigSnapshot, code: grpc.StatusCode, message: str
    ) -> cpb.ConfigRequest:
        self.nacks += 1
        serving = self._serving()
        log.error(
            "config version %d rejected (%s: %s); still serving version %d",
            snapshot.version,
            code.name,
            message,
            serving,
        )
        return cpb.ConfigRequest(
            node_id=self.node_id,
            version=serving,
            response_nonce=snapshot.nonce,
            error_detail=cpb.ErrorDetail(code=code.value[0], message=message),
        )


def _status_message(s: ExperimentStatus) -> cpb.ExperimentStatus:
    out = cpb.ExperimentStatus(name=s.name, version=s.version)
    r = s.rejection
    if r is not None:
        out.rejected_version = r.version
        out.error_detail.code = r.code.value[0]
        out.error_detail.message = r.message
    return out
