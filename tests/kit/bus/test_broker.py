"""The RabbitMQ transport against the real broker on 127.0.0.1 (POLY_TEST_AMQP_URL)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aio_pika.abc import AbstractChannel
from google.protobuf.message import Message
from sqlalchemy import Connection

from poly.events.v1.events_pb2 import EventEnvelope, OrderPaid, UserRegistered
from services.kit import bus
from services.kit.bus import topology
from services.kit.bus.broker import LoopThread
from tests.kit.bus.conftest import BusDb, Clock, publish, record_effect
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


@pytest.fixture
def prefix(amqp_url: str) -> Iterator[str]:
    """A namespace of exchanges and queues of this test alone, deleted afterwards."""
    name = f"polytest-{uuid.uuid4().hex[:10]}"
    yield name
    delete_namespace(amqp_url, name)


ORDER_PAID = "poly.events.v1.OrderPaid"
USER_REGISTERED = "poly.events.v1.UserRegistered"


def _until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    eventually(lambda: condition() or None, timeout=timeout)


def test_published_events_are_applied_once_each_even_when_published_twice(
    bus_db: BusDb, amqp_url: str, prefix: str
) -> None:
    consumer = bus.Consumer(bus_db.engine, bus_db.tables, {OrderPaid: record_effect(bus_db.effects)})
    intake = bus.BrokerConsumer(amqp_url, "notifications", consumer, prefix=prefix)
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

    def handler(connection: Connection, payload: Message, envelope: EventEnvelope) -> None:
        assert isinstance(payload, OrderPaid)
        if payload.order in broken:
            raise RuntimeError("cannot handle this one")
        recorder(connection, payload, envelope)

    consumer = bus.Consumer(bus_db.engine, bus_db.tables, {OrderPaid: handler})
    intake = bus.BrokerConsumer(
        amqp_url, "notifications", consumer, prefix=prefix, attempts=3, retry_delay=0.01
    )
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
        assert bus.redrive_dead_queue(amqp_url, "notifications", prefix=prefix) == 1
        _until(lambda: bus_db.effect_counts() == {later.id: 1, poison.id: 1})
    finally:
        transport.close()
        intake.stop()


def test_across_a_broker_outage_publishes_commit_drain_once_and_leave_one_channel(
    bus_db: BusDb, amqp_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    proxy, proxied_url = through_proxy(amqp_url)
    consumer = bus.Consumer(bus_db.engine, bus_db.tables, {OrderPaid: record_effect(bus_db.effects)})
    intake = bus.BrokerConsumer(amqp_url, "notifications", consumer, prefix=prefix)  # the consumer's own link
    publisher = f"{prefix} publisher"
    transport = bus.BrokerTransport(proxied_url, prefix=prefix, timeout=2, name=publisher)
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
        assert channels_of(publisher) == [1]
        proxy.down()
        during = [publish(bus_db, outbox, "orders/A", f"orders/A#{i}") for i in range(5, 25)]
        _until(lambda: relay.metrics.total("retried") >= 10)  # many publish attempts while it is down
        assert bus.backlog(bus_db.engine, bus_db.tables) >= 15, "publishes kept committing while it was down"
        _until(lambda: channels_of(publisher) == [])  # the broker no longer sees the publisher
        proxy.up()
        _until(lambda: bus.backlog(bus_db.engine, bus_db.tables) == 0, timeout=60)
        _until(lambda: len(bus_db.effect_counts()) == 25)
        assert bus_db.effect_counts() == {e.id: 1 for e in first + during}, "nothing lost, nothing twice"
        assert bus_db.effect_order("orders/A") == [f"orders/A#{i}" for i in range(25)]
        assert channels_of(publisher) == [1], "one connection with one channel, as before the outage"
        errors = [
            r for r in caplog.records if r.levelno >= logging.ERROR and not expected_during_an_outage(r)
        ]
        assert errors == [], "an expected reconnect logs no error"
        refused = [r for r in caplog.records if expected_during_an_outage(r)]
        assert len(refused) < relay.metrics.total("retried"), (
            "connection attempts are spaced, not one per send"
        )
    finally:
        relay.stop()
        transport.close()
        intake.stop()
        proxy.down()


def _envelope(event_id: str) -> EventEnvelope:
    envelope = EventEnvelope(id=event_id, type=ORDER_PAID, aggregate_id="orders/U", source="orders")
    envelope.payload.Pack(OrderPaid(order=f"orders/U#{event_id}"))
    return envelope


def test_an_event_whose_consumers_queues_vanished_raises_the_alarm_and_is_delivered(
    amqp_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="poly.bus.broker")
    transport = bus.BrokerTransport(amqp_url, prefix=prefix)
    try:
        transport.send("broker", _envelope("before"))  # connects and declares the topology
        delete_queue(amqp_url, bus.queue_name("notifications", prefix))  # an operator's mistake
        transport.send("broker", _envelope("after"))  # returned, declared again, published again
        assert transport.metrics.total("unroutable") == 1
        alarms = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert [(r.event_type, r.missing_consumers) for r in alarms] == [  # type: ignore[attr-defined]
            (ORDER_PAID, ["notifications"])
        ]
        notifications = bus.queue_name("notifications", prefix)
        assert ready_count(amqp_url, notifications) == 1, "the queue is back, with the event"
    finally:
        transport.close()


def test_one_consumers_missing_queue_is_noticed_while_the_others_still_receive(
    amqp_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """UserRegistered has three consumers and each gets its own delivery, published to its own
    queue: with notifications' queue gone, users and payments still receive, and the delivery
    to notifications raises the alarm instead of vanishing (a fan-out would have dropped it)."""
    caplog.set_level(logging.WARNING, logger="poly.bus.broker")
    transport = bus.BrokerTransport(amqp_url, prefix=prefix)

    def registered(event_id: str) -> EventEnvelope:
        envelope = EventEnvelope(id=event_id, type=USER_REGISTERED, aggregate_id="users/U", source="auth")
        envelope.payload.Pack(UserRegistered(user="users/U", email="u@example.com"))
        return envelope

    consumers = ("users", "payments", "notifications")
    try:
        for consumer in consumers:
            transport.send(consumer, registered("first"))
        delete_queue(amqp_url, bus.queue_name("notifications", prefix))  # an operator's mistake
        for consumer in consumers:
            transport.send(consumer, registered("second"))
        assert transport.metrics.total("unroutable") == 1
        alarms = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert [(r.event_type, r.missing_consumers) for r in alarms] == [  # type: ignore[attr-defined]
            (USER_REGISTERED, ["notifications"])
        ]
        waiting = {name: ready_count(amqp_url, bus.queue_name(name, prefix)) for name in consumers}
        assert waiting == {"users": 2, "payments": 2, "notifications": 1}, "its second, once re-declared"
    finally:
        transport.close()


def test_an_event_still_unroutable_after_declaring_again_stays_pending_never_dead(
    bus_db: BusDb, amqp_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    declare = topology.declare

    async def declare_then_lose(channel: AbstractChannel, prefix: str, **options: Any) -> topology.Declared:
        declared = await declare(channel, prefix, **options)
        await channel.queue_delete(bus.queue_name("notifications", prefix))  # someone keeps deleting it
        return declared

    monkeypatch.setattr(topology, "declare", declare_then_lose)
    transport = bus.BrokerTransport(amqp_url, prefix=prefix)
    clock = Clock()
    relay = bus.Relay(
        bus_db.engine, bus_db.tables, transport, settings=bus.RelaySettings(max_attempts=2), clock=clock
    )
    try:
        with pytest.raises(bus.DeliveryError, match="no queue of notifications takes it") as refused:
            transport.send("broker", _envelope("lost-queue"))
        assert refused.value.transient, "retried until the topology is back, never dead-lettered"
        outbox = bus.Outbox(bus_db.tables, source="orders", routing=bus.broker_routing(), clock=clock)
        publish(bus_db, outbox, "orders/U", "orders/U#0")
        for _ in range(3):  # past max_attempts
            assert relay.run_once() == 1
            clock.advance(120)  # past any back-off
        assert bus.state_counts(bus_db.engine, bus_db.tables) == {bus.PENDING: 1}
        assert transport.metrics.total("unroutable") == 4
        monkeypatch.setattr(topology, "declare", declare)  # the deleting stopped
        assert relay.run_once() == 1
        assert bus.state_counts(bus_db.engine, bus_db.tables) == {bus.DELIVERED: 1}
        notifications = bus.queue_name("notifications", prefix)
        assert ready_count(amqp_url, notifications) == 1, "delivered once the queue stayed"
    finally:
        transport.close()


def test_a_loop_thread_cancels_what_outlives_its_timeout() -> None:
    thread = LoopThread("test-loop")
    ended: list[str] = []

    async def slow() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            ended.append("cancelled")

    try:
        with pytest.raises(TimeoutError):
            thread.run(slow(), 0.1)
        eventually(lambda: ended, timeout=5, what="the coroutine cancelled on its loop")
        assert thread.run(asyncio.sleep(0, result="done"), 1) == "done"
    finally:
        thread.close()
