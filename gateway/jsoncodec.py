"""Proto3 JSON in and out, as grpc-gateway's default marshaler speaks it.

`parse_json` reads an untrusted request body into a message and turns every problem (malformed
JSON, nesting too deep, wrong types, unknown fields, one field given by both its JSON and its
proto name, bytes that are not valid base64) into one `BadRequest` whose violations name the
field; nothing else escapes.
`to_json` writes lowerCamel names with unpopulated fields emitted, 64-bit integers as strings
and enums by name, with compact separators; `field_to_json` writes one field of a message the
same way (a rule's `response_body`, which may be repeated, a map or a scalar, not only a
message).
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from typing import Any, cast

from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from gateway import base64text
from gateway.errors import BadRequest

__all__ = ["parse_json", "to_json", "field_to_json"]

# Well-known types whose proto3 JSON form is not an object (a string, number, array...).
_NON_OBJECT_TYPES = frozenset(
    {
        "google.protobuf.Timestamp",
        "google.protobuf.Duration",
        "google.protobuf.FieldMask",
        "google.protobuf.Value",
        "google.protobuf.ListValue",
        "google.protobuf.DoubleValue",
        "google.protobuf.FloatValue",
        "google.protobuf.Int64Value",
        "google.protobuf.UInt64Value",
        "google.protobuf.Int32Value",
        "google.protobuf.UInt32Value",
        "google.protobuf.BoolValue",
        "google.protobuf.StringValue",
        "google.protobuf.BytesValue",
    }
)

# Types an Any holds under "value" instead of inline (json_format's special JSON forms).
_PACKED_AS_VALUE = _NON_OBJECT_TYPES | {"google.protobuf.Any", "google.protobuf.Struct"}

# json_format's messages end with "... at Message.field.path" (sometimes quoted).
_AT_PATH = re.compile(r' at "?([A-Za-z_]\w*((?:\.\w+|\[[^\]]*\])*))"?')
_NO_FIELD = re.compile(r'has no field named "([^"]*)"')
_FAILED_FIELD = re.compile(r"Failed to parse (\w+) field: ")
_PYTHON_TYPE_ERROR = re.compile(r"'\w+' object|expected string or bytes-like|not iterable|has no attribute")


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _too_deep(value: Any, max_depth: int) -> str | None:
    """The path of the first container nested deeper than `max_depth`, else None."""
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    while stack:
        node, depth, path = stack.pop()
        if depth > max_depth:
            return path
        if isinstance(node, dict):
            for key, child in node.items():
                if isinstance(child, dict | list):
                    stack.append((child, depth + 1, f"{path}.{key}" if path else key))
        elif isinstance(node, list):
            for index, child in enumerate(node):
                if isinstance(child, dict | list):
                    stack.append((child, depth + 1, f"{path}[{index}]"))
    return None


def _field_by_key(descriptor: Descriptor, key: str) -> FieldDescriptor | None:
    """The field a JSON object key names, as json_format reads keys: JSON name first, then
    proto name."""
    by_json = next((f for f in descriptor.fields if f.json_name == key), None)
    if by_json is not None:
        return by_json
    found: FieldDescriptor | None = descriptor.fields_by_name.get(key)
    return found


def _any_type(value: dict[str, Any], descriptor: Descriptor) -> Descriptor | None:
    type_url = value.get("@type")
    if not isinstance(type_url, str):
        return None
    try:
        found: Descriptor = descriptor.file.pool.FindMessageTypeByName(type_url.rpartition("/")[2])
    except KeyError:
        return None  # json_format refuses it with its own message
    return found


def _first_problem(value: Any, descriptor: Descriptor, path: str) -> tuple[str, str] | None:
    """(field path, description) of the first problem in `value` that json_format would not
    report: a field given twice, by its JSON name and by its proto name (``{"display_name":
    .., "displayName": ..}``), or a bytes value that is not valid base64 (json_format decodes
    what it can of it and drops the rest), at any depth."""
    if descriptor.full_name == "google.protobuf.Any":
        return _first_problem_in_any(value, descriptor, path)
    if descriptor.full_name == "google.protobuf.BytesValue":
        return _bad_base64([(path, value)])
    if not isinstance(value, dict) or descriptor.full_name in _PACKED_AS_VALUE:
        return None  # not an object, or free-form JSON: no fields to name twice
    seen: dict[str, str] = {}
    for key, child in value.items():
        field = _field_by_key(descriptor, key)
        if field is None:
            continue  # unknown: json_format names it
        where = f"{path}.{field.name}" if path else field.name
        if field.name in seen:
            return where, f"the field is given twice, as {seen[field.name]!r} and {key!r}"
        seen[field.name] = key
        found = _first_problem_in_field(child, field, where)
        if found is not None:
            return found
    return None


def _first_problem_in_any(value: Any, descriptor: Descriptor, path: str) -> tuple[str, str] | None:
    packed = _any_type(value, descriptor) if isinstance(value, dict) else None
    if packed is None:
        return None  # json_format refuses what is not an Any it can resolve
    if packed.full_name in _PACKED_AS_VALUE:
        # A well-known type is packed as {"@type": .., "value": ..}, checked by json_format.
        return _first_problem(value.get("value"), packed, f"{path}.value" if path else "value")
    return _first_problem({k: v for k, v in value.items() if k != "@type"}, packed, path)


def _first_problem_in_field(value: Any, field: FieldDescriptor, where: str) -> tuple[str, str] | None:
    """`_first_problem` over the JSON value of one field: a message, a list of them or a map;
    or bytes (one value, a list of them, or a map's values)."""
    items: list[tuple[str, Any]]
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        items = [(f"{where}[{k}]", v) for k, v in value.items()] if isinstance(value, dict) else []
        field = field.message_type.fields_by_name["value"]
    elif field.is_repeated and isinstance(value, list):
        items = [(f"{where}[{i}]", v) for i, v in enumerate(value)]
    else:
        items = [(where, value)]
    if field.type == FieldDescriptor.TYPE_BYTES:
        return _bad_base64(items)
    message: Descriptor | None = field.message_type
    if message is None:
        return None
    found = (_first_problem(item, message, at) for at, item in items)
    return next((problem for problem in found if problem is not None), None)


def _bad_base64(items: list[tuple[str, Any]]) -> tuple[str, str] | None:
    """The first of the (path, JSON value) of bytes that is a string but not valid base64 (a
    value of another JSON type is json_format's to refuse)."""
    for at, item in items:
        if isinstance(item, str):
            try:
                base64text.decode(item)
            except ValueError as error:
                return at, f"not valid base64: the value {error}"
    return None


def _violation_of(error: json_format.ParseError) -> tuple[str, str]:
    """(field path, description) from json_format's message, best effort."""
    text = str(error)
    field = ""
    at = _AT_PATH.search(text)
    if at:
        field = at.group(2).lstrip(".")
    missing = _NO_FIELD.search(text)
    if missing:
        field = f"{field}.{missing.group(1)}" if field else missing.group(1)
        return field, "unknown field"
    if not field:
        field = ".".join(_FAILED_FIELD.findall(text))
    description = _FAILED_FIELD.sub("", text)
    description = _AT_PATH.sub("", description)
    description = description.strip().rstrip(".").strip() or "invalid value"
    if _PYTHON_TYPE_ERROR.search(description):
        description = "wrong JSON type for this field"
    return field, description


def _refuse(field: str, description: str) -> BadRequest:
    return BadRequest(f"invalid JSON body: {description}", [(field, description)])


def parse_json(body: bytes, message: Message, *, max_depth: int = 32, field: str = "") -> Any:
    """Merge the proto3 JSON `body` into `message`; any problem raises `BadRequest`.

    With `field` (the JSON or proto name of a field of `message`), the body is that field's
    value (a rule's ``body: "<field>"``), not the whole message. `max_depth` counts the
    nesting of the body itself: a top-level object or array is level 1. Both lowerCamel and
    proto field names are accepted, but not both for one field. An empty body sets nothing
    (as grpc-gateway ignores EOF). After a `BadRequest` the contents of `message` are
    unspecified. Returns the parsed JSON value (of `field` when given; None for an empty body).
    """
    if not body.strip():
        return None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _refuse("", "the body is not valid UTF-8") from None
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except json.JSONDecodeError as error:
        where = f"line {error.lineno} column {error.colno}"
        raise _refuse("", f"malformed JSON: {error.msg} at {where}") from None
    except _DuplicateKey as error:
        raise _refuse(error.key, "duplicate key") from None
    except RecursionError:
        raise _refuse("", f"JSON nested deeper than {max_depth} levels") from None
    except ValueError as error:  # NaN/Infinity literals, integers beyond the digit limit
        raise _refuse("", f"malformed JSON: {error}") from None
    descriptor = message.DESCRIPTOR
    deep = _too_deep(value, max_depth)
    if deep is not None:
        deep = f"{field}.{deep}" if field and deep else (field or deep)
        raise _refuse(deep, f"JSON nested deeper than {max_depth} levels")
    parsed = value
    if field:
        value = {field: value}
    elif not isinstance(value, dict) and descriptor.full_name not in _NON_OBJECT_TYPES:
        raise _refuse("", "the body must be a JSON object")
    problem = _first_problem(value, cast(Descriptor, descriptor), "")
    if problem is not None:
        raise _refuse(*problem)
    try:
        json_format.ParseDict(value, message, ignore_unknown_fields=False)
    except json_format.ParseError as error:
        found, description = _violation_of(error)
        raise _refuse(found, description) from None
    except (ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError, RecursionError):
        raise _refuse("", "invalid value") from None
    return parsed


def to_json(message: Message) -> bytes:
    """`message` as compact proto3 JSON: lowerCamel names, unpopulated fields emitted (an
    unset message field as null, as protojson's EmitUnpopulated writes it)."""
    value = json_format.MessageToDict(
        message,
        always_print_fields_with_no_presence=True,
        preserving_proto_field_name=False,
    )
    _emit_unset_messages(message, value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass(frozen=True, slots=True)
class _Unset:
    """Where a message type's JSON can hold an unset message field, found once per type."""

    singular: tuple[tuple[FieldDescriptor, Descriptor, bool], ...]
    """Singular message fields, their type, and whether they are null when unset (not when in
    a oneof: an unset member is left out, as protojson does); descended into when set."""
    repeated: tuple[tuple[FieldDescriptor, bool], ...]
    """Lists of messages and maps with message values (True: a map), each item descended into."""


@functools.cache
def _unset_plan(descriptor: Descriptor) -> _Unset:
    singular: list[tuple[FieldDescriptor, Descriptor, bool]] = []
    repeated: list[tuple[FieldDescriptor, bool]] = []
    for field in descriptor.fields:
        message: Descriptor | None = field.message_type
        if message is None:
            continue
        # Items are walked whatever their type holds: asking would recurse into a type that
        # lists itself (a tree of nodes) before its plan exists.
        if message.GetOptions().map_entry:
            value: Descriptor | None = message.fields_by_name["value"].message_type
            if value is not None and _written_as_fields(value):
                repeated.append((field, True))
        elif field.is_repeated:
            if _written_as_fields(message):
                repeated.append((field, False))
        else:
            singular.append((field, message, field.containing_oneof is None))
    return _Unset(tuple(singular), tuple(repeated))


def _written_as_fields(descriptor: Descriptor) -> bool:
    """A message type whose JSON is its fields (an Any's are its packed message's)."""
    return descriptor.full_name == "google.protobuf.Any" or descriptor.full_name not in _PACKED_AS_VALUE


def _may_hold_unset(descriptor: Descriptor) -> bool:
    """Whether a message of this type may be written with a null inside (so is walked)."""
    if descriptor.full_name == "google.protobuf.Any":
        return True  # whatever it packs
    if descriptor.full_name in _PACKED_AS_VALUE:
        return False  # written as a JSON value, not as its fields
    plan = _unset_plan(descriptor)
    return bool(plan.singular or plan.repeated)


def _emit_unset_messages(message: Message, rendered: dict[str, Any]) -> None:
    """Add null for each unset message field of `message` to its JSON `rendered`, at any depth
    (json_format leaves them out; grpc-gateway's default marshaler writes null)."""
    descriptor = cast(Descriptor, message.DESCRIPTOR)
    if descriptor.full_name == "google.protobuf.Any":
        _emit_unset_in_any(message, rendered)
        return
    plan = _unset_plan(descriptor)
    for field, field_type, null_when_unset in plan.singular:
        if not message.HasField(field.name):
            if null_when_unset:
                rendered[field.json_name] = None
        elif _may_hold_unset(field_type):
            _emit_unset_messages(getattr(message, field.name), rendered[field.json_name])
    for field, is_map in plan.repeated:
        values = getattr(message, field.name)
        shown = rendered.get(field.json_name)
        if not values or not shown:
            continue
        if is_map:
            for key, item in values.items():
                _emit_unset_messages(item, shown[_map_key(key)])
        else:
            for item, item_shown in zip(values, shown, strict=True):
                _emit_unset_messages(item, item_shown)


def _emit_unset_in_any(packed: Message, rendered: dict[str, Any]) -> None:
    type_name = packed.type_url.rpartition("/")[2]  # type: ignore[attr-defined]
    try:
        descriptor = cast(Descriptor, packed.DESCRIPTOR.file.pool.FindMessageTypeByName(type_name))
    except KeyError:
        return  # json_format could not have written it either
    if descriptor.full_name in _PACKED_AS_VALUE or not _may_hold_unset(descriptor):
        return
    inner = message_factory.GetMessageClass(descriptor)()
    inner.ParseFromString(packed.value)  # type: ignore[attr-defined]
    _emit_unset_messages(inner, rendered)


def _map_key(key: object) -> str:
    """A map key as proto3 JSON writes it (an object key is a string)."""
    if isinstance(key, bool):
        return "true" if key else "false"
    return str(key)


def field_to_json(message: Message, name: str) -> bytes:
    """The proto3 JSON value of the top-level field `name` of `message` (a `response_body`).

    A singular message field is written as `to_json` writes a message (also when unset); a
    repeated field is an array, a map an object, a scalar or enum its bare JSON value (its
    default when unset).
    """
    field = message.DESCRIPTOR.fields_by_name[name]
    repeated = bool(field.is_repeated)
    if field.message_type is not None and not repeated:
        value: Message = getattr(message, name)
        return to_json(value)
    shown = json_format.MessageToDict(
        message, always_print_fields_with_no_presence=True, preserving_proto_field_name=False
    )
    _emit_unset_messages(message, shown)  # a list's or map's messages, as `to_json` writes them
    if field.json_name not in shown:  # a scalar with presence (proto3 optional, oneof) that is unset
        holder = type(message)()
        setattr(holder, name, field.default_value)
        shown = json_format.MessageToDict(holder, preserving_proto_field_name=False)
    return json.dumps(shown[field.json_name], separators=(",", ":"), ensure_ascii=False).encode("utf-8")
