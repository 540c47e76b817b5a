"""The orders service's events: the payload of each event it publishes, built from the
domain's `Order` (types in protos/poly/events/v1; who publishes and consumes each is declared
there, in its `(poly.options.v1.event)`).

Orders consumes no event: its side of the saga asks payments directly (`payment.py`, the
README's "The saga"), and learns each outcome from the call's answer.
"""

from __future__ import annotations

from google.protobuf.message import Message

from poly.events.v1 import events_pb2
from services.kit.wire import money_message
from services.orders.domain import Event, Order

__all__ = ["message"]


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
