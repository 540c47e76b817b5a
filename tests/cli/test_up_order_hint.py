"""`poly up` end to end: after the first order placed through the edge, it prints once the
`poly trace` command that shows that order's trace, and the command works as printed."""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from services.cli.exits import OK
from tests.support.edge import edge_answers, place_order
from tests.support.env import ROOT, poly_environ, process_environ
from tests.support.http import http_call
from tests.support.identity import PASSWORD
from tests.support.processes import Process
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

HINT = re.compile(r"^poly +\| order placed: see its trace with `(?P<command>[^`]+ (?P<trace>[0-9a-f]{32}))`$")
CREATE_ORDER_SHOWN = "OrdersService/CreateOrder"


def _token(port: int) -> str:
    """An account's access token, made as the README makes one: register, then log in."""
    account = {"email": f"hint-{uuid.uuid4().hex[:10]}@example.com", "password": PASSWORD}
    assert http_call(port, "POST", "/v1/auth:register", account).status == 201
    login = http_call(port, "POST", "/v1/auth:login", account)
    assert login.status == 200, login.body
    return str(login.json()["access_token"])


def _shown_call(up: Process, request_id: str) -> str:
    """poly up's console line for the orders service's CreateOrder call `request_id`."""
    return up.wait_for_line(
        lambda line: line.startswith("orders ") and CREATE_ORDER_SHOWN in line and request_id in line,
        timeout=30,
    )


def _run_as_printed(command: str) -> subprocess.CompletedProcess[str]:
    """`command` as a user pastes it, where poly up ran, without the test's POLY_* variables."""
    return subprocess.run(
        shlex.split(command),
        cwd=ROOT,
        env=process_environ({}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_first_order_prints_its_poly_trace_command_once(tmp_path: Path) -> None:
    environ = poly_environ(tmp_path / "home")
    port = int(environ["POLY_GATEWAY_PORT"])
    url = f"http://127.0.0.1:{port}"
    up = Process.module("services.cli", environ, "up", "--log-format", "console")
    try:
        up.wait_for_line(lambda line: "all services SERVING" in line, timeout=120)
        eventually(lambda: edge_answers(url), timeout=30, what="the edge to answer")
        token = _token(port)

        # A refused CreateOrder (the orders service answers INVALID_ARGUMENT) is no order placed.
        refused = f"refused-{uuid.uuid4().hex[:10]}"
        line = {"sku": "BOOK-1", "quantity": 0, "unitPrice": {"currencyCode": "EUR", "amountMinor": "1250"}}
        answer = http_call(
            port,
            "POST",
            "/v1/orders",
            {"lines": [line]},
            headers={"Authorization": f"Bearer {token}", "X-Request-Id": refused},
        )
        assert answer.status == 400, answer.body
        assert "INVALID_ARGUMENT" in _shown_call(up, refused)

        first = f"first-{uuid.uuid4().hex[:10]}"
        place_order(url, token, first)
        hint = HINT.match(up.wait_for_line(lambda shown: "order placed" in shown, timeout=30))
        assert hint is not None, up.output()
        assert hint["trace"] in _shown_call(up, first), "the trace of the order just placed"

        # Each component writes its spans about a second after the call, on its own schedule:
        # until both have, the trace lacks the edge's request or the order's creation.
        def traced() -> subprocess.CompletedProcess[str] | None:
            done = _run_as_printed(hint["command"])
            rows = (r"^gateway +POST /v1/orders ", r"^orders +OrdersService/CreateOrder ")
            whole = done.returncode == OK and all(re.search(row, done.stdout, re.M) for row in rows)
            return done if whole else None

        shown = eventually(traced, timeout=30, what=f"`{hint['command']}` to show the whole trace")
        assert shown.stdout.startswith(f"trace {hint['trace']}  "), shown.stdout
        assert f"request {first}" in shown.stdout

        second = f"second-{uuid.uuid4().hex[:10]}"
        place_order(url, token, second)
        _shown_call(up, second)
        up.signal(signal.SIGTERM)  # poly up prints each child's last lines before it exits
        assert up.wait(timeout=60) == 0, up.output()
    finally:
        up.stop()
    hints = [shown for shown in up.lines if "order placed" in shown]
    assert hints == [hint.group(0)], "once per run, however many orders follow"
