"""The RabbitMQ consumer against the real broker on 127.0.0.1 (POLY_TEST_AMQP_URL): what it
refuses, and how it comes back after an outage."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator

import aio_pika
import pytest

from poly.events.v1.events_pb2 import EventEnvelope, OrderPaid
from services.kit import bus
from services.kit.bus import contract
from tests.kit.bus.conftest import BusDb, publish, record_effect
from tests.support.broker import (
    channels_of,
    delete_namespace,
    delete_queue,
    expected_during_an_outage,
    ready_count,
    through_proxy,
)
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

ORDER_PAID = "poly.events.v1.OrderPaid"


@pytest.fixture
def prefix(amqp_url: str) -> Iterator[str]:
    """A namespace of exchanges and queues of this test alone, deleted afterwards."""
    name = f"polytest-{uuid.uuid4().hex[:10]}"
    yield name
    delete_namespace(amqp_url, name)


def test_the_consumer_declares_the_whole_topology_before_it_consumes(
    bus_db: BusDb, amqp_url: str, prefix: str
) -> None:
    consumer = bus.Consumer(bus_db.engine, bus_db.tables, {OrderPaid: record_effect(bus_db.effects)})
    intake = bus.BrokerConsumer(amqp_url, "notifications", consumer, prefix=prefix)
    # The services the contract names a consumer of some event: each has a queue.
    consumers = sorted(service for service in contract.services() if contract.consumed_by(service))
    assert {"auth", "users", "payments", "notifications"} <= set(consumers)
    intake.start()
    try:
        assert intake.ready.is_set()

        async def queues() -> dict[str, int]:
            connection = await aio_pika.connect(amqp_url, timeout=10)
            async with connection:
                channel = await connection.channel()
                found = {}
                for service in consumers:
                    queue = await channel.declare_queue(bus.queue_name(service, prefix), passive=True)
                    found[service] = int(queue.declaration_result.consumer_count or 0)
                return found

        # Every consumer's queue exists, though only notifications consumes yet.
        assert asyncio.run(queues()) == {service: int(service == "notifications") for service in consumers}
    finally:
        intake.stop()


def test_after_an_outage_the_consumer_is_back_on_one_channel_without_error_logs(
    bus_db: BusDb, amqp_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    proxy, proxied_url = through_proxy(amqp_url)
    consumer = bus.Consumer(bus_db.engine, bus_db.tables, {OrderPaid: record_effect(bus_db.effects)})
    name = f"{prefix} notifications consumer"
    intake = bus.BrokerConsumer(proxied_url, "notifications", consumer, prefix=prefix)
    transport = bus.BrokerTransport(amqp_url, prefix=prefix)  # the publisher's own link
    outbox = bus.Outbox(bus_db.tables, source="orders", routing=bus.broker_routing())
    relay = bus.Relay(bus_db.engine, bus_db.tables, transport)
    intake.start()
    try:
        assert channels_of(name) == [1]
        proxy.down()
        eventually(lambda: channels_of(name) == [], what="the broker to see the consumer gone")
        events = [publish(bus_db, outbox, "orders/C", f"orders/C#{i}") for i in range(5)]
        for _ in events:  # one per round: one aggregate
            relay.run_once()
        assert bus.backlog(bus_db.engine, bus_db.tables) == 0, "published while the consumer is away"
        proxy.up()
        eventually(
            lambda: bus_db.effect_counts() == {e.id: 1 for e in events}, what="every event applied once"
        )
        assert channels_of(name) == [1]
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert [r.getMessage() for r in errors if not expected_during_an_outage(r)] == []
    finally:
        transport.close()
        intake.stop()
        proxy.down()


def test_an_undecodable_message_goes_to_the_dead_letter_queue(
    bus_db: BusDb, amqp_url: str, prefix: str
) -> None:
    consumer = bus.Consumer(bus_db.engine, bus_db.tables, {OrderPaid: record_effect(bus_db.effects)})
    intake = bus.BrokerConsumer(amqp_url, "notifications", consumer, prefix=prefix)
    intake.start()
    try:

        async def publish_garbage() -> None:
            connection = await aio_pika.connect(amqp_url, timeout=10)
            async with connection:
                channel = await connection.channel()
                exchange = await channel.get_exchange(f"{prefix}.events.order")
                await exchange.publish(aio_pika.Message(body=b"\xff not a protobuf"), routing_key=ORDER_PAID)

        asyncio.run(publish_garbage())

        async def dead_count() -> int:
            connection = await aio_pika.connect(amqp_url, timeout=10)
            async with connection:
                channel = await connection.channel()
                queue = await channel.declare_queue(
                    bus.dead_queue_name("notifications", prefix), passive=True
                )
                return int(queue.declaration_result.message_count or 0)

        eventually(lambda: asyncio.run(dead_count()) == 1, what="the message in the dead-letter queue")
    finally:
        intake.stop()
    # With the consumer gone and its queue deleted by hand, a redrive re-creates the queue and
    # moves the message into it: never acknowledged into nowhere.
    delete_queue(amqp_url, bus.queue_name("notifications", prefix))
    assert bus.redrive_dead_queue(amqp_url, "notifications", prefix=prefix) == 1
    assert ready_count(amqp_url, bus.queue_name("notifications", prefix)) == 1
    assert asyncio.run(dead_count()) == 0


def _publish_raw(amqp_url: str, prefix: str, envelope: EventEnvelope, headers: dict[str, str]) -> None:
    """Publish straight to the family exchange, as anyone holding broker credentials could."""

    async def go() -> None:
        connection = await aio_pika.connect(amqp_url, timeout=10)
        async with connection:
            channel = await connection.channel()
            exchange = await channel.get_exchange(bus.exchange_name(envelope.type, prefix))
            await exchange.publish(
                aio_pika.Message(body=envelope.SerializeToString(), headers=dict(headers)),
                routing_key=envelope.type,
            )

    asyncio.run(go())


def _dead(amqp_url: str, prefix: str, *, take: bool = False) -> list[dict[str, object]]:
    """The headers of the messages in the notifications dead-letter queue (removed if `take`)."""

    async def go() -> list[dict[str, object]]:
        connection = await aio_pika.connect(amqp_url, timeout=10)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(bus.dead_queue_name("notifications", prefix), passive=True)
            found: list[dict[str, object]] = []
            for _ in range(int(queue.declaration_result.message_count or 0)):
                message = await queue.get(fail=False, no_ack=take, timeout=10)
                if message is None:
                    break
                found.append(dict(message.headers or {}))
            return found  # not taken: closing the channel puts them back

    return asyncio.run(go())


def test_a_forged_message_is_dead_lettered_with_its_reason_never_applied_nor_redriven(
    bus_db: BusDb, amqp_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="poly.bus.broker")
    consumer = bus.Consumer(bus_db.engine, bus_db.tables, {OrderPaid: record_effect(bus_db.effects)})
    intake = bus.BrokerConsumer(
        amqp_url, "notifications", consumer, prefix=prefix, attempts=3, retry_delay=0.01
    )
    intake.start()
    try:
        forged = [
            # (envelope source, source header): whoever may publish to the exchange can claim anything.
            ("notifications", {"source": "notifications"}),  # a type notifications does not publish
            ("orders", {"source": "notifications"}),  # a header that disagrees with the envelope
            ("orders", {}),  # no header at all
        ]
        for number, (source, headers) in enumerate(forged):
            envelope = EventEnvelope(
                id=f"forged-{number}", type=ORDER_PAID, aggregate_id="orders/F", source=source
            )
            envelope.payload.Pack(OrderPaid(order=f"orders/F#{number}"))
            _publish_raw(amqp_url, prefix, envelope, headers)
        genuine = EventEnvelope(id="genuine", type=ORDER_PAID, aggregate_id="orders/F", source="orders")
        genuine.payload.Pack(OrderPaid(order="orders/F#genuine"))
        _publish_raw(amqp_url, prefix, genuine, {"source": "orders"})

        eventually(lambda: bus_db.effect_counts() == {"genuine": 1}, what="the genuine event applied")
        eventually(lambda: len(_dead(amqp_url, prefix)) == 3, what="three dead letters")
        assert consumer.metrics.total("refused") == 3
        assert consumer.metrics.total("applied") == 1, "refused at once: never retried, never applied"

        assert bus.redrive_dead_queue(amqp_url, "notifications", prefix=prefix) == 0, "refused again anyway"
        reasons = sorted(str(headers[bus.REASON_HEADER]) for headers in _dead(amqp_url, prefix, take=True))
        assert reasons == [
            "EVENT_SOURCE_MISMATCH",
            "EVENT_SOURCE_MISMATCH",
            "EVENT_TYPE_NOT_PUBLISHED_BY_CALLER",
        ]
        assert bus_db.effect_counts() == {"genuine": 1}
        logged = [r for r in caplog.records if r.getMessage() == "event refused and dead-lettered"]
        seen = sorted((r.event_id, r.event_type, r.source, r.reason) for r in logged)  # type: ignore[attr-defined]
        assert seen == [
            ("forged-0", ORDER_PAID, "notifications", "EVENT_TYPE_NOT_PUBLISHED_BY_CALLER"),
            ("forged-1", ORDER_PAID, "orders", "EVENT_SOURCE_MISMATCH"),
            ("forged-2", ORDER_PAID, "orders", "EVENT_SOURCE_MISMATCH"),
        ]
    finally:
        intake.stop()
