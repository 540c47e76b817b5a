from __future__ import annotations

import threading

from poly.events.v1.events_pb2 import EventEnvelope, OrderPaid
from services.kit import bus
from tests.kit.bus.conftest import BusDb, Clock, publish, record_effect


def test_counts_are_per_event_type_and_thread_safe() -> None:
    metrics = bus.BusMetrics()

    def bump() -> None:
        for _ in range(1000):
            metrics.add("delivered", "poly.events.v1.OrderPaid")

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    metrics.add("published", "poly.events.v1.OrderCancelled", 3)
    assert metrics.snapshot() == {
        ("delivered", "poly.events.v1.OrderPaid"): 4000,
        ("published", "poly.events.v1.OrderCancelled"): 3,
    }
    assert metrics.total("delivered") == 4000


def test_backlog_counts_deliveries_not_yet_made(bus_db: BusDb) -> None:
    outbox = bus.Outbox(bus_db.tables, source="orders", routing=bus.broker_routing(), clock=Clock())
    for i in range(3):
        publish(bus_db, outbox, f"orders/{i}", f"orders/{i}")
    assert bus.backlog(bus_db.engine, bus_db.tables) == 3


def _occurred_at(seconds: float, event_id: str = "6f1c2f8e-0000-4000-8000-00000000000d") -> EventEnvelope:
    envelope = EventEnvelope(
        id=event_id,
        type="poly.events.v1.OrderPaid",
        aggregate_id="orders/1",
        source="orders",
        schema_version=1,
    )
    if seconds:
        envelope.occur_time.FromNanoseconds(int(seconds * 1e9))
    envelope.payload.Pack(OrderPaid(order="orders/1"))
    return envelope


def test_each_applied_event_s_delay_goes_to_the_observers_once(bus_db: BusDb) -> None:
    seen: list[tuple[str, float]] = []
    later: list[tuple[str, float]] = []
    metrics = bus.BusMetrics(on_apply_delay=lambda event_type, seconds: seen.append((event_type, seconds)))
    consumer = bus.Consumer(
        bus_db.engine,
        bus_db.tables,
        {OrderPaid: record_effect(bus_db.effects)},
        metrics=metrics,
        clock=lambda: 1_000_002.5,
    )
    assert consumer.apply(_occurred_at(1_000_000.0)) is bus.Outcome.APPLIED
    assert consumer.apply(_occurred_at(1_000_000.0)) is bus.Outcome.DUPLICATE, "a duplicate is not measured"
    metrics.add_apply_delay_observer(lambda event_type, seconds: later.append((event_type, seconds)))
    # A publisher whose clock runs ahead: no negative delay.
    assert (
        consumer.apply(_occurred_at(1_000_010.0, "6f1c2f8e-0000-4000-8000-00000000000e"))
        is bus.Outcome.APPLIED
    )
    # No occur_time at all: nothing to measure.
    assert consumer.apply(_occurred_at(0, "6f1c2f8e-0000-4000-8000-00000000000f")) is bus.Outcome.APPLIED
    assert seen == [("poly.events.v1.OrderPaid", 2.5), ("poly.events.v1.OrderPaid", 0.0)]
    assert later == [("poly.events.v1.OrderPaid", 0.0)]


def test_apply_delays_go_nowhere_by_default() -> None:
    bus.BusMetrics().observe_apply_delay("poly.events.v1.OrderPaid", 1.0)  # no observer, no error
