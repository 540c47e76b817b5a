"""Counters of the bus, per event type, for the metrics layer to export."""

from __future__ import annotations

from sqlalchemy import Engine, func, select

from services.kit.bus.tables import PENDING, BusTables
from services.kit.counters import Counters

__all__ = ["BusMetrics", "backlog"]


class BusMetrics(Counters):
    """Counts per event type: published, delivered, retried, dead_lettered, applied, duplicate,
    unhandled, refused (a source that is not the type's declared publisher), deferred (not
    sent: its route failed earlier in the round), reclaimed (claimed again after its lease ran
    out with no outcome recorded, so it may have been sent twice), unroutable (RabbitMQ
    returned an event whose type has consumers: their queues are missing, an alarm)."""


def backlog(engine: Engine, tables: BusTables) -> int:
    """Deliveries not yet made (pending, including those waiting for a retry)."""
    delivery = tables.delivery
    with engine.connect() as connection:
        return int(connection.scalar(select(func.count()).where(delivery.c.state == PENDING)) or 0)
