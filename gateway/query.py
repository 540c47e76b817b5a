"""Path variables and query parameters into request fields, learnt from the message descriptor.

Names are dotted field paths through singular message fields, each segment the proto name or
the lowerCamel JSON name. Values are parsed by field type: bools `true`/`false`/`1`/`0`,
integers range-checked, enums by name or defined number, bytes as validated base64
(`base64text`: standard or URL-safe, padding optional), and the well-known types Timestamp
(RFC 3339), Duration (`"1.5s"`), the wrappers (the value itself) and FieldMask (a comma list,
lowerCamel or snake paths). Repeated scalars take one value per key. Every problem is
collected and raised as one `BadRequest`.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from gateway import base64text
from gateway.errors import BadRequest

__all__ = ["apply_variables", "apply_query"]

_INT = re.compile(r"-?[0-9]{1,40}")
_FLOAT = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,5})?")
_FLOAT_SPECIAL = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_FLOAT32_MAX = 3.4028234663852886e38
_CAMEL = re.compile(r"(?<!^)([A-Z])")

_RANGES: dict[int, tuple[int, int]] = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}

_WRAPPERS = frozenset(
    f"google.protobuf.{name}Value"
    for name in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
)


class _Invalid(ValueError):
    """A value that does not fit its field; the message is the violation's description."""


@functools.cache
def _fields_by_any_name(descriptor: Descriptor) -> Mapping[str, FieldDescriptor]:
    names: dict[str, FieldDescriptor] = {}
    for field in descriptor.fields:
        names.setdefault(field.json_name, field)
    for field in descriptor.fields:
        names[field.name] = field
    return names


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _is_map(field: FieldDescriptor) -> bool:
    message_type = field.message_type
    return bool(_is_repeated(field) and message_type is not None and message_type.GetOptions().map_entry)


def _parse_int(field: FieldDescriptor, text: str) -> int:
    if not _INT.fullmatch(text):
        raise _Invalid(f"{text!r} is not an integer")
    low, high = _RANGES[field.type]
    value = int(text)
    if not low <= value <= high:
        raise _Invalid(f"{text} is out of range [{low}, {high}]")
    return value


def _parse_float(field: FieldDescriptor, text: str) -> float:
    if text in _FLOAT_SPECIAL:
        return _FLOAT_SPECIAL[text]
    if not _FLOAT.fullmatch(text):
        raise _Invalid(f"{text!r} is not a number")
    value = float(text)
    limit = _FLOAT32_MAX if field.type == FieldDescriptor.TYPE_FLOAT else math.inf
    if math.isinf(value) or abs(value) > limit:
        raise _Invalid(f"{text} is out of range")
    return value


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise _Invalid(f"{text!r} is not a boolean (true, false, 1 or 0)")


def _parse_bytes(text: str) -> bytes:
    # A '+' decoded from a form-encoded query arrives as a space: put it back.
    try:
        return base64text.decode(text.replace(" ", "+"))
    except ValueError as error:
        raise _Invalid(f"not valid base64: the value {error}") from None


def _parse_enum(enum: EnumDescriptor, text: str) -> int:
    value = enum.values_by_name.get(text)
    if value is not None:
        return int(value.number)
    if _INT.fullmatch(text) and int(text) in enum.values_by_number:
        return int(text)
    raise _Invalid(f"{text!r} is not a value of {enum.full_name}")


def _parse_scalar(field: FieldDescriptor, text: str) -> Any:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return text
    if kind in _RANGES:
        return _parse_int(field, text)
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return _parse_float(field, text)
    if kind == FieldDescriptor.TYPE_BOOL:
        return _parse_bool(text)
    if kind == FieldDescriptor.TYPE_BYTES:
        return _parse_bytes(text)
    if kind == FieldDescriptor.TYPE_ENUM and field.enum_type is not None:
        return _parse_enum(field.enum_type, text)
    raise _Invalid("this field cannot be set from a string")


def _snake_path(path: str) -> str:
    return ".".join(_CAMEL.sub(r"_\1", segment).lower() for segment in path.strip().split("."))


def _set_well_known(target: Message, text: str) -> None:
    """Fill a well-known-type message `target` (already marked present) from `text`."""
    full_name = target.DESCRIPTOR.full_name
    try:
        if full_name == "google.protobuf.Timestamp":
            stamp = timestamp_pb2.Timestamp()
            stamp.FromJsonString(text)
            target.seconds, target.nanos = stamp.seconds, stamp.nanos  # type: ignore[attr-defined]
        elif full_name == "google.protobuf.Duration":
            duration = duration_pb2.Duration()
            duration.FromJsonString(text)
            target.seconds, target.nanos = duration.seconds, duration.nanos  # type: ignore[attr-defined]
        elif full_name == "google.protobuf.FieldMask":
            paths = [_snake_path(path) for path in text.split(",") if path.strip()]
            target.paths.extend(paths)  # type: ignore[attr-defined]
        else:
            raise _Invalid(f"a {full_name} cannot be set from a query parameter; name one of its fields")
    except (ValueError, TypeError) as error:
        raise _Invalid(str(error) or "invalid value") from None


def _assign(message: Message, field: FieldDescriptor, values: list[str]) -> None:
    """Set `field` of `message` from `values` (one per occurrence of the parameter)."""
    if _is_map(field):
        raise _Invalid("a map field cannot be set from a query parameter")
    if field.type in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP):
        if _is_repeated(field):
            raise _Invalid("a repeated message field cannot be set from a query parameter")
        if len(values) > 1:
            raise _Invalid("more than one value for a singular field")
        _check_oneof(message, field)
        target: Message = getattr(message, field.name)
        if field.message_type is not None and field.message_type.full_name in _WRAPPERS:
            inner = field.message_type.fields_by_name["value"]
            parsed = _parse_scalar(inner, values[0])
            target.SetInParent()
            target.value = parsed  # type: ignore[attr-defined]
        elif _is_well_known(field):
            _set_well_known(target, values[0])
            target.SetInParent()
        else:
            raise _Invalid(f"a {_message_name(field)} cannot be set from a query parameter")
        return
    if _is_repeated(field):
        parsed_values = [_parse_scalar(field, value) for value in values]
        getattr(message, field.name).extend(parsed_values)
        return
    if len(values) > 1:
        raise _Invalid("more than one value for a singular field")
    _check_oneof(message, field)
    setattr(message, field.name, _parse_scalar(field, values[0]))


def _message_name(field: FieldDescriptor) -> str:
    return field.message_type.full_name if field.message_type is not None else ""


def _is_well_known(field: FieldDescriptor) -> bool:
    return _message_name(field) in (
        "google.protobuf.Timestamp",
        "google.protobuf.Duration",
        "google.protobuf.FieldMask",
    )


def _check_oneof(message: Message, field: FieldDescriptor) -> None:
    oneof = field.containing_oneof
    if oneof is None:
        return
    current = message.WhichOneof(oneof.name)
    if current is not None and current != field.name:
        raise _Invalid(f"{oneof.name} already has {current} set")


def _resolve(message: Message, name: str) -> tuple[Message, FieldDescriptor, str] | str:
    """(holder message, field, proto path) for dotted `name`, or a violation description.

    An unknown segment gives "unknown"; other problems give their description.
    """
    segments = name.split(".")
    holder = message
    proto_path: list[str] = []
    for position, segment in enumerate(segments):
        field = _fields_by_any_name(holder.DESCRIPTOR).get(segment)
        if field is None:
            return "unknown"
        if field.message_type is not None and field.message_type.full_name == "google.api.HttpBody":
            return "a body field is set only from the request's body"
        proto_path.append(field.name)
        if position == len(segments) - 1:
            return holder, field, ".".join(proto_path)
        if field.type != FieldDescriptor.TYPE_MESSAGE or _is_repeated(field):
            if _is_repeated(field) and field.type == FieldDescriptor.TYPE_MESSAGE:
                return "a repeated message or map field cannot be set from a query parameter"
            return "unknown"
        holder = getattr(holder, field.name)
    return "unknown"  # pragma: no cover - the loop always returns


def _overlaps(path: str, bound: Collection[str]) -> bool:
    for other in bound:
        if other in ("*", path):
            return True
        if path.startswith(other + ".") or other.startswith(path + "."):
            return True
    return False


def _apply(
    message: Message, pairs: Sequence[tuple[str, list[str]]], violations: list[tuple[str, str]]
) -> None:
    for name, values in pairs:
        resolved = _resolve(message, name)
        if isinstance(resolved, str):
            violations.append((name, "unknown field" if resolved == "unknown" else resolved))
            continue
        holder, field, _ = resolved
        try:
            _assign(holder, field, values)
        except _Invalid as error:
            violations.append((name, str(error)))
        except (ValueError, TypeError, OverflowError) as error:  # refused by the protobuf runtime
            violations.append((name, f"invalid value: {error}"))


def apply_variables(message: Message, variables: Mapping[str, str]) -> None:
    """Set the path variables (dotted field paths to decoded values) on `message`.

    A repeated scalar field bound by the path takes a comma-separated list, as in grpc-gateway.
    """
    pairs: list[tuple[str, list[str]]] = []
    for name, value in variables.items():
        resolved = _resolve(message, name)
        is_list = not isinstance(resolved, str) and _is_repeated(resolved[1]) and not _is_map(resolved[1])
        pairs.append((name, value.split(",") if is_list else [value]))
    violations: list[tuple[str, str]] = []
    _apply(message, pairs, violations)
    if violations:
        raise BadRequest("invalid path parameters", violations)


def apply_query(
    message: Message,
    query: Sequence[tuple[str, str]],
    *,
    body_fields: Collection[str] = (),
    ignore: Collection[str] = (),
    ignore_unknown: bool = False,
) -> None:
    """Set fields of `message` from decoded query `(name, value)` pairs.

    `body_fields` holds the proto field paths bound elsewhere: the body field (`"*"` for the
    whole body) and the path variables; a parameter naming one of them, or a field inside one,
    is refused, and so is one field named twice (``page_size`` and ``pageSize``). Names in
    `ignore` are skipped, and so are names of no field with `ignore_unknown`. Unknown names and
    bad values are all reported in one `BadRequest`.
    """
    grouped: dict[str, list[str]] = {}
    for name, value in query:
        if name in ignore:
            continue
        grouped.setdefault(name, []).append(value)
    violations: list[tuple[str, str]] = []
    settable: list[tuple[str, list[str]]] = []
    named: dict[str, str] = {}  # proto path -> the parameter name that set it
    for name, values in grouped.items():
        resolved = _resolve(message, name)
        if resolved == "unknown" and ignore_unknown:
            continue
        if isinstance(resolved, str):
            description = "unknown query parameter" if resolved == "unknown" else resolved
            violations.append((name, description))
        elif _overlaps(resolved[2], body_fields):
            violations.append((name, "the field is bound by the request body or path"))
        elif (other := next((n for p, n in named.items() if _overlaps(resolved[2], (p,))), None)) is not None:
            violations.append((resolved[2], f"the field is given twice, as {other!r} and {name!r}"))
        else:
            named[resolved[2]] = name
            settable.append((name, values))
    _apply(message, settable, violations)
    if violations:
        unknown = [name for name, description in violations if description == "unknown query parameter"]
        summary = f"unknown query parameters: {', '.join(unknown)}" if unknown else "invalid query parameters"
        raise BadRequest(summary, violations)
