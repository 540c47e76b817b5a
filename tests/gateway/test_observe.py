"""gateway.observe: the edge's spans, metrics and access lines, in process, in front of a real
gRPC backend.

The backend (``acme.things.v1.ThingService``, built from a descriptor set with generic
handlers) records the metadata of every call, so what the edge sends on is checked where it
arrives. Spans go to an in-memory exporter of a tracer provider of the test's own (not the
process's global one), metrics to a registry of the test's own, access lines through the
kit's JSON formatter with its trace fields, as `services.kit.telemetry.setup` installs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message
from multidict import CIMultiDict
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry
from yarl import URL

from gateway.app import Edge
from gateway.backends import Backends
from gateway.catalog import load_routing
from gateway.config import EdgeConfig, Limits, Target, Transport
from gateway.observe import CLIENT_CLOSED, HttpMetrics, Observer, http_method, http_metrics
from services.kit.logs import JsonFormatter
from services.kit.telemetry import Telemetry, trace_fields
from services.kit.telemetry.metrics import Metrics, RpcMetrics
from services.kit.telemetry.tracing import Tracing
from services.kit.telemetry_settings import TelemetrySettings
from tests.support.edge_server import EdgeTestServer
from tests.support.protos import compile_proto

SERVICE = "acme.things.v1.ThingService"
PROTO = """
syntax = "proto3";
package acme.things.v1;
import "google/api/annotations.proto";

service ThingService {
  rpc GetThing(GetThingRequest) returns (Thing) {
    option (google.api.http) = { get: "/v1/{name=things/*}" };
  }
  rpc CreateThing(CreateThingRequest) returns (Thing) {
    option (google.api.http) = { post: "/v1/things" body: "thing" };
  }
  rpc BreakThing(GetThingRequest) returns (Thing) {
    option (google.api.http) = { post: "/v1/{name=things/*}:break" body: "*" };
  }
  rpc WatchThing(GetThingRequest) returns (stream Thing) {
    option (google.api.http) = { get: "/v1/{name=things/*}:watch" };
  }
}
message Thing { string name = 1; int32 version = 2; }
message GetThingRequest { string name = 1; }
message CreateThingRequest { Thing thing = 1; }
"""
GET_ROUTE = "/v1/{name=things/*}"
TRACE_ID, PARENT_ID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
SECRET = "s3cr3t-value"
_T = TypeVar("_T")


@dataclass
class Backend:
    """The backend's port and every call it got: (method, request name, metadata)."""

    port: int
    descriptor_set: Path
    calls: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def metadata_of(self, name: str) -> dict[str, str]:
        with self.lock:
            found = [metadata for _, called, metadata in self.calls if called == name]
        assert len(found) == 1, found
        return found[0]


def _handlers(backend: Backend, pool: descriptor_pool.DescriptorPool) -> dict[str, grpc.RpcMethodHandler]:
    thing = message_factory.GetMessageClass(pool.FindMessageTypeByName("acme.things.v1.Thing"))

    def record(method: str, request: Any, context: grpc.ServicerContext) -> None:
        metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        with backend.lock:
            backend.calls.append((method, request.name or request.thing.name, metadata))

    def unary(method: str) -> Callable[[Any, grpc.ServicerContext], Message]:
        def answer(request: Any, context: grpc.ServicerContext) -> Message:
            record(method, request, context)
            if method == "BreakThing":
                context.abort(grpc.StatusCode.INTERNAL, "broken")
            if request.name == "things/missing":
                context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
            if request.name.startswith("things/slow"):
                gone = threading.Event()
                context.add_callback(gone.set)
                gone.wait(30)  # until the caller gives up
            return thing(name=request.name or request.thing.name)

        return answer

    def watch(request: Any, context: grpc.ServicerContext) -> Iterator[Message]:
        record("WatchThing", request, context)
        for version in range(1, 4):
            yield thing(name=request.name, version=version)
        if request.name.startswith("things/broken"):
            context.abort(grpc.StatusCode.UNAVAILABLE, "the backend went away mid-stream")
        if request.name.startswith("things/endless"):
            gone = threading.Event()
            context.add_callback(gone.set)
            gone.wait(30)  # until the client leaves

    service = pool.FindServiceByName(SERVICE)
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        request_class = message_factory.GetMessageClass(method.input_type)
        if method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                watch, request_deserializer=request_class.FromString, response_serializer=_serialize
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                unary(method.name),
                request_deserializer=request_class.FromString,
                response_serializer=_serialize,
            )
    return handlers


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    with serving_backend(tmp_path_factory.mktemp("observe")) as found:
        yield found


@contextlib.contextmanager
def serving_backend(home: Path) -> Iterator[Backend]:
    """The recording backend on a free port, its descriptor set compiled into `home`."""
    descriptor_set = compile_proto(home, "acme/things/v1/things.proto", PROTO)
    pool = descriptor_pool.DescriptorPool()
    for file in descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes()).file:
        pool.Add(file)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    found = Backend(0, descriptor_set)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, _handlers(found, pool)),))
    found.port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield found
    finally:
        server.stop(grace=None)


class _Lines(logging.Handler):
    """Keeps each record and its line as the kit writes it (JSON, trace fields added when written)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.lines: list[dict[str, Any]] = []
        self._json = JsonFormatter("gateway", context_fields=trace_fields)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.lines.append(json.loads(self._json.format(record)))


@dataclass
class Seen:
    """What one edge recorded."""

    exporter: InMemorySpanExporter
    registry: CollectorRegistry
    access: _Lines
    log: logging.Logger

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def span(self, name: str) -> ReadableSpan:
        found = [s for s in self.spans() if s.name == name]
        assert len(found) == 1, [s.name for s in self.spans()]
        return found[0]

    def server_span(self, request_id: str) -> ReadableSpan:
        found = [
            s
            for s in self.spans()
            if s.kind is SpanKind.SERVER and (s.attributes or {}).get("poly.request_id") == request_id
        ]
        assert len(found) == 1, [s.name for s in self.spans()]
        return found[0]

    def samples(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        return {
            tuple(sorted(sample.labels.items())): sample.value
            for family in self.registry.collect()
            for sample in family.samples
            if sample.name == name
        }


def _observer(*, tracing: bool = True, client_spans: bool = False) -> tuple[Observer, Seen]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    registry = CollectorRegistry()
    lines = _Lines()
    log = logging.getLogger(f"test.access.{uuid.uuid4().hex}")
    log.setLevel(logging.INFO)
    log.propagate = False
    log.addHandler(lines)
    observer = Observer(
        tracer=provider.get_tracer("test") if tracing else None,
        metrics=HttpMetrics(registry),
        client_metrics=RpcMetrics(registry, "client"),
        access_log=log,
        client_spans=client_spans,
    )
    return observer, Seen(exporter, registry, lines, log)


@dataclass
class Answer:
    status: int
    headers: CIMultiDict[str]
    body: bytes


async def _answer(response: ClientResponse) -> Answer:
    return Answer(response.status, CIMultiDict(response.headers), await response.read())


def _run(
    backend: Backend,
    observer: Observer,
    scenario: Callable[[TestClient[Any, Any]], Awaitable[_T]],
    **limits: Any,
) -> _T:
    """`scenario` against a real edge (routes from the backend's descriptor set) in front of `backend`."""

    async def run() -> _T:
        target = Target(f"127.0.0.1:{backend.port}", Transport("plaintext"))
        backends = Backends({SERVICE: target})
        routing = await load_routing(
            EdgeConfig({SERVICE: target}, descriptor_set=backend.descriptor_set), backends
        )
        limits.setdefault("ignored_query_parameters", ("access_token", "x"))
        edge = Edge(routing, backends, Limits(**limits), observer=observer)
        async with TestClient(EdgeTestServer(edge)) as client:
            return await scenario(client)

    return asyncio.run(run())


def _calls(
    *requests: tuple[str, str, dict[str, str], bytes | None],
) -> Callable[[TestClient[Any, Any]], Awaitable[list[Answer]]]:
    """A scenario: each (method, raw path, headers, body) in turn."""

    async def scenario(client: TestClient[Any, Any]) -> list[Answer]:
        answers = []
        for method, path, headers, body in requests:
            url = URL(str(client.make_url("/")).rstrip("/") + path, encoded=True)
            sent = {"Content-Type": "application/json", **headers} if body is not None else headers
            async with client.session.request(method, url, headers=sent, data=body) as response:
                answers.append(await _answer(response))
        return answers

    return scenario


async def _until(probe: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll `probe` on the running loop (the edge serves on it too) until true or `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not probe():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)  # yields to the edge: this is what lets it make progress


def _strings(span: ReadableSpan) -> str:
    return " ".join(str(v) for v in (span.attributes or {}).values()) + " " + span.name


# -- spans -----------------------------------------------------------------------------------


def _traced_get(backend: Backend, observer: Observer) -> tuple[str, Answer]:
    name = f"things/{uuid.uuid4().hex}"
    sent = {
        "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01",
        "tracestate": "vendor=opaque",
        "X-Request-Id": "req-1",
        "User-Agent": "probe/1.0",
        "Authorization": f"Bearer {SECRET}",
    }
    [answer] = _run(backend, observer, _calls(("GET", f"/v1/{name}?access_token={SECRET}&x=1", sent, None)))
    assert answer.status == 200, answer.body
    assert answer.headers["X-Request-Id"] == "req-1"
    assert "traceparent" not in {k.lower() for k in answer.headers}
    return name, answer


def _http_attributes(name: str) -> dict[str, Any]:
    return {
        "http.request.method": "GET",
        "http.route": GET_ROUTE,
        "url.path": f"/v1/{name}",
        "url.scheme": "http",
        "server.address": "127.0.0.1",
        "client.address": "127.0.0.1",
        "network.peer.address": "127.0.0.1",
        "network.protocol.version": "1.1",
        "user_agent.original": "probe/1.0",
        "poly.request_id": "req-1",
        "http.response.status_code": 200,
    }


def test_one_span_per_request_named_after_the_route_is_the_backends_parent(backend: Backend) -> None:
    observer, seen = _observer()
    name, _ = _traced_get(backend, observer)

    [server] = seen.spans()
    assert server.name == f"GET {GET_ROUTE}"
    assert server.kind is SpanKind.SERVER
    assert server.parent is not None and server.parent.is_remote
    assert (server.context.trace_id, server.parent.span_id) == (int(TRACE_ID, 16), int(PARENT_ID, 16))
    attributes = dict(server.attributes or {})
    assert isinstance(attributes.pop("server.port"), int)
    assert attributes == {
        **_http_attributes(name),
        # The backend call it stands for (no server.* of the backend: those name the edge here).
        "rpc.system": "grpc",
        "rpc.service": SERVICE,
        "rpc.method": "GetThing",
        "rpc.grpc.status_code": 0,
    }
    assert server.status.status_code is StatusCode.UNSET
    assert SECRET not in _strings(server)

    # The backend continues the same trace under the edge's span, not the client's span.
    metadata = backend.metadata_of(name)
    assert metadata["traceparent"] == f"00-{TRACE_ID}-{server.context.span_id:016x}-01"
    assert metadata["tracestate"] == "vendor=opaque"
    assert metadata["x-request-id"] == "req-1"


def test_with_client_spans_the_backend_call_is_a_client_span_under_the_request(backend: Backend) -> None:
    observer, seen = _observer(client_spans=True)
    name, _ = _traced_get(backend, observer)

    server = seen.span(f"GET {GET_ROUTE}")
    attributes = dict(server.attributes or {})
    assert isinstance(attributes.pop("server.port"), int)
    assert attributes == _http_attributes(name)
    client = seen.span(f"{SERVICE}/GetThing")
    assert client.kind is SpanKind.CLIENT
    assert client.parent is not None and client.parent.span_id == server.context.span_id
    assert dict(client.attributes or {}) == {
        "rpc.system": "grpc",
        "rpc.service": SERVICE,
        "rpc.method": "GetThing",
        "server.address": "127.0.0.1",
        "server.port": backend.port,
        "rpc.grpc.status_code": 0,
    }
    assert SECRET not in _strings(server) + _strings(client)
    metadata = backend.metadata_of(name)
    assert metadata["traceparent"] == f"00-{TRACE_ID}-{client.context.span_id:016x}-01"
    assert metadata["tracestate"] == "vendor=opaque"


def test_an_unsampled_request_is_propagated_as_unsampled(backend: Backend) -> None:
    observer, seen = _observer()
    name = f"things/{uuid.uuid4().hex}"
    unsampled = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"}
    [answer] = _run(backend, observer, _calls(("GET", f"/v1/{name}", unsampled, None)))
    assert answer.status == 200
    assert seen.spans() == []
    # The backend joins the client's trace and is told not to sample either.
    version, trace_id, _, flags = backend.metadata_of(name)["traceparent"].split("-")
    assert (version, trace_id) == ("00", TRACE_ID)
    assert not int(flags, 16) & 1


@pytest.mark.parametrize("client_spans", [False, True], ids=["one-span", "client-spans"])
def test_without_a_traceparent_the_edge_starts_the_trace(backend: Backend, client_spans: bool) -> None:
    observer, seen = _observer(client_spans=client_spans)
    name = f"things/{uuid.uuid4().hex}"
    [answer] = _run(backend, observer, _calls(("GET", f"/v1/{name}", {}, None)))
    assert answer.status == 200
    server = seen.span(f"GET {GET_ROUTE}")
    parent = seen.span(f"{SERVICE}/GetThing") if client_spans else server
    assert server.parent is None
    version, trace_id, parent_id, flags = backend.metadata_of(name)["traceparent"].split("-")
    assert (version, trace_id, parent_id) == (
        "00",
        f"{server.context.trace_id:032x}",
        f"{parent.context.span_id:016x}",
    )
    assert int(flags, 16) & 1, "sampled (the SDK may also set W3C's random-trace-id flag)"
    assert "tracestate" not in backend.metadata_of(name)


def test_an_invalid_traceparent_is_ignored_not_forwarded(backend: Backend) -> None:
    observer, seen = _observer()
    name = f"things/{uuid.uuid4().hex}"
    bogus = {"traceparent": "00-zzzz-not-a-trace", "tracestate": "a=b"}
    [answer] = _run(backend, observer, _calls(("GET", f"/v1/{name}", bogus, None)))
    assert answer.status == 200
    server = seen.span(f"GET {GET_ROUTE}")
    assert server.parent is None
    assert backend.metadata_of(name)["traceparent"].split("-")[1] == f"{server.context.trace_id:032x}"


@pytest.mark.parametrize(
    ("method", "path", "status", "span_name", "server_error", "backend_code"),
    [
        ("GET", "/v1/things/missing", 404, f"GET {GET_ROUTE}", False, 5),
        ("POST", "/v1/things/x:break", 500, "POST /v1/{name=things/*}:break", True, 13),
        ("GET", "/nowhere/at/all", 404, "GET", False, None),
        ("DELETE", "/v1/things/x", 405, "DELETE", False, None),
        ("PROPFIND", "/v1/things/x", 405, "HTTP", False, None),
    ],
    ids=["backend-not-found", "backend-internal", "no-route", "wrong-method", "non-standard-method"],
)
@pytest.mark.parametrize("client_spans", [False, True], ids=["one-span", "client-spans"])
def test_span_status_follows_the_http_conventions(
    backend: Backend,
    client_spans: bool,
    method: str,
    path: str,
    status: int,
    span_name: str,
    server_error: bool,
    backend_code: int | None,
) -> None:
    observer, seen = _observer(client_spans=client_spans)
    body = b"{}" if method == "POST" else None
    [answer] = _run(backend, observer, _calls((method, path, {}, body)))
    assert answer.status == status, answer.body
    server = seen.span(span_name)
    attributes = server.attributes or {}
    assert attributes["http.response.status_code"] == status
    assert attributes["http.request.method"] == http_method(method)
    if method == "PROPFIND":
        assert attributes["http.request.method_original"] == "PROPFIND"
    assert ("http.route" in attributes) == (backend_code is not None)
    assert (server.status.status_code is StatusCode.ERROR) == server_error
    assert (attributes.get("error.type") == "500") == server_error
    clients = [s for s in seen.spans() if s.kind is SpanKind.CLIENT]
    if not client_spans:
        assert clients == []
        assert attributes.get("rpc.grpc.status_code") == backend_code
    elif backend_code is None:
        assert clients == []
    else:
        [client] = clients
        assert (client.attributes or {})["rpc.grpc.status_code"] == backend_code
        assert client.status.status_code is StatusCode.ERROR  # a client span: every code but OK


def test_a_streams_span_ends_with_the_stream(backend: Backend) -> None:
    observer, seen = _observer(client_spans=True)
    name = f"things/{uuid.uuid4().hex}"
    [answer] = _run(backend, observer, _calls(("GET", f"/v1/{name}:watch", {}, None)))
    assert answer.status == 200
    assert len(answer.body.splitlines()) == 3
    server = seen.span("GET /v1/{name=things/*}:watch")
    client = seen.span(f"{SERVICE}/WatchThing")
    assert (client.attributes or {})["rpc.grpc.status_code"] == 0
    assert server.end_time is not None and client.end_time is not None
    assert server.end_time >= client.end_time, "the server span outlives the whole stream"
    [line] = seen.access.lines
    assert (line["status"], line["bytes"], line["route"]) == (
        200,
        len(answer.body),
        "/v1/{name=things/*}:watch",
    )


def test_a_streams_one_span_learns_the_streams_status(backend: Backend) -> None:
    observer, seen = _observer()
    name = f"things/{uuid.uuid4().hex}"
    [answer] = _run(backend, observer, _calls(("GET", f"/v1/{name}:watch", {}, None)))
    assert answer.status == 200
    [server] = seen.spans()
    assert server.name == "GET /v1/{name=things/*}:watch"
    assert (server.attributes or {})["rpc.grpc.status_code"] == 0
    assert (server.attributes or {})["rpc.method"] == "WatchThing"


def test_a_stream_that_breaks_after_its_200_marks_the_requests_span_an_error(backend: Backend) -> None:
    observer, seen = _observer()
    name = f"things/broken-{uuid.uuid4().hex}"
    [answer] = _run(backend, observer, _calls(("GET", f"/v1/{name}:watch", {}, None)))
    assert answer.status == 200, "the headers went out with the first message"
    [server] = seen.spans()
    attributes = server.attributes or {}
    assert attributes["http.response.status_code"] == 200
    assert attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNAVAILABLE.value[0]
    assert attributes["error.type"] == "UNAVAILABLE"
    assert server.status.status_code is StatusCode.ERROR


@pytest.mark.parametrize("client_spans", [False, True], ids=["one-span", "client-spans"])
def test_a_stream_the_client_leaves_ends_its_spans_and_is_logged(
    backend: Backend, client_spans: bool
) -> None:
    observer, seen = _observer(client_spans=client_spans)
    name = f"things/endless-{uuid.uuid4().hex}"
    spans = 2 if client_spans else 1

    async def leave_after_the_first_line(client: TestClient[Any, Any]) -> None:
        response = await client.get(f"/v1/{name}:watch")
        assert response.status == 200
        assert (await response.content.readline()).startswith(b'{"result":')
        response.close()  # drops the connection mid-stream
        await _until(lambda: len(seen.spans()) == spans, "the stream's spans to end")

    _run(backend, observer, leave_after_the_first_line)
    server = seen.span("GET /v1/{name=things/*}:watch")
    client = seen.span(f"{SERVICE}/WatchThing") if client_spans else server
    assert (server.attributes or {})["http.response.status_code"] == 200, "what was sent"
    assert server.status.status_code is StatusCode.UNSET, "a client leaving is not a server error"
    assert (client.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]
    [line] = seen.access.lines
    assert line["status"] == 200 and line["bytes"] > 0
    assert seen.samples("http_server_active_requests") == {(): 0.0}
    assert seen.samples("grpc_client_handled_total") == {
        (
            ("grpc_code", "Canceled"),
            ("grpc_method", "WatchThing"),
            ("grpc_service", SERVICE),
            ("grpc_type", "server_stream"),
        ): 1.0
    }


@pytest.mark.parametrize("client_spans", [False, True], ids=["one-span", "client-spans"])
def test_a_client_that_leaves_before_the_answer_is_logged_as_499(
    backend: Backend, client_spans: bool
) -> None:
    observer, seen = _observer(client_spans=client_spans)
    name = f"things/slow-{uuid.uuid4().hex}"
    spans = 2 if client_spans else 1

    async def leave_mid_call(client: TestClient[Any, Any]) -> None:
        request = asyncio.ensure_future(client.get(f"/v1/{name}", headers={"X-Request-Id": "gone"}))
        await _until(lambda: any(called == name for _, called, _ in list(backend.calls)), "the backend call")
        request.cancel()  # drops the connection while the edge waits for the backend
        await asyncio.gather(request, return_exceptions=True)
        await _until(lambda: len(seen.spans()) == spans, "the request's spans to end")

    _run(backend, observer, leave_mid_call)
    [line] = seen.access.lines
    assert (line["status"], line["bytes"], line["request_id"]) == (CLIENT_CLOSED, 0, "gone")
    server = seen.span(f"GET {GET_ROUTE}")
    assert "http.response.status_code" not in (server.attributes or {}), "nothing was sent"
    assert server.status.status_code is StatusCode.UNSET
    client = seen.span(f"{SERVICE}/GetThing") if client_spans else server
    assert (client.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]
    assert seen.samples("http_server_active_requests") == {(): 0.0}


# -- request ids -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("abc-123", True),
        ("Req_1.2:3-4", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("has space", False),
        ('quote"d', False),
        ("", False),
        (None, False),
    ],
    ids=["plain", "every-allowed-kind", "128", "129", "space", "quote", "empty", "absent"],
)
def test_the_request_id_is_the_clients_when_valid_else_a_new_one(
    backend: Backend, sent: str | None, kept: bool
) -> None:
    observer, seen = _observer()
    name = f"things/{uuid.uuid4().hex}"
    headers = {} if sent is None else {"X-Request-Id": sent}
    [answer] = _run(backend, observer, _calls(("GET", f"/v1/{name}", headers, None)))
    assert answer.status == 200
    chosen = answer.headers["X-Request-Id"]
    if kept:
        assert chosen == sent
    else:
        assert re.fullmatch(r"[0-9a-f]{32}", chosen), chosen
    assert backend.metadata_of(name)["x-request-id"] == chosen
    assert (seen.server_span(chosen).attributes or {})["poly.request_id"] == chosen
    [line] = seen.access.lines
    assert line["request_id"] == chosen


def test_every_answer_has_a_request_id_even_refusals(backend: Backend) -> None:
    observer, _seen = _observer()
    answers = _run(
        backend,
        observer,
        _calls(
            ("GET", "/nowhere", {"X-Request-Id": "r-404"}, None),
            ("POST", "/v1/things", {"X-Request-Id": "r-400"}, b"{not json"),
            ("GET", "/openapi.json", {"X-Request-Id": "r-doc"}, None),
            ("POST", "/healthz", {"X-Request-Id": "r-probe"}, b"{}"),
        ),
    )
    assert [(a.status, a.headers["X-Request-Id"]) for a in answers] == [
        (404, "r-404"),
        (400, "r-400"),
        (200, "r-doc"),
        (404, "r-probe"),
    ], "a probe's path with another method is an ordinary request (no route)"


# -- access lines ----------------------------------------------------------------------------


def test_one_access_line_per_request_without_query_or_credentials(backend: Backend) -> None:
    observer, seen = _observer()
    bearer = {"Authorization": f"Bearer {SECRET}"}
    requests = [
        ("GET", f"/v1/things/a?access_token={SECRET}", {"X-Request-Id": "r1", **bearer}, None),
        ("GET", f"/nowhere/{SECRET}?access_token={SECRET}", {"X-Request-Id": "r2"}, None),
        ("POST", "/v1/things", {"X-Request-Id": "r3", **bearer}, b'{"name": "' + b"x" * 2000 + b'"}'),
        ("POST", f"/v1/things?token={SECRET}", {"X-Request-Id": "r4"}, b"{not json"),
        ("GET", "/v1/things/missing", {"X-Request-Id": "r5"}, None),
        ("GET", "/v1/things/b", {"X-Request-Id": "r6"}, None),
        ("GET", "/healthz", {"X-Request-Id": "probe"}, None),
    ]
    answers = _run(
        backend, observer, _calls(*requests), max_body_bytes=1024, rate_per_second=0.001, rate_burst=4
    )
    assert [a.status for a in answers] == [200, 404, 413, 400, 404, 429, 200]
    lines, records = seen.access.lines, seen.access.records
    assert len(lines) == 6, "one per request, none for the probe"
    assert [line["route"] for line in lines] == [
        GET_ROUTE,
        "",
        "/v1/things",
        "/v1/things",
        GET_ROUTE,
        GET_ROUTE,
    ]
    for line, answer, (method, _, headers, _) in zip(lines, answers, requests, strict=False):
        assert line["message"] == "http request" and line["logger"].startswith("test.access.")
        assert line["method"] == method
        assert line["status"] == answer.status
        assert line["bytes"] == len(answer.body)
        assert line["request_id"] == headers["X-Request-Id"] == answer.headers["X-Request-Id"]
        assert line["peer"] == "127.0.0.1"
        assert line["duration_ms"] > 0
        span = seen.server_span(line["request_id"])
        assert line["trace_id"] == f"{span.context.trace_id:032x}", "written while the span is current"
        assert line["span_id"] == f"{span.context.span_id:016x}"
    # Nothing the client sent beyond the id reaches a line, not even before redaction.
    for record in records:
        raw = repr(vars(record))
        assert SECRET not in raw and "?" not in raw and "nowhere" not in raw, raw


def test_access_lines_follow_the_loggers_level(backend: Backend) -> None:
    observer, seen = _observer()
    seen.log.setLevel(logging.WARNING)
    [answer] = _run(backend, observer, _calls(("GET", "/v1/things/quiet", {}, None)))
    assert answer.status == 200
    assert seen.access.lines == []
    assert len(seen.spans()) == 1, "spans and metrics do not depend on the access log"


# -- metrics ---------------------------------------------------------------------------------


def test_metrics_are_labelled_by_route_template_never_by_path(backend: Backend) -> None:
    observer, seen = _observer()
    requests: list[tuple[str, str, dict[str, str], bytes | None]]
    requests = [("GET", f"/v1/things/n{i}", {}, None) for i in range(100)]
    requests += [("GET", f"/junk/{i}/{uuid.uuid4().hex}", {}, None) for i in range(100)]
    requests += [("PROPFIND", f"/v1/things/p{i}", {}, None) for i in range(3)]
    requests += [("GET", "/healthz", {}, None), ("GET", "/openapi.json", {}, None)]
    answers = _run(backend, observer, _calls(*requests))
    assert [a.status for a in answers].count(200) == 102
    counts = seen.samples("http_server_request_duration_seconds_count")
    assert counts == {
        (
            ("http_request_method", "GET"),
            ("http_response_status_code", "200"),
            ("http_route", GET_ROUTE),
        ): 100,
        (("http_request_method", "GET"), ("http_response_status_code", "404"), ("http_route", "")): 100,
        (("http_request_method", "_OTHER"), ("http_response_status_code", "405"), ("http_route", "")): 3,
        (("http_request_method", "GET"), ("http_response_status_code", "200"), ("http_route", "/healthz")): 1,
        (
            ("http_request_method", "GET"),
            ("http_response_status_code", "200"),
            ("http_route", "/openapi.json"),
        ): 1,
    }
    assert seen.samples("http_server_active_requests") == {(): 0.0}
    key = (("grpc_method", "GetThing"), ("grpc_service", SERVICE), ("grpc_type", "unary"))
    assert seen.samples("grpc_client_started_total") == {key: 100}
    assert seen.samples("grpc_client_handled_total") == {(("grpc_code", "OK"), *key): 100}
    assert sum(seen.samples("grpc_client_handling_seconds_count").values()) == 100


def test_the_parser_refusals_are_counted(backend: Backend) -> None:
    observer, seen = _observer()
    observer.refused(400)
    assert seen.samples("http_server_request_duration_seconds_count") == {
        (("http_request_method", "_OTHER"), ("http_response_status_code", "400"), ("http_route", "")): 1
    }


# -- without tracing -------------------------------------------------------------------------


def test_an_edge_that_does_not_trace_forwards_the_clients_trace_context(backend: Backend) -> None:
    observer, seen = _observer(tracing=False)
    assert not observer.tracing
    name = f"things/{uuid.uuid4().hex}"
    sent = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "tracestate": "vendor=opaque"}
    [answer] = _run(backend, observer, _calls(("GET", f"/v1/{name}", sent, None)))
    assert answer.status == 200
    metadata = backend.metadata_of(name)
    assert (metadata["traceparent"], metadata["tracestate"]) == (sent["traceparent"], sent["tracestate"])
    assert seen.spans() == []
    [line] = seen.access.lines
    assert "trace_id" not in line, "no span of the edge's own"
    assert seen.samples("grpc_client_handled_total")


def test_observer_of_no_telemetry_writes_access_lines_only() -> None:
    observer = Observer.of(None)
    assert not observer.tracing


def test_observer_of_the_kits_telemetry_records_on_its_registry_and_can_be_made_twice() -> None:
    metrics = Metrics(version="test")
    settings = TelemetrySettings(traces_exporter="none", metrics_port=9999)
    telemetry = Telemetry(settings, metrics, Tracing(None), None)
    first, second = Observer.of(telemetry), Observer.of(telemetry)
    assert not first.tracing and not second.tracing, "the kit's tracing is off"
    assert http_metrics(metrics.registry) is http_metrics(metrics.registry)
    first.refused(400)
    second.refused(400)
    found = [
        sample.value
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name == "http_server_request_duration_seconds_count"
    ]
    assert found == [2.0]


def test_observer_of_the_kits_telemetry_records_no_metrics_without_a_metrics_port() -> None:
    metrics = Metrics(version="test")
    telemetry = Telemetry(TelemetrySettings(traces_exporter="none"), metrics, Tracing(None), None)
    Observer.of(telemetry).refused(400)
    found = [
        sample
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name.startswith("http_server_")
    ]
    assert found == [], "nothing serves them: no per-request metric work"


def test_the_access_line_counts_the_bytes_that_went_out_gzipped_or_not(backend: Backend) -> None:
    observer, seen = _observer()

    async def scenario(client: TestClient[Any, Any]) -> list[int]:
        lengths = []
        for encoding in ("gzip", "identity"):
            headers = {"Accept-Encoding": encoding}
            async with client.session.get(client.make_url("/openapi.json"), headers=headers) as response:
                await response.read()
                lengths.append(int(response.headers["Content-Length"]))
        return lengths

    zipped, plain = _run(backend, observer, scenario)
    assert zipped * 2 < plain
    assert [line["bytes"] for line in seen.access.lines] == [zipped, plain]
