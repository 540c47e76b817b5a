"""The embedded transport with a consumer that starts late: no event is lost or doubled.

`orders` publishes OrderCancelled, which the contract routes to both its declared consumers,
payments and notifications. One of them is not running while the events are published: the
orders relay keeps retrying it (UNAVAILABLE is transient, so even past `max_attempts` nothing
is dead-lettered) while the other one applies everything. Once the late one starts, the
backlog drains: each consumer has applied every event exactly once, per aggregate in publish
order. Nothing subscribes: the routes come from the contract. Real mTLS gRPC servers, a real
relay thread, real databases (SQLite files or PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import func, select

from poly.events.v1.events_pb2 import OrderCancelled
from services.kit import bus, clients, config, db, server
from services.kit.bus import contract
from tests.kit.bus.conftest import BusDb, make_bus_db
from tests.support.effects import record_effect
from tests.support.env import free_port, settings_for
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

ORDER_CANCELLED = "poly.events.v1.OrderCancelled"
CONSUMERS = ("notifications", "payments")
EVENTS, AGGREGATES, PER_TRANSACTION = 30, 3, 5
MAX_ATTEMPTS = 3
"""Deliveries to the late consumer are retried well past this: UNAVAILABLE never dead-letters."""


@dataclass
class Bus:
    """The publisher (an outbox and its relay) and the two consumers' databases and settings."""

    orders_db: BusDb
    consumer_dbs: dict[str, BusDb]
    environ: dict[str, str]
    relay: bus.Relay
    outbox: bus.Outbox
    servers: dict[str, server.RunningServer] = field(default_factory=dict)

    def start_consumer(self, name: str) -> None:
        consumer_db = self.consumer_dbs[name]
        consumer = bus.Consumer(
            consumer_db.engine,
            consumer_db.tables,
            {OrderCancelled: record_effect(consumer_db.effects, OrderCancelled)},
        )
        sink = bus.EventSinkServicer(
            consumer, consumer_db.engine, consumer_db.tables, service=name, services=config.SERVICES
        )
        self.servers[name] = server.start(settings_for(name, self.environ), [bus.sink_registration(sink)])

    def deliveries(self, route: str) -> list[tuple[str, int, str]]:
        """``(state, attempts, last error)`` of each delivery of the orders outbox to `route`."""
        d = self.orders_db.tables.delivery
        with self.orders_db.engine.connect() as connection:
            rows = connection.execute(
                select(d.c.state, d.c.attempts, func.coalesce(d.c.last_error, "")).where(d.c.route == route)
            ).all()
        return [(str(state), int(attempts), str(error)) for state, attempts, error in rows]


@pytest.fixture
def event_bus(certs: Path, bus_db: BusDb, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Bus]:
    if bus_db.engine.dialect.name == "postgresql":
        make: Callable[[], str] = request.getfixturevalue("postgres_databases")
        consumer_dbs = {name: make_bus_db(make()) for name in CONSUMERS}
    else:
        consumer_dbs = {name: make_bus_db(f"sqlite:///{tmp_path / f'{name}.db'}") for name in CONSUMERS}
    environ = {"POLY_TLS_DIR": str(certs), "POLY_GRACE_SECONDS": "1"}
    for name in CONSUMERS:
        port = free_port()
        environ[f"POLY_{name.upper()}_PORT"] = str(port)
        environ[f"POLY_{name.upper()}_ADDRESS"] = f"localhost:{port}"
    channels = clients.Channels(
        settings_for("orders", environ), services={name: [bus.EVENT_SINK] for name in CONSUMERS}
    )
    relay = bus.Relay(
        bus_db.engine,
        bus_db.tables,
        bus.EmbeddedTransport(channels, timeout=2),
        settings=bus.RelaySettings(
            max_attempts=MAX_ATTEMPTS,
            base_delay=0.05,
            max_delay=0.3,
            idle_poll=0.05,
            lease_seconds=5,
            send_timeout=2,
        ),
    )
    outbox = bus.Outbox(bus_db.tables, source="orders", routing=bus.consumer_routing(), on_commit=relay.wake)
    made = Bus(bus_db, consumer_dbs, environ, relay, outbox)
    relay.start()
    try:
        yield made
    finally:
        relay.stop()
        for running in made.servers.values():
            running.drain()
        channels.close()
        for consumer_db in consumer_dbs.values():
            consumer_db.engine.dispose()


@pytest.mark.parametrize("late", CONSUMERS)
def test_a_consumer_started_late_still_applies_every_event_once_in_order(event_bus: Bus, late: str) -> None:
    assert contract.consumers_of(ORDER_CANCELLED) == set(CONSUMERS)
    early = next(name for name in CONSUMERS if name != late)
    event_bus.start_consumer(early)

    published: dict[str, list[str]] = {}
    ids: list[str] = []
    for start in range(0, EVENTS, PER_TRANSACTION):
        with db.transaction(event_bus.orders_db.engine) as session:
            for number in range(start, start + PER_TRANSACTION):
                aggregate = f"orders/{number % AGGREGATES}"
                order = f"{aggregate}#{number}"
                envelope = event_bus.outbox.publish(
                    session, OrderCancelled(order=order), aggregate_id=aggregate
                )
                published.setdefault(aggregate, []).append(order)
                ids.append(envelope.id)

    eventually(
        lambda: len(event_bus.consumer_dbs[early].effect_counts()) == EVENTS,
        timeout=30,
        what=f"{early} to apply every event while {late} is down",
    )

    def retried_past_the_budget() -> bool:
        retries = event_bus.relay.metrics.snapshot().get(("retried", ORDER_CANCELLED), 0)
        errors = {error for _, _, error in event_bus.deliveries(late) if error}
        return retries > MAX_ATTEMPTS and bool(errors)

    eventually(retried_past_the_budget, timeout=30, what=f"the relay to keep retrying {late}")
    waiting = event_bus.deliveries(late)
    assert len(waiting) == EVENTS and {state for state, _, _ in waiting} == {bus.PENDING}, "none dead"
    assert all("UNAVAILABLE" in error for _, _, error in waiting if error), "the route is down, not refusing"
    assert event_bus.consumer_dbs[late].effect_counts() == {}

    event_bus.start_consumer(late)
    eventually(
        lambda: (
            bus.state_counts(event_bus.orders_db.engine, event_bus.orders_db.tables)
            == {bus.DELIVERED: EVENTS * len(CONSUMERS)}
        ),
        timeout=30,
        what=f"the backlog to drain to {late}",
    )
    for name in CONSUMERS:
        consumer_db = event_bus.consumer_dbs[name]
        assert consumer_db.effect_counts() == dict.fromkeys(ids, 1), f"{name}: not each event exactly once"
        for aggregate, orders in published.items():
            assert consumer_db.effect_order(aggregate) == orders, f"{name}: {aggregate} out of publish order"
