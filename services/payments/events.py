"""The payments service's events: the payload of each event it publishes, built from the
domain's `PaymentEvent`, and the handler of each it consumes (types in protos/poly/events/v1;
who publishes and consumes each is declared there, in its `(poly.options.v1.event)`).

Each handler runs inside the consumer's transaction (which also records the event in the
inbox), through the same domain use cases as the RPCs, so its effect happens once.
"""

from collections.abc import Callable, Mapping
from contextlib import nullcontext
from typing import Any

from google.protobuf.message import Message
from sqlalchemy import Connection

from poly.events.v1 import events_pb2
from poly.events.v1.events_pb2 import EventEnvelope
from services.kit.bus import EventHandler
from services.kit.money import Money
from services.kit.wire import money_message, money_value
from services.payments.accounts import Accounts
from services.payments.domain import Payments
from services.payments.records import REFUNDED, PaymentEvent, Repository

__all__ = ["handlers", "message"]


def message(event: PaymentEvent) -> Message:
    """The payload of a payment event the domain publishes."""
    payment = event.payment
    common: dict[str, Any] = {
        "payment": payment.name,
        "order": payment.order,
        "account": f"accounts/{payment.account_id}" if payment.account_id else "",
        "owner": payment.owner,
        "amount": money_message(Money(payment.currency, event.amount)),
    }
    if event.kind == "AUTHORIZED":
        return events_pb2.PaymentAuthorized(**common)
    if event.kind == "FAILED":
        return events_pb2.PaymentFailed(**common, reason=event.reason)
    if event.kind == "CAPTURED":
        return events_pb2.PaymentCaptured(**common)
    if event.kind == "VOIDED":
        return events_pb2.PaymentVoided(**common)
    return events_pb2.PaymentRefunded(
        **common,
        refunded_total=money_message(Money(payment.currency, payment.refunded)),
        fully_refunded=payment.state == REFUNDED,
        reason=event.reason,
    )


def handlers(
    repository: Callable[[Connection], Repository], default_currency: str
) -> Mapping[type[Message], EventHandler]:
    """The handler of each consumed event, each over the `repository` of its connection;
    exactly the types the contract names this service a consumer of (the node checks it at
    start). New users get an account in `default_currency`."""

    def payments(connection: Connection) -> Payments:
        repo = repository(connection)
        return Payments(lambda: nullcontext(repo))

    def user_registered(connection: Connection, event: Message, envelope: EventEnvelope) -> None:
        assert isinstance(event, events_pb2.UserRegistered)
        repo = repository(connection)
        Accounts(lambda: nullcontext(repo)).open_account(event.user, default_currency)

    def order_cancelled(connection: Connection, event: Message, envelope: EventEnvelope) -> None:
        assert isinstance(event, events_pb2.OrderCancelled)
        total = money_value(event.total) if event.HasField("total") else None
        payments(connection).cancel_order(event.order, event.reason, owner=event.owner, total=total)

    return {
        events_pb2.UserRegistered: user_registered,
        events_pb2.OrderCancelled: order_cancelled,
    }
