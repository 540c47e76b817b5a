"""Where `poly up` reads its children's lines: the hint after the first order placed, from
JSON lines captured from a real `poly up` run (register, log in, POST /v1/orders)."""

from __future__ import annotations

import io
import json
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from services.cli import system_settings
from services.cli.supervisor import Supervisor, _trace_command
from tests.support.env import ROOT, poly_environ

TRACE = "7b255a871d3a9b197572992efd607712"
PLACED = (
    '{"time": "2026-12-04T16:58:45.466Z", "level": "info", "service": "orders", "logger": "poly.access", '
    f'"message": "finished call", "trace_id": "{TRACE}", "span_id": "beb09ff55fc0ac4e", '
    '"method": "/poly.orders.v1.OrdersService/CreateOrder", "code": "OK", "duration_ms": 5.205, '
    '"request_id": "req-c1f46724"}'
)
PLACED_AGAIN = (
    '{"time": "2026-12-04T16:57:39.123Z", "level": "info", "service": "orders", "logger": "poly.access", '
    '"message": "finished call", "trace_id": "c2b69bf45c6c94a80910d9abb8b4c984", '
    '"span_id": "990a425c1dd5cd44", '
    '"method": "/poly.orders.v1.OrdersService/CreateOrder", "code": "OK", "duration_ms": 14.154, '
    '"request_id": "req-51534a92"}'
)
REFUSED = (  # quantity 0
    '{"time": "2026-12-04T16:58:45.456Z", "level": "info", "service": "orders", "logger": "poly.access", '
    '"message": "finished call", "trace_id": "607a1455277bc926600bc91b2dda42c9", '
    '"span_id": "c707d925c75fcefb", "method": "/poly.orders.v1.OrdersService/CreateOrder", '
    '"code": "INVALID_ARGUMENT", "duration_ms": 18.664, '
    '"request_id": "76a88a468f7b47e8b51f90b57bacc3f0"}'
)
UNTRACED = (  # OTEL_TRACES_EXPORTER=none: no trace to show
    '{"time": "2026-12-04T16:58:58.229Z", "level": "info", "service": "orders", "logger": "poly.access", '
    '"message": "finished call", "method": "/poly.orders.v1.OrdersService/CreateOrder", "code": "OK", '
    '"duration_ms": 5.254, "request_id": "req-2c1ca927"}'
)
EDGE_PLACED = (
    '{"time": "2026-12-04T16:57:39.103Z", "level": "info", "service": "gateway", "logger": "poly.access", '
    '"message": "http request", "trace_id": "f33ef8380a13846f1ed6dc5dd0bb4b8b", '
    '"span_id": "1015aae64446e682", '
    '"method": "POST", "route": "/v1/orders", "status": 201, "bytes": 481, "duration_ms": 26.087, '
    '"request_id": "req-9e86f335", "peer": "127.0.0.1"}'
)
WIDTH = len("notifications")


def _up(home: Path, log_format: str = "json", **environ: str) -> tuple[Supervisor, io.StringIO]:
    out = io.StringIO()
    settings = system_settings.load(poly_environ(home, None, **environ))
    return Supervisor(settings, out=out, log_format=log_format), out


def _read(supervisor: Supervisor, component: str, *lines: str) -> None:
    """`lines` read from `component`'s output, as its pump thread reads them."""
    supervisor._pump(component, io.StringIO("".join(line + "\n" for line in lines)), threading.Event())


def _records(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def _hints(out: io.StringIO) -> list[str]:
    return [line for line in out.getvalue().splitlines() if "order placed" in line]


def test_the_first_order_placed_is_followed_by_one_hint_record_in_json(tmp_path: Path) -> None:
    supervisor, out = _up(tmp_path)
    _read(supervisor, "orders", REFUSED, PLACED)
    _read(supervisor, "gateway", EDGE_PLACED)
    _read(supervisor, "orders", PLACED_AGAIN)
    records = _records(out)
    relayed = [json.loads(line) for line in (REFUSED, PLACED, EDGE_PLACED, PLACED_AGAIN)]
    [hint] = [r for r in records if r["service"] == "poly"]
    assert records == [*relayed[:2], hint, *relayed[2:]], "right after the order's own access line"
    command = _trace_command(TRACE, tmp_path)
    assert hint == {
        "time": hint["time"],
        "level": "info",
        "service": "poly",
        "logger": "poly.up",
        "message": f"order placed: see its trace with `{command}`",
        "trace_id": TRACE,
    }


def test_in_the_console_the_hint_is_a_line_of_poly(tmp_path: Path) -> None:
    supervisor, out = _up(tmp_path, "console")
    _read(supervisor, "orders", PLACED, PLACED_AGAIN)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(f"{'orders':<{WIDTH}} | ") and "OrdersService/CreateOrder OK" in lines[0]
    command = _trace_command(TRACE, tmp_path)
    assert lines[1] == f"{'poly':<{WIDTH}} | order placed: see its trace with `{command}`"
    assert lines[2].startswith(f"{'orders':<{WIDTH}} | ")


def test_an_order_placed_without_a_trace_id_waits_for_one_with_it(tmp_path: Path) -> None:
    supervisor, out = _up(tmp_path)
    _read(supervisor, "orders", UNTRACED)
    assert _hints(out) == []
    _read(supervisor, "orders", PLACED)
    assert [json.loads(line)["trace_id"] for line in _hints(out)] == [TRACE]


@pytest.mark.parametrize(
    "environ",
    [
        {"OTEL_TRACES_EXPORTER": "none"},
        {"OTEL_SDK_DISABLED": "true"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"},
        {"OTEL_TRACES_EXPORTER": "console"},
        {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.5"},
        {"OTEL_TRACES_SAMPLER": "always_off"},
    ],
    ids=["no-exporter", "sdk-disabled", "otlp", "console-exporter", "half-sampled", "sampled-out"],
)
def test_no_hint_when_poly_trace_could_miss_the_trace(tmp_path: Path, environ: dict[str, str]) -> None:
    supervisor, out = _up(tmp_path, **environ)
    _read(supervisor, "orders", PLACED)
    assert [json.loads(line) for line in out.getvalue().splitlines()] == [json.loads(PLACED)]


def test_a_ratio_sampler_keeping_every_trace_still_gets_the_hint(tmp_path: Path) -> None:
    supervisor, out = _up(tmp_path, OTEL_TRACES_SAMPLER="traceidratio", OTEL_TRACES_SAMPLER_ARG="1")
    _read(supervisor, "orders", PLACED)
    assert len(_hints(out)) == 1


def _forged(**fields: object) -> str:
    return json.dumps({**json.loads(PLACED), **fields})


@pytest.mark.parametrize(
    "line",
    [
        _forged(trace_id="$(touch /tmp/owned)"),
        _forged(trace_id=f"{TRACE[:-1]}\x1b[2J"),
        _forged(trace_id=TRACE.upper()),
        _forged(trace_id=[TRACE]),
        _forged(logger="poly.orders", message="finished call"),
        _forged(message="cannot place order via /poly.orders.v1.OrdersService/CreateOrder"),
        _forged(method="/poly.orders.v1.OrdersService/CreateOrderX"),
        "/poly.orders.v1.OrdersService/CreateOrder " + TRACE,
    ],
    ids=[
        "shell-command",
        "terminal-escape",
        "not-the-kits-hex",
        "not-a-string",
        "not-the-access-logger",
        "not-an-access-line",
        "another-method",
        "not-json",
    ],
)
def test_only_a_kit_access_line_with_a_well_formed_trace_id_gets_a_hint(tmp_path: Path, line: str) -> None:
    """A child's line names the trace in a command the user pastes: nothing else may get in."""
    supervisor, out = _up(tmp_path)
    _read(supervisor, "orders", line)
    assert _hints(out) == []
    _read(supervisor, "orders", PLACED)  # still waiting for the first real one
    assert [json.loads(hint)["trace_id"] for hint in _hints(out)] == [TRACE]


def test_the_command_is_the_readmes_from_a_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    assert Path(sys.executable).parent == ROOT / ".venv" / "bin", "the tests run in the checkout's .venv"
    assert _trace_command(TRACE, ROOT / ".poly") == f".venv/bin/poly trace {TRACE}"


def test_the_command_names_a_state_directory_poly_trace_would_not_read_by_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(ROOT)
    home = tmp_path / "my state"
    assert _trace_command(TRACE, home) == f".venv/bin/poly trace --home '{home}' {TRACE}"
    assert _trace_command(TRACE, ROOT / "state") == f".venv/bin/poly trace --home state {TRACE}"


def test_without_a_poly_script_beside_python_the_command_runs_the_module(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    python = tmp_path / "bin" / "python3"
    monkeypatch.setattr(sys, "executable", str(python))
    monkeypatch.chdir(ROOT)
    assert _trace_command(TRACE, ROOT / ".poly") == f"{python} -m services.cli trace {TRACE}"
