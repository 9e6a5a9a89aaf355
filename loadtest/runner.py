"""Worker processes (spawned, one grpc.aio event loop each) and the parent that starts them on a
common clock once the target has answered a probe, relays their per-second progress and merges
their results."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import queue as queue_mod
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from loadtest.features import load_rows
from loadtest.results import RunResult, Second, Tick, TickCollector, WorkerResult, merge_results
from loadtest.schedule import user_id
from loadtest.settings import LoadTestSettings
from loadtest.targets import RequestBuilder, Target
from loadtest.worker import Worker

# Time the parent gives workers between "go" and the first arrival, so none starts late.
START_DELAY_S = 0.2
GO_TIMEOUT_S = 300.0


class TargetError(Exception):
    """The target cannot be used (unreachable, or the probe request failed): exit code 1.
    ``str()`` starts with the gRPC status name."""


# -- what the worker processes say besides their ticks and results ---------------------------
@dataclass(frozen=True)
class Ready:
    worker: int
    error: str = ""  # "STATUS_NAME: details" when the target cannot be used
    probe_ok: int = 0  # worker 0 sends one probe request before the run (a warm-up request)


@dataclass(frozen=True)
class Failed:
    worker: int
    error: str


# -- worker process -------------------------------------------------------------------------
async def _worker_main(
    settings: LoadTestSettings, index: int, out: Any, go: Any, start_wall: Any
) -> None:
    rows, labels = load_rows(settings)
    builder = RequestBuilder(settings.protocol, settings.experiment, rows, settings.oip_input_name)
    target = Target(
        settings.target,
        builder.path,
        channels=settings.channels,
        timeout=settings.timeout,
        token=settings.client_token,
    )
    try:
        try:
            await target.wait_ready(settings.connect_timeout)
        except TimeoutError:
            out.put(Ready(index, error=(
                f"UNAVAILABLE: cannot connect to {settings.target} "
                f"within {settings.connect_timeout:g} s"
            )))  # fmt: skip
            return
        probe_ok = 0
        if index == 0:
            # One request before any load, so a wrong experiment or protocol fails in a second
            # with the server's own status instead of after a whole run of errors.
            rid = f"lt-{settings.run_id}-probe"
            try:
                await target.call(builder.build(0, user_id(0), rid))
                probe_ok = 1
            except grpc.aio.AioRpcError as exc:
                out.put(Ready(index, error=f"{exc.code().name}: {exc.details() or ''}"))
                return
        out.put(Ready(index, probe_ok=probe_ok))
        # Bounded, so a worker whose parent was killed does not wait forever.
        started = await asyncio.to_thread(go.wait, GO_TIMEOUT_S)
        if not started or start_wall.value < 0:  # the parent gave up
            return
        start = time.monotonic() + (start_wall.value - time.time())
        worker = Worker(settings, index, target, builder, labels, out.put)
        out.put(await worker.run(start))
    finally:
        await target.close()


def _worker_process(
    settings: LoadTestSettings, index: int, out: Any, go: Any, start_wall: Any
) -> None:
    try:
        asyncio.run(_worker_main(settings, index, out, go, start_wall))
    except KeyboardInterrupt:
        pass
    except BaseException:
        out.put(Failed(index, traceback.format_exc()))


# -- parent ---------------------------------------------------------------------------------
def run_load(
    settings: LoadTestSettings, on_second: Callable[[Second], None] | None = None
) -> RunResult:
    """Start the workers, run the load, return the merged result.

    Raises TargetError when the target cannot be used, RuntimeError when a worker fails.
    """
    settings.check()
    # spawn, not fork: a forked child would inherit whatever gRPC state the parent holds.
    ctx = mp.get_context("spawn")
    out: Any = ctx.Queue()
    go = ctx.Event()
    start_wall: Any = ctx.Value("d", 0.0)
    procs = [
        ctx.Process(
            target=_worker_process,
            args=(settings, i, out, go, start_wall),
            name=f"loadtest-worker-{i}",
            daemon=True,
        )
        for i in range(settings.workers)
    ]
    # SIGTERM ends the run as Ctrl-C does: the workers are stopped with it. (Python's default
    # ends only this process, and the workers went on sending their load.)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _terminated)
    for p in procs:
        p.start()
    try:
        return _drive(settings, procs, out, go, start_wall, on_second)
    except BaseException:
        for p in procs:  # an error, Ctrl-C or SIGTERM: the load stops now
            if p.is_alive():
                p.terminate()
        raise
    finally:
        go.set()
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _terminated(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def _get(out: Any, procs: list[Any], timeout: float) -> Any:
    """The next worker message; raises RuntimeError when a worker died without a word."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return out.get(timeout=0.2)
        except queue_mod.Empty:
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"{dead[0].name} exited with code {dead[0].exitcode}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"no word from the workers in {timeout:.0f} s") from None


def _drive(
    settings: LoadTestSettings,
    procs: list[Any],
    out: Any,
    go: Any,
    start_wall: Any,
    on_second: Callable[[Second], None] | None,
) -> RunResult:
    ready: dict[int, Ready] = {}
    # Workers import numpy and grpc and connect before they answer.
    ready_timeout = settings.connect_timeout + settings.timeout + 60.0
    while len(ready) < settings.workers:
        msg = _get(out, procs, ready_timeout)
        if isinstance(msg, Failed):
            raise RuntimeError(f"worker {msg.worker} failed:\n{msg.error}")
        if isinstance(msg, Ready):
            if msg.error:
                start_wall.value = -1.0
                go.set()
                raise TargetError(msg.error)
            ready[msg.worker] = msg
    start_wall.value = time.time() + START_DELAY_S
    go.set()

    collector = TickCollector(settings, on_second)
    results: list[WorkerResult] = []
    run_timeout = (
        START_DELAY_S + settings.warmup + settings.duration + settings.drain
        + 2 * settings.timeout + 30.0
    )  # fmt: skip
    while len(results) < settings.workers:
        msg = _get(out, procs, run_timeout)
        if isinstance(msg, Tick):
            collector.tick(msg)
        elif isinstance(msg, WorkerResult):
            results.append(msg)
        elif isinstance(msg, Failed):
            raise RuntimeError(f"worker {msg.worker} failed:\n{msg.error}")
    results.sort(key=lambda r: r.worker)
    return merge_results(
        settings, results, collector.finish(), probe_ok=sum(r.probe_ok for r in ready.values())
    )
