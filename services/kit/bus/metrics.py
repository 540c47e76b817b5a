"""Counters of the bus, per event type, for the metrics layer to export."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping

from sqlalchemy import Engine, func, select

from services.kit.bus.tables import PENDING, BusTables

__all__ = ["BusMetrics", "backlog"]


class BusMetrics:
    """Thread-safe counts: published, delivered, retried, dead_lettered, applied, duplicate,
    unhandled, refused (a source that is not the type's declared publisher)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()

    def add(self, name: str, event_type: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[(name, event_type)] += amount

    def snapshot(self) -> Mapping[tuple[str, str], int]:
        """``{(counter, event_type): count}`` at this instant."""
        with self._lock:
            return dict(self._counts)

    def total(self, name: str) -> int:
        with self._lock:
            return sum(count for (counter, _), count in self._counts.items() if counter == name)


def backlog(engine: Engine, tables: BusTables) -> int:
    """Deliveries not yet made (pending, including those waiting for a retry)."""
    delivery = tables.delivery
    with engine.connect() as connection:
        return int(connection.scalar(select(func.count()).where(delivery.c.state == PENDING)) or 0)
