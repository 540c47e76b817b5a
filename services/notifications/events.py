"""The notifications service's events: the payload of each event it publishes (a
delivery's outcome), built from the domain's `Delivery`, and the handler of each it
consumes (types in protos/poly/events/v1; who publishes and consumes each is declared
there, in its `(poly.options.v1.event)`).

Each consumed event records one notification in the consumer's transaction (with the inbox
row, so once); the dispatcher sends it later. ContactChanged instead updates this service's
copy of the user's contact, which the dispatcher reads (so sending asks no other service). No
network call happens in a handler.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from sqlalchemy import Connection

from poly.events.v1 import events_pb2
from poly.events.v1.events_pb2 import EventEnvelope
from poly.type.v1 import money_pb2
from services.kit.bus import EventHandler
from services.kit.db import after_commit
from services.kit.wire import money_value
from services.notifications.domain import (
    EMAIL,
    PUSH,
    SENT,
    SMS,
    WEBHOOK,
    Contact,
    Delivery,
    Lease,
    Notification,
    Repository,
    record_notification,
)

__all__ = ["contact", "delivery_outcome", "handlers", "template_values"]


_CHANNELS = {
    EMAIL: events_pb2.CHANNEL_EMAIL,
    WEBHOOK: events_pb2.CHANNEL_WEBHOOK,
    SMS: events_pb2.CHANNEL_SMS,
    PUSH: events_pb2.CHANNEL_PUSH,
}


def delivery_outcome(delivery: Delivery) -> Message:
    """NotificationDelivered or NotificationFailed, once a delivery is settled."""
    common: dict[str, Any] = {
        "delivery": delivery.name,
        "recipient": delivery.recipient,
        "channel": _CHANNELS[delivery.channel],
        "event_type": delivery.event_type,
        "event_id": delivery.event_id,
        "attempts": delivery.attempts,
    }
    if delivery.state == SENT:
        return events_pb2.NotificationDelivered(**common)
    return events_pb2.NotificationFailed(**common, error=delivery.last_error)


def _money(value: money_pb2.Money) -> str:
    return str(money_value(value))


def _order_id(name: str) -> str:
    return name.removeprefix("orders/")


def template_values(payload: Message) -> tuple[str, dict[str, str]]:
    """The recipient of a consumed event and the template values its payload gives."""
    if isinstance(payload, events_pb2.UserRegistered):
        return payload.user, {}
    if isinstance(payload, events_pb2.OrderPaid):
        values = {
            "order": _order_id(payload.order),
            "payment": payload.payment,
            "amount": _money(payload.amount),
        }
        return payload.owner, values
    if isinstance(payload, (events_pb2.OrderPaymentFailed, events_pb2.OrderCancelled)):
        return payload.owner, {
            "order": _order_id(payload.order),
            "payment": payload.payment,
            "reason": payload.reason,
        }
    raise TypeError(f"not a notified event: {payload.DESCRIPTOR.full_name}")


def contact(changed: events_pb2.ContactChanged) -> Contact:
    return Contact(
        user=changed.user,
        email=changed.email,
        display_name=changed.display_name,
        deleted=changed.deleted,
        email_enabled=changed.email_enabled,
        webhook_enabled=changed.webhook_enabled,
        muted=tuple(changed.muted_event_types),
        phone_number=changed.phone_number,
        sms_enabled=changed.sms_enabled,
        push_enabled=changed.push_enabled if changed.HasField("push_enabled") else True,
    )


def handlers(
    repository: Callable[[Connection], Repository],
    *,
    lease: Callable[[], Lease | None] | None = None,
    on_commit: Callable[[Notification], None] = lambda notification: None,
) -> Mapping[type[Message], EventHandler]:
    """The handler of each consumed event (exactly the types the contract names this service
    a consumer of; the node checks it at start). With `lease` (the dispatcher's), each
    notification is recorded already taken by that dispatcher and `on_commit` gets it once its
    transaction commits (the dispatcher resolves it at once, in the event's trace, with no
    claim); when `lease` gives None, it is recorded free, for a claim."""

    def record(connection: Connection, payload: Message, envelope: EventEnvelope) -> None:
        recipient, values = template_values(payload)
        notification = Notification(
            event_id=envelope.id,
            event_type=envelope.type,
            recipient=recipient,
            variables=values,
            data=json_format.MessageToDict(payload, preserving_proto_field_name=True),
            occur_time=envelope.occur_time.ToDatetime(dt.UTC) if envelope.HasField("occur_time") else _now(),
        )
        taken = lease() if lease is not None else None
        recorded = record_notification(repository(connection), notification, _now(), taken)
        if recorded is not None and taken is not None:  # untaken, it waits for a claim
            after_commit(connection, lambda: on_commit(recorded))

    def contact_changed(connection: Connection, payload: Message, envelope: EventEnvelope) -> None:
        assert isinstance(payload, events_pb2.ContactChanged)
        # The event's position orders the user's changes: an older one delivered late loses.
        repository(connection).record_contact(contact(payload), envelope.sequence, _now())

    return {
        events_pb2.ContactChanged: contact_changed,
        events_pb2.UserRegistered: record,
        events_pb2.OrderPaid: record,
        events_pb2.OrderPaymentFailed: record,
        events_pb2.OrderCancelled: record,
    }


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
