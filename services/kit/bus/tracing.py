"""One trace across the bus: the W3C trace context travels inside each event.

- `Outbox.publish` stores the publishing request's context (``traceparent``, ``tracestate``)
  in the envelope's ``trace_context`` (`current_trace_context`).
- The relay sends each delivery under a PRODUCER span ``send <Type>`` (`BusTracer.sending`), a
  child of that stored context, current during the send (so a gRPC client interceptor carries
  it), and the envelope leaves with the span's own context in place of the stored one (on
  RabbitMQ also in the message headers): the consumer's span becomes its child. A round whose
  deliveries belong to several traces also gets one ``relay batch`` span linking each event's
  context (`BusTracer.batch`), rather than pretending to have one parent.
- Each consumer applies an event under a CONSUMER span ``process <Type>`` (`BusTracer.processing`),
  a child of the context restored from the envelope, which is the relay's send span (or of
  the current span when that is in the same trace; an embedded push has no RPC span of its
  own, `kit.telemetry.rpc.TRACED_BY_THE_BUS`), current while the handler runs, so whatever
  the handler publishes carries the same trace onwards. Its outcome (applied, duplicate,
  unhandled, refused, error) is the ``poly.bus.outcome`` attribute; anything but applied or
  duplicate sets status ERROR with the message.

The same map carries the publishing request's id (`kit.request_id`) as ``x-request-id``, so
an operator can follow one request id through the services its events reach, with tracing
on or off: `current_trace_context` adds it, `sending` keeps it when it replaces the trace
context and makes it current during the send (an embedded push sends it as metadata), and
`processing` makes it current while the consumer applies the event (its log lines and its
calls carry it, and whatever it publishes carries it onwards). It is read with
`restore_request_id`: a value that is not a valid request id is ignored.

The context comes from another service, so it is read defensively (`restore`): only the two
W3C keys, a traceparent of at most `MAX_TRACEPARENT_LENGTH` characters that the W3C propagator
accepts, and a tracestate of at most `MAX_TRACESTATE_LENGTH` (dropped otherwise). It can set a
span's parent and nothing else; a context that is absent or malformed makes a new root and
never fails the event. Spans use the OpenTelemetry API: with no tracer provider installed
they are the API's no-op, and a stored context passes through unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from poly.events.v1.events_pb2 import EventEnvelope
from services.kit import request_id
from services.kit.bus import contract
from services.kit.bus.consumer import EventNotHandled
from services.kit.domain_errors import InvalidArgument, PermissionDenied
from services.kit.logs import redact

__all__ = [
    "EMBEDDED",
    "MAX_TRACEPARENT_LENGTH",
    "MAX_TRACESTATE_LENGTH",
    "OUTCOME",
    "RABBITMQ",
    "BusTracer",
    "Destination",
    "current_trace_context",
    "restore",
    "restore_request_id",
]

EMBEDDED, RABBITMQ = "poly", "rabbitmq"
"""``messaging.system`` of the embedded transport (gRPC push) and of the broker."""

OUTCOME = "poly.bus.outcome"
"""Span attribute: what became of the delivery (delivered, down, refused) or the event
(applied, duplicate, unhandled, refused, error)."""

MAX_TRACEPARENT_LENGTH = 128
"""Longest traceparent read (version 00 has 55 characters); a longer one is ignored."""
MAX_TRACESTATE_LENGTH = 512
"""Longest tracestate read (the W3C minimum a vendor must support); a longer one is dropped,
so a publisher cannot make every later span and event of the trace carry kilobytes."""

_TRACEPARENT, _TRACESTATE = "traceparent", "tracestate"
_W3C = TraceContextTextMapPropagator()
"""W3C only, whatever the global propagator: the envelope's field holds these two keys, and
baggage (which may hold anything) does not ride on events."""
_LONGEST_TEXT = 200
"""Longest envelope text (type, id, aggregate) copied into a span attribute."""


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a delivery goes, as the messaging semantic conventions name it."""

    system: str
    """``messaging.system``: `EMBEDDED` or `RABBITMQ`."""
    name: str
    """``messaging.destination.name``: the consumer (embedded) or its queue (RabbitMQ)."""
    attributes: Mapping[str, str] = field(default_factory=dict)
    """Any others, e.g. ``messaging.rabbitmq.destination.routing_key``."""


def current_trace_context() -> dict[str, str]:
    """The current span's W3C context as envelope entries (none when no span is current, or
    no tracer provider is installed), and the current request id, when there is one."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    current = request_id.current()
    if current is not None:
        carrier[request_id.METADATA_KEY] = current
    return carrier


def restore_request_id(trace_context: Mapping[str, str]) -> str | None:
    """The request id an envelope's ``trace_context`` carries; None when it carries none that
    is valid (a forged or oversized one is ignored)."""
    return request_id.valid_or_none(trace_context.get(request_id.METADATA_KEY))


def restore(trace_context: Mapping[str, str]) -> Context | None:
    """The span context an envelope's ``trace_context`` carries, as a parent; None when it
    carries none that is valid. Never raises, whatever the map holds."""
    traceparent = trace_context.get(_TRACEPARENT, "")
    if not traceparent or len(traceparent) > MAX_TRACEPARENT_LENGTH:
        return None
    carrier = {_TRACEPARENT: traceparent}
    tracestate = trace_context.get(_TRACESTATE, "")
    if tracestate and len(tracestate) <= MAX_TRACESTATE_LENGTH:
        carrier[_TRACESTATE] = tracestate
    # Extracted into an empty context: nothing of the caller's own context leaks in.
    restored = _W3C.extract(carrier, context=Context())
    return restored if trace.get_current_span(restored).get_span_context().is_valid else None


def _event_type(envelope: EventEnvelope) -> tuple[str, str]:
    """(short name, full name) of a declared type; ("unknown", …) for anything else, so a
    forged type never becomes a span name."""
    if contract.publisher_of(envelope.type) is None:
        return "unknown", envelope.type[:_LONGEST_TEXT]
    return envelope.type.rsplit(".", 1)[-1], envelope.type


def _attributes(
    envelope: EventEnvelope, destination: Destination, operation: str
) -> dict[str, AttributeValue]:
    _, full_name = _event_type(envelope)
    return {
        "messaging.system": destination.system,
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
        "messaging.destination.name": destination.name,
        "messaging.message.id": envelope.id[:_LONGEST_TEXT],
        "poly.event.type": full_name,
        "poly.resource.name": envelope.aggregate_id[:_LONGEST_TEXT],
        **destination.attributes,
    }


def _failed(span: Span, outcome: str, error: BaseException | str) -> None:
    span.set_attribute(OUTCOME, outcome)
    if isinstance(error, BaseException):
        span.set_attribute("error.type", getattr(error, "reason", None) or type(error).__qualname__)
        if outcome == "error":  # an unexpected failure: which kind helps; its text may hold SQL
            span.add_event("exception", {"exception.type": type(error).__qualname__})
    span.set_status(Status(StatusCode.ERROR, redact(str(error))[:_LONGEST_TEXT]))


def _outcome_of(error: BaseException) -> str:
    if isinstance(error, (PermissionDenied, InvalidArgument)):
        return "refused"
    if isinstance(error, EventNotHandled):
        return "unhandled"
    return "error"


class BusTracer:
    """The bus's spans, from `tracer_provider` (the global one, by default)."""

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer("poly.bus", tracer_provider=tracer_provider)

    @contextlib.contextmanager
    def sending(self, envelope: EventEnvelope, destination: Destination) -> Iterator[Span]:
        """A PRODUCER span for one delivery of `envelope`, current inside the block, a child of
        the envelope's stored context; `envelope` carries the span's context instead from here
        on, so the consumer's span is this one's child. Record the result with `sent`."""
        short_name, _ = _event_type(envelope)
        parent = restore(envelope.trace_context)
        origin = restore_request_id(envelope.trace_context)
        span = self._tracer.start_span(
            f"send {short_name}", context=parent or Context(), kind=SpanKind.PRODUCER
        )
        if span.is_recording():  # attributes cost more than the API's no-op span itself
            span.set_attributes(_attributes(envelope, destination, "send"))
        mine = span.get_span_context()
        # The API's no-op hands back the parent itself (or nothing): the envelope goes as it was.
        if mine.is_valid and (parent is None or mine != trace.get_current_span(parent).get_span_context()):
            carrier: dict[str, str] = {}
            _W3C.inject(carrier, context=trace.set_span_in_context(span, Context()))
            if origin is not None:
                carrier[request_id.METADATA_KEY] = origin
            envelope.trace_context.clear()
            envelope.trace_context.update(carrier)
        elif origin is None:  # an invalid id (stored only by `Outbox.publish(trace_context=...)`) stops here
            envelope.trace_context.pop(request_id.METADATA_KEY, None)
        with request_id.bound(origin), trace.use_span(span, end_on_exit=True):
            yield span

    @staticmethod
    def sent(span: Span, outcome: str, error: str = "") -> None:
        """What became of a delivery: ``delivered``, or a failure (``down``, ``refused``) and why."""
        if error:
            _failed(span, outcome, error)
        else:
            span.set_attribute(OUTCOME, outcome)

    @contextlib.contextmanager
    def batch(self, envelopes: Sequence[EventEnvelope], system: str) -> Iterator[None]:
        """Around a round of sends: when `envelopes` belong to several traces, one INTERNAL
        ``relay batch`` span (a root) with a link to each event's context. Enter it before
        `sending` replaces those contexts."""
        links: list[Link] = []
        traces: set[int] = set()
        for envelope in envelopes:
            restored = restore(envelope.trace_context)
            if restored is not None:
                parent = trace.get_current_span(restored).get_span_context()
                traces.add(parent.trace_id)
                links.append(Link(parent, {"messaging.message.id": envelope.id[:_LONGEST_TEXT]}))
        if len(traces) < 2:
            yield
            return
        span = self._tracer.start_span(
            "relay batch",
            context=Context(),
            kind=SpanKind.INTERNAL,
            links=links,
            attributes={
                "messaging.system": system,
                "messaging.operation.type": "send",
                "messaging.batch.message_count": len(envelopes),
            },
        )
        try:
            yield
        finally:
            span.end()

    @contextlib.contextmanager
    def processing(self, envelope: EventEnvelope, destination: Destination) -> Iterator[Span]:
        """A CONSUMER span for applying `envelope`, current inside the block. An exception
        leaving the block sets its outcome (refused, unhandled or error) and status ERROR;
        record a success with `processed`."""
        short_name, _ = _event_type(envelope)
        span = self._tracer.start_span(
            f"process {short_name}", context=_parent(restore(envelope.trace_context)), kind=SpanKind.CONSUMER
        )
        if span.is_recording():
            span.set_attributes(_attributes(envelope, destination, "process"))
        with (
            request_id.bound(restore_request_id(envelope.trace_context)),
            trace.use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False),
        ):
            try:
                yield span
            except BaseException as error:
                _failed(span, _outcome_of(error), error)
                raise

    @staticmethod
    def processed(span: Span, outcome: str) -> None:
        """A successful outcome: ``applied`` or ``duplicate``."""
        span.set_attribute(OUTCOME, outcome)

    def refused(self, envelope: EventEnvelope, destination: Destination, reason: str) -> None:
        """A CONSUMER span, ended at once, for an event refused before it reached the consumer."""
        with self.processing(envelope, destination) as span:
            span.set_attribute("error.type", reason)
            _failed(span, "refused", f"refused: {reason}")


def _parent(restored: Context | None) -> Context:
    """The consumer span's parent: the envelope's context, unless the current span is in the
    same trace (a span of the caller's, itself under the relay's send span); the current
    context when the envelope has none (a new root when that is empty too)."""
    current = context_api.get_current()
    if restored is None:
        return current
    mine = trace.get_current_span(current).get_span_context()
    if mine.is_valid and mine.trace_id == trace.get_current_span(restored).get_span_context().trace_id:
        return current
    return restored
