from __future__ import annotations

import threading

import pytest
from google.protobuf.message import Message
from sqlalchemy import func, select

from poly.events.v1.events_pb2 import (
    EventEnvelope,
    OrderCancelled,
    OrderFulfilled,
    OrderPaid,
    PaymentVoided,
    UserDeleted,
    UserRegistered,
)
from services.kit import bus, db
from services.kit.bus import contract
from services.kit.config import BusSettings
from tests.kit.bus.conftest import BusDb, make_bus_db, publish
from tests.support.waiting import eventually

ORDER_PAID = "poly.events.v1.OrderPaid"


def _count(bus_db: BusDb, table: object) -> int:
    with bus_db.engine.connect() as connection:
        return int(connection.scalar(select(func.count()).select_from(table)) or 0)  # type: ignore[arg-type]


def _routes(bus_db: BusDb) -> list[tuple[str, str]]:
    d = bus_db.tables.delivery
    with bus_db.engine.connect() as connection:
        rows = connection.execute(select(d.c.route, d.c.state).order_by(d.c.route)).all()
    return [(str(route), str(state)) for route, state in rows]


def _published(metrics: bus.BusMetrics, event_type: str) -> int:
    return metrics.snapshot().get(("published", event_type), 0)


def test_a_rolled_back_transaction_leaves_no_event(bus_db: BusDb) -> None:
    outbox = bus.Outbox(bus_db.tables, source="orders", routing=bus.consumer_routing())
    with pytest.raises(RuntimeError), db.transaction(bus_db.engine) as session:
        outbox.publish(session, OrderPaid(order="orders/1"), aggregate_id="orders/1")
        raise RuntimeError("the state change failed")
    assert _count(bus_db, bus_db.tables.outbox) == 0
    assert _count(bus_db, bus_db.tables.delivery) == 0


def test_a_committed_event_is_a_well_formed_envelope(bus_db: BusDb) -> None:
    outbox = bus.Outbox(bus_db.tables, source="orders", routing=bus.consumer_routing())
    envelope = publish(bus_db, outbox, "orders/1", "orders/1")
    assert (envelope.type, envelope.source, envelope.aggregate_id) == (ORDER_PAID, "orders", "orders/1")
    assert envelope.schema_version == 1 and envelope.occur_time.seconds > 0
    payload = OrderPaid()
    assert envelope.payload.Unpack(payload) and payload.order == "orders/1"


# Each event's consumers as the contract declares them (poly/events/v1/events.proto); nobody
# subscribes anything in these tests: the routes come from the contract alone.
@pytest.mark.parametrize(
    ("source", "event", "consumers"),
    [
        ("auth", UserRegistered(user="users/1"), ["notifications", "payments", "users"]),
        ("orders", OrderCancelled(order="orders/1"), ["notifications", "payments"]),
        ("orders", OrderPaid(order="orders/1"), ["notifications"]),
        ("users", UserDeleted(user="users/1"), ["auth"]),
    ],
    ids=["three-consumers", "two-consumers", "one-consumer", "users-to-auth"],
)
def test_an_event_gets_one_delivery_per_declared_consumer(
    bus_db: BusDb, source: str, event: Message, consumers: list[str]
) -> None:
    assert sorted(contract.consumers_of(event.DESCRIPTOR.full_name)) == consumers
    outbox = bus.Outbox(bus_db.tables, source=source, routing=bus.consumer_routing())
    with db.transaction(bus_db.engine) as session:
        outbox.publish(session, event, aggregate_id="a/1")
    assert _routes(bus_db) == [(consumer, bus.PENDING) for consumer in consumers]


@pytest.mark.parametrize(
    ("source", "event"),
    [("payments", PaymentVoided(payment="payments/1")), ("orders", OrderFulfilled(order="orders/1"))],
    ids=["PaymentVoided", "OrderFulfilled"],
)
@pytest.mark.parametrize(
    "routing", [bus.consumer_routing(), bus.broker_routing()], ids=["embedded", "broker"]
)
def test_an_event_nobody_consumes_is_recorded_and_counted_but_not_routed(
    bus_db: BusDb, source: str, event: Message, routing: bus.Routing
) -> None:
    event_type = event.DESCRIPTOR.full_name
    assert contract.consumers_of(event_type) == frozenset()
    metrics = bus.BusMetrics()
    outbox = bus.Outbox(bus_db.tables, source=source, routing=routing, metrics=metrics)
    with db.transaction(bus_db.engine) as session:
        envelope = outbox.publish(session, event, aggregate_id="a/1")
    assert envelope.type == event_type and envelope.source == source
    assert _count(bus_db, bus_db.tables.outbox) == 1, "kept in the outbox, as published"
    assert _count(bus_db, bus_db.tables.delivery) == 0, "no route: nothing to deliver or dead-letter"
    assert _published(metrics, event_type) == 1


def test_broker_routing_sends_a_consumed_event_once_to_the_broker(bus_db: BusDb) -> None:
    metrics = bus.BusMetrics()
    outbox = bus.Outbox(bus_db.tables, source="orders", routing=bus.broker_routing(), metrics=metrics)
    with db.transaction(bus_db.engine) as session:
        # Two consumers: the broker fans it out, so still one delivery.
        outbox.publish(session, OrderCancelled(order="orders/1"), aggregate_id="orders/1")
    assert _routes(bus_db) == [("broker", bus.PENDING)]
    assert _published(metrics, "poly.events.v1.OrderCancelled") == 1


@pytest.mark.parametrize(
    ("url", "routes"),
    [("", ["notifications"]), ("amqp://guest:guest@127.0.0.1:5672/", ["notifications"])],
    ids=["embedded", "broker"],
)
def test_both_transports_route_one_delivery_per_consumer(bus_db: BusDb, url: str, routes: list[str]) -> None:
    chosen = bus.routing(BusSettings(url=url))
    publish(bus_db, bus.Outbox(bus_db.tables, source="orders", routing=chosen), "orders/1", "orders/1")
    with bus_db.engine.connect() as connection:
        assert connection.execute(select(bus_db.tables.delivery.c.route)).scalars().all() == routes


def test_the_relay_is_woken_after_commit_only(bus_db: BusDb) -> None:
    woken: list[int] = []
    outbox = bus.Outbox(
        bus_db.tables, source="orders", routing=bus.broker_routing(), on_commit=lambda: woken.append(1)
    )
    with pytest.raises(RuntimeError), db.transaction(bus_db.engine) as session:
        outbox.publish(session, OrderPaid(order="orders/1"), aggregate_id="orders/1")
        raise RuntimeError("rolled back")
    assert woken == []
    with db.transaction(bus_db.engine) as session:
        outbox.publish(session, OrderPaid(order="orders/2"), aggregate_id="orders/2")
        outbox.publish(session, OrderPaid(order="orders/3"), aggregate_id="orders/3")
        assert woken == [], "not before the commit"
    assert woken == [1], "once per transaction"


def test_an_event_no_one_consumes_wakes_no_relay(bus_db: BusDb) -> None:
    woken: list[int] = []
    outbox = bus.Outbox(
        bus_db.tables, source="orders", routing=lambda _session, _type: [], on_commit=lambda: woken.append(1)
    )
    with db.transaction(bus_db.engine) as session:
        outbox.publish(session, OrderPaid(order="orders/1"), aggregate_id="orders/1")
    assert woken == [], "nothing to deliver, so no relay round"
    with bus_db.engine.connect() as connection:
        assert connection.execute(select(bus_db.tables.delivery.c.route)).scalars().all() == []


def test_an_aggregate_id_is_required(bus_db: BusDb) -> None:
    outbox = bus.Outbox(bus_db.tables, source="orders", routing=bus.broker_routing())
    with pytest.raises(ValueError, match="aggregate_id"), db.transaction(bus_db.engine) as session:
        outbox.publish(session, OrderPaid(order="orders/1"), aggregate_id="")


def test_a_service_cannot_publish_an_event_it_is_not_the_declared_publisher_of(bus_db: BusDb) -> None:
    outbox = bus.Outbox(bus_db.tables, source="notifications", routing=bus.consumer_routing())
    refused = pytest.raises(ValueError, match=r"notifications is not the declared publisher.*names users")
    with refused, db.transaction(bus_db.engine) as session:
        outbox.publish(session, UserDeleted(user="users/1"), aggregate_id="users/1")
    assert _count(bus_db, bus_db.tables.outbox) == 0
    assert _count(bus_db, bus_db.tables.delivery) == 0


def test_on_postgresql_an_aggregates_next_event_waits_for_the_one_before_to_commit(postgres_url: str) -> None:
    """Positions come from a sequence but transactions commit in any order: a second publish
    for the same aggregate waits (on the aggregate's lock, taken before its position is
    drawn) until the first commits, so the relay can never see the later event alone."""
    pg = make_bus_db(postgres_url)
    outbox = bus.Outbox(pg.tables, source="orders", routing=bus.consumer_routing())
    outcome: dict[str, object] = {}
    try:
        with db.transaction(pg.engine) as first:
            earlier = outbox.publish(first, OrderPaid(order="orders/1"), aggregate_id="orders/1")

            def second() -> None:
                try:
                    outcome["later"] = publish(pg, outbox, "orders/1", "orders/1")
                except Exception as error:
                    outcome["error"] = error

            racer = threading.Thread(target=second)
            racer.start()
            eventually(lambda: _waiting_for_an_advisory_lock(pg) or None, what="the second publish to wait")
        racer.join(10)
        assert not racer.is_alive() and "error" not in outcome, outcome
        o = pg.tables.outbox
        with pg.engine.connect() as connection:
            positions = dict(connection.execute(select(o.c.event_id, o.c.position)).all())
        later = outcome["later"]
        assert isinstance(later, EventEnvelope)
        assert positions[earlier.id] < positions[later.id]
        assert _routes(pg) == [("notifications", bus.PENDING), ("notifications", bus.PENDING)]
    finally:
        pg.engine.dispose()


def _waiting_for_an_advisory_lock(pg: BusDb) -> bool:
    with pg.engine.connect() as connection:
        query = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        return bool(connection.exec_driver_sql(query).scalar())
