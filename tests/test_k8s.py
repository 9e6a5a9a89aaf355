"""deploy/k8s: every manifest is valid against a current Kubernetes schema (kubernetes-validate,
strict: no unknown fields), and the manifests agree with the code and with each other — the
arguments are accepted by the real CLI and give the settings the code will run with, probes and
Services point at the ports the processes listen on, the Secrets they read are the example's,
selectors match the pods, the HPA and PDBs target the Deployments, and SIGTERM's drain fits in
terminationGracePeriodSeconds."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from abgate.settings import EvaluatorSettings, GatewaySettings, load_settings
from tests.test_deploy import host_port, parse_command

K8S = Path(__file__).resolve().parents[1] / "deploy" / "k8s"
KUBERNETES = "1.37.0"  # the newest schema kubernetes-validate ships (utils.latest_version())
SECRETS = {("abgate-token", "token"): "admin-token-0123456789abcdef",
           ("abgate-token", "read-token"): "read-token-0123456789abcdef",
           ("abgate-postgres", "url"): "postgresql://abgate:pw@db.example:5432/abgate"}  # fmt: skip


def documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def kustomization() -> dict[str, Any]:
    return documents("kustomization.yaml")[0]


def resources() -> list[dict[str, Any]]:
    """Every object `kubectl apply -k deploy/k8s` creates."""
    return [d for name in kustomization()["resources"] for d in documents(name)]


def objects(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in resources() if d["kind"] == kind}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


def test_the_schema_version_is_current() -> None:
    from kubernetes_validate import utils

    assert utils.latest_version() == KUBERNETES


@pytest.mark.parametrize(
    "name", sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
)
def test_each_manifest_is_valid_kubernetes(name: str) -> None:
    for doc in documents(name):
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_a_bad_manifest_is_refused() -> None:
    """The validator is real: a misspelt field and a wrong type fail."""
    deployment = objects("Deployment")["abgate-gateway"]
    bad = yaml.safe_load(yaml.safe_dump(deployment))
    bad["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES, strict=True)
    bad = yaml.safe_load(yaml.safe_dump(deployment))
    bad["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES, strict=True)


def test_the_kustomization_lists_every_manifest_but_the_secrets_example() -> None:
    listed = set(kustomization()["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk - {"secrets.example.yaml"}
    # Every image is the one the kustomization pins.
    (image,) = kustomization()["images"]
    for d in resources():
        spec = d.get("spec", {}).get("template", {}).get("spec")
        for c in (spec or {}).get("containers", []):
            assert c["image"] == image["name"], d["metadata"]["name"]
    assert image["newTag"] == "0.1.0"


def _env(c: dict[str, Any], pod: str) -> dict[str, str]:
    """The container's environment as the kubelet gives it, with the example's secrets."""
    env = {}
    for e in c.get("env", []):
        source = e.get("valueFrom", {})
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[e["name"]] = SECRETS[(ref["name"], ref["key"])]
        elif "fieldRef" in source:
            assert source["fieldRef"]["fieldPath"] == "metadata.name"
            env[e["name"]] = pod
        else:
            env[e["name"]] = e["value"]
    return env


def _settings(deployment: dict[str, Any], cls: type) -> Any:
    c = container(deployment)
    args = parse_command(c["args"])
    fields = {f.name for f in dataclasses.fields(cls)}
    env = _env(c, "abgate-gateway-7d9f-x2x4z")
    for var in env:
        assert var.removeprefix("ABGATE_").lower() in fields, var
    overrides = {k: v for k, v in vars(args).items() if k in fields}
    return load_settings(cls, overrides, env=env)


def _ports(c: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in c["ports"]}


def test_the_arguments_are_accepted_and_give_the_settings_the_code_runs_with() -> None:
    deployments = objects("Deployment")
    gw = _settings(deployments["abgate-gateway"], GatewaySettings)
    ev = _settings(deployments["abgate-evaluator"], EvaluatorSettings)
    assert gw.database_url == ev.database_url == SECRETS[("abgate-postgres", "url")]
    assert gw.evaluator_token == ev.token == SECRETS[("abgate-token", "token")]
    assert ev.read_token == SECRETS[("abgate-token", "read-token")]
    assert gw.resolved_gateway_id() == "abgate-gateway-7d9f-x2x4z"  # one per pod
    # The gateways reach the evaluator through its Service, on its gRPC port.
    host, port = host_port(gw.evaluator)
    evaluator_svc = objects("Service")[host]
    assert port in [p["port"] for p in evaluator_svc["spec"]["ports"]]
    # Listeners on all interfaces, on the ports the containers declare and probes use.
    for d, s in ((deployments["abgate-gateway"], gw), (deployments["abgate-evaluator"], ev)):
        c, name = container(d), d["metadata"]["name"]
        ports = _ports(c)
        listen = host_port(s.listen)
        assert listen == ("0.0.0.0", ports["grpc"]), name
        assert host_port(s.metrics_listen) == ("0.0.0.0", ports["metrics"]), name
        assert c["readinessProbe"]["grpc"]["port"] == ports["grpc"], name
        assert c["livenessProbe"]["tcpSocket"]["port"] == ports["grpc"], name
        notes = d["spec"]["template"]["metadata"]["annotations"]
        assert notes["prometheus.io/scrape"] == "true"
        assert int(notes["prometheus.io/port"]) == ports["metrics"], name
        assert notes["prometheus.io/path"] == "/metrics"
        # Mounted where the settings look.
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert str(s.model_store) in mounts and mounts[str(s.model_store)]["readOnly"]
    assert str(gw.state_dir) in {m["mountPath"] for m in container(deployments["abgate-gateway"])[
        "volumeMounts"]}  # fmt: skip
    assert host_port(ev.http_listen)[1] == _ports(container(deployments["abgate-evaluator"]))[
        "http"]  # fmt: skip
    # The models Job writes the store and the bootstrap file the gateways read.
    (job,) = objects("Job").values()
    made = parse_command(container({"spec": job["spec"]})["args"])
    assert made.command == "models" and made.models_command == "demo"
    assert Path(gw.config) == Path(made.config_out) and Path(made.store) == gw.model_store


def test_secrets_are_read_from_the_example_ones_only() -> None:
    example = {
        (d["metadata"]["name"], key)
        for d in documents("secrets.example.yaml")
        for key in d["stringData"]
    }
    assert set(SECRETS) == example
    for d in objects("Deployment").values():
        for e in container(d).get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert (ref["name"], ref["key"]) in example
    # No secret value is written into a manifest.
    text = "".join((K8S / n).read_text() for n in kustomization()["resources"])
    assert "postgresql://" not in text and "stringData" not in text


def test_selectors_targets_and_the_drain() -> None:
    deployments = objects("Deployment")
    for d in deployments.values():
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert d["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for svc in objects("Service").values():
        matched = [d for d in deployments.values() if svc["spec"]["selector"].items()
                   <= d["spec"]["template"]["metadata"]["labels"].items()]  # fmt: skip
        assert len(matched) == 1, svc["metadata"]["name"]
        ports = _ports(container(matched[0]))
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in ports, (svc["metadata"]["name"], p)
    pdbs = objects("PodDisruptionBudget")
    assert set(pdbs) == set(deployments)
    for name, pdb in pdbs.items():
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (hpa,) = objects("HorizontalPodAutoscaler").values()
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "abgate-gateway")
    gateway = deployments["abgate-gateway"]
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["minReplicas"] > pdbs[
        "abgate-gateway"]["spec"]["maxUnavailable"]  # fmt: skip
    assert "cpu" in container(gateway)["resources"]["requests"]  # what Utilization is of
    assert deployments["abgate-evaluator"]["spec"]["replicas"] == 2  # a leader and a standby
    # SIGTERM: the preStop pause, then the drain (--grace-seconds), inside the grace period.
    gw = _settings(gateway, GatewaySettings)
    pause = container(gateway)["lifecycle"]["preStop"]["sleep"]["seconds"]
    period = gateway["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert pause + gw.grace_seconds + 5 <= period
