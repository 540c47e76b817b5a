"""Who publishes and who consumes which event, read from the contract: ``(poly.options.v1.event)``.

Every event message in ``poly/events/v1/events.proto`` declares its one publisher and its
consumers, e.g. ``option (poly.options.v1.event) = {publisher: "orders" consumers:
["payments"]};``. This module is the only reader of that option in the kit:
`publisher_of(event_type)`, `published_by(service)`, `consumers_of(event_type)` and
`consumed_by(service)` answer from the compiled descriptors; `check_publisher(source,
event_type)` is the rule the EventSink, both consumers (embedded and RabbitMQ) and the outbox
enforce, and the bus's routes and broker topology are derived from the consumers. Nothing
here is kept by hand: a new event is published by whoever its option names and delivered to
whoever it lists, and an event without the option (or a type that is no event) is published
by nobody, so it is refused everywhere.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

from google.protobuf.descriptor import Descriptor, FileDescriptor

from poly.events.v1 import events_pb2
from poly.options.v1 import options_pb2
from services.kit.domain_errors import PermissionDenied

__all__ = [
    "NOT_PUBLISHED_BY_CALLER",
    "EventNotPublishedByCaller",
    "check_publisher",
    "consumed_by",
    "consumers_of",
    "declared_consumers",
    "declared_publisher",
    "events",
    "may_publish",
    "published_by",
    "publisher_of",
    "services",
]

NOT_PUBLISHED_BY_CALLER = "EVENT_TYPE_NOT_PUBLISHED_BY_CALLER"
"""The ErrorInfo reason of a refused event (and the dead-letter reason on RabbitMQ)."""

_CARRIER = events_pb2.EventEnvelope.DESCRIPTOR


class EventNotPublishedByCaller(PermissionDenied):
    """`caller` is not the declared publisher of `event_type`, or the type is no event."""

    def __init__(self, caller: str, event_type: str) -> None:
        super().__init__(
            NOT_PUBLISHED_BY_CALLER,
            "{caller} is not the publisher of {event_type}",
            caller=caller or "an unnamed source",
            event_type=event_type or "an unnamed type",
        )
        self.caller = caller
        self.event_type = event_type


def events(file: FileDescriptor = events_pb2.DESCRIPTOR) -> list[Descriptor]:
    """The event messages of `file`: its top-level messages except the carrier
    (``EventEnvelope``) and those used as a field type by another message of the file
    (parts of events, such as ``OrderLine``)."""
    parts = {
        field.message_type.full_name
        for message in file.message_types_by_name.values()
        for field in message.fields
        if field.message_type is not None
    }
    return [
        message
        for message in file.message_types_by_name.values()
        if message.full_name != _CARRIER.full_name and message.full_name not in parts
    ]


def declared_publisher(message: Descriptor) -> str:
    """The publisher `message`'s ``(poly.options.v1.event)`` names; empty if it names none."""
    options = message.GetOptions()
    if not options.HasExtension(options_pb2.event):
        return ""
    contract: options_pb2.EventContract = options.Extensions[options_pb2.event]
    return contract.publisher


def declared_consumers(message: Descriptor) -> tuple[str, ...]:
    """The consumers `message`'s ``(poly.options.v1.event)`` names, in order; empty if none."""
    options = message.GetOptions()
    if not options.HasExtension(options_pb2.event):
        return ()
    contract: options_pb2.EventContract = options.Extensions[options_pb2.event]
    return tuple(contract.consumers)


@functools.cache
def _consumers() -> Mapping[str, frozenset[str]]:
    """Declared events (those with a publisher) and their consumers."""
    return {
        message.full_name: frozenset(declared_consumers(message))
        for message in events()
        if declared_publisher(message)
    }


def consumers_of(event_type: str) -> frozenset[str]:
    """The services that consume `event_type`; empty for an event nobody consumes or a
    type that is no declared event."""
    return _consumers().get(event_type, frozenset())


def consumed_by(service: str) -> frozenset[str]:
    """Full names of the event types `service` is a declared consumer of."""
    return frozenset(t for t, consumers in _consumers().items() if service in consumers)


@functools.cache
def _publishers() -> Mapping[str, str]:
    found = {message.full_name: declared_publisher(message) for message in events()}
    return {event_type: publisher for event_type, publisher in found.items() if publisher}


def publisher_of(event_type: str) -> str | None:
    """The service that publishes `event_type` (a full name such as
    ``poly.events.v1.OrderPaid``); None for a type that is no declared event."""
    return _publishers().get(event_type)


def published_by(service: str) -> frozenset[str]:
    """Full names of the event types `service` is the declared publisher of."""
    return frozenset(t for t, publisher in _publishers().items() if publisher == service)


def services() -> frozenset[str]:
    """Every service the contract names, as publisher or consumer: the bus's participants."""
    return frozenset(_publishers().values()) | frozenset().union(*_consumers().values())


def may_publish(service: str, event_type: str) -> bool:
    return bool(service) and publisher_of(event_type) == service


def check_publisher(caller: str, event_type: str) -> None:
    """Raise `EventNotPublishedByCaller` unless `caller` is `event_type`'s declared publisher."""
    if not may_publish(caller, event_type):
        raise EventNotPublishedByCaller(caller, event_type)
