"""The trace context across the bus: what the outbox stores, what the relay's spans look like,
and how a context from another service is read. The transports end to end (gRPC push and
RabbitMQ) are in test_tracing_transports."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, SpanKind, StatusCode
from sqlalchemy import select

from poly.events.v1.events_pb2 import EventEnvelope, OrderPaid
from services.kit import bus, db
from services.kit.bus import tracing
from tests.kit.bus.conftest import BusDb, Clock, ScriptedTransport, Spans, publish

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{SPAN_ID}-01"


def _tracestate(length: int) -> str:
    """A well-formed tracestate of `length` characters (five members; 509 at least)."""
    return ",".join([*(f"k{i}=" + "v" * 98 for i in range(4)), "k4=" + "v" * (length - 4 * 101 - 4 - 3)])


def _traceparent(context: SpanContext) -> str:
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def _ids(context: SpanContext | None) -> tuple[int, int] | None:
    return None if context is None else (context.trace_id, context.span_id)


def _parent_of(trace_context: dict[str, str]) -> SpanContext | None:
    restored = tracing.restore(trace_context)
    return None if restored is None else trace.get_current_span(restored).get_span_context()


@pytest.mark.parametrize(
    ("trace_context", "restored"),
    [
        ({"traceparent": TRACEPARENT}, (TRACE_ID, SPAN_ID, "")),
        (
            {"traceparent": TRACEPARENT, "tracestate": "vendor=abc,other=x"},
            (TRACE_ID, SPAN_ID, "vendor=abc,other=x"),
        ),
        ({"traceparent": TRACEPARENT, "tracestate": _tracestate(512)}, (TRACE_ID, SPAN_ID, _tracestate(512))),
        ({"traceparent": TRACEPARENT, "tracestate": _tracestate(513)}, (TRACE_ID, SPAN_ID, "")),
        ({"traceparent": TRACEPARENT, "tracestate": "not a tracestate"}, (TRACE_ID, SPAN_ID, "")),
        ({"traceparent": TRACEPARENT, "baggage": "user=secret"}, (TRACE_ID, SPAN_ID, "")),
        ({}, None),
        ({"traceparent": ""}, None),
        ({"traceparent": "garbage"}, None),
        ({"traceparent": f"00-{'0' * 32}-{SPAN_ID}-01"}, None),
        ({"traceparent": f"00-{TRACE_ID}-{'0' * 16}-01"}, None),
        ({"traceparent": f"ff-{TRACE_ID}-{SPAN_ID}-01"}, None),
        ({"traceparent": f"00-{TRACE_ID.upper()}-{SPAN_ID}-01"}, None),
        ({"traceparent": TRACEPARENT + "-extra"}, None),
        ({"traceparent": f"01-{TRACE_ID}-{SPAN_ID}-01-" + "x" * 200}, None),
        ({"tracestate": "vendor=abc"}, None),
    ],
    ids=[
        "valid",
        "valid-with-tracestate",
        "tracestate-at-the-cap",
        "tracestate-over-the-cap-dropped",
        "malformed-tracestate-dropped",
        "other-keys-ignored",
        "absent",
        "empty",
        "garbage",
        "zero-trace-id",
        "zero-span-id",
        "version-ff",
        "upper-case-hex",
        "version-00-with-more",
        "too-long",
        "tracestate-alone",
    ],
)
def test_a_stored_context_is_read_defensively(
    trace_context: dict[str, str], restored: tuple[str, str, str] | None
) -> None:
    parent = _parent_of(trace_context)
    if restored is None:
        assert parent is None
        return
    assert parent is not None and parent.is_remote
    assert (f"{parent.trace_id:032x}", f"{parent.span_id:016x}", parent.trace_state.to_header()) == restored


@pytest.mark.slow
@given(st.dictionaries(st.sampled_from(["traceparent", "tracestate", "baggage"]) | st.text(), st.text()))
def test_reading_any_stored_context_never_raises_and_keeps_at_most_a_short_tracestate(
    trace_context: dict[str, str],
) -> None:
    parent = _parent_of(trace_context)
    assert parent is None or (parent.is_valid and len(parent.trace_state.to_header()) <= 512)


@given(st.from_regex(r"\A[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}\Z"), st.text(max_size=600))
def test_a_well_formed_traceparent_is_read_unless_its_ids_are_zero(traceparent: str, tracestate: str) -> None:
    parent = _parent_of({"traceparent": traceparent, "tracestate": tracestate})
    _, trace_id, span_id, _ = traceparent.split("-")
    readable = traceparent[:2] != "ff" and set(trace_id) != {"0"} and set(span_id) != {"0"}
    assert (parent is not None) == readable
    if parent is not None:
        assert (f"{parent.trace_id:032x}", f"{parent.span_id:016x}") == (trace_id, span_id)


def test_the_current_context_is_the_current_span_or_nothing(spans: Spans) -> None:
    assert bus.current_trace_context() == {}
    tracer = spans.provider.get_tracer("test")
    with tracer.start_as_current_span("request") as span:
        assert bus.current_trace_context() == {"traceparent": _traceparent(span.get_span_context())}
    with trace.NoOpTracerProvider().get_tracer("test").start_as_current_span("request"):
        assert bus.current_trace_context() == {}


def _outbox(bus_db: BusDb, clock: Clock | None = None) -> bus.Outbox:
    return bus.Outbox(bus_db.tables, source="orders", routing=bus.broker_routing(), clock=clock or Clock())


def _stored(bus_db: BusDb, event_id: str) -> EventEnvelope:
    outbox = bus_db.tables.outbox
    with bus_db.engine.connect() as connection:
        stored = connection.scalar(select(outbox.c.envelope).where(outbox.c.event_id == event_id))
    assert isinstance(stored, bytes)
    return EventEnvelope.FromString(stored)


def test_the_outbox_stores_the_publishing_span_s_context(bus_db: BusDb, spans: Spans) -> None:
    outbox = _outbox(bus_db)
    with spans.provider.get_tracer("test").start_as_current_span("CreateOrder") as request:
        event = publish(bus_db, outbox, "orders/1", "orders/1")
    expected = {"traceparent": _traceparent(request.get_span_context())}
    assert dict(event.trace_context) == expected
    assert dict(_stored(bus_db, event.id).trace_context) == expected
    untraced = publish(bus_db, outbox, "orders/2", "orders/2")
    assert dict(_stored(bus_db, untraced.id).trace_context) == {}, "no span, no context"
    with db.transaction(bus_db.engine) as session:
        given_context = outbox.publish(
            session,
            OrderPaid(order="orders/3"),
            aggregate_id="orders/3",
            trace_context={"traceparent": TRACEPARENT},
        )
    assert dict(_stored(bus_db, given_context.id).trace_context) == {"traceparent": TRACEPARENT}


@dataclass
class _Witness(ScriptedTransport):
    """Notes which span is current while each event is sent."""

    current: dict[str, SpanContext] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, route: str, envelope: EventEnvelope) -> None:
        with self.lock:
            self.current[envelope.id] = trace.get_current_span().get_span_context()
        super().send(route, envelope)


def _relay(bus_db: BusDb, transport: bus.Transport, spans: Spans | None, clock: Clock) -> bus.Relay:
    """A relay on `clock` (the outbox's): its deliveries are due at once."""
    return bus.Relay(
        bus_db.engine,
        bus_db.tables,
        transport,
        settings=bus.RelaySettings(batch_size=10, max_attempts=3, base_delay=1.0, lease_seconds=30),
        clock=clock,
        tracer_provider=spans.provider if spans is not None else trace.NoOpTracerProvider(),
    )


def _context(span: ReadableSpan) -> SpanContext:
    context = span.get_span_context()
    assert context is not None
    return context


def test_each_send_is_a_producer_span_under_its_event_s_context_and_current_while_it_sends(
    bus_db: BusDb, spans: Spans
) -> None:
    clock = Clock()
    outbox, transport = _outbox(bus_db, clock), _Witness()
    with spans.provider.get_tracer("test").start_as_current_span("CreateOrder") as request:
        event = publish(bus_db, outbox, "orders/1", "orders/1")
    assert _relay(bus_db, transport, spans, clock).run_once() == 1
    send = spans.one("send OrderPaid")
    assert send.kind is SpanKind.PRODUCER
    assert send.parent is not None and send.parent.span_id == request.get_span_context().span_id
    assert _context(send).trace_id == request.get_span_context().trace_id
    assert transport.current[event.id] == _context(send), "the send span is current during the send"
    [(_, sent)] = transport.sent
    assert dict(sent.trace_context) == {"traceparent": _traceparent(_context(send))}, (
        "the event goes with the send span's context, so the consumer's span is its child"
    )
    assert dict(_stored(bus_db, event.id).trace_context) == dict(event.trace_context), (
        "the stored one is kept"
    )
    assert send.attributes is not None
    assert dict(send.attributes) == {
        "messaging.system": "poly",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": "broker",
        "messaging.message.id": event.id,
        "poly.event.type": "poly.events.v1.OrderPaid",
        "poly.resource.name": "orders/1",
        "poly.bus.outcome": "delivered",
    }
    assert send.status.status_code is StatusCode.UNSET
    assert spans.named("relay batch") == [], "one delivery, one trace: no batch span"


def test_a_round_covering_several_traces_gets_one_span_linking_each_event_s_context(
    bus_db: BusDb, spans: Spans
) -> None:
    clock = Clock()
    outbox, transport = _outbox(bus_db, clock), ScriptedTransport()
    tracer = spans.provider.get_tracer("test")
    requests: list[SpanContext] = []
    events: list[EventEnvelope] = []
    for i in range(3):
        with tracer.start_as_current_span(f"request {i}") as span:
            events.append(publish(bus_db, outbox, f"orders/{i}", f"orders/{i}"))
        requests.append(span.get_span_context())
    untraced = publish(bus_db, outbox, "orders/u", "orders/u")
    assert _relay(bus_db, transport, spans, clock).run_once() == 4
    batch = spans.one("relay batch")
    assert batch.parent is None, "a batch has no one parent"
    assert batch.kind is SpanKind.INTERNAL
    assert [(_ids(link.context), dict(link.attributes or {})) for link in batch.links] == [
        (_ids(request), {"messaging.message.id": event.id})
        for request, event in zip(requests, events, strict=True)
    ]
    assert batch.attributes is not None and batch.attributes["messaging.batch.message_count"] == 4
    sends = {
        span.attributes["messaging.message.id"]: span
        for span in spans.named("send OrderPaid")
        if span.attributes
    }
    for request, event in zip(requests, events, strict=True):
        send = sends[event.id]
        assert _ids(send.parent) == _ids(request), "each send is still the child of its own event's context"
    assert sends[untraced.id].parent is None, "an event without a context is sent under a new root"


def test_a_round_within_one_trace_gets_no_batch_span(bus_db: BusDb, spans: Spans) -> None:
    clock = Clock()
    outbox = _outbox(bus_db, clock)
    with spans.provider.get_tracer("test").start_as_current_span("request"):
        for i in range(3):
            publish(bus_db, outbox, f"orders/{i}", f"orders/{i}")
    assert _relay(bus_db, ScriptedTransport(), spans, clock).run_once() == 3
    assert len(spans.named("send OrderPaid")) == 3
    assert spans.named("relay batch") == []


def test_a_failed_send_is_an_error_span_saying_why(bus_db: BusDb, spans: Spans) -> None:
    clock = Clock()
    outbox = _outbox(bus_db, clock)
    refused = publish(bus_db, outbox, "orders/1", "orders/1")
    _relay(bus_db, ScriptedTransport(always_failing={refused.id}), spans, clock).run_once()
    send = spans.one("send OrderPaid")
    assert (send.status.status_code, send.status.description) == (StatusCode.ERROR, "scripted: always fails")
    assert send.attributes is not None and send.attributes["poly.bus.outcome"] == "refused"

    class Down(ScriptedTransport):
        def send(self, route: str, envelope: EventEnvelope) -> None:
            raise bus.DeliveryError("notifications: UNAVAILABLE: connection refused", transient=True)

    spans.exporter.clear()
    publish(bus_db, outbox, "orders/2", "orders/2")  # the refused one waits for its backoff
    assert _relay(bus_db, Down(), spans, clock).run_once() == 1
    send = spans.one("send OrderPaid")
    assert send.status.status_code is StatusCode.ERROR
    assert send.attributes is not None and send.attributes["poly.bus.outcome"] == "down"


def test_without_a_tracer_provider_the_stored_context_travels_unchanged(bus_db: BusDb, spans: Spans) -> None:
    clock = Clock()
    outbox, transport = _outbox(bus_db, clock), ScriptedTransport()
    with spans.provider.get_tracer("test").start_as_current_span("CreateOrder"):
        event = publish(bus_db, outbox, "orders/1", "orders/1")
    untraced = publish(bus_db, outbox, "orders/2", "orders/2")
    assert _relay(bus_db, transport, None, clock).run_once() == 2
    sent = {envelope.id: dict(envelope.trace_context) for _, envelope in transport.sent}
    assert sent == {event.id: dict(event.trace_context), untraced.id: {}}


def test_the_consumer_span_nests_under_the_current_span_of_the_same_trace_only(spans: Spans) -> None:
    tracer, bus_tracer = spans.provider.get_tracer("test"), bus.BusTracer(spans.provider)
    destination = bus.Destination("poly", "notifications")
    with tracer.start_as_current_span("send") as send:
        envelope = EventEnvelope(id="e1", type="poly.events.v1.OrderPaid", aggregate_id="orders/1")
        envelope.trace_context.update(bus.current_trace_context())
    pushed = trace.set_span_in_context(send)
    # The push's server span (same trace) is current, then a span of another trace.
    with (
        tracer.start_as_current_span("PushEvent", context=pushed) as server,
        bus_tracer.processing(envelope, destination),
    ):
        pass
    with tracer.start_as_current_span("elsewhere") as other, bus_tracer.processing(envelope, destination):
        pass
    first, second = spans.named("process OrderPaid")
    assert first.parent is not None and first.parent.span_id == server.get_span_context().span_id
    assert second.parent is not None and second.parent.span_id == send.get_span_context().span_id
    assert _context(second).trace_id != other.get_span_context().trace_id
