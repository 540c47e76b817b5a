"""The orders service's events: the payload of each event it publishes, built from the
domain's `Order`, and the handler of each it consumes (types in protos/poly/events/v1; who
publishes and consumes each is declared there, in its `(poly.options.v1.event)`).

Consumed: the payments side of the saga (the README's "The saga" lists its steps). Each
handler runs inside the consumer's transaction, which also records the inbox row, and
publishes through the node's outbox in that same transaction. An authorized payment moves
its order to AWAITING_PAYMENT, its capture written taken by the capture worker, and once
that commits hands the order to `capture_due` (the worker), which captures it with no claim
and makes it PAID on CapturePayment's answer (no event is needed for that step).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping

from google.protobuf.message import Message
from sqlalchemy.orm import Session

from poly.events.v1 import events_pb2
from poly.events.v1.events_pb2 import EventEnvelope
from services.kit.bus import EventHandler
from services.kit.db import after_commit
from services.kit.names import resource_id
from services.kit.wire import money_message
from services.orders import domain
from services.orders.domain import Event, Order, Repository

__all__ = ["handlers", "message"]


def message(kind: Event, order: Order) -> Message:
    """The payload of the event the domain publishes as `kind` about `order`."""
    if kind == "created":
        lines = [
            events_pb2.OrderLine(
                sku=x.sku,
                quantity=x.quantity,
                unit_price=money_message(x.unit_price),
                total=money_message(x.total),
            )
            for x in order.lines
        ]
        return events_pb2.OrderCreated(
            order=order.name, owner=order.owner, total=money_message(order.total), lines=lines
        )
    if kind == "cancelled":
        return events_pb2.OrderCancelled(
            order=order.name,
            owner=order.owner,
            reason=order.cancel_reason,
            payment=order.payment,
            total=money_message(order.total),
        )
    if kind == "paid":
        return events_pb2.OrderPaid(
            order=order.name, owner=order.owner, payment=order.payment, amount=money_message(order.total)
        )
    if kind == "payment_failed":
        return events_pb2.OrderPaymentFailed(
            order=order.name, owner=order.owner, payment=order.payment, reason=order.failure_reason
        )
    return events_pb2.OrderFulfilled(order=order.name, owner=order.owner, payment=order.payment)


def handlers(
    repository: Callable[[Session], Repository],
    *,
    capture_due: Callable[[Order], None] | None = None,
    capture_accepting: Callable[[], bool] = lambda: True,
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
) -> Mapping[type[Message], EventHandler]:
    """The handler of each consumed event, each over the `repository` of its session;
    exactly the types the contract names this service a consumer of (the node checks it at
    start)."""

    def authorized(session: Session, event: Message, envelope: EventEnvelope) -> None:
        assert isinstance(event, events_pb2.PaymentAuthorized)
        order_id = resource_id(event.order, "orders", field="order")
        taken = capture_due is not None and capture_accepting()  # else it waits for a claim
        changed = domain.on_payment_authorized(
            repository(session), order_id, event.payment, clock(), taken=taken
        )
        if changed is not None and capture_due is not None and taken:
            hand_over = capture_due
            after_commit(session, lambda: hand_over(changed))

    def failed(session: Session, event: Message, envelope: EventEnvelope) -> None:
        assert isinstance(event, events_pb2.PaymentFailed)
        order_id = resource_id(event.order, "orders", field="order")
        domain.on_payment_failed(repository(session), order_id, event.payment, event.reason, clock())

    return {
        events_pb2.PaymentAuthorized: authorized,
        events_pb2.PaymentFailed: failed,
    }
