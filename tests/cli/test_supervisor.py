"""`poly up` before it starts anything: certificates, and ports another process holds."""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from services.cli.supervisor import Supervisor
from services.kit import config
from tests.support.env import poly_environ


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


def _up(home: Path, **ports: int) -> tuple[int, str]:
    environ = poly_environ(home)
    environ.update({f"POLY_{name.upper()}_PORT": str(port) for name, port in ports.items()})
    out = io.StringIO()
    status = Supervisor(config.load("cli", environ), out=out).run()
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
