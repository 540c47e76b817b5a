"""Tests of gateway.fieldmask: a PATCH's field mask from its body's keys, as grpc-gateway v2."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import field_mask_pb2, struct_pb2, type_pb2
from hypothesis import given
from hypothesis import strategies as st

from gateway import fieldmask
from gateway.fieldmask import patch_mask_field, paths_from_body
from poly.notifications.v1 import notifications_service_pb2 as notifications_pb
from poly.orders.v1 import orders_service_pb2, resources_pb2
from poly.users.v1 import users_service_pb2

_ORDER = resources_pb2.Order.DESCRIPTOR
_FIVE_EUROS = {"currencyCode": "EUR", "amountMinor": "5"}


def test_exports() -> None:
    assert set(fieldmask.__all__) == {"PatchMask", "patch_mask_field", "paths_from_body"}


@pytest.mark.parametrize(
    ("value", "paths"),
    [
        ({"etag": "x"}, ["etag"]),
        ({"cancelReason": "x", "etag": "y"}, ["cancel_reason", "etag"]),
        ({"cancel_reason": "x"}, ["cancel_reason"]),
        (
            {"total": {"currencyCode": "EUR", "amountMinor": "5"}},
            ["total.amount_minor", "total.currency_code"],
        ),
        ({"total": {}}, ["total"]),
        ({"total": None}, ["total"]),
        ({"lines": [{"sku": "a"}]}, ["lines"]),
        ({"createTime": "2024-01-01T00:00:00Z"}, ["create_time"]),
        ({}, []),
    ],
    ids=[
        "one-key",
        "sorted-proto-names",
        "proto-name-key",
        "nested-message-dotted",
        "empty-object-a-path",
        "null-a-path",
        "list-a-leaf",
        "well-known-type-a-leaf",
        "nothing",
    ],
)
def test_paths_from_body(value: dict[str, Any], paths: list[str]) -> None:
    assert paths_from_body(value, _ORDER) == paths


def test_a_map_and_an_any_are_leaves_and_a_struct_is_descended_by_its_keys() -> None:
    """The well-known types' own descriptors hold each kind (no Poly API has a map, an Any or a
    Struct in a resource)."""
    assert paths_from_body({"fields": {"k": {"a": 1}}}, struct_pb2.Struct.DESCRIPTOR) == ["fields"]
    option = {"value": {"@type": "type.googleapis.com/google.protobuf.Empty"}}
    assert paths_from_body(option, type_pb2.Option.DESCRIPTOR) == ["value"]
    free_form = {"structValue": {"a": {"b": 1}, "c": 2, "d": {}}}
    paths = paths_from_body(free_form, struct_pb2.Value.DESCRIPTOR)
    assert paths == ["struct_value.a.b", "struct_value.c", "struct_value.d"]


@pytest.mark.parametrize(
    ("method", "body", "request_type", "derives"),
    [
        ("PATCH", "user", users_service_pb2.UpdateUserRequest, True),
        ("PATCH", "template", notifications_pb.UpdateTemplateRequest, True),
        ("PUT", "user", users_service_pb2.UpdateUserRequest, False),
        ("PATCH", "*", users_service_pb2.UpdateUserRequest, False),
        ("PATCH", "", users_service_pb2.UpdateUserRequest, False),
        ("PATCH", "order", orders_service_pb2.CreateOrderRequest, False),
    ],
    ids=["update-user", "update-template", "not-patch", "body-star", "no-body", "no-mask-field"],
)
def test_which_rules_derive_a_mask(method: str, body: str, request_type: Any, derives: bool) -> None:
    found = patch_mask_field(method, body, request_type.DESCRIPTOR)
    assert (found is not None) == derives
    if found is not None:
        assert found.field.name == "update_mask"
        assert found.resource is request_type.DESCRIPTOR.fields_by_name[body].message_type


def test_a_mask_the_client_sent_wins_and_no_body_derives_nothing() -> None:
    derive = patch_mask_field("PATCH", "user", users_service_pb2.UpdateUserRequest.DESCRIPTOR)
    assert derive is not None
    sent = users_service_pb2.UpdateUserRequest(update_mask=field_mask_pb2.FieldMask(paths=["etag"]))
    derive.fill(sent, {"displayName": "x"})
    assert list(sent.update_mask.paths) == ["etag"]
    empty = users_service_pb2.UpdateUserRequest()
    derive.fill(empty, None)
    assert not empty.HasField("update_mask")
    derived = users_service_pb2.UpdateUserRequest()
    derive.fill(derived, {"displayName": "x", "etag": "y"})
    assert list(derived.update_mask.paths) == ["display_name", "etag"]


_KEYS = st.sampled_from(["name", "etag", "cancelReason", "failure_reason", "total", "lines", "createTime"])
_MONEY = st.fixed_dictionaries({}, optional={"currencyCode": st.just("EUR"), "amountMinor": st.just("1")})
_VALUES = st.one_of(st.none(), st.text(max_size=3), st.lists(st.just({}), max_size=2), _MONEY)


@given(body=st.dictionaries(_KEYS, _VALUES, max_size=5))
def test_every_derived_path_is_valid_for_the_resource(body: dict[str, Any]) -> None:
    paths = paths_from_body(body, _ORDER)
    assert paths == sorted(paths) and len(paths) == len(set(paths))
    assert field_mask_pb2.FieldMask(paths=paths).IsValidForDescriptor(_ORDER)
