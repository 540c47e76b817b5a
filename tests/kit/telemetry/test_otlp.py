"""`LeanOTLPSpanExporter`: the SDK's OTLP/gRPC exporter whose requests `encode_request`
writes, held equal to what the SDK's own encoder builds, and sent to a real receiver."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from services.kit.telemetry import tracing
from services.kit.telemetry.otlp import LeanOTLPSpanExporter, encode_request
from services.kit.telemetry_settings import TelemetrySettings


def _provider(service: str) -> tuple[TracerProvider, InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service, "service.version": "1"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return provider, memory


def _decoded(spans: list[ReadableSpan]) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest.FromString(encode_request(spans))


@pytest.fixture
def recorded() -> Iterator[list[ReadableSpan]]:
    """A saga's worth of shapes: two resources, two scopes, a remote parent with tracestate,
    events, links, an error status, every attribute type."""
    edge, edge_spans = _provider("gateway")
    orders, orders_spans = _provider("orders")
    root = edge.get_tracer("poly.gateway", "1.0").start_span(
        "POST /v1/orders", kind=SpanKind.SERVER, attributes={"http.response.status_code": 201}
    )
    carrier: dict[str, str] = {"tracestate": "vendor=opaque,other=1"}
    TraceContextTextMapPropagator().inject(carrier, context=trace.set_span_in_context(root))
    parent = TraceContextTextMapPropagator().extract(carrier)
    server = orders.get_tracer("poly.server").start_span(
        "poly.orders.v1.OrdersService/CreateOrder",
        context=parent,
        kind=SpanKind.SERVER,
        attributes={
            "rpc.system": "grpc",
            "rpc.grpc.status_code": 13,
            "negative": -5,
            "ratio": 0.25,
            "flag": False,
            "empty": "",
            "zero": 0,
            "blob": b"\x00\xff",
            "codes": [1, 2, 3],
            "names": ["a", "ü", ""],
            "unicode": "Zürich ☃",
        },
        links=[Link(root.get_span_context(), {"why": "batch"})],
    )
    server.add_event("retry", {"attempt": 2})
    server.add_event("")
    server.set_status(Status(StatusCode.ERROR, "database unavailable"))
    server.end()
    orders.get_tracer("poly.bus").start_span("process OrderPaid", kind=SpanKind.CONSUMER).end()
    root.end()
    yield [*orders_spans.get_finished_spans(), *edge_spans.get_finished_spans()]
    edge.shutdown()
    orders.shutdown()


def test_the_request_is_what_the_sdks_encoder_builds(recorded: list[ReadableSpan]) -> None:
    assert _decoded(recorded) == encode_spans(recorded)
    request = _decoded(recorded)
    assert [len(r.scope_spans) for r in request.resource_spans] == [2, 1]
    [server, consumer] = [s for scope in request.resource_spans[0].scope_spans for s in scope.spans]
    assert server.trace_state == "vendor=opaque,other=1"
    assert server.flags == 0x300  # the parent is known to be remote
    assert (server.status.code, server.status.message) == (2, "database unavailable")
    assert consumer.status.code == 0 and consumer.HasField("status"), "present even when unset"


_SCALARS = (
    st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=8)
)
_VALUES = (
    _SCALARS | st.lists(st.booleans()) | st.lists(st.integers(-(2**63), 2**63 - 1)) | st.lists(st.text())
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(attributes=st.dictionaries(st.text(min_size=1, max_size=10), _VALUES, max_size=6), name=st.text())
def test_any_span_encodes_as_the_sdks_encoder_does(attributes: dict[str, Any], name: str) -> None:
    provider, memory = _provider("orders")
    with provider.get_tracer("poly.test").start_as_current_span(name, attributes=attributes) as span:
        span.add_event("e", attributes)
    spans = list(memory.get_finished_spans())
    assert _decoded(spans) == encode_spans(spans)
    provider.shutdown()


def test_an_attribute_the_wire_cannot_carry_is_left_out_not_the_export() -> None:
    provider, memory = _provider("orders")
    # A header decoded with surrogate escapes (not UTF-8) and an integer past int64.
    provider.get_tracer("t").start_span(
        "s", attributes={"user_agent.original": "bad\udcff", "big": 2**64, "kept": "yes"}
    ).end()
    [span] = _decoded(list(memory.get_finished_spans())).resource_spans[0].scope_spans[0].spans
    assert [a.key for a in span.attributes] == ["kept"]
    provider.shutdown()


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.lock = threading.Lock()

    def Export(  # noqa: N802 - the generated method name
        self, request: ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        with self.lock:
            self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


def test_the_exporter_sends_them_to_a_real_collector(recorded: list[ReadableSpan]) -> None:
    collector = _Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        exporter = LeanOTLPSpanExporter(endpoint=f"http://127.0.0.1:{port}", insecure=True, timeout=5)
        assert exporter.export(recorded) is SpanExportResult.SUCCESS
        exporter.shutdown()
    finally:
        server.stop(None)
    assert collector.requests == [encode_spans(recorded)]


def test_the_kit_exports_otlp_with_it() -> None:
    settings = TelemetrySettings(
        traces_exporter="otlp", otlp_endpoint="http://127.0.0.1:4317", otlp_insecure=True
    )
    exporter = tracing._exporter(settings)
    try:
        assert isinstance(exporter, LeanOTLPSpanExporter)
    finally:
        exporter.shutdown()


def test_repeated_attributes_are_encoded_once_and_the_table_stays_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.kit.telemetry import otlp  # noqa: PLC0415 - its table is what is checked

    monkeypatch.setattr(otlp, "_SEEN_LIMIT", 3)
    monkeypatch.setattr(otlp, "_seen_strings", {})
    provider, memory = _provider("orders")
    for n in range(10):  # one attribute repeats, one never does
        provider.get_tracer("t").start_span(
            "s", attributes={"rpc.method": "GetOrder", "id": f"req-{n}"}
        ).end()
    spans = list(memory.get_finished_spans())
    assert _decoded(spans) == encode_spans(spans)
    assert len(otlp._seen_strings) <= 3
    provider.shutdown()
