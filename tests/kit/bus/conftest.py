"""A real database (SQLite file and PostgreSQL) holding the bus tables plus a test effect table,
and a tracer provider of a test's own that keeps its spans in memory."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import Engine, MetaData, Table, select

from poly.events.v1.events_pb2 import EventEnvelope, OrderPaid
from services.kit import bus, db
from services.kit.config import DatabaseSettings
from tests.support.clock import Clock
from tests.support.effects import effect_table, record_effect

__all__ = [
    "BusDb",
    "Clock",
    "ScriptedTransport",
    "Spans",
    "effect_table",
    "make_bus_db",
    "publish",
    "record_effect",
]


@dataclass
class BusDb:
    engine: Engine
    tables: bus.BusTables
    effects: Table

    def effect_counts(self) -> dict[str, int]:
        """How many times each event's effect happened, counted in the database."""
        with self.engine.connect() as connection:
            rows = connection.execute(select(self.effects.c.event_id)).scalars().all()
        counts: dict[str, int] = {}
        for event_id in rows:
            counts[event_id] = counts.get(event_id, 0) + 1
        return counts

    def effect_order(self, aggregate_id: str) -> list[str]:
        with self.engine.connect() as connection:
            return list(
                connection.execute(
                    select(self.effects.c.order)
                    .where(self.effects.c.aggregate_id == aggregate_id)
                    .order_by(self.effects.c.id)
                ).scalars()
            )


def make_bus_db(url: str) -> BusDb:
    metadata = MetaData(naming_convention=db.naming_convention)
    tables = bus.bus_tables(metadata)
    effects = effect_table(metadata)
    engine = db.engine(DatabaseSettings(url=url))
    metadata.create_all(engine)
    return BusDb(engine, tables, effects)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def bus_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BusDb]:
    url = (
        f"sqlite:///{tmp_path / 'bus.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    made = make_bus_db(url)
    try:
        yield made
    finally:
        made.engine.dispose()


@dataclass
class Spans:
    """A test's own tracer provider (passed to the bus's parts, never installed globally, so
    tests do not share it) and the spans it has ended so far."""

    provider: TracerProvider
    exporter: InMemorySpanExporter

    def ended(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.ended() if span.name == name]

    def one(self, name: str) -> ReadableSpan:
        found = self.named(name)
        assert len(found) == 1, f"expected one span {name!r}, found {[s.name for s in self.ended()]}"
        return found[0]


@pytest.fixture
def spans() -> Iterator[Spans]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))  # exported as each span ends
    try:
        yield Spans(provider, exporter)
    finally:
        provider.shutdown()


@dataclass
class ScriptedTransport:
    """A transport that records sends and fails the ones a test scripts to fail.

    Unit tests of the relay's own rules use it; the tests of the real transports
    (gRPC EventSink, RabbitMQ) deliver through them instead.
    """

    failures: dict[str, int] = field(default_factory=dict)
    """Event id -> how many more sends of it fail."""
    always_failing: set[str] = field(default_factory=set)
    sent: list[tuple[str, EventEnvelope]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, route: str, envelope: EventEnvelope) -> None:
        with self.lock:
            if envelope.id in self.always_failing:
                raise bus.DeliveryError("scripted: always fails")
            if self.failures.get(envelope.id, 0) > 0:
                self.failures[envelope.id] -= 1
                raise bus.DeliveryError("scripted: fails this time")
            self.sent.append((route, envelope))


def publish(bus_db: BusDb, outbox: bus.Outbox, aggregate: str, order: str) -> EventEnvelope:
    with db.transaction(bus_db.engine) as session:
        return outbox.publish(session, OrderPaid(order=order), aggregate_id=aggregate)
