"""The users service's events: the payload of each event it publishes, built from the
domain's records, and the handler of each it consumes (types in protos/poly/events/v1; who
publishes and consumes each is declared there, in its `(poly.options.v1.event)`)."""

import datetime as dt
from collections.abc import Callable, Mapping

from google.protobuf.message import Message
from sqlalchemy import Connection

from poly.events.v1 import events_pb2
from poly.events.v1.events_pb2 import EventEnvelope
from services.kit.bus import EventHandler
from services.kit.names import resource_id
from services.users.domain import DELETED, Preferences, Repository, User, create_profile

__all__ = ["contact_changed", "handlers", "user_deleted"]


def user_deleted(user: User) -> Message:
    return events_pb2.UserDeleted(user=user.name)


def contact_changed(user: User, preferences: Preferences) -> Message:
    return events_pb2.ContactChanged(
        user=user.name,
        email=user.email,
        display_name=user.display_name,
        locale=preferences.locale,
        email_enabled=preferences.email_enabled,
        webhook_enabled=preferences.webhook_enabled,
        muted_event_types=preferences.muted_event_types,
        deleted=user.state == DELETED,
        phone_number=user.phone_number,
        sms_enabled=preferences.sms_enabled,
        push_enabled=preferences.push_enabled,
    )


def handlers(repository: Callable[[Connection], Repository]) -> Mapping[type[Message], EventHandler]:
    """The handler of each consumed event; exactly the types the contract names this
    service a consumer of (the node checks it at start). Each runs in the consumer's
    transaction (with its inbox row), over the `repository` of that connection."""

    def user_registered(connection: Connection, event: Message, envelope: EventEnvelope) -> None:
        assert isinstance(event, events_pb2.UserRegistered)
        user_id = resource_id(event.user, "users", field="user")
        now = dt.datetime.now(dt.UTC)
        create_profile(repository(connection), user_id, event.email, event.display_name, now)

    return {events_pb2.UserRegistered: user_registered}
