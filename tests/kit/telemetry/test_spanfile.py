"""`SpanFileExporter`: real SDK spans, written as OTLP/JSON lines, read back as JSON."""

from __future__ import annotations

import base64
import json
import logging
import re
import stat
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from services.kit.telemetry.spanfile import SpanFileExporter, otlp_json

_IDS = ("traceId", "spanId", "parentSpanId")


def _provider(service: str) -> tuple[TracerProvider, InMemorySpanExporter]:
    """A provider of its own (never the global one) whose spans are kept in memory."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return provider, memory


@pytest.fixture
def recorded() -> Iterator[Sequence[ReadableSpan]]:
    """Spans of two services in one trace: a server span with a child, an event, an error, a
    link, and a remote parent propagated by traceparent as between two processes."""
    edge, edge_spans = _provider("gateway")
    orders, orders_spans = _provider("orders")
    tracer = edge.get_tracer("poly.test", "1.2.3")
    with tracer.start_as_current_span("POST /v1/orders", kind=SpanKind.SERVER) as root:
        root.set_attribute("poly.request_id", "req-1")
        with tracer.start_as_current_span("poly.orders.v1.OrdersService/CreateOrder", kind=SpanKind.CLIENT):
            carrier: dict[str, str] = {}
            TraceContextTextMapPropagator().inject(carrier)
    remote = TraceContextTextMapPropagator().extract(carrier)
    server = orders.get_tracer("poly.server").start_span(
        "poly.orders.v1.OrdersService/CreateOrder",
        context=remote,
        kind=SpanKind.SERVER,
        attributes={"rpc.grpc.status_code": 13, "poly.resource.name": "orders/abc"},
        links=[Link(root.get_span_context(), {"why": "test"})],
    )
    server.add_event("retry", {"attempt": 2})
    server.set_status(Status(StatusCode.ERROR, "database unavailable"))
    server.end()
    yield [*edge_spans.get_finished_spans(), *orders_spans.get_finished_spans()]
    edge.shutdown()
    orders.shutdown()


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _spans(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [
        span
        for resource_spans in document["resourceSpans"]
        for scope_spans in resource_spans["scopeSpans"]
        for span in scope_spans["spans"]
    ]


def _ids_as(encode: Any, value: Any) -> Any:
    """`value` with every trace/span id (of spans and links) passed through `encode`."""
    if isinstance(value, dict):
        return {k: encode(v) if k in _IDS else _ids_as(encode, v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ids_as(encode, item) for item in value]
    return value


def _reference(spans: Sequence[ReadableSpan]) -> dict[str, Any]:
    """The OTLP exporter's protobuf encoding as OTLP/JSON: protobuf's JSON, then hex ids."""
    as_dict = json_format.MessageToDict(encode_spans(spans), use_integers_for_enums=True)
    return _ids_as(lambda b64: base64.b64decode(b64).hex(), as_dict)  # type: ignore[no-any-return]


def test_one_export_is_one_line_of_otlp_json_with_hex_ids(
    tmp_path: Path, recorded: Sequence[ReadableSpan]
) -> None:
    path = tmp_path / "traces" / "orders.jsonl"
    assert SpanFileExporter(path).export(recorded) is SpanExportResult.SUCCESS
    [document] = _lines(path)
    assert [r["resource"]["attributes"][-1]["value"] for r in document["resourceSpans"]] == [
        {"stringValue": "gateway"},
        {"stringValue": "orders"},
    ]
    spans = _spans(document)
    assert [(s["name"], s["kind"]) for s in spans] == [
        ("poly.orders.v1.OrdersService/CreateOrder", 3),
        ("POST /v1/orders", 2),
        ("poly.orders.v1.OrdersService/CreateOrder", 2),
    ]
    for span, sdk_span in zip(spans, recorded, strict=True):
        context = sdk_span.get_span_context()
        assert context is not None
        assert (span["traceId"], span["spanId"]) == (f"{context.trace_id:032x}", f"{context.span_id:016x}")
        assert re.fullmatch("[0-9a-f]{32}", span["traceId"]) and re.fullmatch("[0-9a-f]{16}", span["spanId"])
    client, root, server = spans
    assert "parentSpanId" not in root
    assert server["parentSpanId"] == client["spanId"]
    assert server["flags"] == 0x300  # the parent is known to be remote
    assert server["status"] == {"code": 2, "message": "database unavailable"}
    assert server["links"][0]["spanId"] == root["spanId"]
    assert {"key": "rpc.grpc.status_code", "value": {"intValue": "13"}} in server["attributes"]


def test_the_line_is_what_the_otlp_exporter_encodes(tmp_path: Path, recorded: Sequence[ReadableSpan]) -> None:
    path = tmp_path / "spans.jsonl"
    SpanFileExporter(path).export(recorded)
    [document] = _lines(path)
    assert document == _reference(recorded)
    # and it parses back as the protobuf message (base64 is what protobuf's JSON expects of bytes)
    as_protobuf = _ids_as(lambda hex_id: base64.b64encode(bytes.fromhex(hex_id)).decode(), document)
    assert json_format.ParseDict(as_protobuf, ExportTraceServiceRequest()) == encode_spans(recorded)


_SCALARS = (
    st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.binary(max_size=8)
)
_VALUES = (
    _SCALARS | st.lists(st.booleans()) | st.lists(st.integers(-(2**63), 2**63 - 1)) | st.lists(st.text())
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(attributes=st.dictionaries(st.text(min_size=1, max_size=10), _VALUES, max_size=6))
def test_any_attribute_encodes_as_the_otlp_exporter_does(attributes: dict[str, Any]) -> None:
    provider, memory = _provider("orders")
    with provider.get_tracer("poly.test").start_as_current_span("s", attributes=attributes) as span:
        span.add_event("e", attributes)
    assert otlp_json(memory.get_finished_spans()) == _reference(memory.get_finished_spans())
    provider.shutdown()


def test_the_file_is_private_and_its_folder_is_made(tmp_path: Path, recorded: Sequence[ReadableSpan]) -> None:
    path = tmp_path / "home" / "traces" / "orders.jsonl"
    SpanFileExporter(path).export(recorded)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loose = tmp_path / "loose.jsonl"
    loose.touch(mode=0o644)
    loose.chmod(0o644)
    SpanFileExporter(loose).export(recorded)
    assert stat.S_IMODE(loose.stat().st_mode) == 0o600


def test_a_full_file_moves_to_dot_1_and_only_one_old_file_is_kept(
    tmp_path: Path, recorded: Sequence[ReadableSpan]
) -> None:
    path = tmp_path / "orders.jsonl"
    line = len(json.dumps(otlp_json(recorded[:1]), separators=(",", ":"))) + 1
    exporter = SpanFileExporter(path, max_bytes=3 * line)
    for _ in range(10):
        assert exporter.export(recorded[:1]) is SpanExportResult.SUCCESS
        assert path.stat().st_size <= 3 * line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["orders.jsonl", "orders.jsonl.1"]
    assert (len(_lines(path)), len(_lines(tmp_path / "orders.jsonl.1"))) == (1, 3)  # 10 = 3 + 3 + 3 + 1


def test_threads_exporting_at_once_write_whole_lines(tmp_path: Path) -> None:
    provider, memory = _provider("orders")
    tracer = provider.get_tracer("poly.test")
    threads, exports, batch = 8, 40, 5
    for worker in range(threads):
        for n in range(batch):
            tracer.start_span(f"worker-{worker}-{n}", attributes={"padding": "x" * 2000}).end()
    finished = memory.get_finished_spans()
    path = tmp_path / "orders.jsonl"
    exporter = SpanFileExporter(path)
    start = threading.Barrier(threads)
    results: list[SpanExportResult] = []

    def export(worker: int) -> None:
        start.wait(timeout=30)
        for _ in range(exports):
            results.append(exporter.export(finished[worker * batch : (worker + 1) * batch]))

    workers = [threading.Thread(target=export, args=(worker,)) for worker in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(timeout=60)
    assert results == [SpanExportResult.SUCCESS] * threads * exports
    documents = _lines(path)  # each line parses: none interleaved with another
    assert len(documents) == threads * exports
    for document in documents:
        names = {span["name"].rsplit("-", 1)[0] for span in _spans(document)}
        assert len(names) == 1 and len(_spans(document)) == batch
    provider.shutdown()


def test_an_io_error_is_a_failure_logged_once_and_export_resumes(
    tmp_path: Path, recorded: Sequence[ReadableSpan], caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "traces"
    blocker.write_text("a file where the folder should be")
    exporter = SpanFileExporter(blocker / "orders.jsonl")
    with caplog.at_level(logging.INFO, logger="poly.telemetry"):
        assert exporter.export(recorded) is SpanExportResult.FAILURE
        assert exporter.export(recorded) is SpanExportResult.FAILURE
        blocker.unlink()
        assert exporter.export(recorded) is SpanExportResult.SUCCESS
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(blocker / "orders.jsonl") in warnings[0]
    assert any("again" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)
    assert len(_lines(blocker / "orders.jsonl")) == 1


def test_a_path_that_is_a_folder_is_a_failure(tmp_path: Path, recorded: Sequence[ReadableSpan]) -> None:
    assert SpanFileExporter(tmp_path).export(recorded) is SpanExportResult.FAILURE


def test_after_shutdown_nothing_is_written(tmp_path: Path, recorded: Sequence[ReadableSpan]) -> None:
    path = tmp_path / "orders.jsonl"
    exporter = SpanFileExporter(path)
    assert exporter.force_flush() is True
    exporter.shutdown()
    assert exporter.export(recorded) is SpanExportResult.FAILURE
    assert not path.exists()


def test_under_a_batch_processor_spans_arrive_on_flush(tmp_path: Path) -> None:
    path = tmp_path / "traces" / "users.jsonl"
    provider = TracerProvider(resource=Resource.create({"service.name": "users"}))
    provider.add_span_processor(BatchSpanProcessor(SpanFileExporter(path), schedule_delay_millis=60_000))
    tracer = provider.get_tracer("poly.test")
    with tracer.start_as_current_span("outer"), tracer.start_as_current_span("inner"):
        pass
    assert provider.force_flush(10_000)
    [document] = _lines(path)  # one batch, one line
    assert [span["name"] for span in _spans(document)] == ["inner", "outer"]
    provider.shutdown()
    assert trace.get_current_span() is trace.INVALID_SPAN  # nothing leaked into the global context


def test_repeated_attributes_are_encoded_once_and_the_table_stays_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.kit.telemetry import spanfile  # noqa: PLC0415 - its table is what is checked

    monkeypatch.setattr(spanfile, "_SEEN_LIMIT", 3)
    monkeypatch.setattr(spanfile, "_seen_strings", {})
    provider, memory = _provider("orders")
    for n in range(10):  # one attribute repeats, one never does
        provider.get_tracer("t").start_span(
            "s", attributes={"rpc.method": "GetOrder", "id": f"req-{n}"}
        ).end()
    spans = memory.get_finished_spans()
    assert otlp_json(spans) == _reference(spans)
    assert len(spanfile._seen_strings) <= 3
    provider.shutdown()
