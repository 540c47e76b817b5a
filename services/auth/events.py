"""Events the auth service publishes and consumes (payloads in protos/poly/events/v1)."""

from collections.abc import Mapping

from google.protobuf.message import Message

from services.kit.bus import EventHandler

__all__ = ["CONSUMES", "HANDLERS", "PUBLISHES"]

PUBLISHES: tuple[str, ...] = ("poly.events.v1.UserRegistered",)

CONSUMES: tuple[str, ...] = ("poly.events.v1.UserDeleted",)

HANDLERS: Mapping[type[Message], EventHandler] = {}
"""The handler of each consumed event; the service subscribes to exactly these types.
Filled in by the domain work: until then the service subscribes to nothing."""
