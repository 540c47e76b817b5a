"""kit.bus.observed: the bus's counters, apply delays and outbox state as Prometheus samples."""

from __future__ import annotations

import datetime as dt

from prometheus_client.exposition import generate_latest

from services.kit import bus
from services.kit.bus.observed import export_bus_metrics
from services.kit.telemetry import Telemetry
from services.kit.telemetry.metrics import Metrics
from services.kit.telemetry.tracing import Tracing
from services.kit.telemetry_settings import TelemetrySettings
from tests.kit.bus.conftest import BusDb, Clock, publish


def _telemetry() -> Telemetry:
    return Telemetry(TelemetrySettings(), Metrics(), Tracing(None), None)


def test_counts_delays_and_the_outbox_are_exported(bus_db: BusDb) -> None:
    telemetry, counts = _telemetry(), bus.BusMetrics()
    export_bus_metrics(telemetry, counts, bus_db.engine, bus_db.tables)
    registry = telemetry.metrics.registry
    counts.add("published", "poly.events.v1.OrderCreated", 3)
    counts.add("dead_lettered", "poly.events.v1.OrderCreated")
    counts.observe_apply_delay("poly.events.v1.OrderCreated", 0.02)
    an_hour_ago = Clock(dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    outbox = bus.Outbox(bus_db.tables, source="orders", routing=bus.consumer_routing(), clock=an_hour_ago)
    publish(bus_db, outbox, "orders/1", "orders/1")

    created = {"event_type": "poly.events.v1.OrderCreated"}
    assert registry.get_sample_value("poly_bus_events_total", {**created, "outcome": "published"}) == 3
    assert registry.get_sample_value("poly_bus_events_total", {**created, "outcome": "dead_lettered"}) == 1
    assert registry.get_sample_value("poly_bus_apply_delay_seconds_count", created) == 1
    pending = registry.get_sample_value("poly_bus_outbox_pending_deliveries")
    assert pending is not None and pending >= 1  # one per declared consumer of OrderCreated
    age = registry.get_sample_value("poly_bus_outbox_oldest_pending_age_seconds")
    assert age is not None and 3500 < age < 3700


def test_a_database_that_is_down_leaves_the_outbox_gauges_out_of_the_scrape(bus_db: BusDb) -> None:
    telemetry, counts = _telemetry(), bus.BusMetrics()
    export_bus_metrics(telemetry, counts, bus_db.engine, bus_db.tables)
    with bus_db.engine.begin() as connection:
        connection.execute(bus_db.tables.delivery.delete())
        connection.execute(bus_db.tables.outbox.delete())
    bus_db.tables.delivery.drop(bus_db.engine)  # the query fails from now on
    text = generate_latest(telemetry.metrics.registry).decode()
    assert "poly_bus_outbox_pending_deliveries" not in text
    assert "poly_bus_events_total" in text or "poly_bus_events" in text
