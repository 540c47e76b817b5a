"""What `poly up` says when a component fails to start: what happened, and what to do next."""

from __future__ import annotations

import io
import socket
from pathlib import Path

import pytest

from services.cli import system_settings
from services.cli.supervisor import Supervisor, _alone, _child_environ, _signal_name
from tests.support.env import poly_environ


def _supervisor(home: Path, **ports: int) -> Supervisor:
    environ = poly_environ(home)
    environ.update({f"POLY_{name.upper()}_PORT": str(port) for name, port in ports.items()})
    return Supervisor(system_settings.load(environ), out=io.StringIO(), ready_timeout=60)


@pytest.mark.parametrize(
    ("code", "shown"),
    [(1, ""), (0, ""), (-9, " (SIGKILL)"), (-15, " (SIGTERM)"), (-999, "")],
    ids=["error", "clean", "killed", "terminated", "no-such-signal"],
)
def test_an_exit_code_names_the_signal_that_ended_the_process(code: int, shown: str) -> None:
    assert _signal_name(code) == shown


def test_a_crash_before_ready_points_to_its_lines_and_to_running_it_alone(tmp_path: Path) -> None:
    said = _supervisor(tmp_path)._exited_early("users", 1)
    assert said == (
        "users exited with code 1 before it was ready; its last lines are above, "
        f"or run `{_alone('users')}` to see it fail on its own"
    )
    assert _alone("users").endswith("python -m services.users")
    assert _alone("gateway").endswith("python -m gateway")


def test_an_exit_before_ready_on_a_taken_port_names_the_variable_that_moves_it(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        said = _supervisor(tmp_path, orders=port)._exited_early("orders", 1)
    assert said == (
        f"orders exited with code 1 before it was ready: port {port} is in use; "
        "stop what holds it (another `poly up`?) or set POLY_ORDERS_PORT to a free port"
    )


def test_not_healthy_in_time_says_how_far_it_got_and_how_to_watch_it(tmp_path: Path) -> None:
    said = _supervisor(tmp_path)._not_healthy("payments")
    assert said == (
        "payments is not healthy after 60s: it has not said `serving` yet (its last lines above "
        f"show how far it got); run `{_alone('payments')}` to watch it start on its own"
    )


def test_waiting_names_the_components_then_how_long_it_has_waited(tmp_path: Path) -> None:
    supervisor = _supervisor(tmp_path)
    assert supervisor._waiting(["auth", "gateway"], 1.2, again=False) == (
        "waiting for auth, gateway to be healthy…"
    )
    assert supervisor._waiting(["gateway"], 16.3, again=True) == "still waiting for gateway (16s of 60s)…"


def test_children_log_json_whatever_the_users_format(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLY_LOG_FORMAT", "console")
    monkeypatch.setenv("GRPC_VERBOSITY", "DEBUG")
    environ = _child_environ()
    assert environ["POLY_LOG_FORMAT"] == "json", "poly up parses its children's lines"
    assert environ["GRPC_VERBOSITY"] == "DEBUG", "everything else is the user's"
