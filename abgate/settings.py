"""Settings objects: one frozen dataclass per process, built once in the CLI and passed down.

Precedence for every field: command-line value, then the ``ABGATE_<FIELD>`` environment variable,
then the default. Nothing reads the environment at import time.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

# Re-exported: the servers import it from here. It lives with the other address checks.
from abgate.addresses import split_listen as split_listen

ENV_PREFIX = "ABGATE_"

T = TypeVar("T")


def doc(text: str, default: Any) -> Any:
    """A dataclass field with a one-line description (shown by ``abgate serve --help``)."""
    return field(default=default, metadata={"doc": text})


def _parse(raw: str, typ: Any, name: str) -> Any:
    if typ is bool:
        lowered = raw.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off", ""}:
            return False
        raise ValueError(f"{ENV_PREFIX}{name.upper()}: expected a boolean, got {raw!r}")
    if typ in (int, float):
        try:
            return typ(raw)
        except ValueError:
            raise ValueError(
                f"{ENV_PREFIX}{name.upper()}: expected {typ.__name__}, got {raw!r}"
            ) from None
    if typ is Path or typ == (Path | None):
        return Path(raw)
    return raw


def load_settings(
    cls: type[T],
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    fields: Collection[str] | None = None,
) -> T:
    """Build ``cls`` from explicit overrides (None means "not given"), the environment, defaults.

    With ``fields``, only those fields are read from the environment (a tool that runs models
    but is no gateway takes just the onnxruntime settings).
    """
    env = os.environ if env is None else env
    overrides = overrides or {}
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if overrides.get(f.name) is not None:
            values[f.name] = overrides[f.name]
            continue
        if fields is not None and f.name not in fields:
            continue
        raw = env.get(ENV_PREFIX + f.name.upper())
        if raw is not None:
            values[f.name] = _parse(raw, hints[f.name], f.name)
    return cls(**values)


def default_gateway_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class GatewaySettings:
    """Everything one gateway process needs; see README for the matching CLI flags."""

    listen: str = doc("host:port of the public gRPC listener", "127.0.0.1:50051")
    config: Path | None = doc("experiments config file (TOML or JSON)", None)
    model_store: Path = doc("content-addressed model store directory", Path("var/models"))
    state_dir: Path = doc("where the last good config snapshot is persisted", Path("var/state"))
    workers: int = doc("worker processes sharing the port via SO_REUSEPORT", 1)
    reuse_port: bool = doc("bind with SO_REUSEPORT (set for each worker of --workers N)", False)
    gateway_id: str = doc("identity of this gateway in logs and the control plane", "")
    max_message_bytes: int = doc("largest request/response message accepted", 4 * 1024 * 1024)
    max_batch_rows: int = doc("most rows in one PredictBatch call", 10_000)
    max_concurrent_rpcs: int = doc(
        "inference calls in flight (gRPC and OIP REST) before new ones get RESOURCE_EXHAUSTED"
        " / 429 (0 = no limit)",
        0,
    )
    max_pending_calls: int = doc(
        "calls gRPC may hold before the gateway takes them; past it new calls are refused"
        " (CANCELLED by gRPC core), all of them at twice it (0 = gRPC's default, 1000); OIP"
        " REST calls waiting for the event loop past it answer 503",
        256,
    )
    grace_seconds: float = doc("how long SIGTERM waits for in-flight RPCs", 10.0)
    event_loop: str = doc("event loop: auto (uvloop where installed), uvloop or asyncio", "auto")
    ort_intra_op_threads: int = doc("onnxruntime intra-op threads per session", 1)
    ort_spinning: bool = doc("let onnxruntime worker threads spin-wait", False)
    offload_rows: int = doc("batches with at least this many rows run off the event loop", 512)
    watch_interval: float = doc("seconds between config file checks (0 = SIGHUP only)", 1.0)
    metrics_listen: str = doc("host:port for Prometheus /metrics (empty = off; worker i: +i)", "")
    http_listen: str = doc(
        "host:port for the Open Inference Protocol V2 over HTTP/REST (empty = off; every worker "
        "shares the port)",
        "",
    )
    log_predictions: bool = doc("log every prediction to PostgreSQL", True)
    database_url: str = doc("PostgreSQL URL for logs; empty starts an embedded server", "")
    pg_data: Path = doc("data directory of the embedded PostgreSQL", Path("var/pg"))
    spool_dir: Path | None = doc(
        "disk spool for log rows while PostgreSQL is down (default STATE_DIR/spool/main)", None
    )
    spool_max_bytes: int = doc("largest the disk spool may grow", 1 << 30)
    log_batch_rows: int = doc("flush the prediction log at this many rows", 1000)
    log_max_age: float = doc("flush the prediction log at least this often (seconds)", 0.2)
    log_max_queued_rows: int = doc("rows held for the database before refusing calls", 200_000)
    log_durability: str = doc(
        "memory: rows wait in memory (kill -9 loses the last ones); local: an answer leaves "
        "only once its row is fsynced to the spool directory's write-ahead log",
        "memory",
    )
    log_sync_interval: float = doc(
        "--log-durability local: seconds a group of rows gathers before its fsync", 0.002
    )
    shadow_queue_rows: int = doc("rows waiting for shadow models before shedding", 10_000)
    shadow_batch_rows: int = doc("most rows per shadow model run", 256)
    shadow_timeout: float = doc("seconds a mirrored row may wait before it is dropped", 1.0)
    shadow_linger: float = doc("seconds the shadow worker lets rows gather into a batch", 0.02)
    client_tokens_file: Path | None = doc(
        "TOML/JSON [clients] identity = token: data-plane calls need a bearer token (off: open)",
        None,
    )
    allow_cross_identity_outcomes: bool = doc(
        "let a client record outcomes of predictions another client identity made", False
    )
    idempotency_window: float = doc(
        "seconds a request id answers its original prediction again (0 = off)", 60.0
    )
    idempotency_max_entries: int = doc(
        "most request ids remembered per process for --idempotency-window", 100_000
    )
    evaluator: str = doc("host:port of the evaluator's config stream (empty = config file)", "")
    evaluator_token: str = doc(
        "bearer token for the evaluator (its --token); prefer ABGATE_EVALUATOR_TOKEN or "
        "--evaluator-token-file: a command line shows in ps",
        "",
    )
    evaluator_token_file: Path | None = doc(
        "file holding the bearer token for the evaluator (instead of --evaluator-token)", None
    )
    evaluator_ca: Path | None = doc("PEM CA of the evaluator's TLS certificate (TLS on)", None)
    evaluator_cert: Path | None = doc("PEM client certificate for mTLS to the evaluator", None)
    evaluator_key: Path | None = doc("PEM private key of --evaluator-cert", None)

    def resolved_gateway_id(self) -> str:
        return self.gateway_id or default_gateway_id()


@dataclass(frozen=True)
class EvaluatorSettings:
    """Everything the evaluator process needs; see README for the matching CLI flags."""

    listen: str = doc("host:port of the config stream and admin API", "127.0.0.1:50061")
    token: str = doc(
        "shared secret gateways and operators must send (required); prefer ABGATE_TOKEN or "
        "--token-file: a command line shows in ps",
        "",
    )
    token_file: Path | None = doc("file holding the token (instead of --token)", None)
    read_token: str = doc(
        "a second, read-only token: lists, results, history, gateways, the dashboard and "
        "questions; anything else answers PERMISSION_DENIED / 403 (empty = none); prefer "
        "ABGATE_READ_TOKEN or --read-token-file",
        "",
    )
    read_token_file: Path | None = doc(
        "file holding the read-only token (instead of --read-token)", None
    )
    database_url: str = doc("PostgreSQL URL; empty starts an embedded server", "")
    pg_data: Path = doc("data directory of the embedded PostgreSQL", Path("var/pg"))
    model_store: Path = doc(
        "content-addressed model store (the gateways' one): experiments' models must be in it",
        Path("var/models"),
    )
    tick_interval: float = doc("seconds between evaluation ticks", 1.0)
    settle: float = doc("seconds a logged row waits before a tick reads it", 2.0)
    tick_rows: int = doc(
        "most rows of each log table one aggregation transaction reads; a tick further behind "
        "(a first start on a long log) catches up in several before deciding",
        1_000_000,
    )
    audit_interval: float = doc("seconds between audit rows of unchanged verdicts", 60.0)
    evaluate: bool = doc("run the policies each tick (off: config stream and admin only)", True)
    partition_days_ahead: int = doc("dated predictions partitions kept ready ahead", 7)
    retention_days: int = doc("drop predictions partitions older than this (0 = keep)", 0)
    drift_reference_rows: int = doc(
        "rows of an arm's drift reference window (its first successful served rows)", 1000
    )
    decay_reference_rows: int = doc(
        "labelled rows of an arm's decay reference window (its first outcomes counted)", 1000
    )
    drift_window: float = doc(
        "seconds of the rolling current window drift PSI and the current rates are taken over "
        "(the rows answered that recently, in 24 slots); the sequential tests keep every row "
        "after the reference",
        86400.0,
    )
    drift_history_interval: float = doc(
        "seconds between two rows of drift_history per experiment (each arm's drift and decay "
        "measures, for the report's drift over time); 0 = keep none",
        60.0,
    )
    retrain_on_drift: bool = doc(
        "queue a retrain of the champion when its drift acts or its decay test rejects", True
    )
    retrain_every: float = doc(
        "seconds between scheduled retrains of each champion (a promoted or rolled-back "
        "experiment), counted from the round's end or its last retrain request; 0 = off",
        0.0,
    )
    tls_cert: Path | None = doc("PEM certificate: serve TLS (with --tls-key)", None)
    tls_key: Path | None = doc("PEM private key of --tls-cert", None)
    tls_client_ca: Path | None = doc("PEM CA bundle: require client certificates (mTLS)", None)
    metrics_listen: str = doc("host:port for Prometheus /metrics (empty = off)", "")
    http_listen: str = doc(
        "host:port for the HTTP/JSON API (same token and TLS as --listen; empty = off)", ""
    )
    seed: int = doc("random seed of the bandit policy (0 = from the OS)", 0)
    round_cooldown: float = doc(
        "seconds after a round ends (promote, keep, rollback) before StartRound may begin the "
        "next one",
        3600.0,
    )


@dataclass(frozen=True)
class TrainerSettings:
    """The trainer process (``abgate trainer``): claims retrain requests, trains, registers,
    asks the evaluator for the next round; see README "Retraining"."""

    database_url: str = doc("PostgreSQL URL (the evaluator's database); required", "")
    model_store: Path = doc(
        "content-addressed model store (the gateways' and the evaluator's one)", Path("var/models")
    )
    evaluator: str = doc("host:port of the evaluator's admin API (StartRound)", "127.0.0.1:50061")
    token: str = doc(
        "the evaluator's bearer token; prefer ABGATE_TOKEN or --token-file: a command line "
        "shows in ps",
        "",
    )
    token_file: Path | None = doc("file holding the token (instead of --token)", None)
    evaluator_ca: Path | None = doc("PEM CA of the evaluator's TLS certificate (TLS on)", None)
    poll_interval: float = doc(
        "seconds between looks at the queue (a NOTIFY on abgate_retrain wakes it sooner)", 5.0
    )
    window_days: float = doc("training data: features and outcomes of the last N days", 7.0)
    min_rows: int = doc(
        "fewest labelled rows to train on (else the request waits, then is rejected)", 200
    )
    holdout_share: float = doc("share of rows held out (by a hash of the request id), 0..1", 0.2)
    max_regression: float = doc(
        "largest drop of --no-worse-metric below the champion's on the holdout (a rise, for "
        "fpr) that still registers",
        0.01,
    )
    no_worse_metric: str = doc(
        "holdout metric the retrained model is compared with the champion's on: accuracy, "
        "precision, recall (higher is better) or fpr (lower is better; the last three of "
        "class 1, two classes only)",
        "accuracy",
    )
    base_dataset: str = doc(
        "labelled rows merged into every training side: sklearn:NAME (breast_cancer, digits, "
        "iris, wine), a .npz (arrays X, y) or a .csv (label last); '' none",
        "",
    )
    max_attempts: int = doc("claims of one request before it is given up as failed", 3)
    wait_for_rows: float = doc(
        "seconds after its creation a request with too few labelled rows waits for more before "
        "it is rejected (0: rejected at once)",
        21600.0,
    )
    recheck_interval: float = doc("seconds between looks at a request waiting for rows", 60.0)
    approve: str = doc("auto: start the next round; manual: leave it awaiting approval", "auto")
    trainer_id: str = doc("identity of this trainer in the queue and the audit table", "")
