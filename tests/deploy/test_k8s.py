"""deploy/k8s as a platform team's review and CI would take it: the generated manifests match
the protos and the kit's settings, every overlay builds, every object validates against the
Kubernetes schemas in strict mode, checkov finds nothing unexplained, every pod runs locked
down with native gRPC probes on the kit's health port, and each component's environment is
one the kit's configuration accepts."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import config as edge_config
from services.kit import config
from tests.support.env import ROOT

K8S = ROOT / "deploy" / "k8s"
TOOLS = ROOT / "build" / "deploy-tools" / "bin"
OVERLAYS = ("dev", "prod")
COMPONENTS = (*config.SERVICES, "gateway")
KUBERNETES_VERSION = "1.32.0"
_CRD_KINDS = {("cert-manager.io/v1", "Certificate"), ("cert-manager.io/v1", "Issuer")}
"""cert-manager's kinds: no schema ships with kubernetes-validate; checked by name here."""


def _tool(name: str) -> str:
    found = TOOLS / name if (TOOLS / name).exists() else shutil.which(name)
    if found is None:
        how = "make deploy-tools" if name != "kubectl" else "kubectl 1.32 is on CI machines"
        why = f"{name} is missing ({how})"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    return str(found)


@cache
def _rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    built = subprocess.run(
        [_tool("kubectl"), "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    return tuple(doc for doc in yaml.safe_load_all(built.stdout) if doc)


def _objects(overlay: str, kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in _rendered(overlay) if doc["kind"] == kind}


def test_the_generated_manifests_match_the_protos_and_the_settings() -> None:
    checked = subprocess.run(
        [sys.executable, str(K8S / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr + " (make deploy-manifests rewrites them)"


@pytest.mark.slow
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_of_an_overlay_validates_strictly_against_the_kubernetes_schemas(overlay: str) -> None:
    # The interpreter beside the tool holds its library, apart from the project's venv.
    python = Path(_tool("kubernetes-validate")).with_name("python")
    documents = [doc for doc in _rendered(overlay) if (doc["apiVersion"], doc["kind"]) not in _CRD_KINDS]
    script = (
        "import json, sys, kubernetes_validate\n"
        "failures = []\n"
        "for doc in json.load(sys.stdin):\n"
        "    try:\n"
        f"        kubernetes_validate.validate(doc, {KUBERNETES_VERSION!r}, strict=True)\n"
        "    except kubernetes_validate.ValidationError as error:\n"
        "        failures.append(f\"{doc['kind']}/{doc['metadata']['name']}: {error.message}\")\n"
        "print(json.dumps(failures))\n"
    )
    validated = subprocess.run(
        [str(python), "-c", script],
        input=json.dumps(documents),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert validated.returncode == 0, validated.stderr
    assert json.loads(validated.stdout) == []
    kinds = {(doc["apiVersion"], doc["kind"]) for doc in _rendered(overlay)} & _CRD_KINDS
    assert kinds == _CRD_KINDS  # the only objects left to cert-manager's own validation


@pytest.mark.slow
def test_checkov_finds_nothing_unexplained_in_deploy() -> None:
    scanned = subprocess.run(
        [
            _tool("checkov"),
            "--directory",
            str(ROOT / "deploy"),
            "--framework",
            "kustomize",
            "dockerfile",
            "--output",
            "json",
            "--skip-download",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env={**os.environ, "PATH": f"{Path(_tool('kubectl')).parent}:{os.environ.get('PATH', '')}"},
    )
    reports = json.loads(scanned.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    assert {report["check_type"] for report in reports} == {"kustomize", "dockerfile"}, scanned.stderr[-2000:]
    failed = [
        f"{check['check_id']} {check['resource']}"
        for report in reports
        for check in report["results"]["failed_checks"]
    ]
    assert failed == []
    for report in reports:
        for skipped in report["results"]["skipped_checks"]:
            reason = skipped["check_result"].get("suppress_comment") or ""
            assert len(reason) > 20, (skipped["check_id"], skipped["resource"])  # each says why


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_runs_locked_down(overlay: str) -> None:
    for kind in ("Deployment", "StatefulSet"):
        for name, workload in _objects(overlay, kind).items():
            pod = workload["spec"]["template"]["spec"]
            assert pod["automountServiceAccountToken"] is False, name
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
            for container in pod["containers"] + pod.get("initContainers", []):
                security = container["securityContext"]
                assert security["readOnlyRootFilesystem"] is True, (name, container["name"])
                assert security["allowPrivilegeEscalation"] is False
                assert security["capabilities"] == {"drop": ["ALL"]}
                assert "limits" in container["resources"] and "requests" in container["resources"]
    for name, account in _objects(overlay, "ServiceAccount").items():
        assert account["automountServiceAccountToken"] is False, name


def _projected_files(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """``{path in the container: (Secret, key)}`` for every file a projected volume mounts."""
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    files = {}
    for mount in container["volumeMounts"]:
        for source in volumes[mount["name"]].get("projected", {}).get("sources", []):
            secret = source["secret"]
            for item in secret["items"]:
                files[f"{mount['mountPath']}/{item['path']}"] = (secret["name"], item["key"])
    return files


def _environment(overlay: str, component: str, scratch: Path) -> dict[str, str]:
    """What the component's container starts with: the image's ENV, the ConfigMap and its own
    values; each credential file it names must be one its volumes mount, and a stand-in of
    the right shape is written for it under `scratch`."""
    deployment = _objects(overlay, "Deployment")[component]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    environ = {"POLY_HOME": "/var/lib/poly", "POLY_LISTEN_HOST": "0.0.0.0", "POLY_METRICS_HOST": "0.0.0.0"}
    environ.update(_objects(overlay, "ConfigMap")["poly-config"]["data"])
    stand_ins = {
        (f"{service}-database", "url"): f"postgresql://poly:secret@postgres:5432/{service}"
        for service in config.SERVICES
    }
    stand_ins[("poly-bus", "url")] = "amqp://poly:secret@rabbitmq:5672/"
    mounted = _projected_files(pod, container)
    for item in container["env"]:
        if "value" not in item:
            continue
        value = item["value"]
        if item["name"].endswith("_FILE") and mounted.get(value) in stand_ins:  # not the TLS files
            written = scratch / value.strip("/").replace("/", "_")
            written.write_text(stand_ins[mounted[value]] + "\n")
            value = str(written)
        environ[item["name"]] = value
    return environ


def _own_settings(component: str) -> Callable[[config.Reader, config.Settings], Any]:
    """How `component` reads its own settings beside the kit's, as it does at start."""
    if component == "gateway":
        return edge_config.read_settings
    return importlib.import_module(f"services.{component}.__main__").SERVICE.settings  # type: ignore[no-any-return]


@pytest.mark.parametrize("component", COMPONENTS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_component_gets_an_environment_the_kit_accepts_and_its_probes_and_files_agree(
    overlay: str, component: str, tmp_path: Path
) -> None:
    # The kit's settings and the component's own; raises, listing every problem.
    settings, own = config.load_with(
        component, _own_settings(component), _environment(overlay, component, tmp_path)
    )
    deployment = _objects(overlay, "Deployment")[component]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["metrics"] == settings.telemetry.metrics_port
    assert not settings.db.migrate_on_start
    for peer in config.SERVICES:  # the headless Services: round-robin over every ready pod
        assert settings.peers[peer] == f"{peer}-headless:{config.DEFAULT_PORTS[peer]}"
    mounted = {mount["mountPath"] for mount in container["volumeMounts"]}
    assert (
        {settings.tls.ca_file.parent, settings.tls.cert_file.parent, settings.tls.key_file.parent}
        == {Path("/var/run/poly/tls")}
        <= {Path(path) for path in mounted}
    )
    if component == "gateway":
        assert ports["http"] == settings.server.port
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        return
    assert ports["grpc"] == settings.server.port
    assert settings.server.health_port == ports["health"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": settings.server.health_port}
    (migrate,) = pod["initContainers"]
    assert migrate["args"] == ["migrate", component] and migrate["image"] == container["image"]
    if component == "auth":
        assert own.key_encryption_key_file.parent == Path("/var/run/poly/secrets")
        assert not own.password_grant  # deployed, no app sees a password: the code flow signs in
    # Database and broker URLs come from mounted Secrets, never from the environment.
    assert settings.db.url == f"postgresql://poly:secret@postgres:5432/{component}"
    assert settings.bus.url == "amqp://poly:secret@rabbitmq:5672/"
    from_secrets = {item["name"] for item in container["env"] if "secretKeyRef" in item.get("valueFrom", {})}
    optional = {  # optional credentials only: the SMTP login, the text, push and payment providers' keys
        "notifications": {
            "POLY_SMTP_USERNAME",
            "POLY_SMTP_PASSWORD",
            "POLY_TWILIO_ACCOUNT_SID",
            "POLY_TWILIO_AUTH_TOKEN",
            "POLY_PUSH_VAPID_PRIVATE_KEY",
        },
        "payments": {
            "POLY_STRIPE_API_KEY",
            "POLY_STRIPE_WEBHOOK_SECRET",
            "POLY_PAYPAL_CLIENT_ID",
            "POLY_PAYPAL_CLIENT_SECRET",
        },
    }
    assert from_secrets == optional.get(component, set())


@pytest.mark.parametrize("component", COMPONENTS)
def test_each_certificate_carries_the_identity_the_kit_authorizes_by(component: str) -> None:
    certificate = _objects("prod", "Certificate")[component]
    namespace = _objects("prod", "ConfigMap")["poly-config"]["data"]["POLY_NAMESPACE"]
    assert certificate["metadata"]["namespace"] == namespace
    assert certificate["spec"]["uris"] == [f"spiffe://poly.local/ns/{namespace}/sa/{component}"]
    assert component in certificate["spec"]["dnsNames"]  # the name kit clients verify
    assert certificate["spec"]["issuerRef"]["name"] == "poly-ca"
    assert certificate["spec"]["secretName"] == f"{component}-tls"


def test_production_runs_at_least_two_of_everything_and_no_database_in_the_cluster() -> None:
    for name, deployment in _objects("prod", "Deployment").items():
        assert "replicas" not in deployment["spec"], f"{name}: the autoscaler owns the count"
    for name, autoscaler in _objects("prod", "HorizontalPodAutoscaler").items():
        assert autoscaler["spec"]["minReplicas"] >= 2, name
    assert set(_objects("prod", "PodDisruptionBudget")) == set(COMPONENTS)
    assert not _objects("prod", "StatefulSet")
    assert not _objects("prod", "Secret") and not _objects("dev", "Secret"), "no secret is committed"


def _reachable(overlay: str) -> set[tuple[str, str]]:
    """(caller, callee) pairs the rendered NetworkPolicies let through on the callee's port."""
    policies = _objects(overlay, "NetworkPolicy")
    pairs = set()
    for callee in config.SERVICES:
        port = config.DEFAULT_PORTS[callee]
        for rule in policies[callee]["spec"]["ingress"]:
            if {"protocol": "TCP", "port": port} in rule.get("ports", []):
                for peer in rule.get("from", []):
                    pairs.add((peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"], callee))
    return pairs


def test_network_policies_let_through_exactly_the_internal_calls_the_protos_allow() -> None:
    # Written out here, not derived as the generator derives it: a change to the protos that
    # opens a path between services must be seen in review.
    expected = {
        ("gateway", "auth"), ("users", "auth"), ("orders", "auth"), ("payments", "auth"),
        ("notifications", "auth"),
        ("gateway", "users"), ("notifications", "users"),
        ("gateway", "orders"),
        ("gateway", "payments"), ("orders", "payments"),
        ("gateway", "notifications"),
    }  # fmt: skip
    assert _reachable("prod") == expected
    policies = _objects("prod", "NetworkPolicy")
    for service in config.SERVICES:  # the kubelet probes from the node, which policies never block
        for rule in policies[service]["spec"]["ingress"]:
            assert all(port["port"] != 8086 for port in rule.get("ports", [])), service
    assert _objects("prod", "NetworkPolicy")["default-deny"]["spec"] == {
        "podSelector": {},
        "policyTypes": ["Ingress", "Egress"],
    }
