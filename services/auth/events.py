"""The auth service's events: the payload of each event it publishes, built from the
domain's records, and the handler of each it consumes (types in protos/poly/events/v1; who
publishes and consumes each is declared there, in its `(poly.options.v1.event)`)."""

import datetime as dt
from collections.abc import Callable, Mapping

from google.protobuf.message import Message
from sqlalchemy import Connection

from poly.events.v1 import events_pb2
from poly.events.v1.events_pb2 import EventEnvelope
from services.auth.accounts import disable_identity
from services.auth.domain import Identity, Repository
from services.kit.bus import EventHandler
from services.kit.names import resource_id

__all__ = ["handlers", "user_registered"]


def user_registered(identity: Identity, display_name: str) -> Message:
    return events_pb2.UserRegistered(user=identity.name, email=identity.email, display_name=display_name)


def handlers(repository: Callable[[Connection], Repository]) -> Mapping[type[Message], EventHandler]:
    """The handler of each consumed event: exactly the types the contract names auth a
    consumer of (the node checks it at start), each over the `repository` of its connection."""

    def user_deleted(connection: Connection, event: Message, envelope: EventEnvelope) -> None:
        assert isinstance(event, events_pb2.UserDeleted)
        user_id = resource_id(event.user, "users", field="user")
        disable_identity(repository(connection), user_id, dt.datetime.now(dt.UTC))

    return {events_pb2.UserDeleted: user_deleted}
