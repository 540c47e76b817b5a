"""The image from deploy/Dockerfile runs the whole system: built with Podman on a local base,
certificates and migrations as one-shot containers, the five services and the edge as
containers (host network, 127.0.0.1 only, read-only root, no capabilities, the image's
non-root user) on PostgreSQL and RabbitMQ; an order placed through the edge is PAID and its
email delivered; on SIGTERM every container drains and exits 0."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.kit import config
from tests.support.broker import delete_namespace
from tests.support.edge import place_order
from tests.support.env import poly_environ, production_shape, settings_for
from tests.support.http import http_call
from tests.support.identity import CHEAP_ARGON2, PASSWORD
from tests.support.mailbox import Mailbox, mailbox
from tests.support.podman import build_image, container_log, podman, podman_ready, run_options
from tests.support.processes import health_check
from tests.support.waiting import eventually

pytestmark = [pytest.mark.container, pytest.mark.slow, pytest.mark.timeout(1800)]

_INSIDE = "/var/lib/poly"
_USER = "10001:10001"


@pytest.fixture(scope="module")
def image() -> str:
    why = podman_ready()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the container test: {why}")
        pytest.skip(why)
    return build_image()


class System:
    """The containers of one system, named after this run, and what they were given."""

    def __init__(self, image: str, home: Path, environ: dict[str, str]) -> None:
        self.image, self.home, self.environ = image, home, environ
        self.prefix = f"poly-test-{uuid.uuid4().hex[:8]}"
        self.started: list[str] = []

    @property
    def inside(self) -> dict[str, str]:
        return {**self.environ, "POLY_HOME": _INSIDE}

    def once(self, *command: str, stdin: str | None = None) -> str:
        """A one-shot container (a deploy job): its output; it must exit 0."""
        options = run_options(self.home, self.inside)
        interactive = ["--interactive"] if stdin is not None else []
        return podman("run", "--rm", *interactive, *options, self.image, *command, stdin=stdin, timeout=180)

    def start(self, component: str) -> None:
        name = f"{self.prefix}-{component}"
        command = ["gateway"] if component == "gateway" else ["serve", component]
        podman("run", "--detach", "--name", name, *run_options(self.home, self.inside), self.image, *command)
        self.started.append(name)

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n" + "\n".join(container_log(name)[-30:]) for name in self.started)

    def remove(self) -> None:
        if self.started:
            podman("rm", "--force", "--time", "0", *self.started, check=False, timeout=120)


@pytest.fixture(scope="module")
def system(
    image: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[System, Mailbox]]:
    home = tmp_path_factory.mktemp("container-home")
    home.chmod(0o777)  # written by the image's user, 10001
    production = production_shape(request)
    with mailbox() as mail:
        environ = poly_environ(
            home,
            None,
            **CHEAP_ARGON2,
            **production,
            POLY_LISTEN_HOST="127.0.0.1",
            POLY_METRICS_HOST="127.0.0.1",
            POLY_DB_MIGRATE="false",
            POLY_SMTP_HOST="127.0.0.1",
            POLY_SMTP_PORT=str(mail.port),
            POLY_BUS_SUBSCRIBE_WAIT_SECONDS="20",
        )
        deployed = System(image, home, environ)
        try:
            yield deployed, mail
        finally:
            deployed.remove()
            delete_namespace(production["POLY_BUS_URL"], production["POLY_BUS_PREFIX"])


def _edge(deployed: System) -> int:
    return int(deployed.environ["POLY_GATEWAY_PORT"])


def _ready(deployed: System) -> bool:
    try:
        return http_call(_edge(deployed), "GET", "/readyz", timeout=5).status == 200
    except OSError:  # not listening yet
        return False


def _customer(deployed: System) -> tuple[str, dict[str, str]]:
    """A customer registered through the edge, with an account an admin funded."""
    port = _edge(deployed)
    email = f"buyer-{uuid.uuid4().hex[:8]}@example.com"
    registered = http_call(port, "POST", "/v1/auth:register", {"email": email, "password": PASSWORD})
    assert registered.status == 201, registered.body
    login = http_call(port, "POST", "/v1/auth:login", {"email": email, "password": PASSWORD})
    bearer = {"Authorization": f"Bearer {login.json()['access_token']}"}
    accounts = eventually(
        lambda: http_call(port, "GET", "/v1/accounts", headers=bearer).json().get("accounts"),
        timeout=30,
        what="the customer's account, opened from UserRegistered",
    )
    # The first admin, made as an operator would: `poly admin create` in a one-shot container.
    made = deployed.once("admin", "create", "--email", "root@example.com", "--password-stdin", stdin=PASSWORD)
    assert "admin" in made, made
    admin_login = http_call(
        port, "POST", "/v1/auth:login", {"email": "root@example.com", "password": PASSWORD}
    )
    admin = {"Authorization": f"Bearer {admin_login.json()['access_token']}"}
    funds = {"amount": {"currencyCode": "EUR", "amountMinor": "100000"}, "requestId": str(uuid.uuid4())}
    funded = http_call(port, "POST", f"/v1/{accounts[0]['name']}:fund", funds, headers=admin)
    assert funded.status == 200, funded.body
    return email, bearer


def test_the_image_runs_the_system_until_an_order_is_paid_and_drains_on_sigterm(
    system: tuple[System, Mailbox],
) -> None:
    deployed, mail = system
    printed = deployed.once("certs")
    assert (deployed.home / "certs" / "ca.crt").is_file(), printed
    migrated = deployed.once("migrate", "all")
    assert migrated.split() == [word for service in config.SERVICES for word in (f"{service}:", "migrated")]

    host = {**deployed.environ, "POLY_HOME": str(deployed.home)}
    cli = settings_for("cli", host)
    for component in (*config.SERVICES, "gateway"):
        deployed.start(component)
    try:
        for service in config.SERVICES:
            assert health_check(cli, cli.peers[service], timeout=90) == "SERVING", deployed.logs()
        eventually(lambda: _ready(deployed), timeout=60, what="the edge to be ready")
        for component in (*config.SERVICES, "gateway"):  # compose's health check, run inside
            podman("exec", f"{deployed.prefix}-{component}", "poly", "status", component, timeout=60)

        email, bearer = _customer(deployed)
        token = bearer["Authorization"].removeprefix("Bearer ")
        name = place_order(f"http://127.0.0.1:{_edge(deployed)}", token, str(uuid.uuid4()))
        paid = eventually(
            lambda: (
                order
                if (order := http_call(_edge(deployed), "GET", f"/v1/{name}", headers=bearer).json())["state"]
                == "STATE_PAID"
                else None
            ),
            timeout=60,
            what=f"{name} to be PAID",
        )
        assert paid["payment"], paid
        eventually(lambda: mail.to(email), timeout=60, what="the order's email")
    except BaseException:
        print(deployed.logs())
        raise

    # SIGTERM (the image's STOPSIGNAL), as `docker stop` and Kubernetes send it.
    podman("stop", "--time", "30", *deployed.started, timeout=120)
    for container in deployed.started:
        state = json.loads(podman("inspect", "--format", "{{json .State}}", container))
        assert state["ExitCode"] == 0, f"{container} exited {state['ExitCode']}\n{deployed.logs()}"
        lines = [json.loads(line) for line in container_log(container) if line.startswith("{")]
        messages = [line.get("message") for line in lines]
        assert "stopped" in messages, f"{container} did not drain:\n{messages[-10:]}"


def test_the_image_runs_as_a_numeric_non_root_user_without_pip(image: str) -> None:
    described = json.loads(podman("image", "inspect", image))[0]["Config"]
    assert described["User"] == _USER
    assert described["StopSignal"] in ("SIGTERM", "15")
    labels = described["Labels"]
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.version"]
    probe = (
        "import importlib.util, shutil, sys; "
        "found = [m for m in ('pip', 'setuptools') if importlib.util.find_spec(m)]; "
        "found += [c for c in ('pip', 'pip3', 'gcc', 'cc') if shutil.which(c)]; "
        "print(','.join(found)); sys.exit(1 if found else 0)"
    )
    answer = podman(
        "run", "--rm", "--network=none", "--entrypoint", "python3", image, "-c", probe, check=False
    )
    assert answer.strip() == "", f"the runtime image has {answer}"
    version = podman("run", "--rm", "--network=none", "--read-only", image, "--version")
    assert version.startswith("poly "), version
