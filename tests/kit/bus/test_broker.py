"""The RabbitMQ transport against the real broker on 127.0.0.1 (POLY_TEST_AMQP_URL)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterator

import aio_pika
import pytest
from google.protobuf.message import Message
from sqlalchemy.orm import Session

from poly.events.v1.events_pb2 import EventEnvelope, OrderCreated
from services.kit import bus
from tests.kit.bus.conftest import BusDb, Clock, publish, record_effect
from tests.support.broker import delete_namespace
from tests.support.tcp_proxy import TcpProxy


@pytest.fixture
def prefix(amqp_url: str) -> Iterator[str]:
    """A namespace of exchanges and queues of this test alone, deleted afterwards."""
    name = f"polytest-{uuid.uuid4().hex[:10]}"
    yield name
    delete_namespace(amqp_url, name)


def _until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)  # waiting on another thread's broker traffic: nothing to block on


def test_exchange_per_event_family() -> None:
    assert bus.exchange_name("poly.events.v1.OrderPaid") == "poly.events.order"
    assert bus.exchange_name("poly.events.v1.PaymentCaptured", "x") == "x.events.payment"
    assert bus.exchange_name("poly.events.v1.UserRegistered") == "poly.events.user"


def test_published_events_are_applied_once_each_even_when_published_twice(
    bus_db: BusDb, amqp_url: str, prefix: str
) -> None:
    consumer = bus.Consumer(bus_db.factory, bus_db.tables, {OrderCreated: record_effect(bus_db.effects)})
    intake = bus.BrokerConsumer(amqp_url, "payments", consumer, prefix=prefix)
    transport = bus.BrokerTransport(amqp_url, prefix=prefix)
    intake.start()
    try:
        assert intake.ready.is_set()
        clock = Clock()
        outbox = bus.Outbox(bus_db.tables, source="orders", routing=bus.broker_routing(), clock=clock)
        events = [publish(bus_db, outbox, f"orders/{i % 3}", f"orders/{i}") for i in range(20)]
        relay = bus.Relay(bus_db.engine, bus_db.tables, transport, clock=clock)
        while relay.run_once():
            pass
        transport.send("broker", events[0])  # a lost confirmation makes the relay publish again
        _until(lambda: sum(bus_db.effect_counts().values()) >= 20)
        _until(lambda: consumer.metrics.total("duplicate") >= 1)
        assert bus_db.effect_counts() == {e.id: 1 for e in events}
        for aggregate in ("orders/0", "orders/1", "orders/2"):
            assert bus_db.effect_order(aggregate) == [
                f"orders/{i}" for i in range(20) if f"orders/{i % 3}" == aggregate
            ]
    finally:
        transport.close()
        intake.stop()


def test_a_poison_event_goes_to_the_dead_letter_queue_and_is_redriven(
    bus_db: BusDb, amqp_url: str, prefix: str
) -> None:
    recorder = record_effect(bus_db.effects)
    broken = {"orders/P#0"}

    def handler(session: Session, payload: Message, envelope: EventEnvelope) -> None:
        assert isinstance(payload, OrderCreated)
        if payload.order in broken:
            raise RuntimeError("cannot handle this one")
        recorder(session, payload, envelope)

    consumer = bus.Consumer(bus_db.factory, bus_db.tables, {OrderCreated: handler})
    intake = bus.BrokerConsumer(amqp_url, "payments", consumer, prefix=prefix, attempts=3, retry_delay=0.01)
    transport = bus.BrokerTransport(amqp_url, prefix=prefix)
    intake.start()
    try:
        outbox = bus.Outbox(bus_db.tables, source="orders", routing=bus.broker_routing())
        poison = publish(bus_db, outbox, "orders/P", "orders/P#0")
        later = publish(bus_db, outbox, "orders/P", "orders/P#1")
        relay = bus.Relay(bus_db.engine, bus_db.tables, transport)
        while relay.run_once():
            pass
        _until(lambda: bus_db.effect_counts() == {later.id: 1})
        broken.clear()  # the handler was fixed
        assert bus.redrive_dead_queue(amqp_url, "payments", prefix=prefix) == 1
        _until(lambda: bus_db.effect_counts() == {later.id: 1, poison.id: 1})
    finally:
        transport.close()
        intake.stop()


def test_while_the_broker_is_unreachable_publishes_commit_then_everything_drains_once(
    bus_db: BusDb, amqp_url: str, prefix: str
) -> None:
    host_port = amqp_url.rsplit("@", 1)[-1].split("/", 1)[0]
    host, _, port = host_port.partition(":")
    proxy = TcpProxy((host, int(port or 5672)))
    proxy.up()
    through_proxy = amqp_url.replace(host_port, f"127.0.0.1:{proxy.port}")
    consumer = bus.Consumer(bus_db.factory, bus_db.tables, {OrderCreated: record_effect(bus_db.effects)})
    intake = bus.BrokerConsumer(amqp_url, "payments", consumer, prefix=prefix)  # the consumer's own link
    transport = bus.BrokerTransport(through_proxy, prefix=prefix, timeout=2)
    intake.start()
    relay = bus.Relay(
        bus_db.engine,
        bus_db.tables,
        transport,
        settings=bus.RelaySettings(base_delay=0.05, max_delay=0.5, max_attempts=1000, idle_poll=0.05),
    )
    relay.start()
    try:
        outbox = bus.Outbox(
            bus_db.tables, source="orders", routing=bus.broker_routing(), on_commit=relay.wake
        )
        first = [publish(bus_db, outbox, "orders/A", f"orders/A#{i}") for i in range(5)]
        _until(lambda: len(bus_db.effect_counts()) == 5)
        proxy.down()
        during = [publish(bus_db, outbox, "orders/A", f"orders/A#{i}") for i in range(5, 25)]
        _until(lambda: relay.metrics.total("retried") >= 3)
        assert bus.backlog(bus_db.engine, bus_db.tables) >= 15, "publishes kept committing while it was down"
        proxy.up()
        _until(lambda: bus.backlog(bus_db.engine, bus_db.tables) == 0, timeout=60)
        _until(lambda: len(bus_db.effect_counts()) == 25)
        assert bus_db.effect_counts() == {e.id: 1 for e in first + during}, "nothing lost, nothing twice"
        assert bus_db.effect_order("orders/A") == [f"orders/A#{i}" for i in range(25)]
    finally:
        relay.stop()
        transport.close()
        intake.stop()
        proxy.down()


def test_an_event_nobody_has_bound_a_queue_for_is_not_counted_as_delivered(
    amqp_url: str, prefix: str
) -> None:
    transport = bus.BrokerTransport(amqp_url, prefix=prefix)
    envelope = EventEnvelope(
        id="1b2c", type="poly.events.v1.OrderCreated", aggregate_id="orders/1", source="orders"
    )
    try:
        with pytest.raises(bus.DeliveryError, match="no queue is bound") as refused:
            transport.send("broker", envelope)
        assert not refused.value.transient, "it counts towards dead-lettering, to be re-driven later"
    finally:
        transport.close()


def test_an_undecodable_message_goes_to_the_dead_letter_queue(
    bus_db: BusDb, amqp_url: str, prefix: str
) -> None:
    consumer = bus.Consumer(bus_db.factory, bus_db.tables, {OrderCreated: record_effect(bus_db.effects)})
    intake = bus.BrokerConsumer(amqp_url, "payments", consumer, prefix=prefix)
    intake.start()
    try:

        async def publish_garbage() -> None:
            connection = await aio_pika.connect(amqp_url, timeout=10)
            async with connection:
                channel = await connection.channel()
                exchange = await channel.get_exchange(f"{prefix}.events.order")
                await exchange.publish(
                    aio_pika.Message(body=b"\xff not a protobuf"), routing_key="poly.events.v1.OrderCreated"
                )

        asyncio.run(publish_garbage())

        async def dead_count() -> int:
            connection = await aio_pika.connect(amqp_url, timeout=10)
            async with connection:
                channel = await connection.channel()
                queue = await channel.declare_queue(bus.dead_queue_name("payments", prefix), passive=True)
                return int(queue.declaration_result.message_count or 0)

        _until(lambda: asyncio.run(dead_count()) == 1)
    finally:
        intake.stop()


ORDER_CREATED = "poly.events.v1.OrderCreated"


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
    """The headers of the messages in the payments dead-letter queue (removed if `take`)."""

    async def go() -> list[dict[str, object]]:
        connection = await aio_pika.connect(amqp_url, timeout=10)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(bus.dead_queue_name("payments", prefix), passive=True)
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
    consumer = bus.Consumer(bus_db.factory, bus_db.tables, {OrderCreated: record_effect(bus_db.effects)})
    intake = bus.BrokerConsumer(amqp_url, "payments", consumer, prefix=prefix, attempts=3, retry_delay=0.01)
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
                id=f"forged-{number}", type=ORDER_CREATED, aggregate_id="orders/F", source=source
            )
            envelope.payload.Pack(OrderCreated(order=f"orders/F#{number}"))
            _publish_raw(amqp_url, prefix, envelope, headers)
        genuine = EventEnvelope(id="genuine", type=ORDER_CREATED, aggregate_id="orders/F", source="orders")
        genuine.payload.Pack(OrderCreated(order="orders/F#genuine"))
        _publish_raw(amqp_url, prefix, genuine, {"source": "orders"})

        _until(lambda: bus_db.effect_counts() == {"genuine": 1}, timeout=30)
        _until(lambda: len(_dead(amqp_url, prefix)) == 3)
        assert consumer.metrics.total("refused") == 3
        assert consumer.metrics.total("applied") == 1, "refused at once: never retried, never applied"

        assert bus.redrive_dead_queue(amqp_url, "payments", prefix=prefix) == 0, "refused again anyway"
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
            ("forged-0", ORDER_CREATED, "notifications", "EVENT_TYPE_NOT_PUBLISHED_BY_CALLER"),
            ("forged-1", ORDER_CREATED, "orders", "EVENT_SOURCE_MISMATCH"),
            ("forged-2", ORDER_CREATED, "orders", "EVENT_SOURCE_MISMATCH"),
        ]
    finally:
        intake.stop()
