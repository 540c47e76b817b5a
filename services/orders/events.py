"""Events the orders service consumes (payloads in protos/poly/events/v1; what it publishes
is declared there, in each event's `(poly.options.v1.event)`).

Consumed: the payments side of the saga (the README's "The saga" lists its steps). Each
handler runs inside the consumer's transaction, which also records the inbox row, and
publishes through the node's outbox in that same transaction. An authorized payment moves
its order to AWAITING_PAYMENT and, once that commits, hands the order to `capture_due`
(the capture worker).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping

from google.protobuf.message import Message
from sqlalchemy.orm import Session

from poly.events.v1 import events_pb2
from poly.events.v1.events_pb2 import EventEnvelope
from services.kit.bus import EventHandler, Outbox
from services.kit.db import after_commit
from services.kit.names import resource_id
from services.orders import domain
from services.orders.store import OnChange, SqlRepository

__all__ = ["handlers"]


def handlers(
    outbox: Outbox,
    *,
    on_change: OnChange | None = None,
    capture_due: Callable[[str], None] = lambda order_name: None,
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
) -> Mapping[type[Message], EventHandler]:
    """The handler of each consumed event; exactly the types the contract names this
    service a consumer of (the node checks it at start)."""

    def repository(session: Session) -> SqlRepository:
        return SqlRepository(session, outbox, on_change)

    def authorized(session: Session, event: Message, envelope: EventEnvelope) -> None:
        assert isinstance(event, events_pb2.PaymentAuthorized)
        order_id = resource_id(event.order, "orders", field="order")
        changed = domain.on_payment_authorized(repository(session), order_id, event.payment, clock())
        if changed is not None:
            after_commit(session, lambda: capture_due(changed.name))

    def captured(session: Session, event: Message, envelope: EventEnvelope) -> None:
        assert isinstance(event, events_pb2.PaymentCaptured)
        order_id = resource_id(event.order, "orders", field="order")
        domain.on_payment_captured(repository(session), order_id, event.payment, clock())

    def failed(session: Session, event: Message, envelope: EventEnvelope) -> None:
        assert isinstance(event, events_pb2.PaymentFailed)
        order_id = resource_id(event.order, "orders", field="order")
        domain.on_payment_failed(repository(session), order_id, event.payment, event.reason, clock())

    return {
        events_pb2.PaymentAuthorized: authorized,
        events_pb2.PaymentCaptured: captured,
        events_pb2.PaymentFailed: failed,
    }
