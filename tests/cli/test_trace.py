"""`poly trace`: a real multi-service trace, written by `SpanFileExporter`, found and drawn.

Each component has a tracer provider of its own writing its own file, as the processes of
`poly up` do, and the trace context crosses between them as a ``traceparent`` header.
Times are given explicitly, so the waterfall is the same on every run.
"""
# ruff: noqa: E501 - the expected waterfalls are as wide as the terminals they fit

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from google.protobuf import json_format
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from services.cli import spanfiles
from services.cli.exits import FAILURE, OK, USAGE
from services.cli.trace import run, waterfall
from services.kit import config
from services.kit.telemetry.spanfile import SpanFileExporter
from tests.support.edge import edge_answers, place_order
from tests.support.env import ROOT, poly_environ, process_environ
from tests.support.identity import start
from tests.support.processes import Process, run_module
from tests.support.waiting import eventually

MS = 1_000_000
T0 = 1_767_225_600 * 1_000_000_000  # 2026-01-01 00:00:00 UTC
CREATE = "poly.orders.v1.OrdersService/CreateOrder"
AUTHORIZE = "poly.payments.v1.PaymentsService/AuthorizePayment"
PROPAGATOR = TraceContextTextMapPropagator()


@dataclass
class _System:
    """One tracer provider per component, each appending to ``<home>/traces/<name>.jsonl``."""

    home: Path
    max_bytes: int = 50 * 1024 * 1024
    providers: dict[str, TracerProvider] = field(default_factory=dict)

    def tracer(self, name: str) -> trace.Tracer:
        if name not in self.providers:
            exporter = SpanFileExporter(self.home / "traces" / f"{name}.jsonl", max_bytes=self.max_bytes)
            # The edge batches, as `poly up` does; the others write each span as it ends.
            processor: SpanProcessor = (
                BatchSpanProcessor(exporter, schedule_delay_millis=60_000)
                if name == "gateway"
                else SimpleSpanProcessor(exporter)
            )
            provider = TracerProvider(resource=Resource.create({"service.name": name}))
            provider.add_span_processor(processor)
            self.providers[name] = provider
        return self.providers[name].get_tracer("poly.test")

    def flush(self) -> None:
        for provider in self.providers.values():
            assert provider.force_flush(10_000)

    def close(self) -> None:
        for provider in self.providers.values():
            provider.shutdown()


@dataclass(frozen=True)
class _Placed:
    trace_id: str
    follow_up: str
    """The trace the notification's consumer started, linked to the publish span."""


def _hop(span: trace.Span) -> Context:
    """The context a server restores from the ``traceparent`` its client sent."""
    carrier: dict[str, str] = {}
    PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    assert set(carrier) == {"traceparent"}
    return PROPAGATOR.extract(carrier)


def _place_order(system: _System, at: int, order: str = "orders/abc", request: str = "req-7f3a") -> _Placed:
    """A POST /v1/orders through the edge: orders asks payments, which refuses the card."""
    edge, orders, payments = (system.tracer(name) for name in ("gateway", "orders", "payments"))
    root = edge.start_span(
        "POST /v1/orders",
        context=Context(),
        kind=SpanKind.SERVER,
        start_time=at,
        attributes={
            "http.route": "/v1/orders",
            "http.response.status_code": 201,
            spanfiles.REQUEST_ID: request,
        },
    )
    call = edge.start_span(
        CREATE,
        context=trace.set_span_in_context(root),
        kind=SpanKind.CLIENT,
        start_time=at + 1 * MS,
        attributes={"rpc.grpc.status_code": 0},
    )
    served = orders.start_span(
        CREATE,
        context=_hop(call),
        kind=SpanKind.SERVER,
        start_time=at + 2 * MS,
        attributes={"rpc.grpc.status_code": 0, spanfiles.REQUEST_ID: request, spanfiles.RESOURCE_NAME: order},
    )
    pay = orders.start_span(
        AUTHORIZE,
        context=trace.set_span_in_context(served),
        kind=SpanKind.CLIENT,
        start_time=at + 5 * MS,
        attributes={"rpc.grpc.status_code": 9},
    )
    pay.set_status(Status(StatusCode.ERROR, "card declined: insufficient funds"))
    authorize = payments.start_span(
        AUTHORIZE,
        context=_hop(pay),
        kind=SpanKind.SERVER,
        start_time=at + 6 * MS,
        attributes={"rpc.grpc.status_code": 9, spanfiles.REQUEST_ID: request},
    )
    authorize.end(end_time=at + 29 * MS)
    pay.end(end_time=at + 30 * MS)
    publish = orders.start_span(
        "bus publish OrderPlaced",
        context=trace.set_span_in_context(served),
        kind=SpanKind.PRODUCER,
        start_time=at + 31 * MS,
    )
    publish.end(end_time=at + 32 * MS)
    served.end(end_time=at + 37 * MS)
    call.end(end_time=at + 38 * MS)
    root.end(end_time=at + 40 * MS)
    consume = system.tracer("notifications").start_span(
        "bus apply OrderPlaced",
        context=Context(),
        kind=SpanKind.CONSUMER,
        links=[Link(publish.get_span_context())],
        start_time=at + 45 * MS,
    )
    consume.end(end_time=at + 48 * MS)
    system.flush()
    return _Placed(f"{root.get_span_context().trace_id:032x}", f"{consume.get_span_context().trace_id:032x}")


@pytest.fixture
def system(tmp_path: Path) -> Iterator[_System]:
    made = _System(tmp_path / "home")
    yield made
    made.close()


@pytest.fixture
def placed(system: _System) -> _Placed:
    return _place_order(system, T0)


WATERFALL = """\
trace {trace}  2026-01-01 00:00:00.000 UTC  40.0 ms  6 spans
request req-7f3a

SERVICE   SPAN                       START ms    DUR ms  0        40.0 ms  STATUS
gateway   POST /v1/orders                 0.0      40.0  ████████████████  OK
gateway     OrdersServ…/CreateOrder       1.0      37.0  ████████████████  OK
orders        OrdersSe…/CreateOrder       2.0      35.0  ███████████████   OK
orders          …/AuthorizePayment        5.0      25.0    ██████████      ERROR FAILED_PRECONDITION
                  card declined: insufficient funds
payments          …/AuthorizePayme…       6.0      23.0    ██████████      FAILED_PRECONDITION
orders          bus publish OrderP…      31.0       1.0              █     OK
                  ↩ linked from notifications bus apply OrderPlaced: poly trace {follow_up}"""
"""At the default width, 100 columns: an RPC's service shortens before its method."""

WIDE = """\
SERVICE   SPAN                                      START ms    DUR ms  0             40.0 ms  STATUS
gateway   POST /v1/orders                                0.0      40.0  █████████████████████  OK
gateway     OrdersService/CreateOrder                    1.0      37.0  ████████████████████   OK
orders        OrdersService/CreateOrder                  2.0      35.0   ███████████████████   OK
orders          PaymentsService/AuthorizePayment         5.0      25.0    ██████████████       ERROR FAILED_PRECONDITION
                  card declined: insufficient funds
payments          PaymentsService/AuthorizePayment       6.0      23.0     █████████████       FAILED_PRECONDITION
orders          bus publish OrderPlaced                 31.0       1.0                  █      OK"""


def _shown(
    system: _System, what: str, *, listing: bool = False, limit: int = 20, as_json: bool = False
) -> tuple[int, str]:
    out = io.StringIO()
    status = run(system.home, what, listing=listing, limit=limit, as_json=as_json, out=out)
    return status, out.getvalue()


def test_the_waterfall_shows_each_span_under_its_parent_on_the_trace_time_scale(
    system: _System, placed: _Placed, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    status, shown = _shown(system, placed.trace_id)
    assert status == OK
    assert shown == WATERFALL.format(trace=placed.trace_id, follow_up=placed.follow_up) + "\n"
    assert max(len(line) for line in shown.splitlines() if "linked from" not in line) <= 100
    monkeypatch.setenv("COLUMNS", "120")
    assert _shown(system, placed.trace_id)[1].splitlines()[3:11] == WIDE.splitlines()


@pytest.mark.parametrize(
    "what",
    ["{trace}", "{TRACE}", "00-{trace}-00f067aa0ba902b7-01", "  req-7f3a ", "orders/abc"],
    ids=["trace-id", "upper-case", "traceparent", "request-id", "resource-name"],
)
def test_a_trace_is_found_by_id_request_id_or_resource_name(
    system: _System, placed: _Placed, what: str
) -> None:
    what = what.format(trace=placed.trace_id, TRACE=placed.trace_id.upper())
    found = spanfiles.find(system.home / "traces", what)
    assert found is not None
    assert found.trace_id == placed.trace_id
    assert (len(found.spans), found.others) == (6, ())
    assert [(s.service, s.name) for s in found.linked_from] == [("notifications", "bus apply OrderPlaced")]


def _read(system: _System, at: int, method: str, order: str, *, code: int = 0, request: str = "") -> str:
    """A call through the edge that names `order` in its request (GetOrder, WatchOrder): the
    service's span names it as the kit names it, from the request; its trace id."""
    edge, orders = system.tracer("gateway"), system.tracer("orders")
    route = "GET /v1/{name=orders/*}" + (":watch" if method == "WatchOrder" else "")
    request = request or f"req-{method.lower()}-{at}"
    root = edge.start_span(
        route,
        context=Context(),
        kind=SpanKind.SERVER,
        start_time=at,
        attributes={spanfiles.REQUEST_ID: request},
    )
    full = f"poly.orders.v1.OrdersService/{method}"
    call = edge.start_span(
        full, context=trace.set_span_in_context(root), kind=SpanKind.CLIENT, start_time=at + MS
    )
    served = orders.start_span(
        full,
        context=_hop(call),
        kind=SpanKind.SERVER,
        start_time=at + 2 * MS,
        attributes={
            "rpc.method": method,
            "rpc.grpc.status_code": code,
            spanfiles.REQUEST_ID: request,
            spanfiles.RESOURCE_NAME: order,
        },
    )
    served.end(end_time=at + 8 * MS)
    call.end(end_time=at + 9 * MS)
    root.end(end_time=at + 10 * MS)
    system.flush()
    return f"{root.get_span_context().trace_id:032x}"


def _first_line(trace_id: str, at: str, spans: int, duration: str = "40.0") -> str:
    return f"trace {trace_id}  2026-01-01 {at} UTC  {duration} ms  {spans} spans\n"


def test_a_resource_name_shows_the_trace_that_created_it_not_the_latest_watch(system: _System) -> None:
    # Asked for before it existed (a client that chooses its ids), created, then watched and read.
    too_soon = _read(system, T0 - 1_000 * MS, "GetOrder", "orders/abc", code=5)
    created = _place_order(system, T0)
    watched = _read(system, T0 + 1_000 * MS, "WatchOrder", "orders/abc")
    read = _read(system, T0 + 2_000 * MS, "GetOrder", "orders/abc")
    status, shown = _shown(system, "orders/abc")
    assert status == OK
    assert shown.startswith(_first_line(created.trace_id, "00:00:00.000", 6))
    assert shown.endswith(
        "\n\n3 other trace(s) match orders/abc; this is the one that created it "
        "(`poly trace --list orders/abc` lists them all, newest first)\n"
    )
    found = spanfiles.find(system.home / "traces", "orders/abc")
    assert found is not None
    assert (found.chosen, found.others) == (spanfiles.CREATED, (read, watched, too_soon))
    document = json.loads(_shown(system, "orders/abc", as_json=True)[1])
    assert (document["trace_id"], document["chosen"]) == (created.trace_id, "created")


def test_a_repeated_idempotent_create_does_not_hide_the_first_one(system: _System) -> None:
    first = _place_order(system, T0)
    _place_order(system, T0 + 1_000 * MS)  # the same request again: the answer names the same order
    found = spanfiles.find(system.home / "traces", "orders/abc")
    assert found is not None and (found.trace_id, found.chosen) == (first.trace_id, spanfiles.CREATED)


def test_without_its_creation_in_the_files_the_earliest_trace_naming_it_is_shown(system: _System) -> None:
    # A failed read is no creation, nor is a watch: its creation rotated out of the files.
    refused = _read(system, T0, "GetOrder", "orders/abc", code=7)
    _read(system, T0 + 1_000 * MS, "WatchOrder", "orders/abc")
    status, shown = _shown(system, "orders/abc")
    assert status == OK
    assert shown.startswith(_first_line(refused, "00:00:00.000", 3, "10.0"))
    assert (
        "\n\n1 other trace(s) match orders/abc; this is the earliest (none in the files created it) ("
        in shown
    )


def test_a_request_id_shows_its_most_recent_trace(system: _System) -> None:
    _place_order(system, T0)
    second = _place_order(system, T0 + 1_000 * MS)  # the client sent the same X-Request-Id again
    status, shown = _shown(system, "req-7f3a")
    assert status == OK
    assert shown.startswith(_first_line(second.trace_id, "00:00:01.000", 6))
    assert shown.endswith(
        "; this is the most recent (`poly trace --list req-7f3a` lists them all, newest first)\n"
    )


def test_list_gives_every_trace_naming_a_resource_and_says_which_one_is_shown(system: _System) -> None:
    created = _place_order(system, T0)
    watched = _read(system, T0 + 1_000 * MS, "WatchOrder", "orders/abc")
    read = _read(system, T0 + 2_000 * MS, "GetOrder", "orders/abc")
    other = _place_order(system, T0 + 3_000 * MS, order="orders/other", request="req-other")
    status, listed = _shown(system, "orders/abc", listing=True)
    assert status == OK
    assert listed.splitlines() == [
        "START                           DUR ms  SPANS  STATUS  TRACE                             ROOT (SERVICES)",
        f"2026-01-01 00:00:02.000 UTC       10.0      3  OK      {read}  GET /v1/{{name=orders/*}} (gateway, orders)",
        f"2026-01-01 00:00:01.000 UTC       10.0      3  OK      {watched}  "
        "GET /v1/{name=orders/*}:watch (gateway, orders)",
        f"2026-01-01 00:00:00.000 UTC       40.0      6  ERROR   {created.trace_id}  "
        "POST /v1/orders (gateway, orders, payments)",
        "",
        f"`poly trace orders/abc` shows {created.trace_id}, the one that created it; "
        "`poly trace <TRACE>` shows another",
    ]
    status, listed = _shown(system, "orders/abc", listing=True, limit=2)
    assert [line.split()[6] for line in listed.splitlines()[1:3]] == [read, watched]
    assert listed.splitlines()[3:] == [
        "",
        "1 older trace(s) match too (`poly trace --list -n 3 orders/abc` lists them all)",
        f"`poly trace orders/abc` shows {created.trace_id}, the one that created it; "
        "`poly trace <TRACE>` shows another",
    ]
    status, listed = _shown(system, "orders/abc", listing=True, as_json=True)
    assert [(t["trace_id"], t["root"], t["created"], t["chosen"]) for t in json.loads(listed)] == [
        (read, "GET /v1/{name=orders/*}", False, None),
        (watched, "GET /v1/{name=orders/*}:watch", False, None),
        (created.trace_id, "POST /v1/orders", True, "created"),
    ]
    status, listed = _shown(system, "", listing=True, limit=3)
    assert listed.splitlines() == [
        "START                           DUR ms  SPANS  STATUS  TRACE                             ROOT (SERVICES)",
        f"2026-01-01 00:00:03.045 UTC        3.0      1  OK      {other.follow_up}  "
        "bus apply OrderPlaced (notifications)",
        f"2026-01-01 00:00:03.000 UTC       40.0      6  ERROR   {other.trace_id}  "
        "POST /v1/orders (gateway, orders, payments)",
        f"2026-01-01 00:00:02.000 UTC       10.0      3  OK      {read}  GET /v1/{{name=orders/*}} (gateway, orders)",
    ]


def test_json_gives_the_spans_in_tree_order(system: _System, placed: _Placed) -> None:
    status, shown = _shown(system, "req-7f3a", as_json=True)
    assert status == OK
    document = json.loads(shown)
    assert (document["trace_id"], document["other_traces"]) == (placed.trace_id, [])
    spans = document["spans"]
    assert [(s["depth"], s["service"], s["kind"]) for s in spans] == [
        (0, "gateway", "server"),
        (1, "gateway", "client"),
        (2, "orders", "server"),
        (3, "orders", "client"),
        (4, "payments", "server"),
        (3, "orders", "producer"),
    ]
    for parent, child in [(0, 1), (1, 2), (2, 3), (3, 4), (2, 5)]:
        assert spans[child]["parent_span_id"] == spans[parent]["span_id"]
    assert spans[3]["status"] == {"code": "ERROR", "message": "card declined: insufficient funds"}
    assert spans[2]["attributes"][spanfiles.RESOURCE_NAME] == "orders/abc"
    assert spans[0]["end_time_unix_nano"] - spans[0]["start_time_unix_nano"] == 40 * MS
    assert [s["links"] for s in document["linked_from"]] == [
        [{"trace_id": placed.trace_id, "span_id": spans[5]["span_id"]}]
    ]


def test_a_span_whose_parent_is_missing_is_shown_at_top_level(system: _System, placed: _Placed) -> None:
    (system.home / "traces" / "gateway.jsonl").unlink()  # as if the edge's batch was never written
    found = spanfiles.find(system.home / "traces", "orders/abc")
    assert found is not None
    assert waterfall(found.spans, width=100).splitlines()[4:] == [
        "orders    … OrdersServ…/CreateOrder       0.0      35.0  ████████████████  OK",
        "orders      Payme…/AuthorizePayment       3.0      25.0   ████████████     ERROR FAILED_PRECONDITION",
        "              card declined: insufficient funds",
        "payments      Pay…/AuthorizePayment       4.0      23.0   ████████████     FAILED_PRECONDITION",
        "orders      bus publish OrderPlaced      29.0       1.0               █    OK",
        "",
        "… 1 span(s) whose parent is not in the files: not written yet (spans are written about a second "
        "after a call ends), sampled out, or kept under another POLY_HOME",
    ]


@pytest.mark.slow
def test_a_fresh_trace_missing_a_parent_is_waited_for_until_its_spans_arrive(system: _System) -> None:
    placed = _place_order(system, time.time_ns() - 50 * MS)  # the edge's batch is still queued

    def edge_writes_its_batch() -> None:
        time.sleep(0.5)
        system.providers["gateway"].force_flush(10_000)

    writer = threading.Thread(target=edge_writes_its_batch)
    writer.start()
    try:
        out = io.StringIO()
        status = run(system.home, placed.trace_id, out=out, wait=20.0)
    finally:
        writer.join(10)
    assert status == OK
    shown = out.getvalue()
    assert "POST /v1/orders" in shown, "shown only once the edge's spans were in the files"
    assert "parent is not in the files" not in shown


def test_the_linked_trace_points_back_to_the_trace_it_continues(system: _System, placed: _Placed) -> None:
    status, shown = _shown(system, placed.follow_up)
    assert status == OK
    [note] = [line.strip() for line in shown.splitlines() if "linked to" in line]
    assert re.fullmatch(rf"↪ linked to trace {placed.trace_id} \(span [0-9a-f]{{16}}\): poly trace \S+", note)


def test_without_a_terminal_there_is_no_colour_and_ascii_when_needed(
    system: _System, placed: _Placed
) -> None:
    found = spanfiles.find(system.home / "traces", placed.trace_id)
    assert found is not None
    coloured = waterfall(found.spans, width=100, colour=True)
    assert "\033[31mERROR FAILED_PRECONDITION\033[0m" in coloured
    assert re.sub(r"\033\[[0-9;]*m", "", coloured) == waterfall(found.spans, width=100)
    plain = waterfall(found.spans, linked_from=found.linked_from, width=100, unicode=False)
    assert plain.isascii()
    assert "#####" in plain and "<- linked from notifications" in plain


def test_the_table_fits_the_width_and_the_bars_take_what_is_left(system: _System, placed: _Placed) -> None:
    found = spanfiles.find(system.home / "traces", placed.trace_id)
    assert found is not None
    root_bars = []
    for width in (80, 100, 160, 240):
        lines = waterfall(found.spans, width=width).splitlines()
        assert max(len(line) for line in lines[3:] if "linked from" not in line) <= width  # notes may wrap
        root_bars.append(lines[4].count("█"))
    assert root_bars == sorted(root_bars) and root_bars[-1] > 3 * root_bars[0]


def test_torn_and_foreign_lines_are_skipped(system: _System, placed: _Placed) -> None:
    orders = system.home / "traces" / "orders.jsonl"
    whole = orders.read_bytes()
    with orders.open("ab") as file:
        file.write(b"not json at all\n" + whole.splitlines()[0][:70])  # a crash mid-write
    (system.home / "traces" / "other.jsonl").write_text('{"resourceSpans": 7}\n[]\n')
    found = spanfiles.find(system.home / "traces", placed.trace_id)
    assert found is not None and len(found.spans) == 6


def test_rotated_files_are_read_too(tmp_path: Path) -> None:
    system = _System(tmp_path / "home", max_bytes=2_000)  # a span line is about 900 bytes
    try:
        placed = _place_order(system, T0)
    finally:
        system.close()
    assert (system.home / "traces" / "orders.jsonl.1").exists()
    found = spanfiles.find(system.home / "traces", "orders/abc")
    assert found is not None and found.trace_id == placed.trace_id
    assert len(found.spans) == 6


@pytest.mark.slow
def test_nothing_found_says_why_and_exits_1(
    system: _System, placed: _Placed, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _shown(system, "orders/missing") == (FAILURE, "")
    message = capsys.readouterr().err
    assert message.startswith("poly trace: no trace matches orders/missing; spans are written about a second")
    assert "is POLY_HOME the same as poly up's?" in message
    assert run(system.home / "elsewhere", "orders/abc") == FAILURE
    assert "elsewhere/traces does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_poly_trace_through_the_entry_point(tmp_path: Path, system: _System, placed: _Placed) -> None:
    environ = poly_environ(system.home, COLUMNS="100")
    done = run_module("services.cli", environ, "trace", placed.trace_id)
    assert (done.returncode, done.stderr) == (OK, "")
    assert done.stdout == WATERFALL.format(trace=placed.trace_id, follow_up=placed.follow_up) + "\n"
    other_home = run_module("services.cli", environ, "trace", "--home", str(tmp_path / "none"), "orders/abc")
    assert other_home.returncode == FAILURE
    assert "none/traces does not exist" in other_home.stderr
    assert run_module("services.cli", environ, "trace").returncode == USAGE
    assert run_module("services.cli", environ, "trace", "--list", "-n", "0").returncode == USAGE
    listed = run_module("services.cli", environ, "trace", "--list", "--json")
    assert [t["trace_id"] for t in json.loads(listed.stdout)] == [placed.follow_up, placed.trace_id]


_IMPORTS = """
import json, sys
from services.cli.main import main
status = main(sys.argv[1:])
print(json.dumps([status, sorted({m.partition(".")[0] for m in sys.modules} & {*json.loads(input())})]))
"""


def test_poly_trace_loads_no_heavy_library(system: _System, placed: _Placed) -> None:
    heavy = ["sqlalchemy", "alembic", "grpc", "cryptography", "opentelemetry", "google"]
    done = subprocess.run(
        [sys.executable, "-c", _IMPORTS, "trace", placed.trace_id],
        input=json.dumps(heavy),
        capture_output=True,
        text=True,
        timeout=60,
        env=process_environ(poly_environ(system.home)),
        cwd=ROOT,
        check=True,
    )
    assert json.loads(done.stdout.splitlines()[-1]) == [OK, []]


def test_help_and_shell_completion_know_poly_trace(tmp_path: Path) -> None:
    environ = poly_environ(tmp_path)
    helped = run_module("services.cli", environ, "trace", "--help")
    assert helped.returncode == OK
    assert "X-Request-Id" in helped.stdout and "--list" in helped.stdout
    bash = run_module("services.cli", environ, "completion", "bash").stdout
    assert "_shtab_poly_trace_option_strings=(-h --help --home --list -n --limit --json)" in bash
    assert "_shtab_poly_trace___home_COMPGEN=_shtab_compgen_dirs" in bash


def test_span_text_cannot_drive_the_terminal(system: _System) -> None:
    tracer = system.tracer("orders")
    span = tracer.start_span("evil\x1b[2J", context=Context(), start_time=T0)
    span.set_status(Status(StatusCode.ERROR, "line one\x1b]0;title\x07\nline two"))
    span.end(end_time=T0 + MS)
    found = spanfiles.find(system.home / "traces", f"{span.get_span_context().trace_id:032x}")
    assert found is not None
    shown = waterfall(found.spans, width=100)
    assert "\x1b" not in shown and "\x07" not in shown
    assert "evil\\x1b[2J" in shown
    assert shown.splitlines()[-2:] == ["           line one\\x1b]0;title\\x07", "           line two"]


def test_protobuf_json_with_base64_ids_and_enum_names_is_read_too(tmp_path: Path) -> None:
    # What protobuf's own JSON writer (json_format's defaults) makes of an export: a Collector
    # or another SDK may write that variant.
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "users"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    with provider.get_tracer("poly.test").start_as_current_span("GetUser", kind=SpanKind.SERVER) as root:
        root.set_status(Status(StatusCode.ERROR, "boom"))
        with provider.get_tracer("poly.test").start_as_current_span("query"):
            pass
    provider.shutdown()
    document = json_format.MessageToDict(encode_spans(memory.get_finished_spans()))
    assert document["resourceSpans"][0]["scopeSpans"][0]["spans"][1]["kind"] == "SPAN_KIND_SERVER"
    (tmp_path / "traces").mkdir()
    (tmp_path / "traces" / "users.jsonl").write_text(json.dumps(document) + "\n")
    trace_id = f"{root.get_span_context().trace_id:032x}"
    found = spanfiles.find(tmp_path / "traces", trace_id)
    assert found is not None
    assert [
        (depth, s.name, s.kind, s.status_code, s.service) for depth, s in spanfiles.tree(found.spans)
    ] == [
        (0, "GetUser", "server", spanfiles.ERROR, "users"),
        (1, "query", "internal", 0, "users"),
    ]
    assert found.spans[1].span_id == f"{root.get_span_context().span_id:016x}"


def _watch_to_the_end(url: str, token: str, order: str) -> str:
    """The order's watch over HTTP, read until the stream ends (an unfunded account's order
    fails its payment at once)."""
    watch = urllib.request.Request(f"{url}/v1/{order}:watch", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(watch, timeout=30) as answer:
        return str(answer.read().decode())


@pytest.mark.slow
def test_poly_trace_renders_an_order_placed_on_a_running_system(tmp_path: Path) -> None:
    """The whole path: services and edge as `poly up` runs them (the default file exporter,
    batches every 100 ms), an order over HTTP and a watch of it, then `poly trace ORDER` from
    the command line: the trace that created the order, not the later watch."""
    system = start(tmp_path / "home", config.SERVICES, {"OTEL_BSP_SCHEDULE_DELAY": "100"})
    edge = Process.module("gateway", system.environ)
    try:
        url = f"http://127.0.0.1:{system.settings('gateway').server.port}"
        eventually(lambda: edge_answers(url), timeout=30, what="the edge to answer")
        request_id = f"trace-{uuid.uuid4().hex[:12]}"
        _, email = system.register()
        token = system.login(email).access_token
        order = place_order(url, token, request_id)
        assert "STATE_PAYMENT_FAILED" in _watch_to_the_end(url, token, order)

        def spans() -> list[dict[str, object]] | None:
            done = run_module("services.cli", system.environ, "trace", "--json", request_id)
            found = json.loads(done.stdout)["spans"] if done.returncode == OK else []
            written = {(span["service"], span["kind"]) for span in found}
            return found if {("gateway", "server"), ("orders", "server")} <= written else None

        found = eventually(spans, timeout=30, what=f"the spans of request {request_id}")

        def roots() -> list[str] | None:
            done = run_module("services.cli", system.environ, "trace", "--list", "--json", order)
            listed = json.loads(done.stdout) if done.returncode == OK else []
            return [t["root"] for t in listed] if len(listed) >= 2 else None

        traces = eventually(roots, timeout=30, what=f"the creation and the watch of {order}")
    finally:
        edge.stop()
        system.stop()
    by_id = {span["span_id"]: span for span in found}
    root = found[0]  # the first span of the trace heads the tree
    [served] = [s for s in found if s["service"] == "orders" and str(s["name"]).endswith("/CreateOrder")]
    assert (root["depth"], root["service"], root["name"], root["kind"]) == (
        0,
        "gateway",
        "POST /v1/orders",
        "server",
    )
    # The edge's request span is the service's parent, or its CLIENT span under it when it makes one.
    edge_call = by_id[served["parent_span_id"]]
    assert edge_call["service"] == "gateway"
    assert edge_call is root or (edge_call["kind"], edge_call["parent_span_id"]) == (
        "client",
        root["span_id"],
    )
    assert traces == ["GET /v1/{name=orders/*}:watch", "POST /v1/orders"]  # newest first
    environ = {**system.environ, "COLUMNS": "120"}
    shown = run_module("services.cli", environ, "trace", order)
    assert shown.returncode == OK, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[:2] == [lines[0], f"request {request_id}"]
    assert lines[0].startswith(f"trace {root['trace_id']}  ")
    rows = lines[4:]
    assert re.match(r"gateway +POST /v1/orders +0\.0 ", rows[0]), shown.stdout
    assert any(re.match(r"orders +OrdersService/CreateOrder ", row) for row in rows), shown.stdout
    assert "1 other trace(s) match" in shown.stdout and "this is the one that created it" in shown.stdout
