"""Tests of gateway.query: path variables and query parameters into request fields."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import (
    descriptor_pb2,
    duration_pb2,
    field_mask_pb2,
    struct_pb2,
    timestamp_pb2,
    wrappers_pb2,
)
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import query
from gateway.errors import BadRequest
from gateway.query import apply_query, apply_variables
from poly.auth.v1 import auth_service_pb2
from tests.support.protos import pooled_message

_F = descriptor_pb2.FieldDescriptorProto


def _fixture_class() -> Any:
    """A test-only message with every kind of field, added once to the default pool."""
    return pooled_message("gatewaytest.query.v1.Probe", _fixture_file)


def _fixture_file() -> descriptor_pb2.FileDescriptorProto:
    name = "gatewaytest/query_fixture.proto"
    file = descriptor_pb2.FileDescriptorProto(name=name, package="gatewaytest.query.v1", syntax="proto3")
    for dep in (timestamp_pb2, duration_pb2, wrappers_pb2, field_mask_pb2, struct_pb2):
        file.dependency.append(dep.DESCRIPTOR.name)
    color = file.enum_type.add(name="Color")
    for number, value in enumerate(("COLOR_UNSPECIFIED", "COLOR_RED", "COLOR_BLUE")):
        color.value.add(name=value, number=number)
    leaf = file.message_type.add(name="Leaf")
    leaf.field.add(name="text", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL, json_name="text")
    inner = file.message_type.add(name="Inner")
    inner.field.add(
        name="page_size", number=1, type=_F.TYPE_INT32, label=_F.LABEL_OPTIONAL, json_name="pageSize"
    )
    inner.field.add(
        name="leaf",
        number=2,
        type=_F.TYPE_MESSAGE,
        type_name=".gatewaytest.query.v1.Leaf",
        label=_F.LABEL_OPTIONAL,
        json_name="leaf",
    )
    probe = file.message_type.add(name="Probe")
    entry = probe.nested_type.add(name="LabelsEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL, json_name="key")
    entry.field.add(name="value", number=2, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL, json_name="value")
    probe.oneof_decl.add(name="choice")
    scalar = [
        ("name", _F.TYPE_STRING),
        ("i32", _F.TYPE_INT32),
        ("u32", _F.TYPE_UINT32),
        ("i64", _F.TYPE_INT64),
        ("u64", _F.TYPE_UINT64),
        ("f", _F.TYPE_FLOAT),
        ("d", _F.TYPE_DOUBLE),
        ("flag", _F.TYPE_BOOL),
        ("blob", _F.TYPE_BYTES),
        ("s32", _F.TYPE_SINT32),
    ]
    number = 0
    for field_name, kind in scalar:
        number += 1
        probe.field.add(
            name=field_name, number=number, type=kind, label=_F.LABEL_OPTIONAL, json_name=field_name
        )

    def add(field_name: str, json: str, kind: int, type_name: str = "", repeated: bool = False) -> Any:
        nonlocal number
        number += 1
        label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
        field = probe.field.add(name=field_name, number=number, type=kind, label=label, json_name=json)
        if type_name:
            field.type_name = type_name
        return field

    add("color", "color", _F.TYPE_ENUM, ".gatewaytest.query.v1.Color")
    add("tags", "tags", _F.TYPE_STRING, repeated=True)
    add("sizes", "sizes", _F.TYPE_INT32, repeated=True)
    add("colors", "colors", _F.TYPE_ENUM, ".gatewaytest.query.v1.Color", repeated=True)
    add("inner_part", "innerPart", _F.TYPE_MESSAGE, ".gatewaytest.query.v1.Inner")
    add("inners", "inners", _F.TYPE_MESSAGE, ".gatewaytest.query.v1.Inner", repeated=True)
    add("labels", "labels", _F.TYPE_MESSAGE, ".gatewaytest.query.v1.Probe.LabelsEntry", repeated=True)
    add("start_time", "startTime", _F.TYPE_MESSAGE, ".google.protobuf.Timestamp")
    add("ttl", "ttl", _F.TYPE_MESSAGE, ".google.protobuf.Duration")
    add("limit", "limit", _F.TYPE_MESSAGE, ".google.protobuf.Int32Value")
    add("title", "title", _F.TYPE_MESSAGE, ".google.protobuf.StringValue")
    add("enabled", "enabled", _F.TYPE_MESSAGE, ".google.protobuf.BoolValue")
    add("update_mask", "updateMask", _F.TYPE_MESSAGE, ".google.protobuf.FieldMask")
    add("extra", "extra", _F.TYPE_MESSAGE, ".google.protobuf.Struct")
    add("by_id", "byId", _F.TYPE_STRING).oneof_index = 0
    add("by_email", "byEmail", _F.TYPE_STRING).oneof_index = 0
    return file


Probe = _fixture_class()


def _query(pairs: list[tuple[str, str]], **options: Any) -> Message:
    message = Probe()
    apply_query(message, pairs, **options)
    return message


def test_exports() -> None:
    assert set(query.__all__) == {"apply_variables", "apply_query"}


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        ([("name", "a b")], {"name": "a b"}),
        ([("i32", "-2147483648")], {"i32": -(2**31)}),
        ([("u32", "4294967295")], {"u32": 2**32 - 1}),
        ([("i64", "-9223372036854775808")], {"i64": -(2**63)}),
        ([("u64", "18446744073709551615")], {"u64": 2**64 - 1}),
        ([("s32", "-5")], {"s32": -5}),
        ([("d", "1.5e3")], {"d": 1500.0}),
        ([("f", "-0.25")], {"f": -0.25}),
        ([("flag", "true")], {"flag": True}),
        ([("flag", "1")], {"flag": True}),
        ([("flag", "false")], {"flag": False}),
        ([("blob", "aGk/Pz4+")], {"blob": b"hi??>>"}),
        ([("blob", "aGk_Pz4-")], {"blob": b"hi??>>"}),
        ([("blob", "aGk")], {"blob": b"hi"}),
        ([("blob", "aGk=")], {"blob": b"hi"}),
        ([("color", "COLOR_BLUE")], {"color": 2}),
        ([("color", "1")], {"color": 1}),
        ([("tags", "a"), ("tags", "b")], {"tags": ["a", "b"]}),
        ([("sizes", "1"), ("sizes", "2")], {"sizes": [1, 2]}),
        ([("colors", "COLOR_RED"), ("colors", "2")], {"colors": [1, 2]}),
        ([("inner_part.page_size", "7")], {"inner_part": {"page_size": 7}}),
        ([("innerPart.pageSize", "7")], {"inner_part": {"page_size": 7}}),
        ([("innerPart.leaf.text", "x")], {"inner_part": {"leaf": {"text": "x"}}}),
        ([("by_email", "a@b")], {"by_email": "a@b"}),
    ],
    ids=[
        "string",
        "int32-min",
        "uint32-max",
        "int64-min",
        "uint64-max",
        "sint32",
        "double-exp",
        "float",
        "bool-true",
        "bool-1",
        "bool-false",
        "bytes-std",
        "bytes-urlsafe",
        "bytes-unpadded",
        "bytes-padded",
        "enum-name",
        "enum-number",
        "repeated-string",
        "repeated-int",
        "repeated-enum",
        "nested-proto-name",
        "nested-json-name",
        "two-levels",
        "oneof-member",
    ],
)
def test_scalars(pairs: list[tuple[str, str]], expected: dict[str, Any]) -> None:
    message = _query(pairs)

    def check(target: Message, fields: dict[str, Any]) -> None:
        for key, value in fields.items():
            if isinstance(value, dict):
                check(getattr(target, key), value)
            elif isinstance(value, list):
                assert list(getattr(target, key)) == value
            else:
                assert getattr(target, key) == value

    check(message, expected)


def test_well_known_types() -> None:
    message = _query(
        [
            ("start_time", "2024-05-06T07:08:09.5Z"),
            ("ttl", "1.5s"),
            ("limit", "0"),
            ("title", "hello"),
            ("enabled", "false"),
            ("updateMask", "name,innerPart.pageSize, start_time"),
        ]
    )
    assert message.start_time.ToJsonString() == "2024-05-06T07:08:09.500Z"
    assert (message.ttl.seconds, message.ttl.nanos) == (1, 500_000_000)
    assert message.HasField("limit")
    assert message.limit.value == 0
    assert message.title.value == "hello"
    assert message.HasField("enabled")
    assert message.enabled.value is False
    assert list(message.update_mask.paths) == ["name", "inner_part.page_size", "start_time"]


def test_epoch_timestamp_is_present() -> None:
    message = _query([("startTime", "1970-01-01T00:00:00Z")])
    assert message.HasField("start_time")


@pytest.mark.parametrize(
    ("pairs", "field", "fragment"),
    [
        ([("i32", "2147483648")], "i32", "out of range"),
        ([("u32", "-1")], "u32", "out of range"),
        ([("i32", "1.5")], "i32", "not an integer"),
        ([("i32", "1_000")], "i32", "not an integer"),
        ([("d", "1e999")], "d", "out of range"),
        ([("f", "1e39")], "f", "out of range"),
        ([("d", "inf")], "d", "not a number"),
        ([("flag", "yes")], "flag", "not a boolean"),
        ([("blob", "a")], "blob", "base64"),
        ([("blob", "a$b=")], "blob", "base64"),
        ([("blob", "aGk==")], "blob", "base64"),
        ([("blob", "aG=k")], "blob", "base64"),
        ([("blob", "a+b_")], "blob", "base64"),
        ([("color", "RED")], "color", "not a value"),
        ([("color", "9")], "color", "not a value"),
        ([("name", "a"), ("name", "b")], "name", "more than one"),
        ([("inners.page_size", "1")], "inners.page_size", "repeated message"),
        ([("inners", "1")], "inners", "repeated message"),
        ([("labels", "a")], "labels", "map"),
        ([("innerPart", "x")], "innerPart", "cannot be set"),
        ([("extra", "{}")], "extra", "cannot be set"),
        ([("start_time", "yesterday")], "start_time", ""),
        ([("ttl", "5 minutes")], "ttl", ""),
        ([("limit", "x")], "limit", "not an integer"),
        ([("by_id", "1"), ("by_email", "a")], "by_email", "already has by_id"),
    ],
    ids=[
        "int32-overflow",
        "uint32-negative",
        "int-fraction",
        "int-underscore",
        "double-overflow",
        "float-overflow",
        "double-inf-spelling",
        "bool-word",
        "bytes-short",
        "bytes-bad-char",
        "bytes-bad-padding",
        "bytes-padding-inside",
        "bytes-mixed-alphabets",
        "enum-bad-name",
        "enum-undefined-number",
        "singular-twice",
        "through-repeated-message",
        "repeated-message",
        "map",
        "message-itself",
        "struct",
        "timestamp-bad",
        "duration-bad",
        "wrapper-bad",
        "oneof-twice",
    ],
)
def test_bad_values(pairs: list[tuple[str, str]], field: str, fragment: str) -> None:
    with pytest.raises(BadRequest) as caught:
        _query(pairs)
    fields = [name for name, _ in caught.value.violations]
    assert field in fields
    assert any(fragment in description for name, description in caught.value.violations if name == field)


def test_unknown_names_reported_together() -> None:
    with pytest.raises(BadRequest) as caught:
        _query([("nope", "1"), ("name", "ok"), ("inner_part.nope", "2"), ("i32.x", "3"), ("_", "")])
    assert caught.value.violations == [
        ("nope", "unknown query parameter"),
        ("inner_part.nope", "unknown query parameter"),
        ("i32.x", "unknown query parameter"),
        ("_", "unknown query parameter"),
    ]
    assert "nope" in caught.value.message


def test_ignored_names() -> None:
    message = _query([("_", "123"), ("name", "x")], ignore=("_",))
    assert message.name == "x"


def test_unknown_names_ignored_where_the_method_asks_but_bad_values_still_refused() -> None:
    """An OAuth authorization endpoint ignores parameters it does not know (RFC 6749, 3.1)."""
    message = _query([("nope", "1"), ("name", "x"), ("inner_part.nope", "2")], ignore_unknown=True)
    assert message.name == "x"
    with pytest.raises(BadRequest) as caught:
        _query([("nope", "1"), ("i32", "not a number")], ignore_unknown=True)
    assert [name for name, _ in caught.value.violations] == ["i32"]


@pytest.mark.parametrize("name", ["form.data", "form.content_type", "form.contentType", "form"])
def test_a_body_field_is_never_set_from_the_query(name: str) -> None:
    """A GET to a method taking a posted form (OAuth's authorization endpoint) cannot pose as the
    form's post: a google.api.HttpBody is set only from a request's body."""
    with pytest.raises(BadRequest) as caught:
        apply_query(auth_service_pb2.AuthorizeRequest(), [(name, "x")], ignore_unknown=True)
    assert "body" in str(caught.value.violations)


@pytest.mark.parametrize(
    ("name", "bound"),
    [
        ("name", ("name",)),
        ("inner_part.page_size", ("inner_part",)),
        ("innerPart.pageSize", ("inner_part",)),
        ("innerPart.leaf.text", ("inner_part.leaf",)),
        ("i32", ("*",)),
    ],
    ids=["path-variable", "inside-body-field", "inside-body-field-json-name", "deep", "whole-body"],
)
def test_bound_fields_refused(name: str, bound: tuple[str, ...]) -> None:
    with pytest.raises(BadRequest) as caught:
        _query([(name, "1")], body_fields=bound)
    assert caught.value.violations[0][0] == name
    assert "bound" in caught.value.violations[0][1]


def test_sibling_of_bound_field_allowed() -> None:
    message = _query([("inner_part.page_size", "3")], body_fields=("inner_part.leaf", "name"))
    assert message.inner_part.page_size == 3


@pytest.mark.parametrize(
    ("variables", "check"),
    [
        ({"name": "orders/a b"}, lambda m: m.name == "orders/a b"),
        ({"inner_part.leaf.text": "x/y"}, lambda m: m.inner_part.leaf.text == "x/y"),
        ({"i64": "42"}, lambda m: m.i64 == 42),
        ({"color": "COLOR_RED"}, lambda m: m.color == 1),
        ({"tags": "a,b"}, lambda m: list(m.tags) == ["a", "b"]),
    ],
    ids=["string", "nested", "int64", "enum", "repeated-comma"],
)
def test_apply_variables(variables: dict[str, str], check: Any) -> None:
    message = Probe()
    apply_variables(message, variables)
    assert check(message)


def test_apply_variables_bad() -> None:
    with pytest.raises(BadRequest) as caught:
        apply_variables(Probe(), {"i32": "x", "missing": "1"})
    assert [name for name, _ in caught.value.violations] == ["i32", "missing"]


_NAMES = st.sampled_from(
    [
        "name",
        "i32",
        "u32",
        "i64",
        "u64",
        "f",
        "d",
        "flag",
        "blob",
        "s32",
        "color",
        "tags",
        "sizes",
        "colors",
        "inner_part",
        "innerPart.pageSize",
        "inner_part.leaf.text",
        "inners",
        "inners.page_size",
        "labels",
        "labels.key",
        "start_time",
        "ttl",
        "limit",
        "title",
        "enabled",
        "update_mask",
        "extra",
        "extra.fields",
        "by_id",
        "byEmail",
        "",
        ".",
        "name.",
        "..x",
    ]
) | st.text(max_size=12)
_VALUES = (
    st.sampled_from(
        [
            "",
            "0",
            "-1",
            "1e999",
            "NaN",
            "Infinity",
            "true",
            "COLOR_RED",
            "2024-01-01T00:00:00Z",
            "1s",
            "a,b",
            "==",
        ]
    )
    | st.text(max_size=20)
    | st.integers().map(str)
)


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(
    pairs=st.lists(st.tuples(_NAMES, _VALUES), max_size=6),
    bound=st.lists(_NAMES, max_size=2),
)
def test_apply_query_never_raises_anything_but_bad_request(
    pairs: list[tuple[str, str]], bound: list[str]
) -> None:
    try:
        apply_query(Probe(), pairs, body_fields=bound)
    except BadRequest as error:
        assert error.violations
        assert all(isinstance(f, str) and isinstance(d, str) and d for f, d in error.violations)


@settings(max_examples=200, deadline=None)
@given(variables=st.dictionaries(_NAMES, _VALUES, max_size=4))
def test_apply_variables_never_raises_anything_but_bad_request(variables: dict[str, str]) -> None:
    try:
        apply_variables(Probe(), variables)
    except BadRequest as error:
        assert error.violations


@pytest.mark.parametrize(
    ("pairs", "violation"),
    [
        ([("inner_part.page_size", "1"), ("innerPart.pageSize", "2")], "inner_part.page_size"),
        ([("inner_part.page_size", "1"), ("inner_part.pageSize", "2")], "inner_part.page_size"),
        ([("by_email", "a"), ("byEmail", "b")], "by_email"),
    ],
    ids=["nested-both-names", "leaf-both-names", "top-level"],
)
def test_one_field_by_two_names_is_refused(pairs: list[tuple[str, str]], violation: str) -> None:
    with pytest.raises(BadRequest) as caught:
        _query(pairs)
    assert [field for field, _ in caught.value.violations] == [violation]
    assert "twice" in caught.value.violations[0][1]
