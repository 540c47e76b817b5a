"""kit.bus.observed: the bus's counters, apply delays and outbox state as Prometheus samples."""

from __future__ import annotations

import datetime as dt

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from sqlalchemy import update

from poly.events.v1.events_pb2 import OrderCancelled
from services.kit import bus, db
from services.kit.bus.observed import export_bus_metrics
from services.kit.telemetry import Telemetry
from services.kit.telemetry.metrics import Metrics
from services.kit.telemetry.tracing import Tracing
from services.kit.telemetry_settings import TelemetrySettings
from tests.kit.bus.conftest import BusDb, Clock, publish

PENDING = "poly_bus_outbox_pending_deliveries"
AGE = "poly_bus_outbox_oldest_pending_age_seconds"


def _telemetry() -> Telemetry:
    return Telemetry(TelemetrySettings(), Metrics(), Tracing(None), None)


def _scrape(bus_db: BusDb, *, source: str = "orders") -> CollectorRegistry:
    """A fresh node's registry (the outbox state is read at most every 5 s per node)."""
    telemetry = _telemetry()
    export_bus_metrics(telemetry, bus.BusMetrics(), bus_db.engine, bus_db.tables, source=source)
    return telemetry.metrics.registry


def _by_consumer(registry: CollectorRegistry, name: str) -> dict[str, float]:
    return {
        sample.labels["consumer"]: sample.value
        for family in registry.collect()
        if family.name == name
        for sample in family.samples
    }


def _ago(**delta: float) -> Clock:
    return Clock(dt.datetime.now(dt.UTC) - dt.timedelta(**delta))


def test_counts_delays_and_the_outbox_are_exported(bus_db: BusDb) -> None:
    telemetry, counts = _telemetry(), bus.BusMetrics()
    export_bus_metrics(telemetry, counts, bus_db.engine, bus_db.tables, source="orders")
    registry = telemetry.metrics.registry
    counts.add("published", "poly.events.v1.OrderPaid", 3)
    counts.add("dead_lettered", "poly.events.v1.OrderPaid")
    counts.observe_apply_delay("poly.events.v1.OrderPaid", 0.02)
    outbox = bus.Outbox(bus_db.tables, source="orders", routing=bus.consumer_routing(), clock=_ago(hours=1))
    publish(bus_db, outbox, "orders/1", "orders/1")  # OrderPaid: notifications consumes it

    paid = {"event_type": "poly.events.v1.OrderPaid"}
    assert registry.get_sample_value("poly_bus_events_total", {**paid, "outcome": "published"}) == 3
    assert registry.get_sample_value("poly_bus_events_total", {**paid, "outcome": "dead_lettered"}) == 1
    assert registry.get_sample_value("poly_bus_apply_delay_seconds_count", paid) == 1
    assert registry.get_sample_value(PENDING, {"consumer": "notifications"}) == 1
    age = registry.get_sample_value(AGE, {"consumer": "notifications"})
    assert age is not None and 3500 < age < 3700


def test_the_outbox_says_which_consumer_is_behind(bus_db: BusDb) -> None:
    outbox = bus.Outbox(bus_db.tables, source="orders", routing=bus.consumer_routing(), clock=_ago(hours=1))
    for order in ("orders/1", "orders/2"):
        publish(bus_db, outbox, order, order)  # OrderPaid, for notifications, an hour ago
    recent = bus.Outbox(
        bus_db.tables, source="orders", routing=bus.consumer_routing(), clock=_ago(seconds=30)
    )
    with db.transaction(bus_db.engine) as session:  # OrderCancelled, for both, 30 s ago
        recent.publish(session, OrderCancelled(order="orders/3"), aggregate_id="orders/3")

    registry = _scrape(bus_db)
    assert _by_consumer(registry, PENDING) == {"notifications": 3, "payments": 1}
    ages = _by_consumer(registry, AGE)
    assert 3500 < ages["notifications"] < 3700
    assert 25 < ages["payments"] < 300

    # notifications catches up: its deliveries are made, payments' is still waiting.
    delivery = bus_db.tables.delivery
    with bus_db.engine.begin() as connection:
        connection.execute(
            update(delivery).where(delivery.c.route == "notifications").values(state=bus.DELIVERED)
        )
    registry = _scrape(bus_db)
    assert _by_consumer(registry, PENDING) == {"notifications": 0, "payments": 1}
    assert _by_consumer(registry, AGE)["notifications"] == 0


def test_every_consumer_of_the_nodes_events_has_a_series_even_with_nothing_pending(bus_db: BusDb) -> None:
    # orders publishes OrderCancelled (payments, notifications), OrderPaid (notifications), ...
    registry = _scrape(bus_db, source="orders")
    assert _by_consumer(registry, PENDING) == {"payments": 0, "notifications": 0}
    assert _by_consumer(registry, AGE) == {"payments": 0, "notifications": 0}
    # auth publishes UserRegistered, which three services consume.
    assert set(_by_consumer(_scrape(bus_db, source="auth"), PENDING)) == {
        "users",
        "payments",
        "notifications",
    }


def test_a_route_that_names_no_declared_consumer_adds_no_series(bus_db: BusDb) -> None:
    # Routes are written from the contract, but rows outlive it: the previous version's single
    # broker route stays named, any other route is counted as "other".
    for route, hours in [("broker", 1), ("retired-service", 2), ("test-route", 3)]:
        outbox = bus.Outbox(
            bus_db.tables, source="orders", routing=bus.broker_routing(route), clock=_ago(hours=hours)
        )
        publish(bus_db, outbox, f"orders/{route}", route)
    registry = _scrape(bus_db)
    assert _by_consumer(registry, PENDING) == {"payments": 0, "notifications": 0, "broker": 1, "other": 2}
    ages = _by_consumer(registry, AGE)
    assert 3 * 3600 - 100 < ages["other"] < 3 * 3600 + 100  # the oldest of the two
    assert 3600 - 100 < ages["broker"] < 3600 + 100


def test_a_database_that_is_down_leaves_the_outbox_gauges_out_of_the_scrape(bus_db: BusDb) -> None:
    with bus_db.engine.begin() as connection:
        connection.execute(bus_db.tables.delivery.delete())
        connection.execute(bus_db.tables.outbox.delete())
    bus_db.tables.delivery.drop(bus_db.engine)  # the query fails from now on
    registry = _scrape(bus_db)  # registering reads nothing, so it cannot fail either
    text = generate_latest(registry).decode()
    assert PENDING not in text and AGE not in text
    assert "poly_bus_apply_delay_seconds" in text
