"""The trainer process (``abgate trainer``): a loop that claims retrain requests
(``trainer.core``) until SIGTERM, woken early by NOTIFY abgate_retrain, and asks the evaluator
for the next round (StartRound) after each registered model."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from typing import Any

import asyncpg
import grpc

from abgate.settings import TrainerSettings
from abgate.trainer.config import config_of
from abgate.trainer.core import StartRound, process_next
from abgate.v1 import control_pb2 as cpb
from abgate.v1 import control_pb2_grpc as cpb_grpc
from evaluator.retrain import NOTIFY_CHANNEL
from gateway.modelstore import ModelStore

log = logging.getLogger(__name__)


class RoundRefused(Exception):
    """The evaluator did not start the next round (its status name and message)."""


def round_starter(channel: grpc.aio.Channel, token: str) -> StartRound:
    """StartRound on the evaluator at ``channel``, as the trainer asks it."""
    stub = cpb_grpc.EvaluatorAdminStub(channel)
    metadata = (("authorization", f"Bearer {token}"),)

    async def start(experiment: str, sha: str, request_id: int, approval: bool) -> dict[str, Any]:
        req = cpb.StartRoundRequest(
            experiment=experiment, model=sha, retrain_request=request_id,
            require_approval=approval, actor="trainer",
        )  # fmt: skip
        try:
            view = await stub.StartRound(req, metadata=metadata, timeout=30)
        except grpc.aio.AioRpcError as exc:
            raise RoundRefused(f"{exc.code().name}: {exc.details()}") from None
        details = json.loads(view.details_json or "{}")
        return {"round": details.get("round"), "status": view.status, "version": view.version}

    return start


class TrainerService:
    def __init__(self, settings: TrainerSettings) -> None:
        self.settings = settings
        self.config = config_of(settings)
        self.store = ModelStore(settings.model_store)
        self._wake = asyncio.Event()

    def _notified(self, *_: Any) -> None:
        self._wake.set()

    async def _sleep(self, stop: asyncio.Event) -> None:
        """Until the poll interval passes, a NOTIFY arrives or stop is set."""
        waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())}
        try:
            await asyncio.wait(
                waiters, timeout=self.settings.poll_interval, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for w in waiters:
                w.cancel()
        self._wake.clear()

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        if s.evaluator_ca is not None:
            creds = grpc.ssl_channel_credentials(root_certificates=s.evaluator_ca.read_bytes())
            channel = grpc.aio.secure_channel(s.evaluator, creds)
        else:
            channel = grpc.aio.insecure_channel(s.evaluator)
        start_round = round_starter(channel, s.token)
        log.info(
            "trainer %s: queue in PostgreSQL, model store %s, evaluator %s",
            self.config.claimer,
            s.model_store,
            s.evaluator,
        )
        try:
            while not stop.is_set():
                try:
                    await self._serve(stop, start_round)
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    log.warning("database unavailable (%s); retrying", exc)
                    await self._sleep(stop)
        finally:
            await channel.close(None)
        log.info("trainer %s stopped", self.config.claimer)

    async def _serve(self, stop: asyncio.Event, start_round: StartRound) -> None:
        url = self.settings.database_url
        conn = await asyncpg.connect(url)
        listener = await asyncpg.connect(url)  # notifications arrive between transactions
        try:
            await listener.add_listener(NOTIFY_CHANNEL, self._notified)
            while not stop.is_set():
                work = asyncio.ensure_future(
                    process_next(conn, self.store, self.config, start_round)
                )
                stopping = asyncio.ensure_future(stop.wait())
                await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                if not work.done():
                    # SIGTERM while training: the claim's transaction rolls back, so the
                    # request is pending again (its attempt counted) for the next trainer.
                    work.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await work
                    return
                if work.result() is None:
                    await self._sleep(stop)
        finally:
            for c in (listener, conn):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(c.close(), 5)

    async def run_until_signalled(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        await self.run(stop)


def run(settings: TrainerSettings) -> int:
    asyncio.run(TrainerService(settings).run_until_signalled())
    return 0
