"""The API contract, checked on the compiled descriptors of every Polyservice service."""

from __future__ import annotations

import importlib

import pytest
from google.api import annotations_pb2, field_behavior_pb2
from google.protobuf.descriptor import Descriptor, MethodDescriptor, ServiceDescriptor

from poly.events.v1 import events_pb2
from poly.options.v1 import options_pb2
from services.kit import config
from services.kit.bus import contract

_MODULES = [f"poly.{name}.v1.{name}_service_pb2" for name in config.SERVICES] + [
    "poly.events.v1.event_sink_pb2"
]


def _services() -> list[ServiceDescriptor]:
    found = []
    for module in _MODULES:
        found.extend(importlib.import_module(module).DESCRIPTOR.services_by_name.values())
    return found


def _methods() -> list[MethodDescriptor]:
    return [method for service in _services() for method in service.methods]


_ALL = _methods()
_IDS = [m.full_name for m in _ALL]


def test_every_service_is_covered() -> None:
    assert {s.full_name for s in _services()} == {
        "poly.auth.v1.AuthService",
        "poly.users.v1.UsersService",
        "poly.orders.v1.OrdersService",
        "poly.payments.v1.PaymentsService",
        "poly.notifications.v1.NotificationsService",
        "poly.events.v1.EventSinkService",
    }


@pytest.mark.parametrize("method", _ALL, ids=_IDS)
def test_every_rpc_has_an_http_rule_and_a_policy(method: MethodDescriptor) -> None:
    options = method.GetOptions()
    assert options.HasExtension(annotations_pb2.http), "missing google.api.http"
    assert options.HasExtension(options_pb2.policy), "missing (poly.options.v1.policy): deny by default"
    policy = options.Extensions[options_pb2.policy]
    assert policy.access != options_pb2.ACCESS_UNSPECIFIED
    if policy.access == options_pb2.ACCESS_INTERNAL:
        assert policy.callers, "an INTERNAL method names its callers"
        assert set(policy.callers) <= set(config.COMPONENTS) - {"cli"}


def _behaviours(message: Descriptor) -> dict[str, list[int]]:
    return {
        f.name: list(f.GetOptions().Extensions[field_behavior_pb2.field_behavior]) for f in message.fields
    }


@pytest.mark.parametrize("method", _ALL, ids=_IDS)
def test_every_request_field_declares_its_behaviour(method: MethodDescriptor) -> None:
    missing = [name for name, behaviours in _behaviours(method.input_type).items() if not behaviours]
    assert missing == []


@pytest.mark.parametrize(
    "method",
    [m for m in _ALL if m.name.startswith("List")],
    ids=[m.full_name for m in _ALL if m.name.startswith("List")],
)
def test_every_list_is_paginated(method: MethodDescriptor) -> None:
    request, response = method.input_type.fields_by_name, method.output_type.fields_by_name
    assert request["page_size"].type == request["page_size"].TYPE_INT32
    assert "page_token" in request
    assert response["next_page_token"].number == 2
    assert method.output_type.name == f"{method.name}Response"


@pytest.mark.parametrize(
    "method",
    [m for m in _ALL if m.name.startswith("Update")],
    ids=[m.full_name for m in _ALL if m.name.startswith("Update")],
)
def test_every_update_takes_a_field_mask_and_returns_the_resource(method: MethodDescriptor) -> None:
    mask = method.input_type.fields_by_name["update_mask"]
    assert mask.message_type.full_name == "google.protobuf.FieldMask"
    resource = method.output_type
    assert resource.fields[0].name == "name"
    state = resource.fields_by_name.get("state")
    if state is not None:
        assert (
            field_behavior_pb2.OUTPUT_ONLY in state.GetOptions().Extensions[field_behavior_pb2.field_behavior]
        )


@pytest.mark.parametrize(
    "method",
    [m for m in _ALL if m.name.startswith(("Get", "Create", "Update"))],
    ids=[m.full_name for m in _ALL if m.name.startswith(("Get", "Create", "Update"))],
)
def test_get_create_update_return_the_resource(method: MethodDescriptor) -> None:
    if method.name in {"CreateClient", "CreateWebhook"}:
        # They also return a secret that is shown once, so they wrap the resource.
        assert method.output_type.name == f"{method.name}Response"
        return
    if method.name in {"GetJwks", "GetOpenIdConfiguration", "GetUserInfo"}:
        return  # standard documents (RFC 7517, OIDC Discovery, OIDC UserInfo), not resources
    assert not method.output_type.name.endswith("Response")
    assert method.output_type.fields[0].name == "name"


_EVENTS = contract.events()


def test_events_are_found() -> None:
    # Not vacuous: the rule (tested in tests/kit/bus/test_contract.py) finds today's events.
    names = {e.name for e in _EVENTS}
    assert {"UserRegistered", "OrderPaid", "PaymentCaptured"} <= names
    assert names.isdisjoint({"EventEnvelope", "OrderLine"})


@pytest.mark.parametrize("event", _EVENTS, ids=[e.name for e in _EVENTS])
def test_every_event_declares_its_one_publisher(event: Descriptor) -> None:
    options = event.GetOptions()
    assert options.HasExtension(options_pb2.event), "missing (poly.options.v1.event): nobody may publish it"
    assert options.Extensions[options_pb2.event].publisher in config.SERVICES


def test_only_events_declare_a_publisher() -> None:
    events = {e.full_name for e in _EVENTS}
    for message in events_pb2.DESCRIPTOR.message_types_by_name.values():
        if message.full_name not in events:
            assert not message.GetOptions().HasExtension(options_pb2.event), message.full_name


def test_the_event_option_is_a_message_that_can_grow() -> None:
    # A message, not a scalar: the consumers were added to it without breaking it.
    extension = options_pb2.DESCRIPTOR.extensions_by_name["event"]
    assert extension.containing_type is not None and extension.message_type is not None
    assert extension.containing_type.full_name == "google.protobuf.MessageOptions"
    publisher = extension.message_type.fields_by_name["publisher"]
    assert publisher.type == publisher.TYPE_STRING and not publisher.is_repeated, "one publisher"
    consumers = extension.message_type.fields_by_name["consumers"]
    assert consumers.type == consumers.TYPE_STRING and consumers.is_repeated, "any number of consumers"


@pytest.mark.parametrize("event", _EVENTS, ids=[e.name for e in _EVENTS])
def test_every_declared_consumer_is_a_service_other_than_the_publisher(event: Descriptor) -> None:
    declared = contract.declared_consumers(event)
    assert len(set(declared)) == len(declared), "a consumer named twice"
    assert set(declared) <= set(config.SERVICES), "a consumer that is no service"
    assert contract.declared_publisher(event) not in declared, "a service consuming its own event"


def test_some_events_are_consumed_and_some_are_not() -> None:
    # Not vacuous: the rules above and below see today's consumers.
    assert contract.consumers_of("poly.events.v1.UserRegistered") == {"users", "payments", "notifications"}
    assert contract.consumers_of("poly.events.v1.PaymentVoided") == frozenset()
    assert contract.consumed_by("payments") == {
        "poly.events.v1.UserRegistered",
        "poly.events.v1.OrderCancelled",
    }
    assert contract.consumed_by("orders") == frozenset(), "orders asks payments; it consumes nothing"
