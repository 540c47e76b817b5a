"""Served and outgoing calls, observed: server spans and metrics in one middleware, client
spans and metrics in one interceptor.

The server side is the kit's own middleware, built on the OpenTelemetry RPC semantic
conventions, rather than the instrumentation's server interceptor: that interceptor sits
outside the kit's chain and learns the status only through ``context.abort``/``set_code``,
so every error the kit sends with ``abort_with_status`` (all of them: they carry
``google.rpc`` details) would be recorded as OK, and it would also trace health checks.
Here the status is the one the access log reports (`kit.calls.final_code`), the span is
current while the handler runs (so log lines and outgoing calls join it), and the parent
comes from the caller's ``traceparent`` metadata.

The bus's pushes (`TRACED_BY_THE_BUS`) get neither span: the relay's send span (PRODUCER) and
the consumer's process span (CONSUMER, its child through the envelope's trace context) already
stand for the two sides of the call, and a CLIENT and a SERVER span between them would be two
more spans in every delivery for a reader to skip. Their metrics are recorded as for any call.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from poly.events.v1 import event_sink_pb2
from services.kit.calls import final_code, observe_stream, with_metadata
from services.kit.logs import redact
from services.kit.request_id import valid_or_none
from services.kit.telemetry.metrics import Metrics, grpc_type
from services.kit.types import CallInfo, Handler, Middleware

__all__ = ["SERVER_ERROR_CODES", "TRACED_BY_THE_BUS", "instrument_channel", "server_middleware"]

SERVER_ERROR_CODES = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
"""Codes that make a server span an error (RPC semconv); the others are the caller's doing."""

_SINK = event_sink_pb2.DESCRIPTOR.services_by_name["EventSinkService"]
TRACED_BY_THE_BUS = frozenset({f"/{_SINK.full_name}/{_SINK.methods_by_name['PushEvent'].name}"})
"""Methods whose calls the bus's own spans stand for (an event's push): no RPC span."""

_PROPAGATED = ("traceparent", "tracestate")
_W3C = TraceContextTextMapPropagator()
"""W3C trace context only: baggage is never taken from a caller (nothing here reads it)."""
_MAX_TRACESTATE = 512
_MAX_MESSAGE = 200
_HEX = frozenset("0123456789abcdef")


def _parent(carrier: dict[str, str]) -> otel_context.Context:
    """The caller's trace context. The form every kit channel and the edge send (version 00,
    no tracestate) is read here directly, at a third of the propagator's cost (no regular
    expression); anything else goes to the propagator, which applies the whole W3C rule."""
    value = carrier.get("traceparent", "")
    if len(carrier) == 1 and len(value) == 55 and value.startswith("00-") and value[35] == value[52] == "-":
        trace_id, span_id, flags = value[3:35], value[36:52], value[53:]
        if _HEX.issuperset(trace_id) and _HEX.issuperset(span_id) and _HEX.issuperset(flags):
            trace_number, span_number = int(trace_id, 16), int(span_id, 16)
            if trace_number and span_number:
                remote = SpanContext(
                    trace_number, span_number, is_remote=True, trace_flags=TraceFlags(int(flags, 16))
                )
                return trace.set_span_in_context(NonRecordingSpan(remote), otel_context.Context())
    return _W3C.extract(carrier)


def _carrier(context: grpc.ServicerContext) -> tuple[dict[str, str], str]:
    carrier: dict[str, str] = {}
    request_id: str | None = None
    seen_request_id = False
    for item in context.invocation_metadata() or ():
        if item.key in _PROPAGATED and isinstance(item.value, str) and len(item.value) <= _MAX_TRACESTATE:
            carrier[item.key] = item.value
        elif item.key == "x-request-id" and not seen_request_id:
            # The first decides and must follow the kit's rule, as for the access line's.
            seen_request_id = True
            request_id = valid_or_none(item.value)
    return carrier, request_id or ""


def _peer(context: grpc.ServicerContext) -> dict[str, Any]:
    # "ipv4:127.0.0.1:5123" / "ipv6:[::1]:5123"
    kind, _, rest = context.peer().partition(":")
    if kind not in ("ipv4", "ipv6"):
        return {}
    host, _, port = rest.rpartition(":")
    return {"network.peer.address": host.strip("[]"), "network.peer.port": int(port) if port.isdigit() else 0}


def _resource_name(message: Any) -> str:
    name = getattr(message, "name", None)
    return name if isinstance(name, str) else ""


class _Observed:
    """One served call: its start, its span (None when tracing is off) with the attributes it
    will get (None unless sampled), and how it ends."""

    __slots__ = ("attributes", "call", "context", "metrics", "series", "span", "started")

    def __init__(
        self,
        call: CallInfo,
        context: grpc.ServicerContext,
        metrics: Metrics | None,
        span: trace.Span | None,
        attributes: dict[str, Any] | None,
    ) -> None:
        self.call, self.context, self.metrics, self.span = call, context, metrics, span
        self.attributes = attributes
        self.started = time.perf_counter()
        self.series: tuple[Any, tuple[str, str, str]] | None = None
        if metrics is not None:
            key = (grpc_type(call.request_streaming, call.response_streaming), call.service, call.name)
            self.series = (metrics.server.method(*key), key)
            metrics.server.started(self.series[0])
            metrics.in_flight.inc()

    def finish(self, failed: bool, response: Any = None) -> None:
        code = final_code(self.context, failed)
        if self.metrics is not None and self.series is not None:
            self.metrics.server.handled(*self.series, code, time.perf_counter() - self.started)
            self.metrics.in_flight.dec()
        span, attributes = self.span, self.attributes
        if span is None or attributes is None:
            return
        attributes["rpc.grpc.status_code"] = code.value[0]
        if code is not grpc.StatusCode.OK:
            attributes["error.type"] = code.name
            details = self.context.details() if hasattr(self.context, "details") else ""
            if isinstance(details, bytes):
                details = details.decode("utf-8", "replace")
            details = redact(details or "")[:_MAX_MESSAGE]
            if details:
                attributes["poly.status_message"] = details
            if code in SERVER_ERROR_CODES:
                span.set_status(Status(StatusCode.ERROR, details or code.name))
        if name := _resource_name(response):
            attributes["poly.resource.name"] = name
        span.set_attributes(attributes)  # once: each call takes the span's lock and validates
        span.end()

    def stream(self, result: Iterator[Any]) -> Iterator[Any]:
        # The handler's body runs as the stream is consumed: keep its span current meanwhile.
        token = otel_context.attach(trace.set_span_in_context(self.span)) if self.span is not None else None
        try:
            yield from observe_stream(result, self.finish)
        finally:
            if token is not None:
                otel_context.detach(token)


_SHAPES: dict[str, tuple[str, dict[str, Any]]] = {}
"""Per method: the span name and the attributes every call of it has (a few dozen methods)."""


def _shape(call: CallInfo) -> tuple[str, dict[str, Any]]:
    shape = _SHAPES.get(call.method)
    if shape is None:
        attributes = {"rpc.system": "grpc", "rpc.service": call.service, "rpc.method": call.name}
        shape = _SHAPES[call.method] = (call.method.lstrip("/"), attributes)
    return shape


def _start_span(
    tracer: trace.Tracer, request: Any, context: grpc.ServicerContext, call: CallInfo
) -> tuple[trace.Span, dict[str, Any] | None]:
    """The call's span and, if it is sampled, the attributes known now (set when it ends:
    no sampler here reads attributes)."""
    carrier, request_id = _carrier(context)
    parent = _parent(carrier) if carrier else None
    name, fixed = _shape(call)
    span = tracer.start_span(name, context=parent, kind=SpanKind.SERVER)
    if not span.is_recording():  # unsampled: none of the attribute work
        return span, None
    attributes = {**fixed, **_peer(context)}
    if request_id:
        attributes["poly.request_id"] = request_id
    if not call.request_streaming and (resource := _resource_name(request)):
        attributes["poly.resource.name"] = resource
    return span, attributes


def server_middleware(metrics: Metrics | None, tracer: trace.Tracer | None) -> Middleware:
    """Counts and times every call (`metrics`) and runs it in a SERVER span (`tracer`; none
    for `TRACED_BY_THE_BUS`); either may be None to leave that part out."""

    def middleware(request: Any, context: grpc.ServicerContext, call: CallInfo, proceed: Handler) -> Any:
        span, attributes = (
            _start_span(tracer, request, context, call)
            if tracer is not None and call.method not in TRACED_BY_THE_BUS
            else (None, None)
        )
        observed = _Observed(call, context, metrics, span, attributes)
        token = otel_context.attach(trace.set_span_in_context(span)) if span is not None else None
        failed, response = True, None
        try:
            response = proceed(request, context)
            failed = False
        finally:
            if token is not None:
                otel_context.detach(token)
            if failed or not call.response_streaming:
                observed.finish(failed, response)
        return observed.stream(response) if call.response_streaming else response

    return middleware


class _OutgoingCall:
    """One outgoing call: its metrics series and start, and its CLIENT span (None when not
    traced); `done` records how it ended."""

    __slots__ = ("key", "metrics", "series", "span", "started")

    def __init__(self, metrics: Any, series: Any, key: tuple[str, str, str], span: trace.Span | None) -> None:
        self.metrics, self.series, self.key, self.span = metrics, series, key, span
        self.started = time.perf_counter()

    def done(self, code: grpc.StatusCode | None) -> None:
        code = code or grpc.StatusCode.UNKNOWN
        if self.metrics is not None:
            self.metrics.handled(self.series, self.key, code, time.perf_counter() - self.started)
        span = self.span
        if span is not None:
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code is not grpc.StatusCode.OK:  # RPC semconv: any other code fails a client span
                span.set_status(Status(StatusCode.ERROR, code.name))
            span.end()


class _ClientObserved(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
):
    """Unary and server-streaming calls (the kinds the kit makes), observed in one layer:
    ``grpc_client_*`` metrics and, except for `TRACED_BY_THE_BUS`, a CLIENT span (child of the
    current one) whose context goes out as ``traceparent``/``tracestate`` metadata.

    The kit's own rather than opentelemetry-instrumentation-grpc's client interceptor, which
    cost about 30 µs more per traced call here and wrapped every untraced push in its own
    interceptor channel as well; the span and attributes follow the same RPC conventions."""

    def __init__(self, metrics: Metrics | None, tracer: trace.Tracer | None) -> None:
        self._metrics = metrics.client if metrics is not None else None
        self._tracer = tracer
        self._shapes: dict[str, tuple[str, dict[str, Any], tuple[str, str, str]]] = {}

    def _begin(self, details: Any, kind: str) -> tuple[Any, _OutgoingCall]:
        method = str(details.method)
        shape = self._shapes.get(kind + method)
        if shape is None:
            service, _, name = method.lstrip("/").partition("/")
            attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
            shape = self._shapes[kind + method] = (method.lstrip("/"), attributes, (kind, service, name))
        span_name, attributes, key = shape
        series = None
        if self._metrics is not None:
            series = self._metrics.method(*key)
            self._metrics.started(series)
        span = None
        if self._tracer is not None and method not in TRACED_BY_THE_BUS:
            span = self._tracer.start_span(span_name, kind=SpanKind.CLIENT, attributes=attributes)
            if span.get_span_context().is_valid:  # sampled or not: the decision travels too
                details = _with_trace_context(details, span.get_span_context())
        return details, _OutgoingCall(self._metrics, series, key, span)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        details, call = self._begin(details, "unary")
        outcome = _sent(continuation, details, request, call)
        outcome.add_done_callback(
            lambda future: call.done(future.code() if hasattr(future, "code") else None)
        )
        return outcome

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        details, call = self._begin(details, "server_stream")
        outcome = _sent(continuation, details, request, call)

        def done() -> None:
            call.done(outcome.code() if hasattr(outcome, "code") else None)

        if not outcome.add_callback(done):  # already over: gRPC will not call back
            done()
        return outcome


def _sent(continuation: Any, details: Any, request: Any, call: _OutgoingCall) -> Any:
    """`continuation`'s outcome; if it raises instead (a closed channel, a request that does
    not serialise), the call is recorded as ended before the error goes on."""
    try:
        return continuation(details, request)
    except BaseException as error:
        call.done(error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.INTERNAL)
        raise


def _with_trace_context(details: Any, sent: SpanContext) -> Any:
    """`details` with the W3C trace context of `sent` (replacing any the caller put there)."""
    metadata = [(k, v) for k, v in details.metadata or () if str(k).lower() not in _PROPAGATED]
    metadata.append(("traceparent", f"00-{sent.trace_id:032x}-{sent.span_id:016x}-{sent.trace_flags:02x}"))
    if sent.trace_state:
        metadata.append(("tracestate", sent.trace_state.to_header()))
    return with_metadata(details, metadata)


def instrument_channel(
    channel: grpc.Channel, metrics: Metrics | None, tracer_provider: trace.TracerProvider | None
) -> grpc.Channel:
    """`channel` with the client metrics and a CLIENT span per call that sends its trace
    context as ``traceparent`` metadata (none for `TRACED_BY_THE_BUS`: the event carries its
    trace context itself); unchanged when both are off."""
    if metrics is None and tracer_provider is None:
        return channel
    tracer = tracer_provider.get_tracer(__name__) if tracer_provider is not None else None
    return grpc.intercept_channel(channel, _ClientObserved(metrics, tracer))
