"""One trace across the bus, on both transports, with the real parts: the publishing request,
the relay's send span, the consumer's process span, and the event its handler publishes next.

Embedded: a real EventSink server over mTLS, pushed to by the relay (or by hand, as a hostile
publisher would). RabbitMQ: the broker on 127.0.0.1 (POLY_TEST_AMQP_URL). The consumer's
database is SQLite and PostgreSQL (`bus_db`). Spans go to each test's own tracer provider.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import grpc
import pytest
from google.protobuf.message import Message
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, SpanKind, StatusCode
from sqlalchemy import Connection, select

from poly.events.v1 import event_sink_pb2, event_sink_pb2_grpc
from poly.events.v1.events_pb2 import EventEnvelope, NotificationDelivered, OrderCancelled, OrderPaid
from services.kit import bus, clients, config, server, tls
from tests.kit.bus.conftest import BusDb, Spans, make_bus_db, publish, record_effect
from tests.support.broker import delete_namespace
from tests.support.env import settings_for
from tests.support.waiting import eventually

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{SPAN_ID}-01"
POISON = "orders/poison"


def _continuing(consumer_db: BusDb, onward: bus.Outbox) -> bus.EventHandler:
    """The consumer's handler: records its effect and publishes its next event (as
    notifications does), in the same transaction; fails for the poison order."""
    record = record_effect(consumer_db.effects)

    def handle(connection: Connection, payload: Message, envelope: EventEnvelope) -> None:
        assert isinstance(payload, OrderPaid)
        if payload.order == POISON:
            raise RuntimeError(f"cannot take {payload.order}")
        record(connection, payload, envelope)
        onward.publish(
            connection,
            NotificationDelivered(event_type=envelope.type, event_id=envelope.id),
            aggregate_id=f"notifications/{envelope.id}",
        )

    return handle


def _consumer(consumer_db: BusDb) -> bus.Consumer:
    onward = bus.Outbox(consumer_db.tables, source="notifications", routing=bus.consumer_routing())
    return bus.Consumer(consumer_db.engine, consumer_db.tables, {OrderPaid: _continuing(consumer_db, onward)})


def _onward(consumer_db: BusDb, event_id: str) -> dict[str, str]:
    """The trace context of the event the handler published for event `event_id`."""
    outbox = consumer_db.tables.outbox
    with consumer_db.engine.connect() as connection:
        stored = connection.scalar(
            select(outbox.c.envelope).where(outbox.c.aggregate_id == f"notifications/{event_id}")
        )
    assert stored is not None, f"nothing published onwards for {event_id}"
    return dict(EventEnvelope.FromString(stored).trace_context)


def _ids(context: SpanContext | None) -> tuple[int, int] | None:
    return None if context is None else (context.trace_id, context.span_id)


def _traceparent(span: ReadableSpan) -> str:
    context = span.get_span_context()
    assert context is not None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def _assert_one_trace(request: SpanContext, send: ReadableSpan, process: ReadableSpan) -> None:
    """request -> send (PRODUCER) -> process (CONSUMER), one trace."""
    assert send.kind is SpanKind.PRODUCER and process.kind is SpanKind.CONSUMER
    assert _ids(send.parent) == _ids(request)
    assert _ids(process.parent) == _ids(send.get_span_context())
    assert process.status.status_code is StatusCode.UNSET
    assert process.attributes is not None and process.attributes["poly.bus.outcome"] == "applied"


# -- embedded: the relay pushes to a real EventSink over mTLS ----------------------------------


@dataclass
class Embedded:
    orders_db: BusDb
    """The publisher's database (SQLite)."""
    notifications_db: BusDb
    """The consumer's (SQLite and PostgreSQL)."""
    notifications: server.RunningServer
    environ: dict[str, str]

    def settings(self, component: str) -> config.Settings:
        return settings_for(component, self.environ)


@pytest.fixture
def embedded(certs: Path, bus_db: BusDb, tmp_path: Path, spans: Spans) -> Iterator[Embedded]:
    orders_db = make_bus_db(f"sqlite:///{tmp_path / 'orders.db'}")
    base = {"POLY_TLS_DIR": str(certs), "POLY_NOTIFICATIONS_PORT": "0"}
    sink = bus.EventSinkServicer(
        _consumer(bus_db),
        bus_db.engine,
        bus_db.tables,
        service="notifications",
        services=config.SERVICES,
        tracer_provider=spans.provider,
    )
    notifications = server.start(settings_for("notifications", base), [bus.sink_registration(sink)])
    try:
        address = {"POLY_NOTIFICATIONS_ADDRESS": f"localhost:{notifications.port}"}
        yield Embedded(orders_db, bus_db, notifications, {**base, **address})
    finally:
        notifications.drain()
        orders_db.engine.dispose()


def test_embedded_a_published_event_is_applied_in_its_request_s_trace_and_the_next_event_goes_on_in_it(
    embedded: Embedded, spans: Spans
) -> None:
    outbox = bus.Outbox(embedded.orders_db.tables, source="orders", routing=bus.consumer_routing())
    with spans.provider.get_tracer("test").start_as_current_span(
        "CreateOrder", kind=SpanKind.SERVER
    ) as request:
        event = publish(embedded.orders_db, outbox, "orders/1", "orders/1")
    channels = clients.Channels(embedded.settings("orders"), services={"notifications": [bus.EVENT_SINK]})
    try:
        relay = bus.Relay(
            embedded.orders_db.engine,
            embedded.orders_db.tables,
            bus.EmbeddedTransport(channels),
            tracer_provider=spans.provider,
        )
        assert relay.run_once() == 1
    finally:
        channels.close()
    assert embedded.notifications_db.effect_counts() == {event.id: 1}
    send, process = spans.one("send OrderPaid"), spans.one("process OrderPaid")
    _assert_one_trace(request.get_span_context(), send, process)
    assert send.attributes is not None and process.attributes is not None
    assert (send.attributes["messaging.system"], send.attributes["messaging.destination.name"]) == (
        "poly",
        "notifications",
    )
    assert {key: process.attributes[key] for key in ("messaging.system", "messaging.destination.name")} == {
        "messaging.system": "poly",
        "messaging.destination.name": "notifications",
    }
    assert process.attributes["messaging.message.id"] == event.id
    assert process.attributes["messaging.operation.type"] == "process"
    # The handler ran with the process span current: the event it publishes next continues the trace.
    assert _onward(embedded.notifications_db, event.id) == {"traceparent": _traceparent(process)}


def _envelope(
    trace_context: dict[str, str], *, order: str = "orders/9", kind: type[Message] = OrderPaid
) -> EventEnvelope:
    envelope = EventEnvelope(
        id=str(uuid.uuid4()),
        type=kind.DESCRIPTOR.full_name,
        aggregate_id=order,
        sequence=1,
        source="orders",
        schema_version=1,
        trace_context=trace_context,
    )
    envelope.occur_time.GetCurrentTime()
    envelope.payload.Pack(kind(order=order))
    return envelope


def _push(embedded: Embedded, envelope: EventEnvelope) -> grpc.StatusCode:
    """Push as `orders` does (its certificate), not through a relay: whatever the envelope says."""
    settings = embedded.settings("orders")
    with grpc.secure_channel(
        f"localhost:{embedded.notifications.port}",
        tls.channel_credentials(settings.tls),
        options=[("grpc.ssl_target_name_override", "notifications")],
    ) as channel:
        try:
            event_sink_pb2_grpc.EventSinkServiceStub(channel).PushEvent(
                event_sink_pb2.PushEventRequest(event=envelope), timeout=10
            )
        except grpc.RpcError as error:
            assert isinstance(error, grpc.Call)
            return error.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize(
    "trace_context",
    [
        {},
        {"traceparent": "garbage"},
        {"traceparent": f"00-{'0' * 32}-{SPAN_ID}-01"},
        {"traceparent": f"00-{TRACE_ID}-{SPAN_ID}"},
        {"traceparent": "x" * 100_000, "tracestate": "y" * 100_000},
        {"tracestate": "vendor=abc"},
    ],
    ids=["absent", "garbage", "zero-trace-id", "truncated", "huge", "tracestate-alone"],
)
def test_an_event_without_a_usable_context_is_still_applied_under_a_new_root(
    embedded: Embedded, spans: Spans, trace_context: dict[str, str]
) -> None:
    envelope = _envelope(trace_context)
    assert _push(embedded, envelope) == grpc.StatusCode.OK
    assert embedded.notifications_db.effect_counts() == {envelope.id: 1}
    process = spans.one("process OrderPaid")
    assert process.parent is None, "a new root"
    assert process.attributes is not None and process.attributes["poly.bus.outcome"] == "applied"
    assert _onward(embedded.notifications_db, envelope.id) == {"traceparent": _traceparent(process)}


def test_a_hostile_context_sets_the_parent_and_nothing_more(embedded: Embedded, spans: Spans) -> None:
    hostile = {
        "traceparent": TRACEPARENT,
        "tracestate": "vendor=" + "a" * 250 + ",other=" + "b" * 250,  # 514 characters: over the cap
        "baggage": "user=secret",
        "x-poly-admin": "true",
    }
    envelope = _envelope(hostile)
    assert _push(embedded, envelope) == grpc.StatusCode.OK
    process = spans.one("process OrderPaid")
    assert _ids(process.parent) == (int(TRACE_ID, 16), int(SPAN_ID, 16))
    context = process.get_span_context()
    assert context is not None and len(context.trace_state) == 0, "the oversized tracestate is dropped"
    assert process.name == "process OrderPaid" and process.kind is SpanKind.CONSUMER
    assert _onward(embedded.notifications_db, envelope.id) == {"traceparent": _traceparent(process)}, (
        "only the W3C context goes onwards: no tracestate over the cap, no baggage, no other keys"
    )
    # A tracestate within the cap is the trace's own business: it goes on with it.
    spans.exporter.clear()
    modest = _envelope({"traceparent": TRACEPARENT, "tracestate": "vendor=abc"}, order="orders/10")
    assert _push(embedded, modest) == grpc.StatusCode.OK
    process = spans.one("process OrderPaid")
    assert _onward(embedded.notifications_db, modest.id) == {
        "traceparent": _traceparent(process),
        "tracestate": "vendor=abc",
    }


@dataclass(frozen=True)
class _Case:
    envelope: EventEnvelope
    code: grpc.StatusCode
    outcome: str
    error_type: str | None
    span: str = "process OrderPaid"


def _forged_source() -> EventEnvelope:
    envelope = _envelope({"traceparent": TRACEPARENT})
    envelope.source = "notifications"
    return envelope


@pytest.mark.parametrize(
    "case",
    [
        _Case(_envelope({"traceparent": TRACEPARENT}), grpc.StatusCode.OK, "applied", None),
        _Case(
            _envelope({"traceparent": TRACEPARENT}, kind=OrderCancelled),
            grpc.StatusCode.FAILED_PRECONDITION,
            "unhandled",
            "EVENT_TYPE_NOT_HANDLED",
            "process OrderCancelled",
        ),
        _Case(_forged_source(), grpc.StatusCode.PERMISSION_DENIED, "refused", "EVENT_SOURCE_MISMATCH"),
        _Case(
            _envelope({"traceparent": TRACEPARENT}, order=POISON),
            grpc.StatusCode.INTERNAL,
            "error",
            "RuntimeError",
        ),
    ],
    ids=["applied", "unhandled", "refused", "error"],
)
def test_the_process_span_records_the_outcome(embedded: Embedded, spans: Spans, case: _Case) -> None:
    assert _push(embedded, case.envelope) == case.code
    process = spans.one(case.span)
    assert _ids(process.parent) == (int(TRACE_ID, 16), int(SPAN_ID, 16))
    assert process.attributes is not None
    assert process.attributes["poly.bus.outcome"] == case.outcome
    assert process.attributes.get("error.type") == case.error_type
    if case.outcome == "applied":
        assert process.status.status_code is StatusCode.UNSET
        return
    assert process.status.status_code is StatusCode.ERROR
    assert process.status.description
    if case.outcome == "error":
        assert process.status.description == f"cannot take {POISON}"
        assert [event.name for event in process.events] == ["exception"]
    assert embedded.notifications_db.effect_counts() == {}


def test_a_redelivered_event_is_a_duplicate_in_its_span(embedded: Embedded, spans: Spans) -> None:
    envelope = _envelope({"traceparent": TRACEPARENT})
    assert _push(embedded, envelope) == grpc.StatusCode.OK
    assert _push(embedded, envelope) == grpc.StatusCode.OK
    outcomes = [
        span.attributes["poly.bus.outcome"] for span in spans.named("process OrderPaid") if span.attributes
    ]
    assert outcomes == ["applied", "duplicate"]


# -- RabbitMQ: the relay publishes to the consumer's queue; BrokerConsumer applies ---------------


@pytest.fixture
def prefix(amqp_url: str) -> Iterator[str]:
    """A namespace of exchanges and queues of this test alone, deleted afterwards."""
    name = f"polytest-{uuid.uuid4().hex[:10]}"
    yield name
    delete_namespace(amqp_url, name)


def _peek(amqp_url: str, queue: str) -> tuple[dict[str, object], EventEnvelope]:
    """The headers and envelope of the first message in `queue`, put back. Consumed, not got:
    a single-active-consumer queue refuses basic.get."""

    async def go() -> tuple[dict[str, object], EventEnvelope]:
        connection = await aio_pika.connect(amqp_url, timeout=10)
        async with connection:
            channel = await connection.channel()
            declared = await channel.declare_queue(queue, passive=True)
            async with declared.iterator() as messages:
                async for message in messages:
                    await message.nack(requeue=True)
                    return dict(message.headers or {}), EventEnvelope.FromString(message.body)
        raise AssertionError(f"no message in {queue}")

    return asyncio.run(asyncio.wait_for(go(), 20))


@pytest.mark.slow
def test_rabbitmq_a_published_event_is_applied_in_its_request_s_trace_and_the_next_event_goes_on_in_it(
    bus_db: BusDb, amqp_url: str, prefix: str, spans: Spans, tmp_path: Path
) -> None:
    orders_db = make_bus_db(f"sqlite:///{tmp_path / 'orders.db'}")
    transport = bus.BrokerTransport(amqp_url, prefix=prefix)
    intake = bus.BrokerConsumer(
        amqp_url, "notifications", _consumer(bus_db), prefix=prefix, tracer_provider=spans.provider
    )
    try:
        outbox = bus.Outbox(orders_db.tables, source="orders", routing=bus.consumer_routing())
        with spans.provider.get_tracer("test").start_as_current_span(
            "CreateOrder", kind=SpanKind.SERVER
        ) as request:
            event = publish(orders_db, outbox, "orders/1", "orders/1")
        relay = bus.Relay(orders_db.engine, orders_db.tables, transport, tracer_provider=spans.provider)
        assert relay.run_once() == 1
        send = spans.one("send OrderPaid")
        assert send.attributes is not None
        queue = bus.queue_name("notifications", prefix)
        assert {key: send.attributes[key] for key in ("messaging.system", "messaging.destination.name")} == {
            "messaging.system": "rabbitmq",
            "messaging.destination.name": queue,
        }
        assert send.attributes["messaging.rabbitmq.destination.routing_key"] == queue
        # The message carries the send span's context in its headers, and in its envelope.
        headers, envelope = _peek(amqp_url, queue)
        assert headers["traceparent"] == _traceparent(send)
        assert dict(envelope.trace_context) == {"traceparent": _traceparent(send)}

        intake.start()
        process = eventually(lambda: spans.named("process OrderPaid"), what="the event applied")[0]
        assert bus_db.effect_counts() == {event.id: 1}
        _assert_one_trace(request.get_span_context(), send, process)
        assert process.attributes is not None
        assert (process.attributes["messaging.system"], process.attributes["messaging.destination.name"]) == (
            "rabbitmq",
            queue,
        )
        # The handler ran in a worker thread with the process span current: the trace goes on.
        assert _onward(bus_db, event.id) == {"traceparent": _traceparent(process)}
    finally:
        intake.stop()
        transport.close()
        orders_db.engine.dispose()


@pytest.mark.slow
def test_rabbitmq_a_refused_message_has_a_process_span_with_its_reason(
    bus_db: BusDb, amqp_url: str, prefix: str, spans: Spans
) -> None:
    intake = bus.BrokerConsumer(
        amqp_url, "notifications", _consumer(bus_db), prefix=prefix, tracer_provider=spans.provider
    )
    intake.start()
    try:
        envelope = _envelope({"traceparent": TRACEPARENT})

        async def publish_forged() -> None:
            connection = await aio_pika.connect(amqp_url, timeout=10)
            async with connection:
                channel = await connection.channel()
                await channel.default_exchange.publish(
                    aio_pika.Message(body=envelope.SerializeToString(), headers={"source": "notifications"}),
                    routing_key=bus.queue_name("notifications", prefix),
                )

        asyncio.run(publish_forged())
        process = eventually(lambda: spans.named("process OrderPaid"), what="the refusal's span")[0]
        assert _ids(process.parent) == (int(TRACE_ID, 16), int(SPAN_ID, 16))
        assert process.status.status_code is StatusCode.ERROR
        assert process.attributes is not None
        assert (process.attributes["poly.bus.outcome"], process.attributes["error.type"]) == (
            "refused",
            "EVENT_SOURCE_MISMATCH",
        )
        assert bus_db.effect_counts() == {}
    finally:
        intake.stop()
