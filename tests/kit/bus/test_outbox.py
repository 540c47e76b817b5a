from __future__ import annotations

import pytest
from sqlalchemy import func, select

from poly.events.v1.events_pb2 import OrderCreated, UserDeleted
from services.kit import bus, db
from services.kit.config import BusSettings
from tests.kit.bus.conftest import BusDb, publish, subscribe

ORDER_CREATED = "poly.events.v1.OrderCreated"


def _count(bus_db: BusDb, table: object) -> int:
    with bus_db.engine.connect() as connection:
        return int(connection.scalar(select(func.count()).select_from(table)) or 0)  # type: ignore[arg-type]


def test_a_rolled_back_transaction_leaves_no_event(bus_db: BusDb) -> None:
    subscribe(bus_db, "payments", ORDER_CREATED)
    outbox = bus.Outbox(bus_db.tables, source="orders", routing=bus.subscriber_routing(bus_db.tables))
    with pytest.raises(RuntimeError), db.transaction(bus_db.factory) as session:
        outbox.publish(session, OrderCreated(order="orders/1"), aggregate_id="orders/1")
        raise RuntimeError("the state change failed")
    assert _count(bus_db, bus_db.tables.outbox) == 0
    assert _count(bus_db, bus_db.tables.delivery) == 0


def test_a_committed_event_has_one_delivery_per_subscriber(bus_db: BusDb) -> None:
    subscribe(bus_db, "payments", ORDER_CREATED)
    subscribe(bus_db, "notifications", ORDER_CREATED, "poly.events.v1.OrderPaid")
    subscribe(bus_db, "users", "poly.events.v1.UserRegistered")
    outbox = bus.Outbox(bus_db.tables, source="orders", routing=bus.subscriber_routing(bus_db.tables))
    envelope = publish(bus_db, outbox, "orders/1", "orders/1")
    assert (envelope.type, envelope.source, envelope.aggregate_id) == (ORDER_CREATED, "orders", "orders/1")
    assert envelope.schema_version == 1 and envelope.occur_time.seconds > 0
    payload = OrderCreated()
    assert envelope.payload.Unpack(payload) and payload.order == "orders/1"
    d = bus_db.tables.delivery
    with bus_db.engine.connect() as connection:
        routes = connection.execute(select(d.c.route, d.c.state).order_by(d.c.route)).all()
    assert routes == [("notifications", bus.PENDING), ("payments", bus.PENDING)]


def test_an_event_nobody_subscribed_to_is_kept_but_not_routed(bus_db: BusDb) -> None:
    outbox = bus.Outbox(bus_db.tables, source="orders", routing=bus.subscriber_routing(bus_db.tables))
    publish(bus_db, outbox, "orders/1", "orders/1")
    assert _count(bus_db, bus_db.tables.outbox) == 1
    assert _count(bus_db, bus_db.tables.delivery) == 0


def test_broker_routing_sends_everything_to_the_broker(bus_db: BusDb) -> None:
    outbox = bus.Outbox(bus_db.tables, source="orders", routing=bus.broker_routing())
    publish(bus_db, outbox, "orders/1", "orders/1")
    with bus_db.engine.connect() as connection:
        assert connection.execute(select(bus_db.tables.delivery.c.route)).scalars().all() == ["broker"]


@pytest.mark.parametrize(
    ("url", "routes"),
    [("", ["payments"]), ("amqp://guest:guest@127.0.0.1:5672/", ["broker"])],
    ids=["embedded", "broker"],
)
def test_routing_follows_the_configured_transport(bus_db: BusDb, url: str, routes: list[str]) -> None:
    subscribe(bus_db, "payments", ORDER_CREATED)
    chosen = bus.routing(BusSettings(url=url), bus_db.tables)
    publish(bus_db, bus.Outbox(bus_db.tables, source="orders", routing=chosen), "orders/1", "orders/1")
    with bus_db.engine.connect() as connection:
        assert connection.execute(select(bus_db.tables.delivery.c.route)).scalars().all() == routes


def test_the_relay_is_woken_after_commit_only(bus_db: BusDb) -> None:
    woken: list[int] = []
    outbox = bus.Outbox(
        bus_db.tables, source="orders", routing=bus.broker_routing(), on_commit=lambda: woken.append(1)
    )
    with pytest.raises(RuntimeError), db.transaction(bus_db.factory) as session:
        outbox.publish(session, OrderCreated(order="orders/1"), aggregate_id="orders/1")
        raise RuntimeError("rolled back")
    assert woken == []
    with db.transaction(bus_db.factory) as session:
        outbox.publish(session, OrderCreated(order="orders/2"), aggregate_id="orders/2")
        outbox.publish(session, OrderCreated(order="orders/3"), aggregate_id="orders/3")
        assert woken == [], "not before the commit"
    assert woken == [1], "once per transaction"


def test_an_aggregate_id_is_required(bus_db: BusDb) -> None:
    outbox = bus.Outbox(bus_db.tables, source="orders", routing=bus.broker_routing())
    with pytest.raises(ValueError, match="aggregate_id"), db.transaction(bus_db.factory) as session:
        outbox.publish(session, OrderCreated(order="orders/1"), aggregate_id="")


def test_a_service_cannot_publish_an_event_it_is_not_the_declared_publisher_of(bus_db: BusDb) -> None:
    subscribe(bus_db, "auth", "poly.events.v1.UserDeleted")
    outbox = bus.Outbox(bus_db.tables, source="notifications", routing=bus.subscriber_routing(bus_db.tables))
    refused = pytest.raises(ValueError, match=r"notifications is not the declared publisher.*names users")
    with refused, db.transaction(bus_db.factory) as session:
        outbox.publish(session, UserDeleted(user="users/1"), aggregate_id="users/1")
    assert _count(bus_db, bus_db.tables.outbox) == 0
    assert _count(bus_db, bus_db.tables.delivery) == 0
