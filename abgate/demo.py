"""``abgate demo``: the whole story, end to end on this machine, with the real commands.

Train and convert the demo models (a weak control, a truly better challenger, a shadow), start an
embedded PostgreSQL, the evaluator and a gateway of N workers; route users with ``abgate
predict`` (stickiness, shares); create an A/B experiment on the evaluator, drive open-loop
traffic with ground-truth outcomes through ``abgate loadtest``, and watch the evaluator promote
the challenger (or ramp a canary) while both gateway workers ACK each split; print the verdict;
stop everything. A second run reuses the work directory.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from abgate.addresses import free_port
from abgate.client import GatewayClient, RpcFailure


def wait_serving(
    target: str, timeout: float = 60.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Block until the server's health service (gateway or evaluator) says SERVING."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{target}: exited with {proc.returncode} before serving")
            try:
                resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"{target} not SERVING after {timeout:.0f}s")


def _abgate(*args: str) -> list[str]:
    return [sys.executable, "-m", "abgate", *args]


def _start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    print("   $ abgate " + " ".join(cmd[3:]))
    quiet = os.environ.get("ABGATE_DEMO_QUIET")
    out = open(log, "ab")  # noqa: SIM115 - owned by the process for its lifetime
    return subprocess.Popen(cmd, stdout=out, stderr=out if quiet else None)


def _stop(name: str, proc: subprocess.Popen[bytes] | None) -> int:
    if proc is None:
        return 0
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait()
    print(f"   {name} exited with {rc}")
    return rc


def run_demo(
    *,
    workdir: Path,
    users: int,
    workers: int,
    quick: bool = False,
    canary: bool = False,
    keep: bool = False,
) -> int:
    from converters.demo import load_demo_holdout, train_demo_models, train_demo_stump
    from gateway.modelstore import ModelStore

    workdir.mkdir(parents=True, exist_ok=True)
    store_dir = workdir / "models"
    print(f"== 1. training and converting demo models into {store_dir}")
    metas = [*train_demo_models(ModelStore(store_dir)), train_demo_stump(ModelStore(store_dir))]
    for m in metas:
        print(
            f"   {m.id:<12} v{m.version:<3} sha256={m.sha256[:12]}  {m.source:<45}"
            f" parity max|Δp|={m.parity_max_abs_diff:.1e} on {m.parity_rows} rows"
        )

    from abgate.db.embedded import EmbeddedPostgres

    pg = EmbeddedPostgres(workdir / "pg")
    database_url = pg.start()
    print(f"== 2. embedded PostgreSQL (logs, experiments, decisions), data in {pg.data_dir}")
    token = secrets.token_hex(16)
    evaluator_target = f"127.0.0.1:{free_port()}"
    http_target = f"127.0.0.1:{free_port()}"
    target = f"127.0.0.1:{free_port()}"
    # In the environment, not on a command line where `ps` would show it: the evaluator reads
    # ABGATE_TOKEN, the gateway ABGATE_EVALUATOR_TOKEN, and so do the commands below.
    os.environ.update({"ABGATE_TOKEN": token, "ABGATE_EVALUATOR_TOKEN": token})
    evaluator = gateway = None
    rc = rc_gw = 1
    try:
        print(f"== 3. starting the evaluator on {evaluator_target} (token in ABGATE_TOKEN)")
        evaluator = _start(
            _abgate("--log-level", "WARNING", "evaluator", "--listen", evaluator_target,
                    "--http-listen", http_target,
                    "--database-url", database_url, "--model-store", str(store_dir),
                    "--tick-interval", "0.5", "--settle", "0.5"),
            workdir / "evaluator.log",
        )  # fmt: skip
        wait_serving(evaluator_target, proc=evaluator)
        # The fragment signs the browser tab in; it never reaches a server or a log.
        print(f"   dashboard: http://{http_target}/#token={token}")
        print(f"   (or open http://{http_target}/ and paste $ABGATE_TOKEN; HTTP/JSON API on the")
        print(
            f'   same port: curl -H "Authorization: Bearer $ABGATE_TOKEN" '
            f"http://{http_target}/api/v1/experiments)"
        )
        _ensure_demo_experiments(evaluator_target)
        print(f"== 4. starting the gateway: {workers} workers on {target}, subscribed to it")
        gateway = _start(
            _abgate("--log-level", "WARNING", "serve", "--listen", target,
                    "--model-store", str(store_dir),
                    "--state-dir", str(workdir / "state"), "--workers", str(workers),
                    "--database-url", database_url, "--evaluator", evaluator_target,
                    "--log-max-age", "0.1"),
            workdir / "gateway.log",
        )  # fmt: skip
        wait_serving(target, proc=gateway)
        X, y = load_demo_holdout(store_dir)
        _route_users(target, X, y, users)
        _shares(target, X)
        rc, name, verdict = _experiment(
            workdir, target, evaluator_target, store_dir, quick=quick, canary=canary
        )
        _report(workdir, name, database_url)
        print(f"   verdict ({workdir / 'verdict.json'}):")
        print("   " + verdict.replace("\n", "\n   ").rstrip())
        if rc != 0:
            print("abgate: error: the experiment did not reach 'promoted' in time", file=sys.stderr)
        if keep:
            _keep_running(f"http://{http_target}/", evaluator, gateway)
    except (RuntimeError, TimeoutError, RpcFailure, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", None) or ""
        print(f"abgate: error: demo failed: {exc} {detail}".rstrip(), file=sys.stderr)
        rc = 1
    finally:
        print("== 10. stopping everything (SIGTERM: drain calls, flush logs)")
        rc_gw = _stop("gateway", gateway)
        _stop("evaluator", evaluator)
        try:
            n_logged = asyncio.run(_count_rows(database_url))
            print(f"   prediction log: {n_logged} rows in PostgreSQL (all runs of the demo so far)")
        except Exception as exc:  # the story already failed; say what we can
            print(f"   prediction log not readable: {exc}")
        finally:
            pg.stop()
    return rc if rc_gw == 0 else 1


def _keep_running(url: str, *procs: subprocess.Popen[bytes] | None) -> None:
    """``--keep``: leave the evaluator, the gateway and PostgreSQL up until Ctrl-C (or
    SIGTERM), or until one of them exits."""
    import signal
    import time

    stop: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stop.append(signum)

    previous = signal.signal(signal.SIGTERM, on_signal)
    print(f"== running until Ctrl-C: dashboard {url}", flush=True)
    try:
        while not stop and all(p is None or p.poll() is None for p in procs):
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def _route_users(target: str, X: np.ndarray, y: np.ndarray, users: int) -> None:
    print(f"== 5. routing {users} users with `abgate predict` (each asked twice)")
    for i in range(users):
        user = f"user-{i + 1}"
        row = ",".join(f"{v:.6g}" for v in X[i])
        arms = []
        fields: dict[str, str] = {}
        for _ in range(2):
            out = subprocess.run(
                _abgate("predict", "--target", target, "--experiment", "demo", "--user", user,
                        "--features", row),
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            fields = dict(kv.split("=", 1) for kv in out.split() if "=" in kv)
            arms.append(fields["arm"])
        sticky = "sticky" if arms[0] == arms[1] else "NOT STICKY"
        print(
            f"   {user:<8} -> arm={arms[0]:<10} model={fields['model']:<15} "
            f"label={fields['label']} (truth {int(y[i])})  {sticky}"
        )


DEMO_EXPERIMENTS = {
    # name: arms as NAME=MODEL@WEIGHT (the first is control)
    "demo": ("control=demo-logreg@50", "treatment=demo-gbdt@50"),
    "demo-3way": ("logreg=demo-logreg@34", "forest=demo-forest@33", "gbdt=demo-gbdt@33"),
}


def _ensure_demo_experiments(evaluator: str) -> None:
    """The routing showcase's experiments, created on the evaluator once (a second run of the
    demo finds them there)."""
    listed = json.loads(_cli("experiments", "list", "--evaluator", evaluator, "--json"))
    have = {e["definition"]["name"] for e in listed}
    for name, arms in DEMO_EXPERIMENTS.items():
        if name in have:
            continue
        args = ["experiments", "create", "--evaluator", evaluator, "--name", name,
                "--min-samples", "1000000"]  # fmt: skip
        for arm in arms:
            args += ["--arm", arm]
        _cli(*args)


def _shares(target: str, X: np.ndarray) -> None:
    print("== 6. arm shares over 20,000 users (PredictBatch) against the configured split")
    with GatewayClient(target) as client:
        counts: collections.Counter[str] = collections.Counter()
        for chunk in range(10):
            ids = [f"share-{chunk}-{j}" for j in range(2000)]
            rows = X[np.arange(2000) % len(X)]
            resp = client.predict_batch("demo-3way", ids, rows)
            names = [a.name for a in resp.arms]
            counts.update(names[k] for k in resp.arm_index)
    configured = {
        a.split("=")[0]: float(a.rsplit("@", 1)[1]) for a in DEMO_EXPERIMENTS["demo-3way"]
    }
    for name, n in sorted(counts.items()):
        print(f"   demo-3way {name:<10} {n / 200:6.2f}%  (configured {configured[name]:.0f}%)")


def _cli(*args: str) -> str:
    print("   $ abgate " + " ".join(args))
    return subprocess.run(_abgate(*args), capture_output=True, text=True, check=True).stdout


def _experiment(
    workdir: Path,
    target: str,
    evaluator: str,
    store_dir: Path,
    *,
    quick: bool,
    canary: bool,
) -> tuple[int, str, str]:
    """Run the experiment to its decision: (exit code, experiment name, verdict JSON)."""
    name = f"checkout-{int(time.time())}"  # a fresh experiment each run of the demo
    kind = "canary" if canary else "ab"
    print(f"== 7. the evaluator takes over: a{'' if canary else 'n'} {kind} experiment {name!r}")
    print("   control = demo-stump (weak), treatment = demo-logreg (truly better),")
    print("   shadow = demo-gbdt (mirrored, logged, compared, never served)")
    args = ["experiments", "create", "--evaluator", evaluator, "--name", name, "--kind", kind,
            "--arm", "control=demo-stump", "--arm", "treatment=demo-logreg",
            "--shadow", "gbdt=demo-gbdt@1.0", "--metric", "accuracy", "--min-samples", "200",
            "--min-effect", "0.02", "--max-error-rate", "0.05", "--max-p99-ms", "250",
            "--json"]  # fmt: skip
    if canary:
        # A demo's few minutes of traffic: far fewer treatment rows per stage than the ~1,000
        # that let the guardrails catch 3x their limit at the 1 % stage.
        args += [
            "--stage-hold",
            "2" if quick else "5",
            "--stage-min-rows",
            "30" if quick else "100",
        ]
    created = json.loads(_cli(*args))
    print(f"   created: weights {created['weights']}, snapshot version "
          f"{created['snapshot_version']}")  # fmt: skip
    rate = 300 if quick else 400
    duration = 60 if quick else 180
    print(f"== 8. open-loop traffic with ground-truth outcomes ({rate} req/s, Poisson)")
    load = subprocess.Popen(
        _abgate("loadtest", "--target", target, "--experiment", name, "--rate", str(rate),
                "--duration", str(duration), "--users", "50000", "--outcomes",
                "--model-store", str(store_dir), "--quiet", "--json"),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + duration + 10
    view: dict = {}
    try:
        while time.monotonic() < deadline:
            time.sleep(1.0)
            out = subprocess.run(
                _abgate("experiments", "show", name, "--evaluator", evaluator, "--json", "--full"),
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            view = json.loads(out)
            _progress(view)
            if view["status"] != "running":
                break
    finally:
        load.terminate()
        load.wait(30)
    print()
    print(f"   status: {view.get('status')}; weights {view.get('weights')}")
    print(_cli("experiments", "show", name, "--evaluator", evaluator).rstrip())
    print(_cli("experiments", "gateways", "--evaluator", evaluator).rstrip())
    verdict = _cli("experiments", "show", name, "--evaluator", evaluator, "--json")
    (workdir / "verdict.json").write_text(verdict)
    return (0 if view.get("status") == "promoted" else 1), name, verdict


def _report(workdir: Path, name: str, database_url: str, step: int = 9) -> None:
    out = workdir / "report"
    print(f"== {step}. the report of {name!r} (`abgate report`): arm shares against the split,")
    print("   the metric per arm with its confidence sequence, decisions, latency, drift over")
    print("   time, shadows")
    subprocess.run(
        _abgate("--log-level", "WARNING", "report", "--experiment", name, "--out", str(out),
                "--database-url", database_url),
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    print(f"   report: {out / f'{name}.html'}")
    print(f"           {out / f'{name}.pdf'}")


def _progress(view: dict) -> None:
    """One live line: samples and accuracy per arm, SRM, the current verdict."""
    stats = view.get("details", {}).get("statistics", {})
    arms = stats.get("arms", {})
    parts = [
        f"{a}: n={s.get('n', 0)} acc={s['mean']:.3f} ({s.get('weight', 0):g}%)"
        for a, s in arms.items()
        if s.get("mean") is not None
    ]
    srm = stats.get("srm", {})
    srm_text = f"SRM p={srm['p_value']:.2g}" if srm.get("checked") else "SRM: waiting"
    served = sum(s.get("window_served", 0) for s in arms.values())
    errors = sum(s.get("window_errors", 0) for s in arms.values())
    p99 = max((s["p99_ms"] for s in arms.values() if s.get("p99_ms") is not None), default=None)
    breaches = stats.get("guardrails", {}).get("breaches")
    guard = "guardrails: " + (
        "BREACHED"
        if breaches
        else f"ok (errors {errors}/{served}" + (f", p99 {p99:.2g} ms)" if p99 is not None else ")")
    )
    rec = view.get("verdict", {}).get("recommendation", "") or "continue"
    line = f"   {' | '.join(parts)} | {srm_text} | {guard} | {rec[:60]}"
    print("\r" + line[:200].ljust(200), end="", flush=True)


async def _count_rows(url: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM predictions"))
    finally:
        await conn.close()
