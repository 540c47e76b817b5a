"""The bus in the process's Prometheus metrics: what `BusMetrics` counts, how long events
take to apply, and the outbox's depth and age, read from the database at scrape time.

- ``poly_bus_events_total{event_type, outcome}``: every `BusMetrics` counter (published,
  delivered, retried, dead_lettered, applied, duplicate, ...), per event type;
- ``poly_bus_apply_delay_seconds{event_type}``: from the event's occurrence to its effect's commit;
- ``poly_bus_outbox_pending_deliveries{consumer}`` and
  ``poly_bus_outbox_oldest_pending_age_seconds{consumer}``: which consuming service this
  node's events are waiting for. A delivery's route is its consumer; the label's values are
  the contract's consumers (every consumer of an event this node publishes has a series, 0
  when nothing waits for it), ``broker`` for a delivery of the previous version's single
  RabbitMQ route, and ``other`` for any other route, so a row cannot add a series.

On RabbitMQ the outbox shows only the leg to the broker: a consumer's queue depth is the
broker's to report (its ``rabbitmq_prometheus`` plugin exports it per queue, and a queue is
named ``<prefix>.<consumer>``). Asking from here would cost a broker round trip per queue
per scrape, on a channel of its own (a passive declare of a missing queue closes its
channel), and every publisher of a consumer would report the same queue again.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Iterable, Mapping

from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select

from services.kit.bus import contract
from services.kit.bus.broker import LEGACY_ROUTE
from services.kit.bus.metrics import BusMetrics
from services.kit.bus.tables import PENDING, BusTables
from services.kit.telemetry import Telemetry

__all__ = ["APPLY_DELAY_BUCKETS", "export_bus_metrics"]

APPLY_DELAY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
"""Seconds: a healthy bus applies within tens of milliseconds; an outage shows as minutes."""

_log = logging.getLogger("poly.bus.observed")

_OTHER = "other"
"""The consumer label of a route that names no declared consumer (one since removed from
the contract, or a test's own)."""

_Backlog = Mapping[str, tuple[int, float]]
"""Consumer -> (pending deliveries, age of its oldest pending event in seconds)."""


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


def _declared_consumers() -> frozenset[str]:
    return frozenset(
        consumer for event in contract.events() for consumer in contract.declared_consumers(event)
    )


def _consumers_of_events_from(source: str) -> frozenset[str]:
    return frozenset(
        consumer
        for event_type in contract.published_by(source)
        for consumer in contract.consumers_of(event_type)
    )


class _OutboxState:
    """The outbox's depth and oldest age per consumer, read from the database at most every
    `ttl` seconds and by one scrape at a time: a slow or busy database makes /metrics show
    the last values, never hang or pile up threads waiting for connections."""

    def __init__(
        self, engine: Engine, tables: BusTables, *, consumers: Iterable[str] = (), ttl: float = 5.0
    ) -> None:
        self._engine, self._tables, self._ttl = engine, tables, ttl
        self._always = {consumer: (0, 0.0) for consumer in sorted(consumers)}
        self._labels = _declared_consumers() | {LEGACY_ROUTE}
        self._lock = threading.Lock()
        self._read_at = -ttl
        self._value: _Backlog | None = None

    def _query(self) -> _Backlog:
        delivery, outbox = self._tables.delivery, self._tables.outbox
        query = (
            select(delivery.c.route, func.count(), func.min(outbox.c.occur_time))
            .select_from(delivery.join(outbox, delivery.c.position == outbox.c.position))
            .where(delivery.c.state == PENDING)
            .group_by(delivery.c.route)
        )
        with self._engine.connect() as connection:
            rows = connection.execute(query).all()
        now = dt.datetime.now(dt.UTC)
        backlog = dict(self._always)
        for route, count, occurred in rows:
            consumer = route if route in self._labels else _OTHER
            oldest = occurred.replace(tzinfo=occurred.tzinfo or dt.UTC)  # SQLite hands back naive UTC
            age = max(0.0, (now - oldest).total_seconds())
            before, older = backlog.get(consumer, (0, 0.0))
            backlog[consumer] = (before + int(count or 0), max(older, age))
        return backlog

    def read(self) -> _Backlog | None:
        """The latest backlog; None when the last read failed (its gauges are left out, not stale)."""
        if self._lock.acquire(blocking=False):
            try:
                if time.monotonic() - self._read_at >= self._ttl:
                    # A scrape arriving meanwhile (an HA Prometheus pair) still sees the last value.
                    self._read_at = time.monotonic()
                    self._value = self._query()
            except Exception:  # noqa: BLE001 - a scrape must not fail because the database does
                self._value = None
                _log.debug("outbox state unreadable", exc_info=True)
            finally:
                self._lock.release()
        return self._value


class _OutboxGauges(Collector):
    def __init__(self, state: _OutboxState) -> None:
        self._state = state

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "poly_bus_outbox_pending_deliveries",
                "Deliveries of published events not yet made to each consumer (including those "
                "waiting to retry).",
                labels=("consumer",),
            ),
            GaugeMetricFamily(
                "poly_bus_outbox_oldest_pending_age_seconds",
                "Age of the oldest event with a delivery to each consumer not yet made; 0 when none "
                "is pending.",
                labels=("consumer",),
            ),
        )

    def describe(self) -> Iterable[Metric]:
        return self._families()  # the names only: registering must not query the database

    def collect(self) -> Iterable[Metric]:
        backlog = self._state.read()
        if backlog is None:
            return
        pending, age = self._families()
        for consumer, (count, seconds) in sorted(backlog.items()):
            pending.add_metric((consumer,), count)
            age.add_metric((consumer,), seconds)
        yield from (pending, age)


def export_bus_metrics(
    telemetry: Telemetry, counts: BusMetrics, engine: Engine, tables: BusTables, *, source: str = ""
) -> None:
    """Register the bus's metrics in `telemetry`'s registry (once per node); `source` is the
    node's service, whose consumers always have an outbox series (0 while nothing waits)."""
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
    state = _OutboxState(engine, tables, consumers=_consumers_of_events_from(source))
    registry.register(_OutboxGauges(state))
