from __future__ import annotations

import threading

from services.kit import bus
from tests.kit.bus.conftest import BusDb, Clock, publish


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
    metrics.add("published", "poly.events.v1.OrderCreated", 3)
    assert metrics.snapshot() == {
        ("delivered", "poly.events.v1.OrderPaid"): 4000,
        ("published", "poly.events.v1.OrderCreated"): 3,
    }
    assert metrics.total("delivered") == 4000


def test_backlog_counts_deliveries_not_yet_made(bus_db: BusDb) -> None:
    outbox = bus.Outbox(bus_db.tables, source="orders", routing=bus.broker_routing(), clock=Clock())
    for i in range(3):
        publish(bus_db, outbox, f"orders/{i}", f"orders/{i}")
    assert bus.backlog(bus_db.engine, bus_db.tables) == 3
