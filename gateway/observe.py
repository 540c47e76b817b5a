"""The edge observed: per request an HTTP SERVER span, the ``http_server_*`` metrics and one
access line; per backend call the ``grpc_client_*`` metrics (and, when asked, a CLIENT span).

The span follows the OpenTelemetry HTTP semantic conventions: named ``{METHOD} {route
template}`` (``GET /v1/{name=orders/*}``; ``{METHOD}`` alone when no route matched, ``HTTP``
for a method outside the standard set), with the path but never the query string (it may
carry a token). A W3C ``traceparent`` from the client parents it; the edge's own context
(``traceparent`` plus the client's ``tracestate``) replaces the client's in the backend's
metadata, so the services' spans join the same trace. Baggage from the client is not taken:
the Internet does not get to set it.

A public endpoint (``public_endpoint``, otelhttp's ``WithPublicEndpoint``) does not let the
Internet pick the trace either: a client's ``traceparent`` would decide sampling (with a
parent-based sampler, ``sampled=1`` forces a recorded trace and ``sampled=0`` hides one) and
could join the request to anyone's trace. There each request starts a new trace, sampled by
the edge's own sampler, with a span link to the client's context so its trace can still be
found; only a trusted proxy's (``trusted_peer``, the proxies whose ``X-Forwarded-For`` is
believed) is continued. The backend gets the edge's context, never the client's.

Metrics carry the route template, never the raw path, so a client sending a million paths
adds no series; a method outside the standard set is ``_OTHER`` and an unrouted request has
``http_route=""``. Series children are looked up once per (method, route, status) and kept.

The access line (logger ``poly.access``, written while the span is current, so the kit's
log setup adds ``trace_id`` and ``span_id``) has method, route template, status, body bytes,
duration, request id and the client's address: no query string, no header value. The probes
(``/healthz``, ``/readyz``) are only counted: no span, no line.

`Observer()` alone writes access lines; `Observer.of(telemetry)` adds the spans and metrics
that `services.kit.telemetry.setup` configured.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping, MutableSequence, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.textmap import Setter
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CollectorRegistry, Gauge, Histogram

from gateway import headers
from gateway.wire import HTTP_2, HTTP_10, HTTP_11, Request, Response, Stream
from services.kit.telemetry import Telemetry
from services.kit.telemetry.metrics import LATENCY_BUCKETS, RpcMetrics
from services.kit.telemetry.rpc import SERVER_ERROR_CODES

__all__ = [
    "CLIENT_CLOSED",
    "OTHER_METHOD",
    "BackendCall",
    "ClientAddress",
    "Exchange",
    "Handler",
    "HttpMetrics",
    "Observer",
    "TrustedPeer",
    "http_method",
    "http_metrics",
    "trusted_peer",
]

OTHER_METHOD = "_OTHER"
_MAX_TRACEPARENT = 128
_MAX_TRACESTATE = 512
_MAX_PATH = 256
"""Client text kept on a span: enough to read, too little to flood the span files."""
"""The method label of anything outside the standard HTTP methods (semantic conventions)."""

CLIENT_CLOSED = 499
"""The status logged and counted for a request whose client left before any answer (nginx's)."""

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
_PROBES = frozenset({"/healthz", "/readyz"})
_PROBE_METHODS = frozenset({"GET", "HEAD"})
_VERSIONS = {HTTP_11: "1.1", HTTP_10: "1.0", HTTP_2: "2"}
# Client-chosen text kept on a span is capped: it is stored and exported for every request.
_MAX_ATTRIBUTE = 256
_ACCESS_MESSAGE = "http request"

Metadata = MutableSequence[tuple[str, str | bytes]]
Handler = Callable[[Request], Awaitable[Response | Stream]]
"""An edge's request handler, as its HTTP server (`gateway.httpserver.Server`) calls it."""
ClientAddress = Callable[[Request], str]
"""The client behind a request, as the rate limiter sees it (`gateway.headers.client_address`)."""
TrustedPeer = Callable[[str], bool]
"""Whether the TCP peer at an address is a trusted proxy, whose trace context is believed."""
_NEW_TRACE = otel_context.Context()
"""An empty context: a span started in it is a new trace's root."""
_PEERS_REMEMBERED = 1024


def trusted_peer(proxies: Sequence[str]) -> TrustedPeer | None:
    """Whether a peer is in one of `proxies` (addresses or CIDRs, as
    `gateway.config.Limits.trusted_proxies`; the same test as `gateway.headers.client_address`);
    None when there are none, so nobody is. Answers are remembered per address: a proxy's
    requests cost a dictionary look-up."""
    if not proxies:
        return None
    networks = tuple(ipaddress.ip_network(proxy, strict=False) for proxy in proxies)

    @functools.lru_cache(maxsize=_PEERS_REMEMBERED)
    def trusted(peer: str) -> bool:
        return headers.is_trusted_peer(peer, networks)

    return trusted


def http_method(method: str) -> str:
    """`method` when it is a standard HTTP method, else ``_OTHER`` (a bounded label)."""
    return method if method in _METHODS else OTHER_METHOD


class HttpMetrics:
    """``http_server_request_duration_seconds{http_request_method, http_route,
    http_response_status_code}`` and ``http_server_active_requests`` on `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._duration = Histogram(
            "http_server_request_duration_seconds",
            "Time from a request's arrival at the edge to its answer (a stream's end).",
            ("http_request_method", "http_route", "http_response_status_code"),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.active = Gauge(
            "http_server_active_requests", "Requests the edge is handling now.", registry=registry
        )
        self._series: dict[tuple[str, str, int], Histogram] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """One request: `method` a `http_method` label, `route` a template or ""."""
        key = (method, route, status)
        child = self._series.get(key)
        if child is None:  # the edge runs on one event loop: no lock needed
            child = self._series[key] = self._duration.labels(method, route, str(status))
        child.observe(seconds)


_SHARED: weakref.WeakKeyDictionary[CollectorRegistry, HttpMetrics] = weakref.WeakKeyDictionary()


def http_metrics(registry: CollectorRegistry) -> HttpMetrics:
    """The `HttpMetrics` of `registry`, registered on first use (a registry refuses a name twice)."""
    found = _SHARED.get(registry)
    if found is None:
        found = _SHARED[registry] = HttpMetrics(registry)
    return found


class Exchange:
    """One request as the observer follows it; the handler fills in what it learns."""

    __slots__ = ("attributes", "body_bytes", "client", "method", "request_id", "response", "route", "span")

    def __init__(self, method: str, request_id: str, client: str) -> None:
        self.method = method
        """The `http_method` label."""
        self.request_id = request_id
        self.client = client
        """The client's address (the rate limiter's), the access line's ``peer``."""
        self.route = ""
        """The matched route's template; "" until (unless) one matched."""
        self.span: trace.Span | None = None
        self.attributes: dict[str, Any] | None = None
        """A sampled span's attributes, gathered as the request goes and set on the span in
        one call as it ends (each call takes the span's lock and validates every value)."""
        self.response: Stream | None = None
        """A streamed answer, once its headers are sent (its status is then the one logged)."""
        self.body_bytes = 0
        """Body bytes of a streamed answer written so far."""

    def routed(self, template: str) -> None:
        """The request matched the route with `template`: the span is named after it."""
        self.route = template
        span = self.span
        if span is not None:
            span.update_name(f"{'HTTP' if self.method == OTHER_METHOD else self.method} {template}")
        if self.attributes is not None:
            self.attributes["http.route"] = template


class BackendCall:
    """One gRPC call to a backend, ended exactly once with its status code."""

    __slots__ = ("_attributes", "_ended", "_ends_span", "_key", "_metrics", "_series", "_span", "_started")

    def __init__(
        self,
        metrics: RpcMetrics | None,
        key: tuple[str, str, str],
        span: trace.Span | None,
        *,
        ends_span: bool = True,
        attributes: dict[str, Any] | None = None,
    ) -> None:
        """`span` is the call's own CLIENT span (`ends_span`), or the request's span, which
        only learns the call's status code here, into its pending `attributes`."""
        self._metrics, self._key, self._span, self._ends_span = metrics, key, span, ends_span
        self._attributes = attributes
        self._series: Any = None
        if metrics is not None:
            self._series = metrics.method(*key)
            metrics.started(self._series)
        self._started = time.perf_counter()
        self._ended = False

    def end(self, code: grpc.StatusCode) -> None:
        if self._ended:
            return
        self._ended = True
        if self._metrics is not None:
            self._metrics.handled(self._series, self._key, code, time.perf_counter() - self._started)
        span = self._span
        if span is None:
            return
        if not self._ends_span:
            # The request's span: its HTTP status decides whether it failed, except for a stream
            # that broke after its 200 was sent, which only the backend's code can tell.
            attributes = self._attributes
            if attributes is not None:
                attributes["rpc.grpc.status_code"] = code.value[0]
                if code in SERVER_ERROR_CODES:
                    attributes["error.type"] = code.name
            if code in SERVER_ERROR_CODES:
                span.set_status(Status(StatusCode.ERROR, code.name))
            return
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code is not grpc.StatusCode.OK:
            # Client spans: every code but OK is an error (RPC semantic conventions).
            span.set_attribute("error.type", code.name)
            span.set_status(Status(StatusCode.ERROR, code.name))
        span.end()

    def fail(self, error: BaseException) -> None:
        """End with the status `error` stands for: its own, CANCELLED, or UNKNOWN."""
        if isinstance(error, grpc.aio.AioRpcError):
            self.end(error.code())
        elif isinstance(error, asyncio.CancelledError | ConnectionResetError):
            self.end(grpc.StatusCode.CANCELLED)
        else:
            self.end(grpc.StatusCode.UNKNOWN)


@dataclass(frozen=True, slots=True)
class _CallShape:
    """What a backend call's span says, worked out once per (service, method, target)."""

    name: str
    client_attributes: Mapping[str, Any]
    """A CLIENT span's: rpc.* and server.address/port."""
    rpc_attributes: Mapping[str, Any]
    """Added to the request's SERVER span when it stands for the call: rpc.* only (its
    server.* attributes describe the edge itself)."""


class _Append(Setter[Metadata]):
    def set(self, carrier: Metadata, key: str, value: str) -> None:
        carrier.append((key, value))


_APPEND = _Append()


def _host_and_port(host: str) -> tuple[str, int | None]:
    """``example.com:8080`` -> (``example.com``, 8080); ``[::1]`` -> (``::1``, None)."""
    if host.startswith("["):
        address, _, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        address, colon, port = host.rpartition(":")
        if not colon:
            address, port = host, ""
    return address[:_MAX_ATTRIBUTE], int(port) if port.isdigit() and len(port) <= 5 else None


class Observer:
    """What the edge records. Each part is optional: `tracer` (spans), `metrics` (the HTTP
    side), `client_metrics` (``grpc_client_*``), `access_log` (``poly.access`` by default;
    its level decides whether lines are written).

    By default a request is one span: the HTTP SERVER span also describes the backend call
    (``rpc.*`` attributes, ``rpc.grpc.status_code``) and is the parent the backend sees, as
    Envoy's transcoder does; the edge makes exactly one call per request, so a CLIENT span
    under it would add a third of the spans of a call through the edge and no information
    but the network time, which the gap to the backend's span shows. `client_spans` makes
    that CLIENT span anyway (grpc-gateway with otelhttp and otelgrpc does).

    `public_endpoint` starts a new trace per request, linked to (not continuing) the client's
    ``traceparent``, unless `trusted_peer` says the TCP peer is a trusted proxy; without
    tracing, it keeps an untrusted client's trace context from the backend."""

    def __init__(
        self,
        *,
        tracer: trace.Tracer | None = None,
        metrics: HttpMetrics | None = None,
        client_metrics: RpcMetrics | None = None,
        access_log: logging.Logger | None = None,
        client_spans: bool = False,
        public_endpoint: bool = False,
        trusted_peer: TrustedPeer | None = None,
    ) -> None:
        self._tracer = tracer
        self._client_spans = client_spans
        self._public_endpoint = public_endpoint
        self._trusted_peer = trusted_peer
        self._metrics = metrics
        self._client_metrics = client_metrics
        self._log = access_log or logging.getLogger("poly.access")
        self._propagator = TraceContextTextMapPropagator()
        self._calls: dict[tuple[str, str, str], _CallShape] = {}

    @classmethod
    def of(
        cls,
        telemetry: Telemetry | None,
        *,
        client_spans: bool = False,
        public_endpoint: bool = False,
        trusted_peer: TrustedPeer | None = None,
    ) -> Observer:
        """Spans and metrics as `telemetry` (the process's, from `kit.telemetry.setup`) has
        them; access lines only without it. The keywords are the constructor's."""
        if telemetry is None:
            return cls(public_endpoint=public_endpoint, trusted_peer=trusted_peer)
        recorded = telemetry.recorded_metrics  # None with the metrics port at 0: no per-request work
        return cls(
            tracer=telemetry.tracer("poly.gateway"),
            metrics=http_metrics(recorded.registry) if recorded is not None else None,
            client_metrics=recorded.client if recorded is not None else None,
            client_spans=client_spans,
            public_endpoint=public_endpoint,
            trusted_peer=trusted_peer,
        )

    @property
    def tracing(self) -> bool:
        """Whether the edge makes spans (and so sends its own trace context to backends)."""
        return self._tracer is not None

    def passes_trace_context(self, request: Request) -> bool:
        """Whether the client's ``traceparent``/``tracestate`` go on to the backend as sent:
        only from an edge that makes no spans (one that does sends its own context) and that
        believes `request`'s client (a public endpoint believes only its trusted proxies)."""
        return self._tracer is None and self._believes(request)

    def _believes(self, request: Request) -> bool:
        """Whether `request`'s trace context may be continued."""
        if not self._public_endpoint:
            return True
        trusted = self._trusted_peer
        return trusted is not None and trusted(request.remote or "")

    # -- HTTP side -------------------------------------------------------------------------

    def observing(self, handler: Handler, client_address: ClientAddress) -> Handler:
        """`handler` observed (wrap it outermost): request id, span, metrics, access line.
        The request's `Exchange` is ``request.exchange``; the answer gets ``X-Request-Id``
        unless the handler sent its headers already (a stream sets it itself)."""

        async def observe(request: Request) -> Response | Stream:
            started = time.perf_counter()
            raw_path = request.raw_path
            if raw_path in _PROBES and request.method in _PROBE_METHODS:
                return await self._probe(request, handler, raw_path, started)
            exchange = Exchange(
                http_method(request.method),
                headers.choose_request_id(request.headers.get("X-Request-Id")),
                client_address(request),
            )
            request.exchange = exchange
            metrics = self._metrics
            if metrics is not None:
                metrics.active.inc()
            token = None
            if self._tracer is not None:
                span = exchange.span = self._server_span(self._tracer, request, exchange, raw_path)
                token = otel_context.attach(trace.set_span_in_context(span))
            status, body_bytes = 500, 0
            try:
                response = await handler(request)
                status = response.status
                if response.prepared:
                    body_bytes = exchange.body_bytes
                else:
                    response.headers["X-Request-Id"] = exchange.request_id
                    body_bytes = response.content_length or exchange.body_bytes
                return response
            except asyncio.CancelledError:
                stream = exchange.response  # a stream ends this way when its client leaves
                status = stream.status if stream is not None else CLIENT_CLOSED
                body_bytes = exchange.body_bytes
                raise
            finally:
                try:
                    self._finish(request, exchange, status, body_bytes, time.perf_counter() - started)
                finally:
                    if token is not None:
                        otel_context.detach(token)
                    if metrics is not None:
                        metrics.active.dec()

        return observe

    async def _probe(
        self, request: Request, handler: Handler, path: str, started: float
    ) -> Response | Stream:
        response = await handler(request)
        if self._metrics is not None:
            self._metrics.observe(
                http_method(request.method), path, response.status, time.perf_counter() - started
            )
        return response

    def _server_span(
        self, tracer: trace.Tracer, request: Request, exchange: Exchange, raw_path: str
    ) -> trace.Span:
        found = request.headers
        parent = None
        links: tuple[trace.Link, ...] = ()
        if "traceparent" in found:
            # A client's tracestate rides on every span and internal call of the trace: cap it.
            carrier = {"traceparent": found["traceparent"][:_MAX_TRACEPARENT]}
            state = found.get("tracestate", "")
            if state and len(state) <= _MAX_TRACESTATE:
                carrier["tracestate"] = state
            parent = self._propagator.extract(carrier)
            if not self._believes(request):
                # A new trace that the edge's sampler decides, pointing at the client's.
                client = trace.get_current_span(parent).get_span_context()
                links = (trace.Link(client),) if client.is_valid else ()
                parent = _NEW_TRACE
        name = "HTTP" if exchange.method == OTHER_METHOD else exchange.method
        span = tracer.start_span(name, context=parent, kind=SpanKind.SERVER, links=links)
        if span.is_recording():  # unsampled requests skip the attributes' cost
            exchange.attributes = self._server_attributes(request, exchange, raw_path)
        return span

    @staticmethod
    def _server_attributes(request: Request, exchange: Exchange, raw_path: str) -> dict[str, Any]:
        found = request.headers
        version = request.version
        attributes: dict[str, Any] = {
            "http.request.method": exchange.method,
            "url.path": raw_path.partition("?")[0][:_MAX_PATH],
            "url.scheme": request.scheme,
            "client.address": exchange.client,
            "network.peer.address": request.remote or "",
            "network.protocol.version": _VERSIONS.get(version) or f"{version[0]}.{version[1]}",
            "poly.request_id": exchange.request_id,
        }
        if exchange.method == OTHER_METHOD:
            attributes["http.request.method_original"] = request.method[:_MAX_ATTRIBUTE]
        host = found.get("Host")
        if host:
            address, port = _host_and_port(host)
            attributes["server.address"] = address
            if port is not None:
                attributes["server.port"] = port
        agent = found.get("User-Agent")
        if agent:
            attributes["user_agent.original"] = agent[:_MAX_ATTRIBUTE]
        return attributes

    def _finish(
        self, request: Request, exchange: Exchange, status: int, body_bytes: int, seconds: float
    ) -> None:
        if self._metrics is not None:
            self._metrics.observe(exchange.method, exchange.route, status, seconds)
        span = exchange.span
        if span is not None:
            failed = status >= 500  # 4xx are the client's doing (HTTP semantic conventions)
            attributes = exchange.attributes
            if attributes is not None:
                if status != CLIENT_CLOSED:  # nothing was sent: no status to report
                    attributes["http.response.status_code"] = status
                if failed:
                    attributes["error.type"] = str(status)
                span.set_attributes(attributes)
            if failed:
                span.set_status(Status(StatusCode.ERROR))
            span.end()
        log = self._log
        if log.isEnabledFor(logging.INFO):
            log.info(
                _ACCESS_MESSAGE,
                extra={
                    "method": request.method[:32],
                    "route": exchange.route,
                    "status": status,
                    "bytes": body_bytes,
                    "duration_ms": round(seconds * 1000, 3),
                    "request_id": exchange.request_id,
                    "peer": exchange.client,
                },
            )

    def refused(self, status: int) -> None:
        """Count a request the HTTP parser refused before any handler saw it (a malformed
        request line or header): no method, no route."""
        if self._metrics is not None:
            self._metrics.observe(OTHER_METHOD, "", status, 0.0)

    # -- gRPC side -------------------------------------------------------------------------

    def call(
        self,
        exchange: Exchange,
        service: str,
        method: str,
        *,
        streaming: bool,
        target: str,
        metadata: Metadata,
    ) -> BackendCall:
        """Start observing a call of ``/service/method`` at `target` (``host:port``), made on
        behalf of `exchange`'s request; with tracing, its trace context goes into `metadata`."""
        span = None
        attributes = None
        tracer = self._tracer
        if tracer is not None:
            shape = self._call_shape(service, method, target)
            if self._client_spans:
                span = tracer.start_span(shape.name, kind=SpanKind.CLIENT)
                if span.is_recording():
                    span.set_attributes(shape.client_attributes)
                self._propagator.inject(metadata, trace.set_span_in_context(span), _APPEND)
            else:  # the request's span stands for the call and is the backend's parent
                span = exchange.span
                attributes = exchange.attributes
                if attributes is not None:
                    attributes.update(shape.rpc_attributes)
                self._propagator.inject(metadata, None, _APPEND)
        key = ("server_stream" if streaming else "unary", service, method)
        return BackendCall(
            self._client_metrics, key, span, ends_span=self._client_spans, attributes=attributes
        )

    def _call_shape(self, service: str, method: str, target: str) -> _CallShape:
        key = (service, method, target)
        shape = self._calls.get(key)
        if shape is None:
            rpc: dict[str, Any] = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}
            address, port = _host_and_port(target)
            client: dict[str, Any] = {**rpc, "server.address": address}
            if port is not None:
                client["server.port"] = port
            shape = self._calls[key] = _CallShape(f"{service}/{method}", client, rpc)
        return shape
