"""Events the payments service consumes (payloads in protos/poly/events/v1; what it publishes
is declared there, in each event's `(poly.options.v1.event)`).

Each handler runs inside the consumer's transaction (which also records the event in the
inbox), through the same domain use cases as the RPCs, so its effect happens once.
"""

from collections.abc import Mapping
from contextlib import nullcontext

from google.protobuf.message import Message
from sqlalchemy.orm import Session

from poly.events.v1 import events_pb2
from poly.events.v1.events_pb2 import EventEnvelope
from services.kit.bus import EventHandler, Outbox
from services.kit.wire import money_value
from services.payments.domain import Payments
from services.payments.store import SqlRepository

__all__ = ["handlers"]


def handlers(outbox: Outbox, default_currency: str) -> Mapping[type[Message], EventHandler]:
    """The handler of each consumed event; exactly the types the contract names this
    service a consumer of (the node checks it at start).
    New users get an account in `default_currency`."""

    def payments(session: Session) -> Payments:
        repo = SqlRepository(session, outbox)
        return Payments(lambda: nullcontext(repo))

    def user_registered(session: Session, event: Message, envelope: EventEnvelope) -> None:
        assert isinstance(event, events_pb2.UserRegistered)
        payments(session).open_account(event.user, default_currency)

    def order_created(session: Session, event: Message, envelope: EventEnvelope) -> None:
        assert isinstance(event, events_pb2.OrderCreated)
        total = money_value(event.total)
        payments(session).authorize_order(event.order, event.owner, total)

    def order_cancelled(session: Session, event: Message, envelope: EventEnvelope) -> None:
        assert isinstance(event, events_pb2.OrderCancelled)
        payments(session).cancel_order(event.order, event.reason)

    return {
        events_pb2.UserRegistered: user_registered,
        events_pb2.OrderCreated: order_created,
        events_pb2.OrderCancelled: order_cancelled,
    }
