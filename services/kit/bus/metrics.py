"""Counters of the bus, per event type, and the apply-delay hook, for the metrics layer to export."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Engine, func, select

from services.kit.bus.tables import PENDING, BusTables
from services.kit.counters import Counters

__all__ = ["ApplyDelayObserver", "BusMetrics", "backlog"]

ApplyDelayObserver = Callable[[str, float], None]
"""``(event_type, seconds) -> None``: called from the consumer's threads, so it must be
thread-safe, quick, and never raise (a Prometheus histogram's ``observe`` is all three)."""


class BusMetrics(Counters):
    """Counts per event type: published, delivered, retried, dead_lettered, applied, duplicate,
    unhandled, refused (a source that is not the type's declared publisher), deferred (not
    sent: its route failed earlier in the round), reclaimed (claimed again after its lease ran
    out with no outcome recorded, so it may have been sent twice), unroutable (RabbitMQ
    returned an event whose type has consumers: their queues are missing, an alarm).

    Apply delays (from the event's ``occur_time`` to its effect's commit, per event type) are
    not kept here: each goes to the observers (`on_apply_delay`, `add_apply_delay_observer`),
    none by default, so the metrics layer can feed a histogram without this module knowing it.
    """

    def __init__(self, *, on_apply_delay: ApplyDelayObserver | None = None) -> None:
        super().__init__()
        self._apply_delay_observers: tuple[ApplyDelayObserver, ...] = (
            (on_apply_delay,) if on_apply_delay is not None else ()
        )

    def add_apply_delay_observer(self, observer: ApplyDelayObserver) -> None:
        """Send every later apply delay to `observer` as well (for a `BusMetrics` built by `node`)."""
        with self._lock:
            self._apply_delay_observers = (*self._apply_delay_observers, observer)

    def observe_apply_delay(self, event_type: str, seconds: float) -> None:
        """An event of `event_type` was applied `seconds` after it happened (0 or more)."""
        for observer in self._apply_delay_observers:  # a tuple, replaced whole: safe to read unlocked
            observer(event_type, seconds)


def backlog(engine: Engine, tables: BusTables) -> int:
    """Deliveries not yet made (pending, including those waiting for a retry)."""
    delivery = tables.delivery
    with engine.connect() as connection:
        return int(connection.scalar(select(func.count()).where(delivery.c.state == PENDING)) or 0)
