"""The deployment files: docker-compose.yml and deploy/ (Dockerfile, Envoy, Prometheus, Grafana).

No Docker engine runs on the test machines, so nothing is started. Instead: `docker-compose config`
resolves the compose file, promtool checks and unit-tests the alert rules (when installed), and
every name that ties the files to the code is checked against the code itself: CLI flags against
the real argument parser, environment variables against the settings classes, metric names and
labels against gateway/metrics.py and evaluator/metrics.py, ports and host names across the files.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import importlib.util
import json
import os
import re
import shutil
import subprocess
import tempfile
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from abgate.cli import build_parser
from abgate.oip.v2 import grpc_predict_v2_pb2
from abgate.settings import EvaluatorSettings, GatewaySettings, load_settings
from abgate.v1 import gateway_pb2
from evaluator.levels import DRIFT_ALPHA, PSI_ACT
from evaluator.policy import SRM_ALPHA
from tests.conftest import free_port

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yml"
DEPLOY = REPO / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
ENVOY = DEPLOY / "envoy" / "envoy.yaml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "abgate.json"
GRAFANA_DATASOURCE = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
GRAFANA_DASHBOARDS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "abgate.yml"
METRIC_SOURCES = (
    REPO / "gateway" / "metrics.py",
    REPO / "evaluator" / "metrics.py",
    REPO / "abgate" / "surface.py",  # grpc_server_* of every gRPC listener
)

SERVICES = {
    "postgres",
    "models",
    "evaluator",
    "gateway-1",
    "gateway-2",
    "envoy",
    "prometheus",
    "grafana",
}
GATEWAYS = ("gateway-1", "gateway-2")  # at least these; more may be added
ABGATE_SERVICES = ("models", "evaluator", *GATEWAYS)

# Metric names the files may use that abgate does not export: Prometheus' own and those of
# Envoy's admin /stats/prometheus (Envoy does not run here, so these cannot be checked).
EXTERNAL_METRICS = {
    "up",
    "ALERTS",
    "envoy_cluster_grpc_total",
    "envoy_cluster_grpc_failure",
    "envoy_cluster_membership_healthy",
    "envoy_cluster_membership_total",
    "envoy_cluster_upstream_rq_time_bucket",
}
EXTERNAL_LABELS = {"job", "instance", "le", "alertname", "alertstate", "envoy_cluster_name"}

# The secrets the compose file takes from the environment, with no default (each one, unset,
# stops every compose command), and a value for each in these tests. The database password
# goes into a URL, hence hex.
SECRETS = {
    "ABGATE_TOKEN": "t0ken-from-env",
    "POSTGRES_PASSWORD": "0123456789abcdef",
    "GRAFANA_ADMIN_PASSWORD": "grafana-from-env",
}


# -- YAML ------------------------------------------------------------------------------------
def load_yaml(source: Path | str) -> Any:
    text = source.read_text() if isinstance(source, Path) else source
    return yaml.safe_load(text)


# -- the CLI ---------------------------------------------------------------------------------
def _subcommand(words: list[str]) -> tuple[argparse.ArgumentParser, list[str]]:
    """The (sub)parser that handles ``words`` (e.g. ``models demo …``) and the words it parses."""
    parser = build_parser()
    rest = list(words)
    while rest:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or rest[0] not in subs[0].choices:
            break
        parser = subs[0].choices[rest.pop(0)]
    return parser, rest


def parse_command(command: list[str]) -> argparse.Namespace:
    """Parse like ``abgate COMMAND…``; fail on any unknown or abbreviated flag."""
    parser, rest = _subcommand(command)
    known = {opt for action in parser._actions for opt in action.option_strings}
    for word in rest:
        if word.startswith("--"):
            flag = word.split("=", 1)[0]
            assert flag in known, f"`abgate {command[0]}` has no flag {flag}"
    try:
        return build_parser().parse_args(command)
    except SystemExit as exc:  # argparse exits 2 on a usage error
        raise AssertionError(f"abgate rejects {command}: exit {exc.code}") from None


def host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    assert sep and host and port.isdigit(), f"{value!r} is not HOST:PORT"
    return host, int(port)


# -- the compose file ------------------------------------------------------------------------
# ${VAR}, ${VAR-default}, ${VAR:-default}, ${VAR?message}, ${VAR:?message}; $$ escapes a $.
_VARIABLE = re.compile(r"(?<!\$)\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: str, env: dict[str, str]) -> str:
    """``value`` with its variables replaced as Compose does; AssertionError with the
    message of a required variable that ``env`` lacks."""

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.groups()
        have = env.get(name)
        if op is None:
            return have or ""
        missing = have is None or (op.startswith(":") and have == "")
        if op.endswith("?"):
            assert not missing, f"{name}: {arg}"
            return str(have)
        return arg if missing else str(have)

    return _VARIABLE.sub(one, value).replace("$$", "$")


def test_interpolate_reader() -> None:
    env = {"A": "a", "E": ""}
    assert interpolate("x${A}y${B:-b}${E:-e}${E-f}$$z", env) == "xaybe$z"
    assert interpolate("${A:?need A}", env) == "a"
    for value in ("${B:?need B}", "${E:?need E}"):
        with pytest.raises(AssertionError, match="need"):
            interpolate(value, env)


@functools.cache
def compose_source() -> dict[str, Any]:
    data = load_yaml(COMPOSE)
    assert isinstance(data, dict)
    return data


def compose_commands() -> dict[str, list[str]]:
    """The command of every service that runs the abgate image."""
    services = compose_source()["services"]
    return {
        name: [str(w) for w in svc["command"]]
        for name, svc in services.items()
        if svc.get("image") == "abgate:local"
    }


def gateway_services() -> list[str]:
    names = [name for name, cmd in compose_commands().items() if cmd[0] == "serve"]
    assert set(GATEWAYS) <= set(names)
    return sorted(names)


def compose_args() -> dict[str, argparse.Namespace]:
    return {name: parse_command(cmd) for name, cmd in compose_commands().items()}


def test_every_abgate_service_runs_the_abgate_image() -> None:
    services = compose_source()["services"]
    assert set(ABGATE_SERVICES) <= set(compose_commands())
    for name in compose_commands():
        svc = services[name]
        assert svc["image"] == "abgate:local", name
        assert svc["build"] == {"context": ".", "dockerfile": "deploy/Dockerfile"}, name
        assert isinstance(svc["command"], list), f"{name}: give the command as a list"


def test_compose_commands_are_accepted_by_the_real_cli() -> None:
    args = compose_args()
    assert args["models"].command == "models" and args["models"].models_command == "demo"
    assert args["evaluator"].command == "evaluator"
    for name in gateway_services():
        assert args[name].command == "serve", name


def test_compose_settings_build_with_flags_and_environment() -> None:
    """Flags + the service's environment give the settings the code will run with."""
    services = compose_source()["services"]
    args = compose_args()
    classes: dict[str, type] = {"evaluator": EvaluatorSettings}
    classes.update(dict.fromkeys(gateway_services(), GatewaySettings))
    for name, cls in classes.items():
        env = {k: str(v) for k, v in (services[name].get("environment") or {}).items()}
        fields = {f.name for f in dataclasses.fields(cls)}
        for var in env:
            assert var.startswith("ABGATE_"), f"{name}: {var}"
            setting = var.removeprefix("ABGATE_").lower()
            assert setting in fields or setting == "log_level", f"{name}: no setting for {var}"
        # What Compose passes once it has interpolated the secrets.
        env = {k: interpolate(v, SECRETS) for k, v in env.items()}
        overrides = {k: v for k, v in vars(args[name]).items() if k in fields}
        settings: Any = load_settings(cls, overrides, env=env)
        assert settings.database_url.startswith("postgresql://"), name
        assert "@postgres:5432/" in settings.database_url, name
        host_port(settings.listen)
        host_port(settings.metrics_listen)
        assert f":{SECRETS['POSTGRES_PASSWORD']}@postgres:" in settings.database_url, name
        if cls is GatewaySettings:
            assert settings.evaluator and settings.evaluator_token == SECRETS["ABGATE_TOKEN"]
            assert settings.resolved_gateway_id() == name
        else:
            assert settings.token == SECRETS["ABGATE_TOKEN"], "the gateways' token"


def _variables(node: Any) -> list[tuple[str, str | None, str]]:
    """Every ``${…}`` in the values of a parsed YAML tree: (name, operator, argument)."""
    if isinstance(node, dict):
        return [v for value in node.values() for v in _variables(value)]
    if isinstance(node, list):
        return [v for value in node for v in _variables(value)]
    return [m.groups() for m in _VARIABLE.finditer(node)] if isinstance(node, str) else []


def test_secrets_have_no_default() -> None:
    """A shared default secret is a known secret: every secret is required, and its message
    names it and says where to read on."""
    found = _variables(compose_source())
    assert found, "the compose file takes its secrets from the environment"
    names = {name for name, _, _ in found}
    assert names == set(SECRETS), f"variables {sorted(names)}; SECRETS lists {sorted(SECRETS)}"
    for name, op, arg in found:
        assert op == ":?", f"${{{name}{op or ''}{arg}}}: give no default, fail when unset or empty"
        assert name in arg and "deploy/README.md" in arg, f"{name}: message {arg!r}"
    assert "abgate-local-only" not in COMPOSE.read_text()
    # Who gets which: the token on every abgate service, the password where the database is.
    services = compose_source()["services"]
    token_vars = {"models": "ABGATE_TOKEN", "evaluator": "ABGATE_TOKEN"}
    token_vars.update(dict.fromkeys(gateway_services(), "ABGATE_EVALUATOR_TOKEN"))
    for name, var in token_vars.items():
        assert interpolate(services[name]["environment"][var], SECRETS) == SECRETS["ABGATE_TOKEN"]
    pg = interpolate(services["postgres"]["environment"]["POSTGRES_PASSWORD"], SECRETS)
    assert pg == SECRETS["POSTGRES_PASSWORD"]
    # Both READMEs show how to set every one of them.
    for doc in (REPO / "README.md", DEPLOY / "README.md"):
        text = doc.read_text()
        for name in SECRETS:
            assert re.search(rf"\b{name}=", text), f"{doc.name} does not show how to set {name}"


def test_grafana_requires_sign_in() -> None:
    env = compose_source()["services"]["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false", "no anonymous viewers"
    assert not any(k.startswith("GF_AUTH_ANONYMOUS_") and k != "GF_AUTH_ANONYMOUS_ENABLED"
                   for k in env)  # fmt: skip
    assert str(env.get("GF_AUTH_DISABLE_LOGIN_FORM", "false")).lower() == "false"
    assert env["GF_SECURITY_ADMIN_USER"] == "admin"
    password = interpolate(env["GF_SECURITY_ADMIN_PASSWORD"], SECRETS)
    assert password == SECRETS["GRAFANA_ADMIN_PASSWORD"]


def test_compose_wiring_between_services() -> None:
    services = compose_source()["services"]
    args = compose_args()
    models = args["models"]
    evaluator_port = host_port(args["evaluator"].listen)[1]
    for name in gateway_services():
        gw = args[name]
        assert gw.gateway_id == name
        assert gw.evaluator == f"evaluator:{evaluator_port}"
        assert str(gw.config) == models.config_out, "the bootstrap file the init job writes"
        assert str(gw.model_store) == models.store
        assert gw.state_dir, "each gateway keeps its last good snapshot"
        mounts = services[name]["volumes"]
        assert f"models:{models.store}:ro" in mounts
        assert any(m.endswith(f":{gw.state_dir}") and m.startswith(f"{name}-") for m in mounts)
    # The evaluator checks and pins every experiment's models in the same store.
    assert str(args["evaluator"].model_store) == models.store
    assert f"models:{models.store}:ro" in services["evaluator"]["volumes"]
    assert f"models:{models.store}" in services["models"]["volumes"]
    assert services["models"].get("restart") == "no", "the init job runs once"
    # One state volume per gateway (they must not share a spool or snapshot).
    states = [m for name in gateway_services() for m in services[name]["volumes"] if "state" in m]
    assert len({m.split(":")[0] for m in states}) == len(gateway_services())


# -- images, health checks, start order ------------------------------------------------------
# An exact release: MAJOR.MINOR.PATCH with an optional "v" and variant suffix (-alpine,
# -slim-trixie). PostgreSQL numbers its releases MAJOR.MINOR since 10 (16.15 is one release).
_EXACT_TAG = {
    3: re.compile(r"v?\d+\.\d+\.\d+(?:-[a-z][a-z0-9.]*)*"),
    2: re.compile(r"v?\d+\.\d+(?:-[a-z][a-z0-9.]*)*"),
}
_TWO_PART_VERSIONS = {"postgres"}
LOCAL_IMAGE = "abgate:local"  # built from deploy/Dockerfile, whose FROM lines are checked below


def exact_image(ref: str) -> bool:
    """True when ``ref`` names one release of an image (a digest pins it too)."""
    if "@sha256:" in ref:
        return bool(re.fullmatch(r"[^@\s]+@sha256:[0-9a-f]{64}", ref))
    repo, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag or not repo:
        return False  # a bare name means :latest
    if "latest" in tag:
        return False
    parts = 2 if repo.rsplit("/", 1)[-1] in _TWO_PART_VERSIONS else 3
    return bool(_EXACT_TAG[parts].fullmatch(tag))


def test_exact_image_reader() -> None:
    for ok in ("postgres:16.15", "envoyproxy/envoy:v1.40.2", "prom/prometheus:v3.13.3",
               "grafana/grafana:13.2.3", "python:3.11.16-slim-trixie",
               "quay.io/prometheus/prometheus:v3.13.3", "postgres:16.15-bookworm",
               "nginx@sha256:" + "a" * 64):  # fmt: skip
        assert exact_image(ok), ok
    for bad in ("postgres", "postgres:latest", "postgres:16", "envoyproxy/envoy:v1.31-latest",
                "prom/prometheus:v3", "prom/prometheus:v3.13", "grafana/grafana:13.2",
                "python:3.11-slim", "localhost:5000/img", "grafana/grafana:main"):  # fmt: skip
        assert not exact_image(bad), bad


def long_running(svc: dict[str, Any]) -> bool:
    """Services that stay up; a one-shot job (``restart: "no"``) runs once and exits."""
    return str(svc.get("restart", "no")) != "no"


def test_every_image_is_pinned_to_an_exact_version() -> None:
    services = compose_source()["services"]
    for name, svc in services.items():
        image = svc["image"]
        if image == LOCAL_IMAGE:
            assert "build" in svc, f"{name}: {LOCAL_IMAGE} is built here"
            continue
        assert exact_image(image), f"{name}: image {image!r} is not pinned to one release"
    froms = re.findall(r"^FROM\s+(\S+)", (DEPLOY / "Dockerfile").read_text(), re.M)
    bases = [f for f in froms if f not in {"scratch"}]
    assert bases and all(exact_image(f) for f in bases), f"Dockerfile FROM {bases}"


def test_every_long_running_service_has_a_healthcheck() -> None:
    services = compose_source()["services"]
    assert {n for n, s in services.items() if not long_running(s)} == {"models"}
    for name, svc in services.items():
        if not long_running(svc):
            continue
        check = svc.get("healthcheck")
        assert check and not check.get("disable"), f"{name}: no healthcheck"
        test = check["test"]
        assert isinstance(test, list) and test[0] in {"CMD", "CMD-SHELL"}, name
        assert len(test) > 1 and all(isinstance(w, str) and w for w in test), name
        for key in ("interval", "timeout", "retries"):
            assert key in check, f"{name}: healthcheck without {key}"
        assert re.fullmatch(r"\d+s", str(check["timeout"])), name


def test_dependencies_wait_for_health() -> None:
    services = compose_source()["services"]
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: give depends_on with a condition per service"
        for dep, spec in deps.items():
            target = services[dep]
            condition = spec.get("condition")
            if long_running(target):
                assert condition == "service_healthy", f"{name} -> {dep}: {condition}"
                assert target.get("healthcheck"), f"{name} waits for {dep}, which has none"
            else:
                assert condition == "service_completed_successfully", f"{name} -> {dep}"
    # Who needs whom: the database before its users, healthy gateways before the entry point.
    args = compose_args()
    needs = {
        "evaluator": {"postgres", "models"},
        "grafana": {"prometheus"},
        "envoy": set(gateway_services()),
    }
    for name in gateway_services():
        needs[name] = {"postgres", "models", "evaluator"}
        assert args[name].evaluator.split(":")[0] == "evaluator"
    for name, required in needs.items():
        assert required <= set(services[name].get("depends_on", {})), name


def _healthcheck_text(name: str) -> str:
    return " ".join(compose_source()["services"][name]["healthcheck"]["test"][1:])


def test_healthchecks_probe_where_each_service_listens() -> None:
    args = compose_args()
    for name in (*gateway_services(), "evaluator"):
        port = host_port(args[name].listen)[1]
        assert _healthcheck_text(name) == f"abgate-health 127.0.0.1:{port}", name
    admin = load_yaml(ENVOY)["admin"]["address"]["socket_address"]["port_value"]
    assert f"/dev/tcp/127.0.0.1/{admin}" in _healthcheck_text("envoy")
    assert "GET /ready HTTP/1.1" in _healthcheck_text("envoy")
    prom = compose_source()["services"]["prometheus"]
    assert not any(w.startswith("--web.listen-address") for w in prom["command"])  # so :9090
    assert "http://127.0.0.1:9090/-/ready" in _healthcheck_text("prometheus")
    assert "http://127.0.0.1:3000/api/health" in _healthcheck_text("grafana")
    assert _healthcheck_text("postgres").startswith("pg_isready -U abgate -d abgate")
    # What each image ships: busybox wget in prom/prometheus, curl in grafana/grafana, bash
    # (neither curl nor wget) in envoyproxy/envoy; pg_isready in postgres.
    checks = {n: compose_source()["services"][n]["healthcheck"]["test"] for n in
              ("prometheus", "grafana", "envoy", "postgres")}  # fmt: skip
    assert checks["prometheus"][:2] == ["CMD", "wget"]
    assert checks["grafana"][:2] == ["CMD", "curl"]
    assert checks["envoy"][:3] == ["CMD", "bash", "-c"]
    assert checks["postgres"][:2] == ["CMD", "pg_isready"]


def _fake_admin(status: int) -> tuple[Any, int]:
    """An HTTP/1.1 server answering ``status`` with Envoy's /ready body, on a free port."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            body = b"LIVE\n" if status == 200 else b"PRE_INITIALIZING\n"
            self.send_response(status if self.path == "/ready" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, int(server.server_address[1])


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_envoy_healthcheck_command_against_a_fake_admin_endpoint() -> None:
    """The exact shell text of Envoy's health check, aimed at a stand-in for /ready."""
    test = compose_source()["services"]["envoy"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "bash", "-c"]
    admin = load_yaml(ENVOY)["admin"]["address"]["socket_address"]["port_value"]

    def run(port: int) -> int:
        script = test[3].replace(f"/dev/tcp/127.0.0.1/{admin}", f"/dev/tcp/127.0.0.1/{port}")
        return subprocess.run(["bash", "-c", script], capture_output=True, timeout=10).returncode

    for status, healthy in ((200, True), (503, False)):
        server, port = _fake_admin(status)
        try:
            assert (run(port) == 0) is healthy, status
        finally:
            server.shutdown()
            server.server_close()
    assert run(free_port()) != 0, "nothing listening must be unhealthy"


def _run_compose(*extra: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``docker-compose config`` with exactly the secrets in ``env``: none from the caller's
    environment, and an empty env file instead of an ``.env`` beside the compose file."""
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose is not installed")
    run_env = {k: v for k, v in os.environ.items() if k not in SECRETS} | env
    with tempfile.TemporaryDirectory() as tmp:
        env_file = Path(tmp) / "empty.env"
        env_file.write_text("")
        return subprocess.run(
            [exe, "--env-file", str(env_file), "-f", str(COMPOSE), "config", *extra],
            cwd=REPO,
            capture_output=True,
            text=True,
            env=run_env,
            timeout=120,
            check=False,
        )


def _compose(*extra: str, env: dict[str, str] | None = None) -> str:
    out = _run_compose(*extra, env=SECRETS if env is None else env)
    assert out.returncode == 0, f"docker-compose config failed:\n{out.stderr}"
    return out.stdout


def test_docker_compose_config_validates() -> None:
    _compose("--quiet")
    assert set(_compose("--services").split()) >= SERVICES


def test_docker_compose_refuses_to_run_without_each_secret() -> None:
    """Unset or empty, a secret stops compose with its own message (and no stack comes up
    with a password someone else knows)."""
    messages = {name: arg for name, _, arg in _variables(compose_source())}
    cases = [(name, {k: v for k, v in SECRETS.items() if k != name}) for name in SECRETS]
    cases.append(("ABGATE_TOKEN", {**SECRETS, "ABGATE_TOKEN": ""}))
    for missing, env in cases:
        out = _run_compose("--quiet", env=env)
        assert out.returncode != 0, f"docker-compose config passes without {missing}"
        assert messages[missing] in out.stderr, f"without {missing}:\n{out.stderr}"


def _published(service: dict[str, Any]) -> dict[int, tuple[str, int]]:
    """container port -> (host address, "" for all; host port), from either form
    docker-compose prints."""
    ports: dict[int, tuple[str, int]] = {}
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            ports[int(entry["target"])] = (entry.get("host_ip", ""), int(entry["published"]))
        else:
            parts = str(entry).split("/")[0].split(":")
            host = parts[-3] if len(parts) == 3 else ""
            ports[int(parts[-1])] = (host, int(parts[-2]))
    return ports


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> volume or host path, from either form docker-compose prints."""
    mounts: dict[str, str] = {}
    for entry in service.get("volumes", []):
        if isinstance(entry, dict):
            mounts[entry["target"]] = entry["source"]
        else:
            source, target = str(entry).split(":")[:2]
            mounts[target] = source
    return mounts


def test_docker_compose_resolved_config() -> None:
    resolved = load_yaml(_compose(env=SECRETS))
    services = resolved["services"]
    assert set(services) >= SERVICES

    pg = services["postgres"]
    assert pg["image"].startswith("postgres:16")
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert pg["environment"]["POSTGRES_PASSWORD"] == SECRETS["POSTGRES_PASSWORD"]
    assert _mounts(pg)["/var/lib/postgresql/data"] == "pgdata"
    assert "pgdata" in resolved["volumes"]

    ev = services["evaluator"]
    assert ev["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert ev["environment"]["ABGATE_TOKEN"] == SECRETS["ABGATE_TOKEN"]
    assert services["models"]["environment"]["ABGATE_TOKEN"] == SECRETS["ABGATE_TOKEN"]
    assert f"{SECRETS['POSTGRES_PASSWORD']}@postgres" in ev["environment"]["ABGATE_DATABASE_URL"]
    for name in gateway_services():
        gw = services[name]
        deps = gw["depends_on"]
        assert deps["evaluator"]["condition"] == "service_healthy"
        assert deps["models"]["condition"] == "service_completed_successfully"
        assert deps["postgres"]["condition"] == "service_healthy"
        assert gw["environment"]["ABGATE_EVALUATOR_TOKEN"] == SECRETS["ABGATE_TOKEN"]
        assert gw["environment"]["ABGATE_DATABASE_URL"] == ev["environment"]["ABGATE_DATABASE_URL"]
        assert gw["healthcheck"]["test"][:2] == ["CMD", "abgate-health"]
    assert set(services["envoy"]["depends_on"]) == set(gateway_services())
    assert services["envoy"]["image"].startswith("envoyproxy/envoy:")
    for name, svc in services.items():
        assert exact_image(svc["image"]) or svc["image"] == LOCAL_IMAGE, name
        if long_running(svc):
            assert svc["healthcheck"]["test"][0] in {"CMD", "CMD-SHELL"}, name
        for dep, spec in svc.get("depends_on", {}).items():
            assert spec["condition"] in {"service_healthy", "service_completed_successfully"}, dep

    gf = services["grafana"]["environment"]
    assert gf["GF_SECURITY_ADMIN_PASSWORD"] == SECRETS["GRAFANA_ADMIN_PASSWORD"]
    assert gf["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert "abgate-local-only" not in json.dumps(resolved)

    # What a user reaches from the host: the gRPC entry point from anywhere, the rest on the
    # host's loopback only, and never Envoy's admin.
    metrics = envoy_listener("metrics")["address"]["socket_address"]["port_value"]
    assert _published(services["envoy"]) == {8080: ("", 8080), metrics: ("127.0.0.1", metrics)}
    assert _published(services["evaluator"])[50061] == ("127.0.0.1", 50061)
    assert _published(services["prometheus"])[9090] == ("127.0.0.1", 9090)
    assert _published(services["grafana"])[3000] == ("127.0.0.1", 3000)
    for name, svc in services.items():
        for target, (host, _) in _published(svc).items():
            assert host == "127.0.0.1" or (name, target) == ("envoy", 8080), (name, target)


# -- Dockerfile ------------------------------------------------------------------------------
def test_dockerfile_builds_from_the_repository_root() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert froms and len(set(froms)) == 1, "build and runtime stages share one base"
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+", froms[0]), froms
    assert 'ENTRYPOINT ["abgate"]' in text
    # Exactly the locked set, by the uv version `make` uses (checked by hash).
    assert "pip install --no-cache-dir --require-hashes -r /tmp/bootstrap-requirements.txt" in text
    assert re.search(r"^RUN uv sync --locked --no-editable ", text, re.M), "uv installs uv.lock"
    assert "--extra dev" not in text
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    kept = {line[1:].removesuffix("/**") for line in ignore if line.startswith("!")}
    for line in re.findall(r"^COPY\s+(?!--from)(.+)$", text, re.M):
        words = [w for w in line.split() if not w.startswith("--")]
        for src in words[:-1]:
            assert (REPO / src).exists(), f"COPY {src}: not in the repository"
            assert src in kept, f"COPY {src}: excluded by Dockerfile.dockerignore"
    # The health check the compose file runs is installed under that name.
    assert "deploy/grpc_health_probe.py /usr/local/bin/abgate-health" in text


def _load_probe() -> Any:
    spec = importlib.util.spec_from_file_location(
        "grpc_health_probe", DEPLOY / "grpc_health_probe.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_health_probe_against_a_real_health_service() -> None:
    probe = _load_probe()
    port = free_port()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    try:
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        assert probe.main([f"127.0.0.1:{port}"]) == 0
        servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert probe.main([f"127.0.0.1:{port}"]) == 1
        assert probe.main([f"127.0.0.1:{port}", "no.such.Service"]) == 1
    finally:
        server.stop(None)
    assert probe.main([f"127.0.0.1:{port}", "--timeout", "0.5"]) == 1  # nothing listening


# -- metric names and labels exported by the code --------------------------------------------
_FAMILIES = {
    "CounterMetricFamily": "counter",
    "GaugeMetricFamily": "gauge",
    "HistogramMetricFamily": "histogram",
}


def _func_name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _literal_names(node: ast.AST) -> set[str]:
    return {
        n.value
        for n in ast.walk(node)
        if isinstance(n, ast.Constant)
        and isinstance(n.value, str)
        and n.value.startswith("abgate_")
    }


@functools.cache
def exported_metrics() -> dict[str, set[str]]:
    """Exposed metric name -> label names, read from the collectors' source with ``ast``.

    A family is built either from a literal name, or from a loop variable bound by a
    ``for name, … in <tuple of tuples or a variable holding one>``. Counters are exposed with
    ``_total``. Every ``"abgate_…"`` literal in the files must be accounted for.
    """
    metrics: dict[str, set[str]] = {}
    for path in METRIC_SOURCES:
        tree = ast.parse(path.read_text())
        assigned = {
            t.id: node.value
            for node in ast.walk(tree)
            if isinstance(node, ast.Assign)
            for t in node.targets
            if isinstance(t, ast.Name)
        }
        calls: dict[int, tuple[ast.Call, set[str]]] = {}  # id(call) -> (call, names)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and _func_name(node.func) in _FAMILIES
                and isinstance(node.args[0], ast.Constant)
            ):
                calls[id(node)] = (node, {str(node.args[0].value)})
            if isinstance(node, ast.For) and isinstance(node.target, ast.Tuple):
                var = node.target.elts[0]
                it = node.iter
                source = assigned.get(it.id, it) if isinstance(it, ast.Name) else it
                for inner in ast.walk(node):
                    if (
                        isinstance(inner, ast.Call)
                        and _func_name(inner.func) in _FAMILIES
                        and isinstance(var, ast.Name)
                        and isinstance(inner.args[0], ast.Name)
                        and inner.args[0].id == var.id
                    ):
                        calls[id(inner)] = (inner, _literal_names(source))
        n_families = sum(
            1
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and _func_name(node.func) in _FAMILIES
        )
        assert len(calls) == n_families, f"{path.name}: a metric family this test cannot read"
        found: set[str] = set()
        for call, names in calls.values():
            kind = _FAMILIES[_func_name(call.func)]
            labels: set[str] = set()
            for kw in call.keywords:
                if kw.arg == "labels":
                    labels = set(ast.literal_eval(kw.value))
            for name in names:
                found.add(name)
                if kind == "histogram":  # exposed as _bucket (with le), _count and _sum
                    metrics[name + "_bucket"] = labels | {"le"}
                    metrics[name + "_count"] = labels
                    metrics[name + "_sum"] = labels
                else:
                    metrics[name + "_total" if kind == "counter" else name] = labels
        missed = _literal_names(tree) - found
        assert not missed, f"{path.name}: metric names this test cannot classify: {missed}"
    return metrics | runtime_metrics()


def runtime_metrics() -> dict[str, set[str]]:
    """What the standard collectors every /metrics serves (abgate.metrics_endpoint.serve_collectors)
    expose: process_*, python_info, python_gc_*, read from the collectors themselves."""
    from prometheus_client import (
        CollectorRegistry,
        GCCollector,
        PlatformCollector,
        ProcessCollector,
    )

    registry = CollectorRegistry()
    for collector in (ProcessCollector, PlatformCollector, GCCollector):
        collector(registry=registry)
    return {s.name: set(s.labels) for family in registry.collect() for s in family.samples}


def test_exported_metrics_are_read_from_the_source() -> None:
    metrics = exported_metrics()
    # Spot checks of the reader itself (names from README.md).
    assert metrics["abgate_shadow_rows_total"] == {"gateway", "result"}
    assert metrics["abgate_log_rows_refused_total"] == {"gateway", "table"}
    assert metrics["abgate_log_lag_seconds"] == {"gateway", "table"}
    assert metrics["abgate_gateway_config_version"] == {"node"}
    assert metrics["abgate_evaluator_snapshot_version"] == set()
    assert "abgate_log_lag_seconds_total" not in metrics
    grpc_labels = {"grpc_type", "grpc_service", "grpc_method"}
    assert metrics["grpc_server_handled_total"] == grpc_labels | {"grpc_code"}
    assert metrics["grpc_server_started_total"] == grpc_labels
    assert metrics["grpc_server_handling_seconds_bucket"] == grpc_labels | {"le"}
    assert metrics["grpc_server_msg_sent_total"] == grpc_labels
    assert metrics["process_cpu_seconds_total"] == set()
    assert "process_open_fds" in metrics and "process_max_fds" in metrics


# -- PromQL ----------------------------------------------------------------------------------
_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
}


def promql_names(expr: str) -> tuple[set[str], list[tuple[str | None, str]], set[str]]:
    """(metric names, (metric, label) of each selector matcher, labels in by/on/… clauses)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    e = re.sub(r"\$\{?\w+\}?", "", e)  # Grafana variables ($__rate_interval)
    e = re.sub(r"\[[^\]]*\]", "", e)  # range windows
    grouping: set[str] = set()
    for m in re.finditer(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", e):
        grouping |= {w.strip() for w in m.group(1).split(",") if w.strip()}
    e = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    matchers: list[tuple[str | None, str]] = []

    def selector(m: re.Match[str]) -> str:
        metric = m.group(1)
        for label in re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", m.group(2)):
            matchers.append((metric, label))
        return metric or ""

    e = re.sub(r"([A-Za-z_:][\w:]*)?\s*\{([^}]*)\}", selector, e)
    e = re.sub(r"\b[A-Za-z_]\w*\s*\(", "(", e)  # function names
    words = set(re.findall(r"(?<![\w.])([A-Za-z_:][\w:]*)", e)) - _KEYWORDS
    return words, matchers, grouping


def check_promql(expr: str, where: str) -> set[str]:
    metrics = exported_metrics()
    names, matchers, grouping = promql_names(expr)
    assert names, f"{where}: no metric in {expr!r}"
    unknown = names - set(metrics) - EXTERNAL_METRICS
    assert not unknown, f"{where}: metrics not exported by abgate: {sorted(unknown)}"
    for metric, label in matchers:
        allowed = metrics.get(metric or "", set()) | EXTERNAL_LABELS
        assert label in allowed, f"{where}: {metric} has no label {label!r}"
    used_labels = set().union(*(metrics.get(n, set()) for n in names)) | EXTERNAL_LABELS
    assert grouping <= used_labels, f"{where}: unknown labels {grouping - used_labels}"
    return names


def test_promql_reader() -> None:
    names, matchers, grouping = promql_names(
        'sum by (gateway) (rate(abgate_shadow_rows_total{result=~"shed|x"}[$__rate_interval]))'
        " / on (job) group_left () abgate_evaluator_snapshot_version > 1e-3 and up == 0"
    )
    assert names == {"abgate_shadow_rows_total", "abgate_evaluator_snapshot_version", "up"}
    assert matchers == [("abgate_shadow_rows_total", "result")]
    assert grouping == {"gateway", "job"}
    with pytest.raises(AssertionError, match="abgate_nope"):
        check_promql("rate(abgate_nope_total[5m])", "test")
    with pytest.raises(AssertionError, match="no label 'arm'"):
        check_promql('abgate_log_lag_seconds{arm="x"}', "test")


# -- Prometheus rules and config -------------------------------------------------------------
@functools.cache
def alert_rules() -> dict[str, dict[str, Any]]:
    doc = load_yaml(ALERTS)
    rules: dict[str, dict[str, Any]] = {}
    for group in doc["groups"]:
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            assert "alert" in rule, f"{group['name']}: only alerting rules here"
            assert rule["alert"] not in rules, f"duplicate alert {rule['alert']}"
            rules[rule["alert"]] = rule
    return rules


def test_alert_rules_parse_and_cover_the_guardrails() -> None:
    rules = alert_rules()
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert rule["annotations"]["summary"], name
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"]), name
        check_promql(rule["expr"], f"alert {name}")

    def uses(name: str, *metrics: str) -> None:
        names = promql_names(rules[name]["expr"])[0]
        assert set(metrics) <= names, f"{name} should use {metrics}"

    # The alerts issue #6 asks for, on the metrics that exist today.
    uses("AbgatePredictionLogRefusing", "abgate_log_rows_refused_total")
    uses("AbgateShadowModelFailing", "abgate_shadow_rows_total")
    uses("AbgateGrpcErrorRateHigh", "envoy_cluster_grpc_failure", "envoy_cluster_grpc_total")
    uses("AbgateLogLagHigh", "abgate_log_lag_seconds")
    uses("AbgateLogSpoolGrowing", "abgate_log_spool_bytes")
    uses("AbgateExperimentSRM", "abgate_experiment_srm_p_value")
    uses("AbgateExperimentRejected", "abgate_experiment_rejecting_gateways")
    # The alert fires where the evaluator pauses.
    assert f"<= {SRM_ALPHA:g}" in rules["AbgateExperimentSRM"]["expr"]
    # The drift alerts fire at each experiment's act level and test level, the ones the
    # evaluator audits at (its exported DriftThresholds), never at fixed numbers.
    uses("AbgateDriftPsiHigh", "abgate_drift_psi", "abgate_drift_psi_act")
    uses("AbgateFeatureDriftPsiHigh", "abgate_feature_drift_psi", "abgate_drift_psi_act")
    for name in ("AbgateDriftDetected", "AbgateFeatureDriftDetected", "AbgateChampionDecay"):
        uses(name, "abgate_drift_alpha")
    for name in ("AbgateDriftPsiHigh", "AbgateFeatureDriftPsiHigh"):
        assert f"{PSI_ACT:g}" not in rules[name]["expr"], name
    for name in ("AbgateDriftDetected", "AbgateFeatureDriftDetected", "AbgateChampionDecay"):
        assert f"{DRIFT_ALPHA:g}" not in rules[name]["expr"], name
    uses(
        "AbgateGatewayConfigStale",
        "abgate_gateway_config_version",
        "abgate_evaluator_snapshot_version",
    )
    uses("AbgateGatewayDisconnected", "abgate_config_stream_connected")
    uses("AbgateEvaluatorLostGateway", "abgate_gateway_connected")
    uses("AbgateShadowShedding", "abgate_shadow_rows_total")
    uses(
        "AbgateLowConfidencePredictions",
        "abgate_prediction_confidence_bucket",
        "abgate_prediction_confidence_count",
    )
    uses("AbgateEvaluatorStalled", "abgate_evaluator_last_tick_timestamp_seconds")
    uses("AbgateLogSpoolNearlyFull", "abgate_log_spool_bytes", "abgate_log_spool_max_bytes")
    uses("AbgateLogRowsDeadLettered", "abgate_log_rows_dead_lettered_total")
    assert "shed" in rules["AbgateShadowShedding"]["expr"]


promtool = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(promtool is None, reason="promtool not installed")


def _promtool(*args: str) -> None:
    assert promtool is not None
    out = subprocess.run(
        [promtool, *args], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, f"promtool {' '.join(args)}:\n{out.stdout}\n{out.stderr}"


@needs_promtool
def test_promtool_check_rules() -> None:
    _promtool("check", "rules", str(ALERTS))


@needs_promtool
def test_promtool_rule_unit_tests() -> None:
    _promtool("test", "rules", str(ALERTS_TEST))


@needs_promtool
def test_promtool_check_config() -> None:
    _promtool("check", "config", str(PROMETHEUS))


def test_prometheus_scrapes_every_service_where_it_listens() -> None:
    config = load_yaml(PROMETHEUS)
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}

    def targets(job: str) -> set[str]:
        return {t for sc in jobs[job]["static_configs"] for t in sc["targets"]}

    args = compose_args()
    gateway_targets = {f"{n}:{host_port(args[n].metrics_listen)[1]}" for n in gateway_services()}
    assert targets("abgate-gateway") == gateway_targets
    assert targets("abgate-evaluator") == {
        f"evaluator:{host_port(args['evaluator'].metrics_listen)[1]}"
    }
    # Envoy's metrics listener, which hands the admin's /stats/prometheus on (the admin
    # itself is not reachable from another container).
    envoy_metrics = envoy_listener("metrics")["address"]["socket_address"]["port_value"]
    assert targets("envoy") == {f"envoy:{envoy_metrics}"}
    assert jobs["envoy"]["metrics_path"] == "/stats/prometheus"
    # The compose file mounts this directory where the config expects it.
    prom = compose_source()["services"]["prometheus"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in prom["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]


# -- Envoy -----------------------------------------------------------------------------------
def _envoy_named(kind: str, name: str) -> dict[str, Any]:
    found = [x for x in load_yaml(ENVOY)["static_resources"][kind] if x["name"] == name]
    assert len(found) == 1, f"envoy.yaml has {len(found)} {kind} named {name!r}"
    return dict(found[0])


def envoy_listener(name: str) -> dict[str, Any]:
    return _envoy_named("listeners", name)


def envoy_cluster(name: str) -> dict[str, Any]:
    return _envoy_named("clusters", name)


def _hcm(listener: dict[str, Any]) -> dict[str, Any]:
    (chain,) = listener["filter_chains"]
    (hcm,) = chain["filters"]
    assert hcm["name"] == "envoy.filters.network.http_connection_manager"
    assert hcm["typed_config"]["http_filters"][-1]["name"] == "envoy.filters.http.router"
    return dict(hcm["typed_config"])


def _routes(listener: dict[str, Any]) -> list[dict[str, Any]]:
    (vhost,) = _hcm(listener)["route_config"]["virtual_hosts"]
    assert vhost["domains"] == ["*"]
    return list(vhost["routes"])


def envoy_route(listener: dict[str, Any], path: str) -> dict[str, Any] | None:
    """The route Envoy picks for a request to ``path``: the first that matches, by ``prefix``,
    exact ``path`` or ``safe_regex`` (RE2, matched against the whole path)."""
    for route in _routes(listener):
        match = route["match"]
        assert len(match) == 1, f"one matcher per route: {match}"
        if "prefix" in match and path.startswith(match["prefix"]):
            return route
        if "path" in match and path == match["path"]:
            return route
        if "safe_regex" in match and re.fullmatch(match["safe_regex"]["regex"], path):
            return route
    return None


def test_envoy_route_reader() -> None:
    listener = {"filter_chains": [{"filters": [{
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "http_filters": [{"name": "envoy.filters.http.router"}],
            "route_config": {"virtual_hosts": [{"domains": ["*"], "routes": [
                {"match": {"safe_regex": {"regex": "/s/(A|B)"}}, "n": 1},
                {"match": {"path": "/exact"}, "n": 2},
                {"match": {"prefix": "/s/"}, "n": 3},
            ]}]},
        },
    }]}]}  # fmt: skip

    def n(path: str) -> int | None:
        route = envoy_route(listener, path)
        return None if route is None else int(route["n"])

    assert [n("/s/A"), n("/s/B"), n("/s/AB"), n("/s/Ab"), n("/exact"), n("/exact/"), n("/x")] == [
        1, 1, 3, 3, 2, None, None
    ]  # fmt: skip


def _duration(value: str) -> float:
    assert re.fullmatch(r"\d+(\.\d+)?s", value), f"{value!r} is not an Envoy duration"
    return float(value[:-1])


def test_envoy_balances_grpc_over_both_gateways_with_health_checks() -> None:
    listener = envoy_listener("grpc_ingress")
    assert listener["address"]["socket_address"] == {"address": "0.0.0.0", "port_value": 8080}
    cluster = envoy_cluster("abgate_gateways")
    for route in _routes(listener):
        assert route["route"]["cluster"] == cluster["name"], route["match"]
        assert route["route"]["timeout"] == "0s", "PredictStream must not be cut by a timeout"
    assert envoy_route(listener, "/any.Service/Method") is not None, "every call is routed"
    options = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert "http2_protocol_options" in options["explicit_http_config"], "gRPC needs HTTP/2"
    args = compose_args()
    endpoints = {
        (e["endpoint"]["address"]["socket_address"]["address"],
         e["endpoint"]["address"]["socket_address"]["port_value"])
        for group in cluster["load_assignment"]["endpoints"]
        for e in group["lb_endpoints"]
    }  # fmt: skip
    assert endpoints == {(n, host_port(args[n].listen)[1]) for n in gateway_services()}
    # Active checks: the gateway serves grpc.health.v1 for the native API's name.
    (check,) = cluster["health_checks"]
    service = gateway_pb2.DESCRIPTOR.services_by_name["InferenceGateway"].full_name
    assert check["grpc_health_check"]["service_name"] == service
    assert _duration(check["timeout"]) < _duration(check["interval"]) <= 5
    assert 1 <= check["unhealthy_threshold"] <= 3 and check["healthy_threshold"] >= 1
    envoy = compose_source()["services"]["envoy"]
    assert "./deploy/envoy/envoy.yaml:/etc/envoy/envoy.yaml:ro" in envoy["volumes"]


def _served_methods() -> list[tuple[str, bool]]:
    """(gRPC path, streaming?) of every inference method a gateway serves through Envoy."""
    services = [
        gateway_pb2.DESCRIPTOR.services_by_name["InferenceGateway"],
        grpc_predict_v2_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"],
    ]
    return [
        (f"/{svc.full_name}/{m.name}", m.client_streaming or m.server_streaming)
        for svc in services
        for m in svc.methods
    ]


# Conditions under which the gateway has not seen the call, safe for any method.
_NEVER_SEEN = {"connect-failure", "refused-stream"}


def test_envoy_retries_unavailable_only_where_a_retry_is_safe() -> None:
    """A gateway answers UNAVAILABLE (draining, no config yet, log full) with nothing queued, so
    a unary call is retried on another gateway; a stream a gateway has seen never is."""
    listener = envoy_listener("grpc_ingress")
    methods = _served_methods()
    assert ("/abgate.v1.InferenceGateway/PredictStream", True) in methods
    assert ("/abgate.v1.InferenceGateway/RecordOutcome", False) in methods
    # Served too but not checked for side effects, or not written yet: not retried either.
    others = [
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/abgate.v1.InferenceGateway/NotYetWritten",
    ]
    cases = [(path, not streaming) for path, streaming in methods] + [(p, False) for p in others]
    for path, unary in cases:
        route = envoy_route(listener, path)
        assert route is not None, path
        policy = route["route"]["retry_policy"]
        on = set(policy["retry_on"].split(","))
        assert 1 <= policy["num_retries"] <= 2, path
        if not unary:
            assert on == _NEVER_SEEN, f"{path}: retried on {sorted(on)}"
            continue
        assert on == _NEVER_SEEN | {"unavailable"}, f"{path}: retried on {sorted(on)}"
        (predicate,) = policy["retry_host_predicate"]
        assert predicate["name"] == "envoy.retry_host_predicates.previous_hosts", "elsewhere"
        assert policy["host_selection_retry_max_attempts"] >= len(gateway_services())


def test_envoy_ejects_a_gateway_that_keeps_failing() -> None:
    outlier = envoy_cluster("abgate_gateways")["outlier_detection"]
    # UNAVAILABLE (503) and connection failures: enforced (Envoy's default only counts them).
    assert 1 <= outlier["consecutive_gateway_failure"] <= 5
    assert outlier["enforcing_consecutive_gateway_failure"] == 100
    assert outlier["consecutive_gateway_failure"] < outlier["consecutive_5xx"] <= 10
    assert outlier.get("enforcing_consecutive_5xx", 100) == 100
    assert 1 <= _duration(outlier["interval"]) <= 10
    assert 5 <= _duration(outlier["base_ejection_time"]) <= 60
    assert _duration(outlier["base_ejection_time"]) <= _duration(outlier["max_ejection_time"])
    # Never every gateway at once: with N of them, at most N - 1 out.
    n = len(gateway_services())
    assert outlier["max_ejection_percent"] * n // 100 <= n - 1


def test_envoy_admin_is_reachable_from_its_container_only() -> None:
    """The admin can stop Envoy and fail its health checks: loopback only. Prometheus reads
    /stats/prometheus through a listener that forwards that one path."""
    admin = load_yaml(ENVOY)["admin"]["address"]["socket_address"]
    assert admin["address"] == "127.0.0.1"
    admin_cluster = envoy_cluster("envoy_admin")
    ((endpoint,),) = [g["lb_endpoints"] for g in admin_cluster["load_assignment"]["endpoints"]]
    assert endpoint["endpoint"]["address"]["socket_address"] == admin
    listeners = load_yaml(ENVOY)["static_resources"]["listeners"]
    assert {x["name"] for x in listeners} == {"grpc_ingress", "metrics"}
    for listener in listeners:
        assert listener["address"]["socket_address"]["port_value"] != admin["port_value"]
        for route in _routes(listener):
            if route["route"]["cluster"] != admin_cluster["name"]:
                continue
            assert listener["name"] == "metrics", f"{listener['name']} reaches the admin"
            assert route["match"] == {"path": "/stats/prometheus"}, route["match"]
    metrics = envoy_listener("metrics")
    assert envoy_route(metrics, "/stats/prometheus") is not None
    for path in ("/quitquitquit", "/healthcheck/fail", "/runtime_modify", "/logging", "/"):
        assert envoy_route(metrics, path) is None, f"{path} reaches the admin"
    envoy = compose_source()["services"]["envoy"]
    assert not any(str(admin["port_value"]) in str(p) for p in envoy["ports"])


envoy_binary = shutil.which("envoy")


@pytest.mark.skipif(envoy_binary is None, reason="envoy not installed")
def test_envoy_validates_its_config() -> None:
    assert envoy_binary is not None
    out = subprocess.run(
        [envoy_binary, "--mode", "validate", "-c", str(ENVOY)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, f"envoy --mode validate:\n{out.stdout}\n{out.stderr}"


# -- Grafana ---------------------------------------------------------------------------------
def test_grafana_dashboard_uses_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    datasource = load_yaml(GRAFANA_DATASOURCE)["datasources"][0]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    used: set[str] = set()
    graphs = [p for p in panels if p["type"] != "row"]
    assert len(graphs) >= 10
    for panel in graphs:
        where = f"panel {panel['title']!r}"
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, where
        assert panel["datasource"]["uid"] == datasource["uid"], where
        assert panel["targets"], where
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource["uid"], where
            used |= check_promql(target["expr"], where)
    required = {
        "abgate_gateway_config_version",
        "abgate_evaluator_snapshot_version",
        "abgate_config_version",
        "abgate_evaluator_config_answers_total",
        "abgate_config_acks_total",
        "abgate_config_nacks_total",
        "abgate_log_rows_queued",
        "abgate_log_lag_seconds",
        "abgate_log_spool_bytes",
        "abgate_shadow_rows_total",
        "abgate_evaluator_decisions_total",
        "abgate_experiment_p_value",
        "abgate_experiment_srm_p_value",
        "abgate_evaluator_tick_seconds",
        "grpc_server_handled_total",
        "grpc_server_handling_seconds_bucket",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "abgate_drift_psi",
        "abgate_drift_p_value",
        "abgate_feature_drift_psi",
        "abgate_feature_drift_p_value",
        "abgate_decay_rate",
        "abgate_decay_p_value",
    }
    assert required <= used, f"missing panels for {sorted(required - used)}"


def test_grafana_provisioning_points_at_the_mounted_dashboards() -> None:
    provider = load_yaml(GRAFANA_DASHBOARDS)["providers"][0]
    grafana = compose_source()["services"]["grafana"]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in grafana["volumes"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"
