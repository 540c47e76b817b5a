"""`poly up` before it starts anything (certificates, and ports another process holds), and
the JSON it writes with ``--log-format json``."""

from __future__ import annotations

import io
import json
import signal
import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from services.cli import system_settings
from services.cli.supervisor import Supervisor
from services.kit import config
from tests.support.env import poly_environ
from tests.support.processes import Process


@contextmanager
def _listening(count: int) -> Iterator[list[int]]:
    """`count` ports on 127.0.0.1, each held by a listening socket."""
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            holder = stack.enter_context(socket.socket())
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            ports.append(holder.getsockname()[1])
        yield ports


def _up(home: Path, log_format: str = "console", **ports: int) -> tuple[int, str]:
    environ = poly_environ(home)
    environ.update({f"POLY_{name.upper()}_PORT": str(port) for name, port in ports.items()})
    out = io.StringIO()
    status = Supervisor(system_settings.load(environ), out=out, log_format=log_format).run()
    return status, out.getvalue()


def test_a_taken_port_stops_poly_up_before_it_starts_anything(tmp_path: Path) -> None:
    with _listening(1) as [port]:
        status, output = _up(tmp_path, auth=port)
    assert status == 1
    assert output.splitlines()[-1] == (
        f"poly          | port {port} is in use, so auth cannot listen there: "
        "stop what holds it (another `poly up`?) or set POLY_AUTH_PORT to a free port"
    )
    assert "waiting for" not in output


def test_several_taken_ports_are_one_line(tmp_path: Path) -> None:
    with _listening(2) as [users, gateway]:
        status, output = _up(tmp_path, users=users, gateway=gateway)
    assert status == 1
    last = output.splitlines()[-1]
    assert f"ports in use: users {users}, gateway {gateway}; " in last
    assert "POLY_USERS_PORT" in last


def test_certificates_are_announced_on_the_first_run_only(tmp_path: Path) -> None:
    with _listening(1) as [port]:
        _, first = _up(tmp_path, auth=port)
        _, second = _up(tmp_path, auth=port)
    assert first.splitlines()[0] == f"poly          | creating certificates in {tmp_path / 'certs'}…"
    assert (tmp_path / "certs" / "ca.crt").exists()
    assert "creating certificates" not in second


def test_in_json_a_refusal_is_one_error_record_of_poly(tmp_path: Path) -> None:
    with _listening(1) as [port]:
        status, output = _up(tmp_path, "json", auth=port)
    assert status == 1
    records = [json.loads(line) for line in output.splitlines()]
    assert {(r["service"], r["logger"]) for r in records} == {("poly", "poly.up")}
    assert records[-1]["level"] == "error"
    assert records[-1]["message"].startswith(f"port {port} is in use, so auth cannot listen there")


@pytest.mark.slow
def test_poly_up_in_json_passes_each_services_json_lines_through(tmp_path: Path) -> None:
    # The user's own choice for their services is console: poly up's children write JSON anyway.
    up = Process.module(
        "services.cli", poly_environ(tmp_path, POLY_LOG_FORMAT="console"), "up", "--log-format", "json"
    )
    try:

        def record(line: str) -> dict[str, Any]:
            parsed = json.loads(line)
            assert isinstance(parsed, dict), line
            return parsed

        up.wait_for_line(lambda line: record(line)["message"] == "all services SERVING. Try:", timeout=120)
        # The edge fetches the signing keys at start: auth's access line for it.
        call = up.wait_for_line(lambda line: record(line)["message"] == "finished call", timeout=60)
        up.signal(signal.SIGTERM)
        assert up.wait(timeout=60) == 0, up.output()
    finally:
        up.stop()
    records = [record(line) for line in up.lines]
    assert {"time", "level", "service", "logger", "message"} <= set(records[0])
    services = {r["service"] for r in records}
    assert services >= {"poly", *config.SERVICES, "gateway"}, services
    assert not [r for r in records if r["logger"] == "stderr"], "every component wrote JSON"
    assert record(call)["logger"] == "poly.access" and record(call)["code"] == "OK"
    assert call.startswith('{"time": '), "the service's own line, as it wrote it"
    assert records[-1] == {**records[-1], "service": "poly", "message": "stopped"}
