"""Tests of gateway.jsoncodec: proto3 JSON in and out."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.protobuf import (
    any_pb2,
    descriptor_pb2,
    timestamp_pb2,
    wrappers_pb2,
)
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import jsoncodec
from gateway.errors import BadRequest
from gateway.jsoncodec import field_to_json, parse_json, to_json
from poly.orders.v1 import orders_service_pb2, resources_pb2
from poly.users.v1 import resources_pb2 as users_resources_pb2
from tests.support.protos import add_fields, add_map_entry, pooled_message

_F = descriptor_pb2.FieldDescriptorProto


def test_exports() -> None:
    assert set(jsoncodec.__all__) == {"parse_json", "to_json", "field_to_json"}


@pytest.mark.parametrize(
    "body",
    [
        b'{"order":{"lines":[{"sku":"A","quantity":2,"unitPrice":{"currencyCode":"EUR","amountMinor":"150"}}]},'
        b'"orderId":"o1"}',
        b'{"order":{"lines":[{"sku":"A","quantity":2,"unit_price":{"currency_code":"EUR","amount_minor":150}}]},'
        b'"order_id":"o1"}',
    ],
    ids=["lower-camel", "proto-names"],
)
def test_parse_names(body: bytes) -> None:
    request = orders_service_pb2.CreateOrderRequest()
    parse_json(body, request)
    assert request.order_id == "o1"
    assert request.order.lines[0].quantity == 2
    assert request.order.lines[0].unit_price.amount_minor == 150


def test_empty_body_sets_nothing() -> None:
    request = orders_service_pb2.CreateOrderRequest()
    parse_json(b"  \n", request)
    assert request == orders_service_pb2.CreateOrderRequest()


def test_non_object_well_known_type_body() -> None:
    stamp = timestamp_pb2.Timestamp()
    parse_json(b'"2024-01-02T03:04:05Z"', stamp)
    assert stamp.seconds == 1704164645


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        (b'{"order":', "", "malformed JSON"),
        (b"\xff\xfe", "", "UTF-8"),
        (b"[1]", "", "JSON object"),
        (b'"x"', "", "JSON object"),
        (b'{"order":{"lines":[{"quantity":NaN}]}}', "", "NaN"),
        (b'{"orderId":"a","orderId":"b"}', "orderId", "duplicate"),
        (b'{"nope":1}', "nope", "unknown field"),
        (b'{"order":{"lines":[{"quantiti":1}]}}', "order.lines[0].quantiti", "unknown field"),
        (
            b'{"order":{"lines":[{"unitPrice":{"units":1}}]}}',
            "order.lines[0].unitPrice.units",
            "unknown field",
        ),
        (b'{"order":{"lines":[{"quantity":1.5}]}}', "order.lines[0].quantity", "integer"),
        (b'{"order":{"lines":[{"quantity":"abc"}]}}', "order.lines.quantity", ""),
        (b'{"order":{"lines":[{"quantity":3000000000}]}}', "order.lines.quantity", "range"),
        (b'{"order":{"state":"NOPE"}}', "order.state", "enum"),
        (b'{"order":{"createTime":"x"}}', "order.createTime", "timestamp"),
        (b'{"order":5}', "order", "wrong JSON type"),
        (b'{"order":{"name":5}}', "order.name", "wrong JSON type"),
        (b'{"order":{"lines":{"a":1}}}', "order", "repeated field"),
        (b'{"order":{"lines":[null]}}', "order.lines[0]", "null"),
    ],
    ids=[
        "truncated",
        "not-utf8",
        "array-top",
        "string-top",
        "nan-literal",
        "duplicate-key",
        "unknown-top",
        "unknown-nested",
        "unknown-deep",
        "int-fraction",
        "int-string",
        "int32-overflow",
        "enum-unknown",
        "timestamp-bad",
        "object-expected",
        "string-expected",
        "list-expected",
        "null-in-list",
    ],
)
def test_parse_errors(body: bytes, field: str, fragment: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_json(body, orders_service_pb2.CreateOrderRequest())
    assert len(caught.value.violations) == 1
    got_field, description = caught.value.violations[0]
    assert got_field == field
    assert fragment.lower() in description.lower()


@pytest.mark.parametrize(
    ("body", "max_depth", "field"),
    [
        (b'{"order":{"lines":[{"unitPrice":{}}]}}', 4, "order.lines[0].unitPrice"),
        (b'{"a":[[[[]]]]}', 3, "a[0][0]"),
        (b"[" * 100_000 + b"]" * 100_000, 32, ""),
    ],
    ids=["message-path", "list-path", "recursion-bomb"],
)
def test_depth_limit(body: bytes, max_depth: int, field: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_json(body, orders_service_pb2.CreateOrderRequest(), max_depth=max_depth)
    assert caught.value.violations[0][0] == field
    assert "nested deeper" in caught.value.violations[0][1] or "object" in caught.value.violations[0][1]


def test_depth_at_limit_accepted() -> None:
    request = orders_service_pb2.CreateOrderRequest()
    parse_json(b'{"order":{"lines":[{"unitPrice":{}}]}}', request, max_depth=5)
    assert request.order.lines[0].HasField("unit_price")


def test_to_json_shape() -> None:
    order = resources_pb2.Order(name="orders/1", state=resources_pb2.Order.STATE_PAID)
    order.total.amount_minor = 2**40
    out = to_json(order)
    assert b" " not in out
    value = json.loads(out)
    assert value["name"] == "orders/1"
    assert value["state"] == "STATE_PAID"
    assert value["total"]["amountMinor"] == str(2**40)
    assert value["failureReason"] == ""
    assert value["lines"] == []
    assert "failure_reason" not in value


def test_round_trip() -> None:
    request = orders_service_pb2.CreateOrderRequest(order_id="x")
    request.order.lines.add(sku="é", quantity=3)
    again = orders_service_pb2.CreateOrderRequest()
    parse_json(to_json(request), again)
    assert again == request


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                ["order", "lines", "sku", "quantity", "unitPrice", "amountMinor", "orderId", "state"]
            )
            | st.text(max_size=6),
            children,
            max_size=4,
        )
    ),
    max_leaves=20,
)


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(value=_JSON)
def test_parse_json_values_never_raise_anything_but_bad_request(value: object) -> None:
    body = json.dumps(value).encode()
    try:
        parse_json(body, orders_service_pb2.CreateOrderRequest(), max_depth=6)
    except BadRequest as error:
        assert error.violations


@settings(max_examples=400, deadline=None)
@given(body=st.binary(max_size=64) | st.text(max_size=64).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_parse_json_bytes_never_raise_anything_but_bad_request(body: bytes) -> None:
    try:
        parse_json(body, orders_service_pb2.CreateOrderRequest())
    except BadRequest as error:
        assert error.violations


def _order_list() -> orders_service_pb2.ListOrdersResponse:
    reply = orders_service_pb2.ListOrdersResponse(next_page_token="t")
    reply.orders.add(name="orders/1").total.amount_minor = 2**53 + 1
    reply.orders.add(name="orders/2")
    return reply


@pytest.mark.parametrize(
    ("message", "name", "expected"),
    [
        (_order_list(), "orders", [{"name": "orders/1"}, {"name": "orders/2"}]),
        (orders_service_pb2.ListOrdersResponse(), "orders", []),
        (_order_list(), "next_page_token", "t"),
        (resources_pb2.Order(name="orders/9"), "total", {"currencyCode": "", "amountMinor": "0"}),
        (users_resources_pb2.Preferences(muted_event_types=["a", "b"]), "muted_event_types", ["a", "b"]),
        (users_resources_pb2.Preferences(email_enabled=False), "email_enabled", False),
        (users_resources_pb2.Preferences(), "webhook_enabled", False),
        (users_resources_pb2.Preferences(), "update_time", "1970-01-01T00:00:00Z"),
    ],
    ids=[
        "repeated-message",
        "repeated-empty",
        "scalar",
        "unset-message-unpopulated-emitted",
        "repeated-scalar",
        "optional-set",
        "optional-unset-default",
        "well-known-type",
    ],
)
def test_field_to_json(message: object, name: str, expected: object) -> None:
    out = json.loads(field_to_json(message, name))  # type: ignore[arg-type]
    if isinstance(expected, list) and expected and isinstance(expected[0], dict):
        assert [{k: item[k] for k in want} for item, want in zip(out, expected, strict=True)] == expected
    else:
        assert out == expected


def test_field_to_json_int64_inside_a_repeated_field_is_a_string() -> None:
    out = json.loads(field_to_json(_order_list(), "orders"))
    assert out[0]["total"]["amountMinor"] == str(2**53 + 1)
    assert out[1]["failureReason"] == "", "unpopulated fields are emitted"


@pytest.mark.parametrize(
    ("body", "field", "violation"),
    [
        (b'{"order_id":"a","orderId":"b"}', "", "order_id"),
        (
            b'{"order":{"lines":[{"sku":"a"},{"unit_price":{},"unitPrice":{}}]}}',
            "",
            "order.lines[1].unit_price",
        ),
        (b'{"lines":[],"lines":[]}', "order", "lines"),
        (b'{"failure_reason":"a","failureReason":"b"}', "order", "order.failure_reason"),
        (b'[{"sku":"a","unit_price":{"currency_code":"EUR","currencyCode":"USD"}}]', "lines", ""),
    ],
    ids=["top", "in-a-list", "same-name-twice", "body-field", "body-field-list"],
)
def test_one_field_by_two_names_is_refused(body: bytes, field: str, violation: str) -> None:
    message: Message = orders_service_pb2.CreateOrderRequest()
    if field == "lines":
        message, violation = resources_pb2.Order(), "lines[0].unit_price.currency_code"
    with pytest.raises(BadRequest) as caught:
        parse_json(body, message, field=field)
    assert caught.value.violations[0][0] == violation, caught.value.violations


def test_a_body_field_is_parsed_as_that_fields_value_only() -> None:
    request = orders_service_pb2.CreateOrderRequest()
    parse_json(b'{"lines":[{"sku":"a"}]}', request, field="order", max_depth=3)
    assert request.order.lines[0].sku == "a"
    with pytest.raises(BadRequest):  # the bytes cannot close the field and set another
        parse_json(b'{}, "orderId": "x"', orders_service_pb2.CreateOrderRequest(), field="order")
    with pytest.raises(BadRequest) as caught:  # the wrapper is no level of the body's own
        parse_json(
            b'{"lines":[{"unitPrice":{}}]}',
            orders_service_pb2.CreateOrderRequest(),
            field="order",
            max_depth=3,
        )
    assert caught.value.violations[0][0] == "order.lines[0].unitPrice"


# -- bytes: validated base64 ------------------------------------------------------------------


def _blobs_file() -> descriptor_pb2.FileDescriptorProto:
    """A test-only message with bytes in every position: a field, a list, a map's values, a
    wrapper, a nested message and an Any (added once to the default pool)."""
    file = descriptor_pb2.FileDescriptorProto(
        name="gatewaytest/blobs.proto", package="gatewaytest.blobs.v1", syntax="proto3"
    )
    file.dependency.extend([wrappers_pb2.DESCRIPTOR.name, any_pb2.DESCRIPTOR.name])
    blobs = file.message_type.add(name="Blobs")
    add_map_entry(blobs, "ByKeyEntry", _F.TYPE_BYTES)
    add_fields(
        blobs,
        [
            ("blob", "blob", _F.TYPE_BYTES, _F.LABEL_OPTIONAL, ""),
            ("blobs", "blobs", _F.TYPE_BYTES, _F.LABEL_REPEATED, ""),
            ("by_key", "byKey", _F.TYPE_MESSAGE, _F.LABEL_REPEATED, ".gatewaytest.blobs.v1.Blobs.ByKeyEntry"),
            ("wrapped", "wrapped", _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.BytesValue"),
            ("inner", "inner", _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".gatewaytest.blobs.v1.Blobs"),
            ("packed", "packed", _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.Any"),
        ],
    )
    return file


Blobs = pooled_message("gatewaytest.blobs.v1.Blobs", _blobs_file)
_ANY_BLOBS = "type.googleapis.com/gatewaytest.blobs.v1.Blobs"
_ANY_BYTES = "type.googleapis.com/google.protobuf.BytesValue"


def _packed(message: Message) -> Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"blob": "aGk/Pz4+"}, Blobs(blob=b"hi??>>")),
        ({"blob": "aGk_Pz4-"}, Blobs(blob=b"hi??>>")),
        ({"blob": "aGk"}, Blobs(blob=b"hi")),
        ({"blob": "aGk="}, Blobs(blob=b"hi")),
        ({"blob": ""}, Blobs()),
        ({"blobs": ["AA==", "AQ"]}, Blobs(blobs=[b"\x00", b"\x01"])),
        ({"byKey": {"a": "_w"}}, Blobs(by_key={"a": b"\xff"})),
        ({"wrapped": "/w=="}, Blobs(wrapped=wrappers_pb2.BytesValue(value=b"\xff"))),
        ({"inner": {"inner": {"blob": "YWJj"}}}, Blobs(inner=Blobs(inner=Blobs(blob=b"abc")))),
        ({"packed": {"@type": _ANY_BLOBS, "blob": "YWJj"}}, Blobs(packed=_packed(Blobs(blob=b"abc")))),
    ],
    ids=[
        "standard",
        "url-safe",
        "unpadded",
        "padded",
        "empty",
        "list",
        "map-value",
        "wrapper",
        "nested",
        "in-an-any",
    ],
)
def test_bytes_accept_standard_and_url_safe_base64_padded_or_not(
    value: dict[str, Any], expected: Any
) -> None:
    message = Blobs()
    parse_json(json.dumps(value).encode(), message)
    assert message == expected


@pytest.mark.parametrize(
    ("value", "field", "body_field"),
    [
        ({"blob": "a"}, "blob", ""),
        ({"blob": "a$b="}, "blob", ""),
        ({"blob": "aGk==="}, "blob", ""),
        ({"blob": "aG=k"}, "blob", ""),
        ({"blob": "aGk=="}, "blob", ""),
        ({"blob": "aG k"}, "blob", ""),
        ({"blob": "aGk\n"}, "blob", ""),
        ({"blob": "a+b_"}, "blob", ""),
        ({"blob": "aGé="}, "blob", ""),
        ({"blobs": ["AA==", "!!"]}, "blobs[1]", ""),
        ({"byKey": {"k": "A"}}, "by_key[k]", ""),
        ({"wrapped": "#"}, "wrapped", ""),
        ({"inner": {"inner": {"blob": "abc=d"}}}, "inner.inner.blob", ""),
        ({"packed": {"@type": _ANY_BLOBS, "blob": "?"}}, "packed.blob", ""),
        ({"packed": {"@type": _ANY_BYTES, "value": "?"}}, "packed.value", ""),
        ({"blob": "Zm9v*"}, "inner.blob", "inner"),
    ],
    ids=[
        "one-char",
        "stray-character",
        "too-much-padding",
        "padding-in-the-middle",
        "padding-on-a-wrong-length",
        "space-inside",
        "newline",
        "mixed-alphabets",
        "non-ascii",
        "in-a-list",
        "map-value",
        "wrapper",
        "nested",
        "in-an-any",
        "wrapper-in-an-any",
        "body-field",
    ],
)
def test_invalid_base64_in_bytes_is_refused_naming_the_field(
    value: dict[str, Any], field: str, body_field: str
) -> None:
    """json_format's own decoding drops what it does not understand and decodes the rest:
    "a$b=" would arrive as other bytes than the client sent, silently."""
    with pytest.raises(BadRequest) as caught:
        parse_json(json.dumps(value).encode(), Blobs(), field=body_field)
    assert len(caught.value.violations) == 1
    got_field, description = caught.value.violations[0]
    assert got_field == field
    assert "base64" in description


# -- unset message fields: null ---------------------------------------------------------------


def _node_file() -> descriptor_pb2.FileDescriptorProto:
    """A test-only tree: a message that holds itself singly, in a list, in a map, in a oneof
    and in an Any, beside a wrapper (added once to the default pool)."""
    file = descriptor_pb2.FileDescriptorProto(
        name="gatewaytest/tree.proto", package="gatewaytest.tree.v1", syntax="proto3"
    )
    file.dependency.extend([wrappers_pb2.DESCRIPTOR.name, any_pb2.DESCRIPTOR.name])
    node = file.message_type.add(name="Node")
    self_type = ".gatewaytest.tree.v1.Node"
    add_map_entry(node, "ByNameEntry", _F.TYPE_MESSAGE, self_type)
    node.oneof_decl.add(name="pick")
    added = add_fields(
        node,
        [
            ("name", "name", _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
            ("parent", "parent", _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, self_type),
            ("children", "children", _F.TYPE_MESSAGE, _F.LABEL_REPEATED, self_type),
            ("by_name", "byName", _F.TYPE_MESSAGE, _F.LABEL_REPEATED, f"{self_type}.ByNameEntry"),
            ("chosen", "chosen", _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, self_type),
            ("label", "label", _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
            ("limit", "limit", _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.Int32Value"),
            ("packed", "packed", _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.Any"),
        ],
    )
    added["chosen"].oneof_index = added["label"].oneof_index = 0
    return file


Node = pooled_message("gatewaytest.tree.v1.Node", _node_file)
_EMPTY_NODE = {"name": "", "parent": None, "children": [], "byName": {}, "limit": None, "packed": None}


def test_an_unset_message_field_is_null_as_grpc_gateway_writes_it() -> None:
    """protojson's EmitUnpopulated: null for a message (wrappers included), [] and {} for
    lists and maps; a oneof's unset members are left out."""
    assert json.loads(to_json(Node())) == _EMPTY_NODE


def test_nulls_at_any_depth() -> None:
    tree = Node(name="root", parent=Node(name="up"), children=[Node(name="kid")], by_name={"k": Node()})
    tree.packed.Pack(Node(name="inside"))
    tree.limit.value = 0
    written = json.loads(to_json(tree))
    assert written["parent"] == {**_EMPTY_NODE, "name": "up"}
    assert written["children"] == [{**_EMPTY_NODE, "name": "kid"}]
    assert written["byName"] == {"k": _EMPTY_NODE}
    assert written["packed"] == {
        "@type": "type.googleapis.com/gatewaytest.tree.v1.Node",
        **_EMPTY_NODE,
        "name": "inside",
    }
    assert written["limit"] == 0, "a set wrapper is its value"


def test_a_set_oneof_member_is_written_and_its_own_unset_fields_are_null() -> None:
    written = json.loads(to_json(Node(chosen=Node(name="c"))))
    assert written["chosen"] == {**_EMPTY_NODE, "name": "c"}
    assert "label" not in written


def test_a_resource_with_unset_times_writes_them_as_null() -> None:
    written = json.loads(to_json(resources_pb2.Order(name="orders/9")))
    assert written["createTime"] is None and written["total"] is None
    assert written["lines"] == []


def test_a_response_body_list_writes_its_items_unset_messages_as_null() -> None:
    """A rule's ``response_body`` naming a list or a map writes its messages as `to_json` does."""
    tree = Node(children=[Node(name="kid")], by_name={"k": Node()})
    assert json.loads(field_to_json(tree, "children")) == [{**_EMPTY_NODE, "name": "kid"}]
    assert json.loads(field_to_json(tree, "by_name")) == {"k": _EMPTY_NODE}
