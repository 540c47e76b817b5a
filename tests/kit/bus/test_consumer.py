from __future__ import annotations

import threading

import pytest
from google.protobuf.message import Message
from sqlalchemy import Connection, select

from poly.events.v1.events_pb2 import EventEnvelope, OrderCancelled, OrderPaid
from services.kit import bus
from services.kit.domain_errors import FailedPrecondition
from tests.kit.bus.conftest import BusDb, record_effect


def _envelope(
    order: str = "orders/1", event_id: str = "6f1c2f8e-0000-4000-8000-000000000001"
) -> EventEnvelope:
    envelope = EventEnvelope(
        id=event_id, type="poly.events.v1.OrderPaid", aggregate_id=order, source="orders", schema_version=1
    )
    envelope.payload.Pack(OrderPaid(order=order))
    return envelope


def test_a_redelivered_event_has_its_effect_once(bus_db: BusDb) -> None:
    consumer = bus.Consumer(bus_db.engine, bus_db.tables, {OrderPaid: record_effect(bus_db.effects)})
    assert consumer.apply(_envelope()) is bus.Outcome.APPLIED
    assert consumer.apply(_envelope()) is bus.Outcome.DUPLICATE
    assert bus_db.effect_counts() == {"6f1c2f8e-0000-4000-8000-000000000001": 1}


def test_a_failing_handler_leaves_no_trace_and_the_retry_applies(bus_db: BusDb) -> None:
    calls: list[str] = []
    recorder = record_effect(bus_db.effects)

    def flaky(connection: Connection, payload: Message, envelope: EventEnvelope) -> None:
        recorder(connection, payload, envelope)  # the effect is written, then the handler fails
        calls.append(envelope.id)
        if len(calls) == 1:
            raise RuntimeError("downstream hiccup")

    consumer = bus.Consumer(bus_db.engine, bus_db.tables, {OrderPaid: flaky})
    with pytest.raises(RuntimeError):
        consumer.apply(_envelope())
    assert bus_db.effect_counts() == {}, "effect and inbox row rolled back together"
    assert consumer.apply(_envelope()) is bus.Outcome.APPLIED
    assert bus_db.effect_counts() == {"6f1c2f8e-0000-4000-8000-000000000001": 1}


def test_an_event_without_a_handler_is_refused_not_dropped(bus_db: BusDb) -> None:
    consumer = bus.Consumer(
        bus_db.engine, bus_db.tables, {OrderCancelled: record_effect(bus_db.effects, OrderCancelled)}
    )
    with pytest.raises(FailedPrecondition) as refused:
        consumer.apply(_envelope())
    assert refused.value.reason == "EVENT_TYPE_NOT_HANDLED"
    assert consumer.event_types == ["poly.events.v1.OrderCancelled"]
    with bus_db.engine.connect() as connection:
        assert connection.execute(select(bus_db.tables.inbox.c.event_id)).all() == [], "so it can come back"


def test_a_handlers_own_integrity_error_is_not_mistaken_for_a_duplicate(bus_db: BusDb) -> None:
    recorder = record_effect(bus_db.effects)

    def conflicting(connection: Connection, payload: Message, envelope: EventEnvelope) -> None:
        recorder(connection, payload, envelope)
        connection.execute(
            bus_db.tables.inbox.insert().values(
                event_id=envelope.id, event_type=envelope.type, source="again"
            )
        )

    consumer = bus.Consumer(bus_db.engine, bus_db.tables, {OrderPaid: conflicting})
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        consumer.apply(_envelope())
    assert bus_db.effect_counts() == {}


def test_concurrent_deliveries_of_one_event_apply_it_once(bus_db: BusDb) -> None:
    consumer = bus.Consumer(bus_db.engine, bus_db.tables, {OrderPaid: record_effect(bus_db.effects)})
    outcomes: list[bus.Outcome] = []
    barrier = threading.Barrier(6)

    def deliver() -> None:
        barrier.wait(10)
        outcomes.append(consumer.apply(_envelope()))

    threads = [threading.Thread(target=deliver) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(o.value for o in outcomes) == ["applied"] + ["duplicate"] * 5
    assert bus_db.effect_counts() == {"6f1c2f8e-0000-4000-8000-000000000001": 1}


@pytest.mark.parametrize(
    ("source", "event_type"),
    [
        ("payments", "poly.events.v1.OrderPaid"),
        ("notifications", "poly.events.v1.OrderPaid"),
        ("", "poly.events.v1.OrderPaid"),
        ("orders", "poly.events.v1.Nonsense"),
    ],
    ids=["another-service", "notifications", "no-source", "unknown-type"],
)
def test_an_event_whose_source_does_not_publish_its_type_is_refused_before_anything(
    bus_db: BusDb, source: str, event_type: str
) -> None:
    calls: list[str] = []

    def handler(connection: Connection, payload: Message, envelope: EventEnvelope) -> None:
        calls.append(envelope.id)

    consumer = bus.Consumer(bus_db.engine, bus_db.tables, {OrderPaid: handler})
    forged = _envelope()
    forged.source, forged.type = source, event_type
    with pytest.raises(bus.EventNotPublishedByCaller) as refused:
        consumer.apply(forged)
    assert refused.value.reason == "EVENT_TYPE_NOT_PUBLISHED_BY_CALLER"
    assert calls == [], "the handler never ran"
    with bus_db.engine.connect() as connection:
        assert connection.execute(select(bus_db.tables.inbox.c.event_id)).all() == [], "no inbox row"
    assert consumer.metrics.total("refused") == 1
    assert consumer.apply(_envelope()) is bus.Outcome.APPLIED, "the genuine event is still applied"
