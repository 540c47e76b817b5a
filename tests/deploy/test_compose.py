"""deploy/compose.yaml as Compose would read it, checked against the code it runs: every
component's environment is one the kit's configuration accepts and points at the right
peers, databases and broker; start-up has an order and no race; every container of the image
runs locked down; Prometheus's config passes promtool. (No image registry is reachable here,
so the file is not started in CI: test_container.py runs the same image and commands.)"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from services.kit import config
from tests.support.env import ROOT

DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
COMPONENTS = (*config.SERVICES, "gateway")
_VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?::-(?P<default>[^}]*))?\}")


def _interpolated(value: Any) -> Any:
    """Compose's ${NAME:-default} with nothing set in the environment: the defaults."""
    if isinstance(value, str):
        return _VARIABLE.sub(lambda m: m.group("default") or "", value)
    if isinstance(value, dict):
        return {key: _interpolated(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_interpolated(item) for item in value]
    return value


def _compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())  # anchors and merge keys resolved
    return dict(_interpolated(loaded))


def _services() -> dict[str, dict[str, Any]]:
    return dict(_compose()["services"])


def _image_environment() -> dict[str, str]:
    """The ENV of deploy/Dockerfile's runtime stage (what every container starts with)."""
    text = (DEPLOY / "Dockerfile").read_text()
    runtime = text[text.index("AS runtime") :]
    block = re.search(r"^ENV (.+?)(?=^\w)", runtime, flags=re.MULTILINE | re.DOTALL)
    assert block is not None
    pairs = re.findall(r"(\w+)=(\S+)", block.group(1).replace("\\\n", " "))
    return {name: value for name, value in pairs if not value.startswith("/opt/poly/bin:")}


def _environment(service: dict[str, Any]) -> dict[str, str]:
    return {**_image_environment(), **{k: str(v) for k, v in service.get("environment", {}).items()}}


@pytest.mark.parametrize("component", COMPONENTS)
def test_each_component_gets_an_environment_the_kit_accepts(component: str) -> None:
    service = _services()[component]
    settings = config.load(component, _environment(service))  # raises ConfigError listing problems
    assert settings.server.host == "0.0.0.0" and settings.telemetry.metrics_host == "0.0.0.0"
    assert not settings.db.migrate_on_start, "migrate runs first, once: replicas never race"
    assert settings.telemetry.otlp_endpoint == "http://otel-collector:4317"
    for peer in config.SERVICES:  # each peer by its compose name, on the port it listens on
        host, _, port = settings.peers[peer].rpartition(":")
        assert host == peer and int(port) == config.load(peer, _environment(_services()[peer])).server.port
    if component in config.SERVICES:
        database = urlsplit(settings.db.url)
        assert (database.hostname, database.path) == ("postgres", f"/{component}")
        assert urlsplit(settings.bus.url).hostname == "rabbitmq"


@pytest.mark.parametrize("name", ["certs", "migrate", *COMPONENTS])
def test_each_container_gets_only_the_credentials_it_uses(name: str) -> None:
    credentials = {key for key in _services()[name].get("environment", {}) if key.endswith("_URL")}
    if name in config.SERVICES:
        assert credentials == {f"POLY_{name.upper()}_DATABASE_URL", "POLY_BUS_URL"}
    elif name == "migrate":
        assert credentials == {f"POLY_{service.upper()}_DATABASE_URL" for service in config.SERVICES}
    else:
        assert credentials == set()


def test_postgres_makes_every_database_the_services_use() -> None:
    made = re.findall(r"CREATE DATABASE (\w+);", (DEPLOY / "compose" / "postgres-databases.sql").read_text())
    assert sorted(made) == sorted(config.SERVICES)


def test_start_up_runs_the_jobs_to_completion_first_and_the_edge_after_healthy_services() -> None:
    services = _services()
    completed = {"condition": "service_completed_successfully"}
    healthy = {"condition": "service_healthy"}
    assert services["migrate"]["command"] == ["migrate", "all"]
    assert services["migrate"]["depends_on"] == {"certs": completed, "postgres": healthy}
    assert services["certs"]["command"] == ["certs"] and "depends_on" not in services["certs"]
    for name in config.SERVICES:
        service = services[name]
        assert service["command"] == ["serve", name]
        assert service["depends_on"] == {"certs": completed, "migrate": completed, "rabbitmq": healthy}
        # The gRPC health protocol over mTLS, from inside the container.
        assert service["healthcheck"]["test"] == ["CMD", "poly", "status", name]
    assert services["gateway"]["depends_on"] == {name: healthy for name in config.SERVICES}
    assert services["gateway"]["healthcheck"]["test"] == ["CMD", "poly", "status", "gateway"]
    for job in ("certs", "migrate"):
        assert services[job]["restart"] == "no"


def _seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+)s", text)
    assert match, text
    return float(match.group(1))


@pytest.mark.parametrize("name", ["certs", "migrate", *COMPONENTS])
def test_every_container_of_the_image_runs_locked_down(name: str) -> None:
    service = _services()[name]
    assert service["image"].startswith("polyservice:")
    assert service["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    assert service["read_only"] is True and service["user"] == "10001:10001"
    assert service["cap_drop"] == ["ALL"] and "no-new-privileges:true" in service["security_opt"]
    grace = config.load("cli", _environment(service)).server.grace_seconds
    assert _seconds(service["stop_grace_period"]) > grace
    (home,) = [volume for volume in service["volumes"] if volume.startswith("poly-home:")]
    assert home.endswith(":ro") is (name != "certs"), "only the certs job writes POLY_HOME"


def test_only_the_edge_is_published_beyond_this_machine() -> None:
    for name, service in _services().items():
        for port in service.get("ports", []):
            assert name == "gateway" or port.startswith("127.0.0.1:"), (name, port)
    assert _services()["gateway"]["ports"] == ["8080:8080"]


def test_every_mounted_file_exists() -> None:
    for service in _services().values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).is_file(), source


def test_prometheus_scrapes_every_component_by_its_compose_name_with_the_shipped_rules(
    tmp_path: Path,
) -> None:
    scraped = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    local = yaml.safe_load((DEPLOY / "observability" / "prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in scraped["scrape_configs"]}
    assert set(targets) == {job["job_name"] for job in local["scrape_configs"]} == set(COMPONENTS)
    for component, (target,) in targets.items():
        settings = config.load(component, _environment(_services()[component]))
        assert target == f"{component}:{settings.telemetry.metrics_port}"
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is Debian's prometheus package (.ci/run installs it)")
    # As mounted in the container: the rules beside the config.
    shutil.copy(DEPLOY / "compose" / "prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copy(DEPLOY / "observability" / "prometheus-rules.yml", tmp_path / "prometheus-rules.yml")
    checked = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_collector_receives_otlp_and_sends_traces_to_jaeger() -> None:
    collector = yaml.safe_load((DEPLOY / "compose" / "otel-collector.yaml").read_text())
    assert collector["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert collector["exporters"]["otlp/jaeger"]["endpoint"] == "jaeger:4317"
    assert collector["service"]["pipelines"]["traces"] == {
        "receivers": ["otlp"],
        "processors": ["batch"],
        "exporters": ["otlp/jaeger"],
    }
