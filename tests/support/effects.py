"""The effect a test event handler makes: one row per application, counted in the database."""

from __future__ import annotations

from google.protobuf.message import Message
from sqlalchemy import Column, Connection, Integer, MetaData, String, Table, insert

from poly.events.v1.events_pb2 import EventEnvelope, OrderPaid
from services.kit import bus


def effect_table(metadata: MetaData) -> Table:
    """Not unique on event_id on purpose: a duplicate effect must show up as a second row."""
    return Table(
        "test_effect",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("event_id", String(36), nullable=False),
        Column("aggregate_id", String(200), nullable=False),
        Column("order", String(200), nullable=False),
    )


def record_effect(
    effects: Table, event: type[Message] = OrderPaid, *, subject: str = "order"
) -> bus.EventHandler:
    """A handler of `event` that records one effect row, keyed by the payload's `subject` field."""

    def handler(connection: Connection, payload: Message, envelope: EventEnvelope) -> None:
        assert isinstance(payload, event)
        connection.execute(
            insert(effects).values(
                event_id=envelope.id, aggregate_id=envelope.aggregate_id, order=getattr(payload, subject)
            )
        )

    return handler
