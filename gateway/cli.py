"""The gateway's commands: ``abgate serve`` (run it) and the two calls a client makes of it,
``abgate predict`` and ``abgate outcome``."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from abgate.cli_common import (
    EXIT_FAILURE,
    EXIT_OK,
    UsageError,
    add_settings_flags,
    database_url_arg,
    error,
    free_listen_port,
    listen_address,
    peer_target,
    pem_files,
    readable_file,
    settings_from_args,
    with_token_file,
    writable_dir,
)
from abgate.settings import GatewaySettings


# -- serve --------------------------------------------------------------------------------
def _check_config_file(settings: GatewaySettings) -> None:
    """Refuse a ``--config`` file the gateway could not start from, here, before anything
    starts (and once, not once per worker): read, parse, validate, and find every model in
    the store. With a saved snapshot under ``--state-dir`` the server serves that instead of
    a bad file (README "Experiments config"), so then the server decides."""
    from gateway.config import ConfigError, load_config_file
    from gateway.control import SNAPSHOT_FILE
    from gateway.modelstore import ModelStore, ModelStoreError

    if settings.config is None or (settings.state_dir / SNAPSHOT_FILE).is_file():
        return
    path = readable_file(settings.config, "--config")
    try:
        config = load_config_file(path)
    except ConfigError as exc:
        raise UsageError(f"--config {path}: {exc.message}") from None
    store = ModelStore(settings.model_store)
    for i, spec in enumerate(config.experiments):
        refs = [(f"arms[{j}]", a.model) for j, a in enumerate(spec.arms)]
        refs += [(f"shadows[{k}]", sh.model) for k, sh in enumerate(spec.shadows)]
        for where, ref in refs:
            try:
                store.resolve(ref)
            except ModelStoreError as exc:
                raise UsageError(
                    f"--config {path}: experiments[{i}].{where}.model: {exc} (--model-store)"
                ) from None


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.config import ConfigFileError
    from gateway.server import event_loop_factory, serve

    settings: GatewaySettings = with_token_file(
        settings_from_args(GatewaySettings, args), "evaluator_token"
    )
    host, port = listen_address(settings.listen, "--listen")
    metrics = (
        listen_address(settings.metrics_listen, "--metrics-listen")
        if settings.metrics_listen
        else None
    )
    if settings.http_listen:
        listen_address(settings.http_listen, "--http-listen")
    try:
        event_loop_factory(settings.event_loop)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if settings.workers < 1:
        raise UsageError("--workers must be at least 1")
    if settings.evaluator:
        from gateway.subscriber import channel_credentials

        peer_target(settings.evaluator, "--evaluator")
        if not settings.evaluator_token:
            raise UsageError(
                "--evaluator needs ABGATE_EVALUATOR_TOKEN, --evaluator-token-file or "
                "--evaluator-token"
            )
        pem_files(
            (settings.evaluator_cert, "--evaluator-cert"),
            (settings.evaluator_key, "--evaluator-key"),
            (settings.evaluator_ca, "--evaluator-ca"),
        )
        try:
            channel_credentials(
                settings.evaluator_ca, settings.evaluator_cert, settings.evaluator_key
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if settings.client_tokens_file is not None:
        from gateway.auth import ClientTokensError, load_client_tokens

        path = readable_file(settings.client_tokens_file, "--client-tokens-file")
        try:
            load_client_tokens(path)
        except ClientTokensError as exc:
            raise UsageError(f"--client-tokens-file {path}: {exc.message}") from None
    if settings.log_durability not in ("memory", "local"):
        raise UsageError(
            f"--log-durability: expected memory or local, got {settings.log_durability!r}"
        )
    if not 0 <= settings.log_sync_interval <= 1:
        raise UsageError("--log-sync-interval must be between 0 and 1 second")
    if settings.idempotency_window < 0 or settings.idempotency_max_entries < 0:
        raise UsageError("--idempotency-window and --idempotency-max-entries must not be negative")
    if settings.max_pending_calls < 0:
        raise UsageError("--max-pending-calls must be 0 (gRPC's default) or positive")
    writable_dir(settings.state_dir, "--state-dir")
    if settings.log_predictions:
        database_url_arg(settings.database_url)
        if settings.spool_dir is not None:
            writable_dir(settings.spool_dir, "--spool-dir")
        if not settings.database_url:
            writable_dir(settings.pg_data, "--pg-data")
    _check_config_file(settings)
    # Last, as they are the environment's state rather than the input: exit 1, UNAVAILABLE.
    free_listen_port(host, port, "--listen", reuse_port=settings.reuse_port)
    if metrics is not None:
        for i in range(settings.workers if settings.workers > 1 else 1):
            # As the supervisor hands them out: worker i listens on port + i.
            free_listen_port(metrics[0], metrics[1] + i if metrics[1] else 0, "--metrics-listen")
    try:
        return serve(settings)
    except ConfigFileError as exc:
        raise UsageError(f"--config {exc.message}") from None


# -- predict --------------------------------------------------------------------------------
def _parse_features(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--features must be comma-separated numbers, got {text!r}") from None


def cmd_predict(args: argparse.Namespace) -> int:
    from abgate.client import GatewayClient, RpcFailure

    peer_target(args.target, "--target")
    features = _parse_features(args.features)
    if not features:
        raise UsageError("--features must hold at least one number")
    with GatewayClient(args.target, timeout=args.timeout, token=args.token) as client:
        try:
            result = client.predict(args.experiment, args.user, features, args.request_id or "")
        except RpcFailure as exc:
            error(str(exc))
            return EXIT_FAILURE
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        model = result["model"]
        scores = ", ".join(f"{s:.4f}" for s in result["scores"])
        print(
            f"user={args.user} experiment={result['experiment']} arm={result['arm']} "
            f"model={model['id']}:{model['version']} sha256={model['sha256'][:12]} "
            f"label={result['label']} scores=[{scores}] bucket={result['bucket']} "
            f"config_version={result['config_version']} request_id={result['request_id']}"
        )
    return EXIT_OK


# -- outcome --------------------------------------------------------------------------------
def cmd_outcome(args: argparse.Namespace) -> int:
    from abgate.client import GatewayClient, RpcFailure

    peer_target(args.target, "--target")
    if len(args.request_id) != len(args.value):
        raise UsageError("give one --value per --request-id")
    triples = [(r, v, args.source) for r, v in zip(args.request_id, args.value, strict=True)]
    with GatewayClient(args.target, timeout=args.timeout, token=args.token) as client:
        try:
            accepted = client.record_outcomes(triples)
        except RpcFailure as exc:
            error(str(exc))
            return EXIT_FAILURE
    print(json.dumps({"accepted": accepted}) if args.json else f"accepted {accepted} outcome(s)")
    return EXIT_OK


def _token_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--token",
        default=os.environ.get("ABGATE_CLIENT_TOKEN", ""),
        help="bearer token, for a gateway run with --client-tokens-file (env ABGATE_CLIENT_TOKEN)",
    )


def add_gateway_parsers(subparsers: Any) -> None:
    p = subparsers.add_parser("serve", help="run the inference gateway")
    add_settings_flags(p, GatewaySettings)
    p.set_defaults(func=cmd_serve)

    p = subparsers.add_parser("predict", help="send one Predict call and print the answer")
    p.add_argument("--target", default="127.0.0.1:50051", help="gateway HOST:PORT")
    p.add_argument("--experiment", required=True)
    p.add_argument("--user", required=True, help="user id (routing key)")
    p.add_argument("--features", required=True, help="comma-separated float values")
    p.add_argument("--request-id", default="", help="idempotency key (generated when omitted)")
    p.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds")
    _token_flag(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_predict)

    p = subparsers.add_parser("outcome", help="record outcomes (labels, rewards) for predictions")
    p.add_argument("--target", default="127.0.0.1:50051", help="gateway HOST:PORT")
    p.add_argument("--request-id", action="append", required=True, help="repeatable")
    p.add_argument("--value", action="append", type=float, required=True, help="one per id")
    p.add_argument("--source", default="", help="who observed it (first value per source wins)")
    p.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds")
    _token_flag(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_outcome)
