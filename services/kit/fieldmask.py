"""Update masks (AIP-134): which fields of a resource an Update call writes.

`update_paths(mask, resource)` turns a request's ``update_mask`` into the list of top-level
field names to write. No mask means "the fields that are set"; ``*`` means every writable
field. A field the resource marks ``OUTPUT_ONLY`` or ``IDENTIFIER`` is ignored, in the mask
as in the resource (AIP-203: services must ignore output only fields in update masks), so a
resource read, changed and sent back whole updates what changed; a mask derived from a JSON
body's keys (the edge's PATCH) names them too. A path that names no field, a nested path, or
a ``*`` beside other paths is INVALID_ARGUMENT with one field violation per bad path, so a
client learns every mistake at once and nothing is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from google.api import field_behavior_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from services.kit.domain_errors import FieldViolation, InvalidArgument

__all__ = ["read_only_fields", "update_paths", "writable_fields"]

_READ_ONLY = frozenset({field_behavior_pb2.OUTPUT_ONLY, field_behavior_pb2.IDENTIFIER})


def _behaviours(field: FieldDescriptor) -> set[int]:
    return set(field.GetOptions().Extensions[field_behavior_pb2.field_behavior])


def read_only_fields(descriptor: Descriptor) -> list[str]:
    """Fields of `descriptor` a client may never write: OUTPUT_ONLY and IDENTIFIER."""
    return [f.name for f in descriptor.fields if _behaviours(f) & _READ_ONLY]


def writable_fields(descriptor: Descriptor) -> list[str]:
    """Fields of `descriptor` an Update may write, in declaration order."""
    return [f.name for f in descriptor.fields if not _behaviours(f) & _READ_ONLY]


def update_paths(paths: Sequence[str], resource: Message, *, field: str = "update_mask") -> list[str]:
    """The top-level fields of `resource` to write, from the mask's `paths`."""
    descriptor = cast(Descriptor, resource.DESCRIPTOR)
    writable = writable_fields(descriptor)
    if not paths:
        return [f.name for f, _ in resource.ListFields() if f.name in writable]
    if list(paths) == ["*"]:
        return writable
    violations: list[FieldViolation] = []
    chosen: list[str] = []
    for index, path in enumerate(paths):
        where = f"{field}.paths[{index}]"
        known = descriptor.fields_by_name.get(path)
        if path == "*":
            violations.append(FieldViolation(where, "'*' must be the only path"))
        elif known is None:
            violations.append(FieldViolation(where, f"{path!r} is not a field of {descriptor.name}"))
        elif path in writable and path not in chosen:  # an output-only field: ignored
            chosen.append(path)
    if violations:
        raise InvalidArgument(
            "UPDATE_MASK_INVALID",
            "{field} names fields that cannot be updated",
            violations=violations,
            field=field,
        )
    return chosen
