"""kit.telemetry.rpc: a served call's span and metrics, and the caller's side."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import wrappers_pb2
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from poly.events.v1 import event_sink_pb2, event_sink_pb2_grpc
from poly.orders.v1 import orders_service_pb2
from services.kit import server, tls
from services.kit.errors import error_middleware
from services.kit.logs import JsonFormatter, access_log_middleware
from services.kit.telemetry import trace_fields
from services.kit.telemetry.metrics import Metrics
from services.kit.telemetry.rpc import _resource_name, instrument_channel, server_middleware
from tests.support import probe_service
from tests.support.env import settings_for
from tests.support.waiting import eventually

_S = wrappers_pb2.StringValue
_ECHO = "poly.test.v1.ProbeService"


_SINK_SERVICE = event_sink_pb2.DESCRIPTOR.services_by_name["EventSinkService"]


class _Sink(event_sink_pb2_grpc.EventSinkServiceServicer):
    def PushEvent(  # noqa: N802 - generated gRPC method name
        self, request: event_sink_pb2.PushEventRequest, context: grpc.ServicerContext
    ) -> event_sink_pb2.PushEventResponse:
        return event_sink_pb2.PushEventResponse(outcome=event_sink_pb2.PushEventResponse.OUTCOME_APPLIED)


class _Observed:
    def __init__(self, certs: Path) -> None:
        self.certs = certs
        self.spans = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.server_metrics = Metrics(version="test")
        self.client_metrics = Metrics(version="test")
        settings = settings_for("orders", {"POLY_TLS_DIR": str(certs), "POLY_ORDERS_PORT": "0"})
        sink = server.registration(
            _SINK_SERVICE, event_sink_pb2_grpc.add_EventSinkServiceServicer_to_server, _Sink()
        )
        self.running = server.start(
            settings,
            [probe_service.registration(), sink],
            middlewares=[
                server_middleware(self.server_metrics, self.provider.get_tracer("test")),
                access_log_middleware(),
                error_middleware("orders.poly.local"),
            ],
        )
        client = settings_for("cli", {"POLY_TLS_DIR": str(certs)})
        self.raw = grpc.secure_channel(f"localhost:{self.running.port}", tls.channel_credentials(client.tls))
        self.channel = instrument_channel(self.raw, self.client_metrics, self.provider)

    def close(self) -> None:
        self.raw.close()
        self.running.drain()

    def finished(self) -> dict[SpanKind, list[object]]:
        found: dict[SpanKind, list[object]] = {}
        for span in self.spans.get_finished_spans():
            found.setdefault(span.kind, []).append(span)
        return found


@pytest.fixture
def observed(certs: Path) -> Iterator[_Observed]:
    made = _Observed(certs)
    try:
        yield made
    finally:
        made.close()


def test_a_call_is_one_trace_from_the_callers_span_through_the_server(observed: _Observed) -> None:
    with observed.provider.get_tracer("test").start_as_current_span("caller") as caller:
        reply = probe_service.stub(observed.channel, "Echo")(
            _S(value="hi"), metadata=[("x-request-id", "req-1")], timeout=5
        )
    assert reply.value == "hi"
    served: object = eventually(lambda: _maybe_span(observed, "Echo"), what="the server span")
    [client] = [s for s in observed.spans.get_finished_spans() if s.kind is SpanKind.CLIENT]
    trace_id = caller.get_span_context().trace_id
    assert client.context.trace_id == served.context.trace_id == trace_id  # type: ignore[attr-defined]
    assert served.parent.span_id == client.context.span_id  # type: ignore[attr-defined]
    assert served.name == f"{_ECHO}/Echo"  # type: ignore[attr-defined]
    attributes = dict(served.attributes)  # type: ignore[attr-defined]
    assert attributes["rpc.system"] == "grpc"
    assert (attributes["rpc.service"], attributes["rpc.method"]) == (_ECHO, "Echo")
    assert attributes["rpc.grpc.status_code"] == 0
    assert attributes["poly.request_id"] == "req-1"
    assert attributes["network.peer.address"] in {"127.0.0.1", "::1"}


@pytest.mark.parametrize(
    "sent",
    [["x" * 129], ['"},{"injected":1'], ["has space"]],
    ids=["too-long", "json-breakout", "space"],
)
def test_a_request_id_breaking_the_rule_is_kept_off_the_span(observed: _Observed, sent: list[str]) -> None:
    reply = probe_service.stub(observed.channel, "Echo")(
        _S(value="hi"), metadata=[("x-request-id", value) for value in sent], timeout=5
    )
    assert reply.value == "hi"
    served: object = eventually(lambda: _maybe_span(observed, "Echo"), what="the server span")
    assert "poly.request_id" not in dict(served.attributes)  # type: ignore[attr-defined]


def _maybe_span(observed: _Observed, method: str, kind: SpanKind = SpanKind.SERVER) -> object | None:
    """The first finished span of `kind` for the probe service's `method`, if any yet."""
    name = f"{_ECHO}/{method}"
    spans = [s for s in observed.spans.get_finished_spans() if s.kind is kind and s.name == name]
    return spans[0] if spans else None


@pytest.mark.parametrize(
    ("method", "code", "error"),
    [("Missing", grpc.StatusCode.NOT_FOUND, False), ("Crash", grpc.StatusCode.INTERNAL, True)],
    ids=["caller-error-not-span-error", "server-error"],
)
def test_errors_sent_with_details_are_recorded_with_their_code(
    observed: _Observed, method: str, code: grpc.StatusCode, error: bool
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        probe_service.stub(observed.channel, method)(_S(value="orders/42"), timeout=5)
    assert caught.value.code() is code
    span = eventually(lambda: _maybe_span(observed, method), what="the server span")
    attributes = dict(span.attributes)  # type: ignore[attr-defined]
    assert attributes["rpc.grpc.status_code"] == code.value[0]
    assert attributes["error.type"] == code.name
    assert attributes["poly.status_message"] == caught.value.details()
    assert "secret-table-name" not in json.dumps(attributes)  # the crash's text never leaves
    expected = StatusCode.ERROR if error else StatusCode.UNSET
    assert span.status.status_code is expected  # type: ignore[attr-defined]


def test_a_stream_is_one_span_that_ends_with_the_stream(observed: _Observed) -> None:
    with pytest.raises(grpc.RpcError):
        list(probe_service.stub(observed.channel, "Count", streaming=True)(_S(value="3"), timeout=5))
    span = eventually(lambda: _maybe_span(observed, "Count"), what="the stream's span")
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]  # type: ignore[attr-defined]
    labels = {
        "grpc_type": "server_stream",
        "grpc_service": _ECHO,
        "grpc_method": "Count",
        "grpc_code": "NotFound",
    }
    assert observed.server_metrics.registry.get_sample_value("grpc_server_handled_total", labels) == 1


def _client_span(observed: _Observed, method: str) -> object:
    what = f"the CLIENT span of {method}"
    return eventually(lambda: _maybe_span(observed, method, SpanKind.CLIENT), what=what)


@pytest.mark.parametrize(
    ("method", "code"),
    [("Missing", grpc.StatusCode.NOT_FOUND), ("Crash", grpc.StatusCode.INTERNAL)],
    ids=["caller-error", "server-error"],
)
def test_a_failed_call_fails_its_client_span_with_the_code(
    observed: _Observed, method: str, code: grpc.StatusCode
) -> None:
    with pytest.raises(grpc.RpcError):
        probe_service.stub(observed.channel, method)(_S(value="orders/42"), timeout=5)
    span = _client_span(observed, method)
    attributes = dict(span.attributes)  # type: ignore[attr-defined]
    assert (attributes["rpc.system"], attributes["rpc.service"], attributes["rpc.method"]) == (
        "grpc",
        _ECHO,
        method,
    )
    assert attributes["rpc.grpc.status_code"] == code.value[0]
    assert span.status.status_code is StatusCode.ERROR  # type: ignore[attr-defined]


def test_a_client_stream_span_ends_with_the_stream(observed: _Observed) -> None:
    with pytest.raises(grpc.RpcError):
        list(probe_service.stub(observed.channel, "Count", streaming=True)(_S(value="3"), timeout=5))
    span = _client_span(observed, "Count")
    served = eventually(lambda: _maybe_span(observed, "Count"), what="the stream's span")
    assert served.parent.span_id == span.context.span_id  # type: ignore[attr-defined]
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]  # type: ignore[attr-defined]


def test_a_trace_context_the_caller_put_in_metadata_is_replaced_by_the_calls_own(observed: _Observed) -> None:
    forged = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    reply = probe_service.stub(observed.channel, "Echo")(
        _S(value="hi"), metadata=[("traceparent", forged), ("tracestate", "x=1")], timeout=5
    )
    assert reply.value == "hi"
    client = _client_span(observed, "Echo")
    served = eventually(lambda: _maybe_span(observed, "Echo"), what="the server span")
    assert served.parent.span_id == client.context.span_id  # type: ignore[attr-defined]
    assert f"{served.context.trace_id:032x}" != "0af7651916cd43dd8448eb211c80319c"  # type: ignore[attr-defined]


def test_a_call_that_cannot_start_still_ends_its_span_and_its_count(observed: _Observed) -> None:
    """On a closed channel (what a rotated certificate's old channel becomes) gRPC fails the
    call before it is sent: the CLIENT span ends and the call is counted as handled."""
    client = settings_for("cli", {"POLY_TLS_DIR": str(observed.certs)})
    raw = grpc.secure_channel(f"localhost:{observed.running.port}", tls.channel_credentials(client.tls))
    channel = instrument_channel(raw, observed.client_metrics, observed.provider)
    raw.close()
    unary = probe_service.stub(channel, "Echo").future(_S(value="hi"), timeout=5)
    assert unary.code() is not grpc.StatusCode.OK
    with pytest.raises(ValueError, match="closed"):  # what grpcio raises for a stream then
        list(probe_service.stub(channel, "Count", streaming=True)(_S(value="3"), timeout=5))
    ended = [s.name for s in observed.spans.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert sorted(ended) == [f"{_ECHO}/Count", f"{_ECHO}/Echo"]
    registry = observed.client_metrics.registry
    for kind, method in (("unary", "Echo"), ("server_stream", "Count")):
        labels = {"grpc_type": kind, "grpc_service": _ECHO, "grpc_method": method}
        started = registry.get_sample_value("grpc_client_started_total", labels)
        handled = registry.get_sample_value("grpc_client_handled_total", {**labels, "grpc_code": "Internal"})
        assert started == handled == 1, (method, started, handled)


def test_metrics_count_every_call_by_method_and_code_on_both_sides(observed: _Observed) -> None:
    echo = probe_service.stub(observed.channel, "Echo")
    for _ in range(3):
        echo(_S(value="x"), timeout=5)
    with pytest.raises(grpc.RpcError):
        probe_service.stub(observed.channel, "Missing")(_S(value="orders/1"), timeout=5)
    method = {"grpc_type": "unary", "grpc_service": _ECHO, "grpc_method": "Echo"}
    for side, metrics in (("server", observed.server_metrics), ("client", observed.client_metrics)):
        registry = metrics.registry
        eventually(
            lambda registry=registry, side=side: (
                registry.get_sample_value(f"grpc_{side}_handled_total", {**method, "grpc_code": "OK"}) == 3
            ),
            what=f"{side} counts",
        )
        assert registry.get_sample_value(f"grpc_{side}_started_total", method) == 3
        assert registry.get_sample_value(f"grpc_{side}_handling_seconds_count", method) == 3
        missing = {**method, "grpc_method": "Missing", "grpc_code": "NotFound"}
        assert registry.get_sample_value(f"grpc_{side}_handled_total", missing) == 1
    assert observed.server_metrics.registry.get_sample_value("poly_grpc_server_in_flight_calls") == 0


def test_an_event_push_makes_no_rpc_span_and_is_still_counted(observed: _Observed) -> None:
    """The bus traces a push itself (the relay's send span, the consumer's process span): the
    push makes neither a CLIENT nor a SERVER span, and both sides still count it."""
    tracer = observed.provider.get_tracer("test")
    with tracer.start_as_current_span("send poly.events.v1.OrderPaid", kind=SpanKind.PRODUCER):
        pushed = event_sink_pb2_grpc.EventSinkServiceStub(observed.channel).PushEvent(
            event_sink_pb2.PushEventRequest(), timeout=5
        )
        probe_service.stub(observed.channel, "Echo")(_S(value="after"), timeout=5)
    assert pushed.outcome == event_sink_pb2.PushEventResponse.OUTCOME_APPLIED
    eventually(lambda: _maybe_span(observed, "Echo"), what="the next call's server span")
    names = sorted((span.kind.name, span.name) for span in observed.spans.get_finished_spans())
    assert names == [
        ("CLIENT", f"{_ECHO}/Echo"),
        ("PRODUCER", "send poly.events.v1.OrderPaid"),
        ("SERVER", f"{_ECHO}/Echo"),
    ]
    counted = {
        "grpc_type": "unary",
        "grpc_service": _SINK_SERVICE.full_name,
        "grpc_method": "PushEvent",
        "grpc_code": "OK",
    }
    for side, metrics in (("server", observed.server_metrics), ("client", observed.client_metrics)):
        eventually(
            lambda metrics=metrics, side=side: (
                metrics.registry.get_sample_value(f"grpc_{side}_handled_total", counted) == 1
            ),
            what=f"the push counted on the {side} side",
        )


def test_log_lines_written_during_a_call_carry_its_trace_and_span(observed: _Observed) -> None:
    written = io.StringIO()
    handler = logging.StreamHandler(written)
    handler.setFormatter(JsonFormatter("orders", context_fields=trace_fields))
    probe_logger = logging.getLogger("probe")
    probe_logger.addHandler(handler)
    previous = probe_logger.level
    probe_logger.setLevel(logging.INFO)
    try:
        probe_service.stub(observed.channel, "Sleep")(_S(value="0"), timeout=5)
    finally:
        probe_logger.removeHandler(handler)
        probe_logger.setLevel(previous)
    span = eventually(lambda: _maybe_span(observed, "Sleep"), what="the server span")
    [line] = [json.loads(text) for text in written.getvalue().splitlines()]
    context = span.get_span_context()  # type: ignore[attr-defined]
    assert line["message"] == "sleep started"
    assert line["trace_id"] == format(context.trace_id, "032x")
    assert line["span_id"] == format(context.span_id, "016x")


def test_the_resource_name_comes_from_a_name_field() -> None:
    assert _resource_name(orders_service_pb2.GetOrderRequest(name="orders/abc")) == "orders/abc"
    assert _resource_name(_S(value="orders/abc")) == ""
    assert _resource_name(None) == ""
