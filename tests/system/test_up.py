"""`poly up` end to end: real processes, real certificates, the README's own commands."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from poly.auth.v1 import auth_service_pb2 as auth_pb
from poly.auth.v1 import auth_service_pb2_grpc
from services.kit import clients, config, priority
from tests.support.env import PYTHON, ROOT, free_port, poly_environ, process_environ, settings_for
from tests.support.identity import PASSWORD
from tests.support.processes import Process, health_check, run_module
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

BUF = ROOT / "node_modules" / ".bin" / "buf"
COMPONENTS = (*config.SERVICES, "gateway")
"""What `poly up` runs: the five services and the HTTP/JSON edge."""


@dataclass
class System:
    home: Path
    environ: dict[str, str]
    up: Process


@contextmanager
def _running_system(home: Path) -> Iterator[System]:
    environ = poly_environ(home)
    up = Process.module("services.cli", environ, "up", "--log-format", "console")
    try:
        up.wait_for_line(lambda line: "all services SERVING" in line, timeout=120)
        yield System(home, environ, up)
    finally:
        up.stop()


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """One system shared by the tests that only look at it."""
    with _running_system(tmp_path_factory.mktemp("poly-home")) as running:
        yield running


def _buf() -> Path:
    if not BUF.exists():
        if os.environ.get("CI") == "true":
            pytest.fail("node_modules/.bin/buf is missing; `make install` runs npm ci")
        pytest.skip("buf is not installed (npm ci)")
    return BUF


def _readme_commands(prefix: str) -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return [line.strip() for line in readme.splitlines() if line.strip().startswith(prefix)]


def _localised(command: str, system: System) -> list[str]:
    """The README command, pointed at this test's state directory and ports."""
    for name, default in config.DEFAULT_PORTS.items():
        port = system.environ[f"POLY_{name.upper()}_PORT"]
        command = command.replace(f"localhost:{default}", f"localhost:{port}")
    command = command.replace(".poly/", f"{system.home}/")
    argv = shlex.split(command)
    assert argv[:2] == ["npx", "buf"]
    return [str(_buf()), *argv[2:]]


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)


def test_poly_status_reports_every_service_serving(system: System) -> None:
    result = subprocess.run(
        [PYTHON, "-m", "services.cli", "status"],
        capture_output=True,
        text=True,
        timeout=60,
        env=process_environ(system.environ),
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for name in COMPONENTS:
        assert re.search(rf"^{name}\s+localhost:\d+\s+SERVING$", result.stdout, re.MULTILINE), result.stdout


def test_each_component_has_a_ready_line(system: System) -> None:
    for name in COMPONENTS:
        port = system.environ[f"POLY_{name.upper()}_PORT"]
        system.up.wait_for_line(lambda line, n=name, p=port: f"ready  {n} " in line and f":{p} " in line)


def test_poly_up_says_what_it_does_before_it_is_ready(system: System) -> None:
    lines = system.up.lines[: system.up.lines.index(system.up.wait_for_line(lambda t: "ready  auth " in t))]
    assert lines[0] == f"poly          | creating certificates in {system.home / 'certs'}…"
    for name in config.SERVICES:
        [migrating] = [line for line in lines if f"migrating {name} database…" in line]
        assert re.fullmatch(rf"{name} +\| \d\d:\d\d:\d\d info  migrating {name} database…", migrating)


def test_a_client_without_a_certificate_is_one_readable_line(system: System) -> None:
    """grpc-core's own log line about the refused handshake, in poly up's line format."""
    port = int(system.environ["POLY_AUTH_PORT"])
    context = ssl.create_default_context(cafile=str(system.home / "certs" / "ca.crt"))
    context.check_hostname = False
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        contextlib.suppress(ssl.SSLError, OSError),
        context.wrap_socket(raw) as tls_socket,
    ):
        tls_socket.recv(1)  # TLS 1.3: the server's refusal arrives after the client's Finished
    line = system.up.wait_for_line(lambda text: "TLS handshake" in text, timeout=10)
    refused = "TLS handshake refused: the client sent no certificate"
    assert re.fullmatch(rf"auth +\| \d\d:\d\d:\d\d info  {refused}", line)
    assert not [text for text in system.up.lines if "ssl_transport_security" in text]


def test_readme_list_services_command_works_on_every_port(system: System) -> None:
    [template] = [c for c in _readme_commands("npx buf curl") if "--list-services" in c]
    for name in config.SERVICES:
        command = template.replace("localhost:50051", f"localhost:{config.DEFAULT_PORTS[name]}")
        result = _run(_localised(command, system))
        assert result.returncode == 0, result.stderr
        listed = set(result.stdout.split())
        descriptor_service = {
            "auth": "poly.auth.v1.AuthService",
            "users": "poly.users.v1.UsersService",
            "orders": "poly.orders.v1.OrdersService",
            "payments": "poly.payments.v1.PaymentsService",
            "notifications": "poly.notifications.v1.NotificationsService",
        }[name]
        assert {
            descriptor_service,
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        } <= listed, result.stdout


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def test_a_second_poly_up_on_the_same_ports_fails_instead_of_claiming_ready(system: System) -> None:
    second = Process.module("services.cli", system.environ, "up", "--log-format", "console")
    try:
        assert second.wait(timeout=60) == 1
    finally:
        second.stop()
    output = second.output()
    listening = (*COMPONENTS, "smtp")  # smtp: the development mailbox
    ports = ", ".join(f"{name} {system.environ[f'POLY_{name.upper()}_PORT']}" for name in listening)
    assert f"poly          | ports in use: {ports}; stop what holds them (another `poly up`?)" in output
    assert "POLY_AUTH_PORT" in output
    assert "all services SERVING" not in output
    cli = settings_for("cli", system.environ)
    assert health_check(cli, cli.peers["auth"], timeout=10) == "SERVING", "the first system is untouched"


@pytest.fixture
def own_system(tmp_path: Path) -> Iterator[System]:
    """A system of its own, for tests that kill and stop it."""
    with _running_system(tmp_path) as running:
        yield running


def test_a_killed_service_is_restarted_then_sigterm_drains_every_process(own_system: System) -> None:
    system = own_system
    line = system.up.wait_for_line(lambda text: "ready  orders " in text)
    pid = int(line.rsplit("pid ", 1)[1])
    os.kill(pid, signal.SIGKILL)
    system.up.wait_for_line(lambda text: "orders exited with code -9" in text, timeout=30)
    system.up.wait_for_line(lambda text: "ready  orders again" in text, timeout=60)
    cli = settings_for("cli", system.environ)
    assert health_check(cli, cli.peers["orders"], timeout=10) == "SERVING"

    children = _children(system.up.popen.pid)
    assert len(children) == len(COMPONENTS)
    system.up.signal(signal.SIGTERM)
    assert system.up.wait(timeout=30) == 0
    for child in children:
        assert not Path(f"/proc/{child}").exists(), f"process {child} outlived poly up"
    output = system.up.output()
    for name in COMPONENTS:
        assert f"{name} exited with code 0" in output, f"{name} did not drain cleanly"
    assert output.rstrip().endswith("| stopped")


def _thread_nice_values(pid: int) -> set[int]:
    values = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            values.add(os.getpriority(os.PRIO_PROCESS, int(tid)))
    return values


def test_services_no_caller_waits_on_give_way_on_a_shared_cpu(system: System) -> None:
    # poly up starts each service in a session of its own, so each is a scheduling group of
    # its own: the background ones lower their group as well as their threads.
    ours = os.getpriority(os.PRIO_PROCESS, 0)  # what poly up inherited: raised, never lowered
    for name in config.SERVICES:
        line = system.up.wait_for_line(lambda text, name=name: f"ready  {name} " in text)
        pid = int(line.rsplit("pid ", 1)[1])
        expected = config.DEFAULT_NICE.get(name, 0)
        # Elsewhere the outbox relay (and orders' payment worker) run below the calls.
        below = max(ours, config.DEFAULT_BACKGROUND_NICE)
        wanted = {max(ours, expected)} if expected else {ours, below}
        # The relay lowers its thread as it starts, which may come just after the ready line.
        eventually(
            lambda pid=pid, wanted=wanted: _thread_nice_values(pid) == wanted, what=f"{name}'s threads"
        )
        group = priority.session_group_nice(pid)
        if group is not None:  # a new session's group starts at 0, whatever poly up runs at
            assert group == expected, name


def test_the_development_mailbox_keeps_the_welcome_email(system: System) -> None:
    settings = config.load("cli", system.environ)
    email = f"mailbox-{uuid.uuid4().hex[:8]}@example.com"
    with clients.channel(settings, "auth") as channel:
        auth_service_pb2_grpc.AuthServiceStub(channel).Register(
            auth_pb.RegisterRequest(email=email, password=PASSWORD), timeout=30
        )

    def kept() -> list[Path]:
        return [p for p in (system.home / "mail").glob("*.eml") if email in p.read_text(errors="replace")]

    assert len(eventually(kept, timeout=30, what=f"an .eml file for {email}")) == 1
    system.up.wait_for_line(lambda line: line.startswith("mail") and email in line, timeout=10)


def test_a_second_system_on_other_ports_but_the_same_mailbox_port_is_refused(
    system: System, tmp_path: Path
) -> None:
    """Else its emails would land in the first system's mailbox, and its own stay empty."""
    moved = {f"POLY_{name.upper()}_PORT": str(free_port()) for name in COMPONENTS}
    environ = {**system.environ, **moved, "POLY_HOME": str(tmp_path)}
    second = Process.module("services.cli", environ, "up", "--log-format", "console")
    try:
        assert second.wait(timeout=60) == 1
    finally:
        second.stop()
    smtp_port = system.environ["POLY_SMTP_PORT"]
    assert f"port {smtp_port} is in use, so smtp cannot listen there" in second.output()
    assert "POLY_SMTP_PORT" in second.output()


def test_status_with_another_systems_certificates_says_so_in_words(system: System, tmp_path: Path) -> None:
    """A second checkout's `poly status` while the first system holds the ports."""
    environ = {**system.environ, "POLY_HOME": str(tmp_path)}
    assert run_module("services.cli", environ, "certs").returncode == 0
    result = run_module("services.cli", environ, "status")
    assert result.returncode == 1
    assert result.stdout.count("UNTRUSTED (its certificate is not from this CA") == len(config.SERVICES)
    assert "another CA's certificate answers on these ports" in result.stderr
    assert "ssl_transport_security" not in result.stdout + result.stderr, "grpc-core's raw line"


def test_ctrl_c_during_start_up_stops_everything_without_calling_it_a_failure(tmp_path: Path) -> None:
    up = Process.module("services.cli", poly_environ(tmp_path), "up", "--log-format", "console")
    try:
        up.wait_for_line(lambda line: "migrating" in line, timeout=60)  # services are starting
        up.signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0, up.output()
    finally:
        up.stop()
    output = up.output()
    assert "start-up cancelled; stopped" in output, output
    assert "not cleanly" not in output and "all services SERVING" not in output, output
