"""The notifications service's store on a real database, for tests that drive its consumer
handlers and dispatcher in-process (no gRPC): what the bus consumer and the relay would do."""

from __future__ import annotations

import time
import uuid
from typing import Any

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import event, select

from poly.events.v1 import events_pb2
from poly.events.v1.events_pb2 import EventEnvelope
from poly.type.v1.money_pb2 import Money
from services.kit import bus, db
from services.kit.config import DatabaseSettings
from services.notifications import domain, store

__all__ = ["NotificationsDatabase"]


class NotificationsDatabase:
    """The notifications tables (templates in place) on the database at `url`; counts the
    claim queries run against it."""

    def __init__(self, url: str) -> None:
        self.engine = db.engine(DatabaseSettings(url=url))
        store.Base.metadata.create_all(self.engine)
        self.outbox = bus.Outbox(store.BUS, source="notifications", routing=lambda _connection, _type: [])
        self.store = store.NotificationsStore(self.engine, self.outbox)
        domain.Notifications(self.store.transaction, lambda url: None).ensure_templates()
        self.claims: list[str] = []
        """Claim queries seen (their free condition is the only SQL comparing lease_until)."""
        event.listen(self.engine, "before_cursor_execute", self._seen)

    def _seen(self, _conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        if "lease_until <" in statement:
            self.claims.append(statement)

    def consume(self, handlers: Any, payload: Message, *, aggregate_id: str, sequence: int = 1) -> str:
        """Apply one event as the bus consumer would (its handler in one transaction); its id."""
        envelope = EventEnvelope(
            id=str(uuid.uuid4()),
            type=payload.DESCRIPTOR.full_name,
            aggregate_id=aggregate_id,
            sequence=sequence,
        )
        envelope.occur_time.CopyFrom(Timestamp(seconds=int(time.time())))
        with db.transaction(self.engine) as connection:
            handlers[type(payload)](connection, payload, envelope)
        return envelope.id

    def record(self, handlers: Any, user: str) -> str:
        """Consume one OrderPaid for `user`; its event id."""
        paid = events_pb2.OrderPaid(
            order=f"orders/{uuid.uuid4()}",
            owner=user,
            payment="p1",
            amount=Money(currency_code="EUR", amount_minor=990),
        )
        return self.consume(handlers, paid, aggregate_id=paid.order)

    def rows(self, model: Any) -> list[Any]:
        with self.engine.connect() as connection:
            return list(connection.execute(select(model.__table__)))
