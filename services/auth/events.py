"""Events the auth service consumes (payloads in protos/poly/events/v1; what it publishes
is declared there, in each event's `(poly.options.v1.event)`)."""

import datetime as dt
from collections.abc import Mapping

from google.protobuf.message import Message
from sqlalchemy.orm import Session

from poly.events.v1 import events_pb2
from poly.events.v1.events_pb2 import EventEnvelope
from services.auth.accounts import disable_identity
from services.auth.store import SqlRepository
from services.kit.bus import EventHandler
from services.kit.names import resource_id

__all__ = ["HANDLERS"]


def _user_deleted(session: Session, event: Message, envelope: EventEnvelope) -> None:
    assert isinstance(event, events_pb2.UserDeleted)
    user_id = resource_id(event.user, "users", field="user")
    disable_identity(SqlRepository(session, None), user_id, dt.datetime.now(dt.UTC))


HANDLERS: Mapping[type[Message], EventHandler] = {events_pb2.UserDeleted: _user_deleted}
"""The handler of each consumed event: exactly the types the contract names auth a consumer
of (the node checks it at start)."""
