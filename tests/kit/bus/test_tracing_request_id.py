"""The request id across the bus, on both transports, with tracing on and off: an event
published while a request id is current keeps it (``x-request-id`` in the envelope's
``trace_context``), and the consumer applies it with that id current, so its log lines, its
calls and the events it publishes next carry it. A forged id in an envelope is ignored.

Real parts: the publisher's and the consumer's databases (SQLite files), a real EventSink
server over mTLS pushed to by the relay through a kit channel, RabbitMQ on 127.0.0.1
(POLY_TEST_AMQP_URL), and the kit's own log formatter (`tests.support.log_lines`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import aio_pika
import grpc
import pytest
from google.protobuf.message import Message
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind
from sqlalchemy import Connection, select

from poly.events.v1 import event_sink_pb2, event_sink_pb2_grpc
from poly.events.v1.events_pb2 import EventEnvelope, NotificationDelivered, OrderPaid
from services.kit import bus, clients, config, db, request_id, server, tls
from tests.kit.bus.conftest import BusDb, ScriptedTransport, Spans, make_bus_db, publish, record_effect
from tests.support.broker import delete_namespace
from tests.support.env import settings_for
from tests.support.log_lines import LogLines, captured
from tests.support.waiting import eventually

REQUEST_ID = "edge-7d1f0c2b9a8e4f6b"
PUSH = "/poly.events.v1.EventSinkService/PushEvent"
APPLIED = "effect recorded"
FORGED = [
    "r" * 129,
    "bad\r\nX-Admin: true",
    "with space",
    '","level":"critical',
]
FORGED_IDS = ["too-long", "crlf", "space", "json-breakout"]


def _consumer(consumer_db: BusDb) -> bus.Consumer:
    """notifications' side: records the effect, logs a line, publishes its next event."""
    onward = bus.Outbox(consumer_db.tables, source="notifications", routing=bus.consumer_routing())
    record = record_effect(consumer_db.effects)

    def handle(connection: Connection, payload: Message, envelope: EventEnvelope) -> None:
        assert isinstance(payload, OrderPaid)
        record(connection, payload, envelope)
        logging.getLogger("poly.test.consumer").info(APPLIED, extra={"event_id": envelope.id})
        onward.publish(
            connection,
            NotificationDelivered(event_type=envelope.type, event_id=envelope.id),
            aggregate_id=f"notifications/{envelope.id}",
        )

    return bus.Consumer(consumer_db.engine, consumer_db.tables, {OrderPaid: handle})


def _stored(bus_db: BusDb, aggregate_id: str) -> dict[str, str]:
    """The trace context of the envelope stored in `bus_db`'s outbox for `aggregate_id`."""
    outbox = bus_db.tables.outbox
    with bus_db.engine.connect() as connection:
        stored = connection.scalar(select(outbox.c.envelope).where(outbox.c.aggregate_id == aggregate_id))
    assert stored is not None, f"nothing stored for {aggregate_id}"
    return dict(EventEnvelope.FromString(stored).trace_context)


class Tracing(NamedTuple):
    provider: TracerProvider
    on: bool


@pytest.fixture(params=["tracing-on", "tracing-off"])
def tracing(request: pytest.FixtureRequest, spans: Spans, monkeypatch: pytest.MonkeyPatch) -> Tracing:
    """The SDK's provider as a service builds it; with OTEL_SDK_DISABLED=true it hands out
    no-op tracers, as in a service whose tracing is off."""
    if request.param == "tracing-on":
        return Tracing(spans.provider, on=True)
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    return Tracing(TracerProvider(), on=False)


def _nowhere_in(lines: LogLines, forged: str) -> bool:
    """`forged` appears in no line, neither raw nor as JSON escapes it."""
    return forged not in lines.text() and json.dumps(forged)[1:-1] not in lines.text()


@pytest.fixture
def dbs(tmp_path: Path) -> Iterator[tuple[BusDb, BusDb]]:
    orders_db = make_bus_db(f"sqlite:///{tmp_path / 'orders.db'}")
    notifications_db = make_bus_db(f"sqlite:///{tmp_path / 'notifications.db'}")
    try:
        yield orders_db, notifications_db
    finally:
        orders_db.engine.dispose()
        notifications_db.engine.dispose()


def _publish_in_request(orders_db: BusDb, tracing: Tracing) -> EventEnvelope:
    """OrderPaid, published as orders publishes in a served call: in the call's span, with the
    edge's request id current (the access middleware makes it so in a served call)."""
    outbox = bus.Outbox(orders_db.tables, source="orders", routing=bus.consumer_routing())
    tracer = tracing.provider.get_tracer("test")
    with request_id.bound(REQUEST_ID), tracer.start_as_current_span("CreateOrder", kind=SpanKind.SERVER):
        return publish(orders_db, outbox, "orders/1", "orders/1")


def _assert_applied_with_the_id(lines: LogLines, notifications_db: BusDb, event: EventEnvelope) -> None:
    [applied] = lines.where(message=APPLIED, event_id=event.id)
    assert applied["request_id"] == REQUEST_ID, applied
    onward = _stored(notifications_db, f"notifications/{event.id}")
    assert onward["x-request-id"] == REQUEST_ID, "the next event carries it on"


@pytest.mark.parametrize("forged", FORGED, ids=FORGED_IDS)
def test_the_relay_never_sends_an_invalid_id_on(
    dbs: tuple[BusDb, BusDb], tracing: Tracing, forged: str
) -> None:
    """Only an explicit ``trace_context=`` can store one; it goes no further than the outbox."""
    orders_db, _ = dbs
    outbox = bus.Outbox(orders_db.tables, source="orders", routing=bus.consumer_routing())
    with db.transaction(orders_db.engine) as connection:
        event = outbox.publish(
            connection,
            OrderPaid(order="orders/5"),
            aggregate_id="orders/5",
            trace_context={"x-request-id": forged},
        )
    transport = ScriptedTransport()
    relay = bus.Relay(orders_db.engine, orders_db.tables, transport, tracer_provider=tracing.provider)
    with captured() as lines:
        assert relay.run_once() == 1
    [(_, sent)] = transport.sent
    assert sent.id == event.id and "x-request-id" not in sent.trace_context
    assert _nowhere_in(lines, forged)


# -- embedded: the relay pushes to a real EventSink over mTLS --------------------------------


@pytest.fixture
def sink(
    certs: Path, dbs: tuple[BusDb, BusDb], tracing: Tracing
) -> Iterator[tuple[config.Settings, server.RunningServer]]:
    _, notifications_db = dbs
    base = {"POLY_TLS_DIR": str(certs), "POLY_NOTIFICATIONS_PORT": "0"}
    servicer = bus.EventSinkServicer(
        _consumer(notifications_db),
        notifications_db.engine,
        notifications_db.tables,
        service="notifications",
        services=config.SERVICES,
        tracer_provider=tracing.provider,
    )
    running = server.start(settings_for("notifications", base), [bus.sink_registration(servicer)])
    try:
        address = {"POLY_NOTIFICATIONS_ADDRESS": f"localhost:{running.port}"}
        yield settings_for("orders", {**base, **address}), running
    finally:
        running.drain()


def test_embedded_the_consumer_applies_the_event_with_the_publishing_request_s_id(
    dbs: tuple[BusDb, BusDb], sink: tuple[config.Settings, server.RunningServer], tracing: Tracing
) -> None:
    orders_db, notifications_db = dbs
    orders, _ = sink
    event = _publish_in_request(orders_db, tracing)
    assert _stored(orders_db, "orders/1")["x-request-id"] == REQUEST_ID
    channels = clients.Channels(orders, services={"notifications": [bus.EVENT_SINK]})
    try:
        relay = bus.Relay(
            orders_db.engine,
            orders_db.tables,
            bus.EmbeddedTransport(channels),
            tracer_provider=tracing.provider,
        )
        with captured() as lines:
            assert relay.run_once() == 1
    finally:
        channels.close()
    assert notifications_db.effect_counts() == {event.id: 1}
    _assert_applied_with_the_id(lines, notifications_db, event)
    # The push itself carried it (the relay's send has it current; a kit channel sends it).
    [push] = lines.access(PUSH)
    assert push["request_id"] == REQUEST_ID


def _forged_envelope(trace_context: dict[str, str]) -> EventEnvelope:
    envelope = EventEnvelope(
        id=str(uuid.uuid4()),
        type=OrderPaid.DESCRIPTOR.full_name,
        aggregate_id="orders/9",
        sequence=1,
        source="orders",
        schema_version=1,
        trace_context=trace_context,
    )
    envelope.occur_time.GetCurrentTime()
    envelope.payload.Pack(OrderPaid(order="orders/9"))
    return envelope


@pytest.mark.parametrize("forged", FORGED, ids=FORGED_IDS)
def test_embedded_a_forged_id_in_an_envelope_is_ignored(
    dbs: tuple[BusDb, BusDb], sink: tuple[config.Settings, server.RunningServer], forged: str
) -> None:
    _, notifications_db = dbs
    orders, running = sink
    envelope = _forged_envelope({"x-request-id": forged})
    with (
        captured() as lines,
        grpc.secure_channel(
            f"localhost:{running.port}",
            tls.channel_credentials(orders.tls),
            options=[("grpc.ssl_target_name_override", "notifications")],
        ) as channel,
    ):
        event_sink_pb2_grpc.EventSinkServiceStub(channel).PushEvent(
            event_sink_pb2.PushEventRequest(event=envelope), timeout=10
        )
    assert notifications_db.effect_counts() == {envelope.id: 1}, "the event itself is applied"
    [applied] = lines.where(message=APPLIED, event_id=envelope.id)
    assert "request_id" not in applied
    assert _nowhere_in(lines, forged)
    assert "x-request-id" not in _stored(notifications_db, f"notifications/{envelope.id}"), "never passed on"


# -- RabbitMQ: the relay publishes to the consumer's queue; BrokerConsumer applies ------------


@pytest.fixture
def prefix(amqp_url: str) -> Iterator[str]:
    name = f"polytest-{uuid.uuid4().hex[:10]}"
    yield name
    delete_namespace(amqp_url, name)


def _peek(amqp_url: str, queue: str) -> EventEnvelope:
    """The envelope of the first message in `queue`, put back."""

    async def go() -> EventEnvelope:
        connection = await aio_pika.connect(amqp_url, timeout=10)
        async with connection:
            channel = await connection.channel()
            declared = await channel.declare_queue(queue, passive=True)
            async with declared.iterator() as messages:
                async for message in messages:
                    await message.nack(requeue=True)
                    return EventEnvelope.FromString(message.body)
        raise AssertionError(f"no message in {queue}")

    return asyncio.run(asyncio.wait_for(go(), 20))


def test_rabbitmq_the_consumer_applies_the_event_with_the_publishing_request_s_id(
    dbs: tuple[BusDb, BusDb], amqp_url: str, prefix: str, tracing: Tracing
) -> None:
    orders_db, notifications_db = dbs
    transport = bus.BrokerTransport(amqp_url, prefix=prefix)
    intake = bus.BrokerConsumer(
        amqp_url,
        "notifications",
        _consumer(notifications_db),
        prefix=prefix,
        tracer_provider=tracing.provider,
    )
    try:
        event = _publish_in_request(orders_db, tracing)
        relay = bus.Relay(orders_db.engine, orders_db.tables, transport, tracer_provider=tracing.provider)
        assert relay.run_once() == 1
        on_the_queue = dict(_peek(amqp_url, bus.queue_name("notifications", prefix)).trace_context)
        # With tracing on, the relay replaced the context with its send span's: the id stays.
        assert on_the_queue == (
            {"x-request-id": REQUEST_ID, "traceparent": on_the_queue.get("traceparent", "missing")}
            if tracing.on
            else {"x-request-id": REQUEST_ID}
        )
        with captured() as lines:
            intake.start()
            eventually(lambda: notifications_db.effect_counts() == {event.id: 1}, what="the event applied")
            eventually(lambda: lines.where(message=APPLIED), what="the consumer's line")
        _assert_applied_with_the_id(lines, notifications_db, event)
    finally:
        intake.stop()
        transport.close()


@pytest.mark.parametrize("forged", FORGED, ids=FORGED_IDS)
def test_rabbitmq_a_forged_id_in_an_envelope_is_ignored(
    dbs: tuple[BusDb, BusDb], amqp_url: str, prefix: str, forged: str
) -> None:
    _, notifications_db = dbs
    intake = bus.BrokerConsumer(amqp_url, "notifications", _consumer(notifications_db), prefix=prefix)
    envelope = _forged_envelope({"x-request-id": forged})

    async def publish_forged() -> None:
        connection = await aio_pika.connect(amqp_url, timeout=10)
        async with connection:
            channel = await connection.channel()
            await channel.default_exchange.publish(
                aio_pika.Message(body=envelope.SerializeToString(), headers={"source": "orders"}),
                routing_key=bus.queue_name("notifications", prefix),
            )

    with captured() as lines:
        intake.start()
        try:
            asyncio.run(publish_forged())
            eventually(lambda: lines.where(message=APPLIED), what="the forged event applied")
        finally:
            intake.stop()
    [applied] = lines.where(message=APPLIED, event_id=envelope.id)
    assert "request_id" not in applied
    assert _nowhere_in(lines, forged)
    assert "x-request-id" not in _stored(notifications_db, f"notifications/{envelope.id}")
