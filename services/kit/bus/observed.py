"""The bus in the process's Prometheus metrics: what `BusMetrics` counts, how long events
take to apply, and the outbox's depth and age, read from the database at scrape time.

- ``poly_bus_events_total{event_type, outcome}``: every `BusMetrics` counter (published,
  delivered, retried, dead_lettered, applied, duplicate, ...), per event type;
- ``poly_bus_apply_delay_seconds{event_type}``: from the event's occurrence to its effect's commit;
- ``poly_bus_outbox_pending_deliveries`` and ``poly_bus_outbox_oldest_pending_age_seconds``.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterable

from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select

from services.kit.bus.metrics import BusMetrics
from services.kit.bus.tables import PENDING, BusTables
from services.kit.telemetry import Telemetry

__all__ = ["APPLY_DELAY_BUCKETS", "export_bus_metrics"]

APPLY_DELAY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
"""Seconds: a healthy bus applies within tens of milliseconds; an outage shows as minutes."""


class _EventCounts(Collector):
    def __init__(self, counts: BusMetrics) -> None:
        self._counts = counts

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "poly_bus_events",
            "Events by type and what happened to them (published, delivered, retried, dead_lettered, "
            "applied, duplicate, unhandled, refused, deferred, reclaimed, unroutable).",
            labels=("event_type", "outcome"),
        )
        for (outcome, event_type), count in sorted(self._counts.snapshot().items()):
            family.add_metric((event_type, outcome), count)
        yield family


class _OutboxState:
    """The outbox's depth and oldest age, read from the database at most every `ttl` seconds
    and by one scrape at a time: a slow or busy database makes /metrics show the last values,
    never hang or pile up threads waiting for connections."""

    def __init__(self, engine: Engine, tables: BusTables, *, ttl: float = 5.0) -> None:
        self._engine, self._tables, self._ttl = engine, tables, ttl
        self._lock = threading.Lock()
        self._read_at = -ttl
        self._value: tuple[int, float] | None = None

    def _query(self) -> tuple[int, float]:
        delivery, outbox = self._tables.delivery, self._tables.outbox
        query = (
            select(func.count(), func.min(outbox.c.occur_time))
            .select_from(delivery.join(outbox, delivery.c.position == outbox.c.position))
            .where(delivery.c.state == PENDING)
        )
        with self._engine.connect() as connection:
            count, oldest = connection.execute(query).one()
        if oldest is None:
            return int(count or 0), 0.0
        if oldest.tzinfo is None:  # SQLite hands back naive UTC
            oldest = oldest.replace(tzinfo=dt.UTC)
        return int(count or 0), max(0.0, (dt.datetime.now(dt.UTC) - oldest).total_seconds())

    def read(self) -> tuple[int, float] | None:
        if self._lock.acquire(blocking=False):
            try:
                if time.monotonic() - self._read_at >= self._ttl:
                    self._value = None  # a failed read leaves the gauges out, not stale
                    self._read_at = time.monotonic()
                    self._value = self._query()
            finally:
                self._lock.release()
        return self._value


def export_bus_metrics(telemetry: Telemetry, counts: BusMetrics, engine: Engine, tables: BusTables) -> None:
    """Register the bus's metrics in `telemetry`'s registry (once per node)."""
    registry = telemetry.metrics.registry
    registry.register(_EventCounts(counts))
    delay = Histogram(
        "poly_bus_apply_delay_seconds",
        "Time from an event's occurrence to the commit of its effect here.",
        ("event_type",),
        buckets=APPLY_DELAY_BUCKETS,
        registry=registry,
    )
    counts.add_apply_delay_observer(lambda event_type, seconds: delay.labels(event_type).observe(seconds))
    state = _OutboxState(engine, tables)
    telemetry.add_gauges(
        {
            "poly_bus_outbox_pending_deliveries": (
                "Deliveries of published events not yet made (including those waiting to retry).",
                lambda: None if (value := state.read()) is None else value[0],
            ),
            "poly_bus_outbox_oldest_pending_age_seconds": (
                "Age of the oldest event with a delivery not yet made; 0 when none is pending.",
                lambda: None if (value := state.read()) is None else value[1],
            ),
        }
    )
