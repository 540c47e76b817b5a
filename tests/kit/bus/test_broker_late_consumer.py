"""The RabbitMQ transport with consumers that start late, in every order: none misses an event.

`auth` publishes UserRegistered, which the contract routes to three consumers: users,
payments and notifications. A first batch is published before any of them has ever started,
then one consumer starts, another batch is published, and so on: every batch but the last
is published while some consumer has never run. Because every service declares the whole
topology (here the publisher, on connecting), each consumer's queue has been collecting its
events all along, and each consumer applies every event exactly once whatever the order.
Before the topology came from the contract, a queue existed only once its own consumer had
started: the first batch went nowhere (returned, then dead-lettered) and each later batch
reached only the consumers already started. Real RabbitMQ, a real relay thread, SQLite files.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from poly.events.v1.events_pb2 import EventEnvelope, UserRegistered
from services.kit import bus, db
from services.kit.bus import contract
from tests.kit.bus.conftest import BusDb, make_bus_db
from tests.support.broker import delete_namespace
from tests.support.effects import record_effect
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

USER_REGISTERED = "poly.events.v1.UserRegistered"
CONSUMERS = ("users", "payments", "notifications")
PER_BATCH = 5


@pytest.fixture
def prefix(amqp_url: str) -> Iterator[str]:
    name = f"polytest-{uuid.uuid4().hex[:10]}"
    yield name
    delete_namespace(amqp_url, name)


def test_the_contract_names_three_consumers_of_user_registered() -> None:
    assert contract.consumers_of(USER_REGISTERED) == frozenset(CONSUMERS)


@pytest.mark.parametrize("order", list(itertools.permutations(CONSUMERS)), ids="-".join)
def test_consumers_started_late_in_any_order_each_apply_every_event_once(
    tmp_path: Path, amqp_url: str, prefix: str, order: tuple[str, ...]
) -> None:
    auth = make_bus_db(f"sqlite:///{tmp_path / 'auth.db'}")
    transport = bus.BrokerTransport(amqp_url, prefix=prefix)
    relay = bus.Relay(
        auth.engine,
        auth.tables,
        transport,
        settings=bus.RelaySettings(base_delay=0.05, max_delay=0.5, idle_poll=0.05, max_attempts=3),
    )
    outbox = bus.Outbox(auth.tables, source="auth", routing=bus.broker_routing(), on_commit=relay.wake)
    consumers: dict[str, BusDb] = {}
    started: list[bus.BrokerConsumer] = []
    published: list[EventEnvelope] = []

    def register(batch: int) -> None:
        for number in range(PER_BATCH):
            user = f"users/{batch}-{number}"
            with db.transaction(auth.engine) as session:
                published.append(outbox.publish(session, UserRegistered(user=user), aggregate_id=user))
        eventually(
            lambda: bus.state_counts(auth.engine, auth.tables).get(bus.PENDING, 0) == 0,
            what=f"batch {batch} confirmed by the broker",
        )

    relay.start()
    try:
        register(0)  # no consumer has ever run
        for batch, service in enumerate(order, start=1):
            consumers[service] = make_bus_db(f"sqlite:///{tmp_path / f'{service}.db'}")
            side = consumers[service]
            handler = record_effect(side.effects, UserRegistered, subject="user")
            consumer = bus.Consumer(side.engine, side.tables, {UserRegistered: handler})
            started.append(bus.BrokerConsumer(amqp_url, service, consumer, prefix=prefix))
            started[-1].start()
            assert started[-1].ready.is_set()
            register(batch)  # the consumers after this one in `order` have still never run
        everything = {event.id: 1 for event in published}
        assert len(everything) == PER_BATCH * (len(CONSUMERS) + 1)
        for service in CONSUMERS:
            eventually(
                lambda service=service: consumers[service].effect_counts() == everything,  # type: ignore[misc]
                what=f"{service} to apply every event once",
            )
        assert bus.state_counts(auth.engine, auth.tables) == {bus.DELIVERED: len(published)}
        assert transport.metrics.total("unroutable") == 0
    finally:
        relay.stop()
        for intake in started:
            intake.stop()
        transport.close()
        for side in [auth, *consumers.values()]:
            side.engine.dispose()
