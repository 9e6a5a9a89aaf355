"""``abgate evaluator`` (run the service), ``abgate experiments …`` (its admin API) and
``abgate report`` (an experiment's report from the logs: ``evaluator.results`` loads,
``evaluator.report`` draws and writes)."""

from __future__ import annotations

import argparse
import getpass
import json
import math
import os
import tomllib
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from abgate import cli_common as cli
from abgate.v1 import control_pb2 as cpb
from abgate.v1 import control_pb2_grpc as cpb_grpc
from evaluator.levels import DRIFT_ALPHA, PSI_ACT, PSI_WARN

_KINDS = {"ab": cpb.AB, "canary": cpb.CANARY, "bandit": cpb.BANDIT}


# -- evaluator ------------------------------------------------------------------------------
def cmd_evaluator(args: argparse.Namespace) -> int:
    from abgate.errors import InvalidArgument
    from abgate.settings import EvaluatorSettings
    from evaluator.server import run, server_credentials

    settings: EvaluatorSettings = cli.settings_from_args(EvaluatorSettings, args)
    settings = cli.with_token_file(settings, "token")
    settings = cli.with_token_file(settings, "read_token")
    if not settings.token:
        raise cli.UsageError(
            "the evaluator needs ABGATE_TOKEN, --token-file or --token: the control plane is "
            "never open without credentials"
        )
    if settings.read_token == settings.token:
        raise cli.UsageError("--read-token must differ from --token (the admin token)")
    # Everything the server would find wrong only after starting PostgreSQL, checked first.
    host, port = cli.listen_address(settings.listen, "--listen")
    metrics = (
        cli.listen_address(settings.metrics_listen, "--metrics-listen")
        if settings.metrics_listen
        else None
    )
    if settings.http_listen:
        cli.listen_address(settings.http_listen, "--http-listen")
    cli.pem_files(
        (settings.tls_cert, "--tls-cert"),
        (settings.tls_key, "--tls-key"),
        (settings.tls_client_ca, "--tls-client-ca"),
    )
    try:
        server_credentials(settings)
    except InvalidArgument as exc:  # "tls_cert: give both ..." -> "--tls-cert: give both ..."
        flag = "--" + (exc.field or "").replace("_", "-")
        raise cli.UsageError(flag + exc.message[len(exc.field or "") :]) from None
    for flag, rows in (
        ("--drift-reference-rows", settings.drift_reference_rows),
        ("--decay-reference-rows", settings.decay_reference_rows),
    ):
        if rows < 1:
            raise cli.UsageError(
                f"{flag} must be at least 1 (rows of a reference window), not {rows}"
            )
    if settings.tick_rows < 1:
        raise cli.UsageError(
            f"--tick-rows must be at least 1 (rows of each log one tick reads), not "
            f"{settings.tick_rows}"
        )
    if not (settings.drift_window > 0 and math.isfinite(settings.drift_window)):
        raise cli.UsageError(
            "--drift-window must be a positive number of seconds (the rolling current window), "
            f"not {settings.drift_window}"
        )
    if not settings.drift_history_interval >= 0:
        raise cli.UsageError(
            "--drift-history-interval must be 0 (off) or more seconds, not "
            f"{settings.drift_history_interval}"
        )
    if not settings.retrain_every >= 0:
        raise cli.UsageError(
            f"--retrain-every must be 0 (off) or more seconds, not {settings.retrain_every}"
        )
    cli.database_url_arg(settings.database_url)
    if not settings.database_url:
        cli.writable_dir(settings.pg_data, "--pg-data")
    if not settings.model_store.is_dir():
        # Refused, as Triton refuses a missing --model-repository: with no store the evaluator
        # could accept no experiment.
        what = (
            "is a file, not a directory" if settings.model_store.exists() else "no such directory"
        )
        raise cli.UsageError(
            f"--model-store {settings.model_store}: {what} (experiments' models are resolved "
            "there: give the gateways' model store)"
        )
    cli.free_listen_port(host, port, "--listen")
    if metrics is not None:
        cli.free_listen_port(*metrics, "--metrics-listen")
    return run(settings)


# -- experiments ----------------------------------------------------------------------------
class AdminClient:
    """A synchronous client of the evaluator's admin API (bearer token, optional TLS)."""

    def __init__(
        self, target: str, token: str, *, ca: Path | None = None, timeout: float = 10.0
    ) -> None:
        if ca is None:
            self.channel = grpc.insecure_channel(target)
        else:
            self.channel = grpc.secure_channel(
                target, grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
            )
        self.stub = cpb_grpc.EvaluatorAdminStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.timeout = timeout

    def call(self, method: str, request: Any) -> Any:
        return getattr(self.stub, method)(request, metadata=self.metadata, timeout=self.timeout)

    def close(self) -> None:
        self.channel.close()


def _login() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in the environment or the user database
        return ""


def _number(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{what} {text!r} is not a number") from None


def _definition_file(path: Path) -> cpb.ExperimentDefinition:
    """``--file``: an ExperimentDefinition as TOML (``.toml``) or JSON; every problem is one
    line that names the file."""

    cli.readable_file(path, "--file")
    kind = "TOML" if path.suffix == ".toml" else "JSON"
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text) if kind == "TOML" else json.loads(text)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"--file {path}: not valid {kind}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"--file {path}: expected an object of ExperimentDefinition fields")
    try:
        return json_format.ParseDict(data, cpb.ExperimentDefinition())
    except json_format.ParseError as exc:  # its text may run over lines: one line here
        raise ValueError(f"--file {path}: {' '.join(str(exc).split())}") from None


def _definition_from_args(args: argparse.Namespace) -> cpb.ExperimentDefinition:
    if args.file is not None:
        definition = _definition_file(args.file)
    else:
        if not args.name:
            raise ValueError("give --name (or --file)")
        definition = cpb.ExperimentDefinition(name=args.name, salt=args.salt or "")
        definition.kind = _KINDS[args.kind]
        for spec in args.arm or ():
            name, sep, rest = spec.partition("=")
            model, _, weight = rest.rpartition("@") if "@" in rest else (rest, "", "")
            if not sep or not name or not model:
                raise ValueError(f"--arm takes NAME=MODEL[@WEIGHT], got {spec!r}")
            arm = definition.arms.add(name=name, model=model)
            if weight:
                arm.weight = _number(weight, f"--arm {spec!r}: weight")
        for spec in args.shadow or ():
            definition.shadows.append(_shadow_arg(spec, "--shadow"))
        if definition.arms and not any(a.weight for a in definition.arms):
            for arm in definition.arms:  # no weights given: an even split
                arm.weight = 100.0 / len(definition.arms)
        definition.primary_metric = args.metric
        definition.min_effect = args.min_effect
        definition.confidence = args.confidence
        definition.min_samples = args.min_samples
        definition.max_duration_s = args.max_duration
        g = definition.guardrails
        g.max_error_rate = args.max_error_rate
        g.max_p99_latency_ms = args.max_p99_ms
        g.rollback_threshold = args.rollback_threshold
        g.max_rate_increase = args.max_rate_increase
        if args.stage_hold is not None:
            definition.stage_hold_s = args.stage_hold
        if args.stage_min_rows is not None:
            definition.stage_min_rows = args.stage_min_rows
        if args.bandit_floor is not None:
            definition.bandit_floor = args.bandit_floor
        if args.bandit_interval is not None:
            definition.bandit_interval_s = args.bandit_interval
        definition.feature_sample_rate = args.feature_sample_rate
        if (levels := _drift_thresholds(args)) is not None:
            definition.drift.CopyFrom(levels)
    # Model ids are resolved and pinned to their sha256 by the evaluator, in its own store.
    return definition


def _drift_flags(q: argparse.ArgumentParser, defaults: bool) -> None:
    """--psi-warn, --psi-act, --drift-alpha (DriftThresholds)."""
    shown = " (default 0.1)", " (default 0.25)", " (default 0.01)"
    if not defaults:
        shown = ("", "", "")
    q.add_argument(
        "--psi-warn", type=float, default=None, help="PSI at which drift warns" + shown[0]
    )
    q.add_argument(
        "--psi-act", type=float, default=None,
        help="PSI at which drift acts: audited, and the champion's retrain asked" + shown[1],
    )  # fmt: skip
    q.add_argument(
        "--drift-alpha", type=float, default=None,
        help="level of the anytime-valid drift and decay tests" + shown[2],
    )  # fmt: skip


def _drift_thresholds(args: argparse.Namespace) -> cpb.DriftThresholds | None:
    """The --psi-warn/--psi-act/--drift-alpha given, or None."""
    given = {
        k: v
        for k, v in (("psi_warn", args.psi_warn), ("psi_act", args.psi_act),
                     ("alpha", args.drift_alpha))
        if v is not None
    }  # fmt: skip
    return cpb.DriftThresholds(**given) if given else None


def _shadow_arg(spec: str, flag: str = "--add-shadow") -> cpb.ShadowConfig:
    """NAME=MODEL[@SAMPLE_RATE] as a ShadowConfig (rate 1 when not given)."""
    name, sep, rest = spec.partition("=")
    model, _, rate = rest.rpartition("@") if "@" in rest else (rest, "", "")
    if not sep or not name or not model:
        raise ValueError(f"{flag} takes NAME=MODEL[@SAMPLE_RATE], got {spec!r}")
    sample_rate = _number(rate, f"{flag} {spec!r}: sample rate") if rate else 1.0
    return cpb.ShadowConfig(name=name, model=model, sample_rate=sample_rate)


def _span(seconds: float | None) -> str:
    """A rolling window's length as people say it: 24 h, 30 min, 90 s."""
    if not seconds:
        return "window"
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size and seconds % size == 0 and (unit != "d" or seconds > 86400):
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


def _print_view(view: cpb.ExperimentView, as_json: bool) -> None:
    from evaluator.service import view_json

    doc = view_json(view)
    if as_json:
        print(json.dumps(doc, sort_keys=True, indent=1))
        return
    d = view.definition
    weights = ", ".join(f"{a.name}={view.weights.get(a.name, 0.0):g}%" for a in d.arms)
    print(
        f"{d.name}: {view.status}, kind {cpb.ExperimentKind.Name(d.kind).lower()}, "
        f"version {view.version} (snapshot {view.snapshot_version}), {weights}"
    )
    details = json.loads(view.details_json or "{}")
    if details.get("round", 1) > 1:
        arms = " vs ".join(f"{a.name} ({a.model[:12]})" for a in d.arms)
        print(f"  round {details['round']}: {arms}")
    for arm, a in details.get("statistics", {}).get("arms", {}).items():
        rates = [(k, a.get(k)) for k in ("precision", "recall", "fpr")]
        if any(v is not None for _, v in rates):
            shown_rates = ", ".join(
                f"{'FPR' if k == 'fpr' else k} {'-' if v is None else f'{v:.4f}'}" for k, v in rates
            )
            print(f"  labelled rows of {arm}: {shown_rates}")
    if d.feature_sample_rate:
        print(f"  feature capture: {d.feature_sample_rate:.4g} of served predictions")
    t = d.drift
    if (t.psi_warn, t.psi_act, t.alpha) not in ((0.0, 0.0, 0.0), (PSI_WARN, PSI_ACT, DRIFT_ALPHA)):
        print(f"  drift levels: PSI warn {t.psi_warn:g}, act {t.psi_act:g}; tests at α {t.alpha:g}")
    for r in view.rejections:
        serving = f"serves version {r.serving_version}" if r.serving_version else "serves none"
        print(f"  rejected by gateway {r.node_id} (version {r.version}; it {serving}): {r.error}")
    shadows = json.loads(view.details_json or "{}").get("shadows", {})
    for name, s in shadows.items():
        if not s.get("pairs"):
            print(f"  shadow {name}: no pairs yet")
            continue
        line = (
            f"  shadow {name}: {s['pairs']} pairs, agreement {s['agreement']:.1%}, "
            f"score Δ {s['score_delta']['mean']:+.4f}, latency Δ "
            f"{s['latency_delta_us']['mean']:+.0f} µs"
        )
        if "mcnemar" in s:
            line += (
                f", accuracy {s['served_accuracy']:.3f} served vs {s['shadow_accuracy']:.3f} "
                f"shadow (McNemar p={s['mcnemar']['p_value']:.3g})"
            )
        print(line)
    drift = json.loads(view.details_json or "{}").get("drift", {})
    for arm, d in sorted(drift.items()):
        if not d.get("measures"):
            print(f"  drift {arm}: reference {d['reference_rows']}/{d['reference_size']} rows")
            continue
        span = _span(d.get("window_seconds"))
        for kind, m in sorted(d["measures"].items()):
            print(
                f"  drift {arm} {kind}: PSI {m['psi']:.3f} ({m['level']}) on {m['window_rows']} "
                f"rows of the last {span}, sequential p={m['p_value']:.3g}"
                f"{' REJECTED' if m['rejected'] else ''}; "
                f"{m['current_rows']} current vs {m['reference_rows']} reference rows"
            )
    details = json.loads(view.details_json or "{}")
    for arm, d in sorted(details.get("feature_drift", {}).items()):
        if not d.get("measures"):
            print(
                f"  feature drift {arm}: reference {d['reference_rows']}/{d['reference_size']} rows"
            )
            continue
        names = d.get("names", {})
        span = _span(d.get("window_seconds"))
        for feature, m in sorted(d["measures"].items(), key=lambda kv: int(kv[0])):
            named = f" ({names[feature]})" if feature in names else ""
            print(
                f"  feature drift {arm} feature {feature}{named}: PSI {m['psi']:.3f} "
                f"({m['level']}) on {m['window_rows']} rows of the last {span}, sequential "
                f"p={m['p_value']:.3g}"
                f"{' REJECTED' if m['rejected'] else ''}; "
                f"{m['current_rows']} current vs {m['reference_rows']} reference rows"
            )
    for arm, d in sorted(details.get("decay", {}).items()):
        champion = " (champion)" if details.get("champion") == arm else ""
        if not d.get("measures"):
            print(
                f"  decay {arm}{champion}: reference {d['reference_rows']}/{d['reference_size']}"
                " labelled rows"
            )
            continue
        span = _span(d.get("window_seconds"))
        for kind, m in sorted(d["measures"].items()):
            current = "-" if m["current_rate"] is None else f"{m['current_rate']:.4f}"
            recent = "-" if m.get("window_rate") is None else f"{m['window_rate']:.4f}"
            print(
                f"  decay {arm}{champion} {kind}: {current} current ({recent} on "
                f"{m.get('window_rows', 0)} rows of the last {span}) vs "
                f"{m['reference_rate']:.4f} reference, sequential p={m['p_value']:.3g}"
                f"{' REJECTED' if m['rejected'] else ''}; {m['current_rows']} current vs "
                f"{m['reference_rows']} reference rows"
            )
    for arm, e in sorted(details.get("monitor_epochs", {}).items()):
        print(f"  monitoring {arm} from version {e['since_version']} (fresh reference)")
    v = view.verdict
    if v.recommendation:
        ci = ", ".join(f"{x:.4g}" for x in v.ci)
        print(
            f"  verdict: {v.recommendation}; winner {v.winner or '-'}, effect "
            f"{v.effect_size:.4g} [{ci}], p={v.p_value:.4g}"
        )


def cmd_experiments(args: argparse.Namespace) -> int:
    token_file = args.token_file or os.environ.get("ABGATE_TOKEN_FILE") or None
    token = cli.resolve_token(
        args.token or os.environ.get("ABGATE_TOKEN", ""),
        Path(token_file) if token_file is not None else None,
        "--token",
    )
    if not token:
        raise cli.UsageError("give ABGATE_TOKEN, --token-file or --token")
    cli.peer_target(args.evaluator, "--evaluator")
    cli.pem_files((None, "--cert"), (None, "--key"), (args.ca, "--ca"))
    action = args.exp_command
    try:
        request: Any
        if action == "create":
            request = cpb.CreateExperimentRequest(definition=_definition_from_args(args))
        elif action == "list":
            request = cpb.ListExperimentsRequest(include_archived=args.all)
        elif action == "gateways":
            request = cpb.GatewaysRequest()
        elif action == "history":
            if not 0 <= args.limit <= 10_000:
                raise ValueError("--limit must be 0..10000")
            request = cpb.HistoryRequest(name=args.name, limit=args.limit, steps_only=not args.all)
        elif action == "start-round":
            request = cpb.StartRoundRequest(
                experiment=args.name, model=args.model, require_approval=args.require_approval,
                reason=args.reason, actor=args.by or "",
            )  # fmt: skip
        elif action == "update":
            request = cpb.ExperimentRequest(name=args.name, reason=args.reason, actor=args.by or "")
            if args.feature_sample_rate is not None:
                request.feature_sample_rate = args.feature_sample_rate
            if (levels := _drift_thresholds(args)) is not None:
                request.drift.CopyFrom(levels)
            for spec in args.add_shadow:
                request.add_shadows.append(_shadow_arg(spec))
            request.remove_shadows.extend(args.remove_shadow)
        else:
            request = cpb.ExperimentRequest(
                name=args.name,
                arm=getattr(args, "arm", "") or "",
                reason=getattr(args, "reason", "") or "",
                actor=getattr(args, "by", "") or "",
            )
    except (ValueError, json_format.ParseError) as exc:
        raise cli.UsageError(str(exc)) from None
    method = {
        "create": "CreateExperiment",
        "list": "ListExperiments",
        "show": "GetExperiment",
        "promote": "Promote",
        "rollback": "Rollback",
        "pause": "Pause",
        "resume": "Resume",
        "archive": "Archive",
        "unarchive": "Unarchive",
        "update": "UpdateExperiment",
        "approve": "Approve",
        "advance": "AdvanceCanary",
        "start-round": "StartRound",
        "gateways": "Gateways",
        "history": "History",
    }[action]
    client = AdminClient(args.evaluator, token, ca=args.ca, timeout=args.timeout)
    try:
        response = client.call(method, request)
    except grpc.RpcError as exc:
        cli.error(f"{exc.code().name}: {exc.details()}")
        return cli.EXIT_FAILURE
    finally:
        client.close()
    if action == "list":
        if args.json:
            from evaluator.service import view_json

            print(json.dumps([view_json(v) for v in response.experiments], indent=1))
        else:
            for view in response.experiments:
                _print_view(view, False)
    elif action == "gateways":
        if args.json:
            from evaluator.service import message_json

            print(json.dumps(message_json(response), indent=1))
        else:
            print(f"snapshot version {response.snapshot_version}")
            for g in response.gateways:
                state = "connected" if g.connected else "disconnected"
                err = f"  last error: {g.last_error}" if g.last_error else ""
                print(f"  {g.node_id}: version {g.version}, {state}{err}")
                for r in g.rejections:
                    serving = f"version {r.serving_version}" if r.serving_version else "none"
                    print(
                        f"    rejects {r.experiment} version {r.version} (serves {serving}): "
                        f"{r.error}"
                    )
    elif action == "history":
        _print_history(response, args.json)
    elif action == "show" and args.json:
        # The verdict alone, in the documented shape; --full adds everything else.
        from evaluator.service import verdict_json, view_json

        print(
            json.dumps(
                view_json(response) if args.full else verdict_json(response),
                sort_keys=True,
                indent=1,
            )
        )
    else:
        _print_view(response, args.json)
    return cli.EXIT_OK


def _print_history(response: cpb.HistoryResponse, as_json: bool) -> None:
    if as_json:
        rows = [
            {
                "ts": e.ts,
                "action": e.action,
                "recommendation": e.recommendation,
                "source": e.source,
                "from_version": e.from_version,
                "to_version": e.to_version,
                "inputs": json.loads(e.inputs_json or "{}"),
                "statistics": json.loads(e.statistics_json or "{}"),
            }
            for e in response.entries
        ]
        print(json.dumps(rows, indent=1, sort_keys=True))
        return
    import datetime as dt

    for e in response.entries:
        when = dt.datetime.fromtimestamp(e.ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        versions = f"v{e.from_version}" + (f"->v{e.to_version}" if e.to_version else "")
        print(f"{when}  {versions:<9} {e.action:<18} {e.source:<8} {e.recommendation}")


# -- report -------------------------------------------------------------------------------
def cmd_report(args: argparse.Namespace) -> int:
    """``abgate report``: load one experiment's results, write its HTML page and PDF."""
    import asyncio

    from abgate.db.embedded import database_url
    from evaluator.report import write_report
    from evaluator.results import load_results, parse_bucket_seconds

    try:
        bucket = parse_bucket_seconds(args.bucket_seconds)
    except ValueError as exc:
        raise cli.UsageError(str(exc)) from None
    if not args.experiment:
        raise cli.UsageError("--experiment must name an experiment")
    cli.writable_dir(args.out, "--out")
    cli.local_database(args.database_url, args.pg_data)
    with database_url(args.database_url, args.pg_data) as url:
        data = asyncio.run(load_results(url, args.experiment, bucket))
    html_path, pdf_path = write_report(data, args.out)
    print(html_path)
    print(pdf_path)
    return cli.EXIT_OK


def cmd_ask(args: argparse.Namespace) -> int:
    """``abgate ask "…"``: a question in plain words, answered from the logs (evaluator.nlq)."""
    import asyncio

    from abgate.db.embedded import database_url
    from evaluator.nlq import NotUnderstood, ask

    if not args.question.strip():
        raise cli.UsageError('ask takes a question, e.g. abgate ask "compare A and B"')
    cli.local_database(args.database_url, args.pg_data)
    with database_url(args.database_url, args.pg_data) as url:
        try:
            answer = asyncio.run(ask(url, args.question))
        except NotUnderstood as exc:
            cli.error(exc.message)
            return cli.EXIT_FAILURE
    print(json.dumps(answer, indent=1, sort_keys=True) if args.json else answer["answer"])
    return cli.EXIT_OK


def add_evaluator_parsers(subparsers: Any) -> None:
    from abgate.settings import EvaluatorSettings

    p = subparsers.add_parser("evaluator", help="run the evaluator (config stream + admin API)")
    cli.add_settings_flags(p, EvaluatorSettings)
    p.set_defaults(func=cmd_evaluator)

    exp = subparsers.add_parser("experiments", help="create, list, show, promote, roll back …")
    sub = exp.add_subparsers(dest="exp_command", required=True, metavar="ACTION")

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument(
            "--evaluator",
            default=os.environ.get("ABGATE_EVALUATOR", "127.0.0.1:50061"),
            help="evaluator HOST:PORT (env ABGATE_EVALUATOR)",
        )
        q.add_argument(
            "--token",
            default=None,
            help="bearer token (env ABGATE_TOKEN); prefer the environment or --token-file: "
            "a command line shows in ps",
        )
        q.add_argument(
            "--token-file",
            type=Path,
            default=None,
            help="file holding the bearer token (env ABGATE_TOKEN_FILE)",
        )
        q.add_argument("--ca", type=Path, default=None, help="PEM CA: use TLS")
        q.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds")
        q.add_argument("--json", action="store_true", help="machine-readable output")
        q.set_defaults(func=cmd_experiments)

    q = sub.add_parser("create", help="create an experiment (flags or --file JSON/TOML)")
    common(q)
    q.add_argument(
        "--file",
        type=Path,
        default=None,
        help="ExperimentDefinition as JSON or TOML (proto field names)",
    )
    q.add_argument("--name", default="")
    q.add_argument("--salt", default="", help="hash salt (default: the name)")
    q.add_argument("--kind", choices=sorted(_KINDS), default="ab")
    q.add_argument(
        "--arm", action="append", help="NAME=MODEL[@WEIGHT], repeatable; the first is control"
    )
    q.add_argument(
        "--shadow",
        action="append",
        help="NAME=MODEL[@SAMPLE_RATE], repeatable: mirrored, logged, compared, never served",
    )
    q.add_argument("--metric", default="accuracy", choices=["accuracy", "outcome", "score"])
    q.add_argument("--min-effect", type=float, default=0.0)
    q.add_argument("--confidence", type=float, default=0.95)
    q.add_argument("--min-samples", type=int, default=0, help="rows per arm (default 1000)")
    q.add_argument("--max-duration", type=float, default=0.0, help="seconds (0 = none)")
    q.add_argument("--max-error-rate", type=float, default=0.0, help="guardrail, 0..1")
    q.add_argument("--max-p99-ms", type=float, default=0.0, help="guardrail, milliseconds")
    q.add_argument("--rollback-threshold", type=float, default=0.0, help="metric units")
    q.add_argument(
        "--max-rate-increase",
        type=float,
        default=0.0,
        help="guardrails: margin over control's error rate / slow share, 0..1 (default 0)",
    )
    q.add_argument("--stage-hold", type=float, default=None, help="canary: seconds per stage")
    q.add_argument(
        "--stage-min-rows",
        type=int,
        default=None,
        help="canary: treatment rows per stage (default: enough to catch 3x a guardrail limit)",
    )
    q.add_argument("--bandit-floor", type=float, default=None, help="bandit: least share, 0..1")
    q.add_argument("--bandit-interval", type=float, default=None, help="bandit: seconds")
    q.add_argument(
        "--feature-sample-rate",
        type=float,
        default=0.0,
        help="share of served predictions whose request features are logged, 0..1 (default 0: "
        "off); may be personal data, dropped with the partitions (--retention-days)",
    )
    _drift_flags(q, defaults=True)
    q.add_argument(
        "--model-store",
        default=None,
        help="ignored, kept for old scripts: the evaluator pins model ids to their sha256 in "
        "its own --model-store",
    )

    q = sub.add_parser("list", help="all experiments but archived ones")
    common(q)
    q.add_argument("--all", action="store_true", help="archived ones too")
    q = sub.add_parser("gateways", help="which config version every gateway runs")
    common(q)
    for name, text in (
        ("show", "one experiment and its verdict"),
        ("promote", "send 100%% to an arm (default: the verdict's winner)"),
        ("rollback", "send 100%% back to control"),
        ("pause", "stop deciding (the split stays)"),
        ("resume", "resume deciding"),
        ("archive", "take out of every snapshot, keep for audit (from any status)"),
        ("unarchive", "back into the snapshot with its old buckets (a running one: paused)"),
        ("update", "change an experiment in place (--feature-sample-rate, drift levels, shadows)"),
        ("advance", "a running canary's next stage now (without its hold and rows)"),
        ("approve", "start a next round left awaiting approval (abgate trainer --approve manual)"),
        ("start-round", "the next round by hand: the champion against --model (the trainer's RPC)"),
    ):
        q = sub.add_parser(name, help=text)
        common(q)
        q.add_argument("name", help="experiment name")
        if name != "show":
            q.add_argument("--reason", default="", help="kept in the audit table")
            q.add_argument(
                "--by",
                default=os.environ.get("ABGATE_ACTOR") or _login(),
                help="who asks, kept in the audit table (env ABGATE_ACTOR; default: your login)",
            )
        if name == "promote":
            q.add_argument("--arm", default="", help="arm to promote")
        if name == "start-round":
            q.add_argument("--model", required=True, help="challenger: sha256, id or id:version")
            q.add_argument(
                "--require-approval", action="store_true", help="leave it awaiting approval"
            )
        if name == "show":
            q.add_argument("--full", action="store_true", help="with --json: everything")
        if name == "update":
            q.add_argument(
                "--feature-sample-rate",
                type=float,
                default=None,
                help="share of served predictions whose request features are logged, 0..1",
            )
            _drift_flags(q, defaults=False)
            q.add_argument(
                "--add-shadow",
                action="append",
                default=[],
                metavar="NAME=MODEL[@RATE]",
                help="start mirroring to a shadow model (RATE: share of requests, default 1)",
            )
            q.add_argument(
                "--remove-shadow",
                action="append",
                default=[],
                metavar="NAME",
                help="stop mirroring to this shadow",
            )

    q = sub.add_parser(
        "history", help="the audit trail: decisions, drift, retrains, rounds (oldest first)"
    )
    common(q)
    q.add_argument("name", help="experiment name")
    q.add_argument("--limit", type=int, default=0, help="newest rows kept (default 1000)")
    q.add_argument(
        "--all", action="store_true", help="with the unchanged 'continue' verdicts of the ticks"
    )

    _add_report_parser(subparsers)
    p = subparsers.add_parser(
        "ask", help="a question in plain words: compare arms, recommend a rollout"
    )
    p.add_argument("question", help='e.g. "compare A and B over the last 7 days and recommend"')
    p.add_argument("--json", action="store_true", help="the answer as JSON")
    cli.add_database_flags(p)
    p.set_defaults(func=cmd_ask)


def _add_report_parser(subparsers: Any) -> None:
    from evaluator.results import AUTO_BUCKETS

    p = subparsers.add_parser(
        "report", help="an experiment's report from the logs: self-contained HTML and a PDF"
    )
    p.add_argument("--experiment", required=True, help="experiment name")
    p.add_argument(
        "--out", type=Path, required=True, help="directory for EXPERIMENT.html and EXPERIMENT.pdf"
    )
    cli.add_database_flags(p)
    p.add_argument(
        "--bucket-seconds",
        default="auto",
        help=f"time bucket width in seconds, or 'auto' (about {AUTO_BUCKETS} buckets over the "
        "experiment; default)",
    )
    p.set_defaults(func=cmd_report)
