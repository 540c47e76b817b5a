"""Events the users service consumes (payloads in protos/poly/events/v1; what it publishes
is declared there, in each event's `(poly.options.v1.event)`)."""

import datetime as dt
from collections.abc import Mapping

from google.protobuf.message import Message
from sqlalchemy.orm import Session

from poly.events.v1 import events_pb2
from poly.events.v1.events_pb2 import EventEnvelope
from services.kit.bus import EventHandler, Outbox
from services.kit.names import resource_id
from services.users.domain import create_profile
from services.users.store import SqlRepository

__all__ = ["handlers"]


def handlers(outbox: Outbox) -> Mapping[type[Message], EventHandler]:
    """The handler of each consumed event; exactly the types the contract names this
    service a consumer of (the node checks it at start).
    Each runs in the consumer's transaction (with its inbox row) and publishes through `outbox`."""

    def user_registered(session: Session, event: Message, envelope: EventEnvelope) -> None:
        assert isinstance(event, events_pb2.UserRegistered)
        user_id = resource_id(event.user, "users", field="user")
        repo = SqlRepository(session, outbox)
        create_profile(repo, user_id, event.email, event.display_name, dt.datetime.now(dt.UTC))

    return {events_pb2.UserRegistered: user_registered}
