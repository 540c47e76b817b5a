"""Who publishes what, read from `(poly.options.v1.event)` on the compiled descriptors."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor

from poly.options.v1 import options_pb2
from services.kit.bus import contract
from services.kit.domain_errors import ErrorKind

ORDERS_EVENTS = {
    "poly.events.v1.OrderCreated",
    "poly.events.v1.OrderCancelled",
    "poly.events.v1.OrderPaid",
    "poly.events.v1.OrderPaymentFailed",
    "poly.events.v1.OrderFulfilled",
}


def _file(*messages: tuple[str, str | None, str | None]) -> FileDescriptor:
    """A throw-away events file in a pool of its own; each message is
    ``(name, publisher or None for no option, name of the message its one field holds or None)``."""
    pool = descriptor_pool.DescriptorPool()
    for dependency in (descriptor_pb2.DESCRIPTOR, options_pb2.DESCRIPTOR):
        pool.AddSerializedFile(dependency.serialized_pb)
    proto = descriptor_pb2.FileDescriptorProto(
        name="test/v1/events.proto",
        package="test.v1",
        syntax="proto3",
        dependency=["poly/options/v1/options.proto"],
    )
    for name, publisher, holds in messages:
        message = proto.message_type.add(name=name)
        if publisher is not None:
            message.options.Extensions[options_pb2.event].publisher = publisher
        if holds is not None:
            message.field.add(
                name="part",
                number=1,
                type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
                label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
                type_name=f".test.v1.{holds}",
            )
    pool.AddSerializedFile(proto.SerializeToString())
    return pool.FindFileByName(proto.name)


def test_events_are_the_top_level_messages_except_the_carrier_and_event_parts() -> None:
    names = {message.name for message in contract.events()}
    assert "EventEnvelope" not in names, "the carrier is no event"
    assert "OrderLine" not in names, "a field type of OrderCreated is a part of it, not an event"
    assert {"UserRegistered", "UserDeleted", "OrderPaid", "PaymentCaptured", "NotificationFailed"} <= names


def test_the_rule_is_generic_not_a_list_of_names() -> None:
    file = _file(("Shipped", "orders", "Parcel"), ("Parcel", None, None), ("Forgotten", None, None))
    assert [(m.name, contract.declared_publisher(m)) for m in contract.events(file)] == [
        ("Shipped", "orders"),
        ("Forgotten", ""),  # an event without the option: the contract test catches it
    ]


def test_each_type_has_the_publisher_its_option_names() -> None:
    assert contract.publisher_of("poly.events.v1.UserRegistered") == "auth"
    assert contract.publisher_of("poly.events.v1.UserDeleted") == "users"
    assert contract.publisher_of("poly.events.v1.PaymentCaptured") == "payments"
    assert contract.publisher_of("poly.events.v1.NotificationDelivered") == "notifications"
    assert contract.published_by("orders") == ORDERS_EVENTS


@pytest.mark.parametrize(
    "event_type",
    ["poly.events.v1.EventEnvelope", "poly.events.v1.OrderLine", "poly.events.v1.Nonsense", ""],
    ids=["carrier", "part", "unknown", "empty"],
)
def test_what_is_no_event_has_no_publisher(event_type: str) -> None:
    assert contract.publisher_of(event_type) is None
    for service in ("auth", "users", "orders", "payments", "notifications"):
        assert not contract.may_publish(service, event_type)


@pytest.mark.parametrize(
    ("caller", "event_type", "allowed"),
    [
        ("orders", "poly.events.v1.OrderPaid", True),
        ("payments", "poly.events.v1.PaymentCaptured", True),
        ("notifications", "poly.events.v1.PaymentCaptured", False),
        ("notifications", "poly.events.v1.UserDeleted", False),
        ("payments", "poly.events.v1.OrderPaid", False),
        ("", "poly.events.v1.OrderPaid", False),
        ("orders", "poly.events.v1.Nonsense", False),
    ],
    ids=["own", "own-payments", "forged-capture", "forged-deletion", "other-service", "no-source", "unknown"],
)
def test_check_publisher(caller: str, event_type: str, allowed: bool) -> None:
    assert contract.may_publish(caller, event_type) is allowed
    if allowed:
        contract.check_publisher(caller, event_type)
        return
    with pytest.raises(contract.EventNotPublishedByCaller) as refused:
        contract.check_publisher(caller, event_type)
    assert refused.value.kind is ErrorKind.PERMISSION_DENIED
    assert refused.value.reason == "EVENT_TYPE_NOT_PUBLISHED_BY_CALLER"
    assert refused.value.metadata["event_type"] == (event_type or "an unnamed type")


def test_the_bus_participants_are_the_services_the_contract_names() -> None:
    # The embedded transport dials them and the event sink accepts calls from them only.
    assert contract.services() == {"auth", "users", "orders", "payments", "notifications"}
