"""A PATCH without a field mask gets the one its body implies, as grpc-gateway v2 derives it.

When a rule is a ``patch`` whose ``body`` is one field (the resource) and the request message
has exactly one ``google.protobuf.FieldMask`` field (``update_mask``), a client that sends no
mask (neither in the query nor anywhere else) gets the paths of the keys its JSON body holds:
``{"title": "x", "dimensions": {"height": 2}}`` updates ``title`` and ``dimensions.height``
and nothing else, so a field it leaves out is kept rather than cleared. Paths use proto field
names. An object that is the value of a message field is descended into (an empty one is a
path itself); lists and maps are leaves (a mask cannot address their items); a
``google.protobuf.Struct`` or ``Value`` is descended into by its keys, whatever they are; an
``Any`` is a leaf; any other value (a string, a number, null) is a leaf. The derived paths are
sorted. grpc-gateway's ``runtime.FieldMaskFromRequestBody`` is the model.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

__all__ = ["PatchMask", "patch_mask_field", "paths_from_body"]

_FIELD_MASK = "google.protobuf.FieldMask"
_DYNAMIC = frozenset({"google.protobuf.Struct", "google.protobuf.Value"})


@dataclass(frozen=True, slots=True)
class PatchMask:
    """A rule's mask derivation: the request's FieldMask field, and the body field's type."""

    field: FieldDescriptor
    resource: Descriptor

    def fill(self, request: Message, body: Any) -> None:
        """Set the mask of `request` from `body` (the body field's parsed JSON; None when the
        request had no body) unless the client sent one."""
        mask = getattr(request, self.field.name)
        if body is not None and not mask.paths:
            mask.paths.extend(paths_from_body(body, self.resource))


def patch_mask_field(http_method: str, body: str, request: Descriptor) -> PatchMask | None:
    """How a rule's requests get a field mask from their body when they carry none; None when
    the rule derives none (not a PATCH, a body that is not one message field, no single mask
    field)."""
    if http_method != "PATCH" or body in ("", "*"):
        return None
    resource: Descriptor | None = request.fields_by_name[body].message_type
    masks = [
        field
        for field in request.fields
        if field.message_type is not None
        and field.message_type.full_name == _FIELD_MASK
        and not field.is_repeated
    ]
    if resource is None or len(masks) != 1:
        return None
    return PatchMask(masks[0], resource)


def paths_from_body(value: Any, descriptor: Descriptor) -> list[str]:
    """The field paths of the JSON `value` (a body already parsed into a message of type
    `descriptor`, so every key names a field), sorted."""
    paths: list[str] = []
    queue: deque[tuple[Any, Descriptor | None, str]] = deque([(value, descriptor, "")])
    while queue:
        node, message, path = queue.popleft()
        if message is None or not isinstance(node, dict) or not node:
            if path:
                paths.append(path)
            continue
        for key, child in node.items():
            field = _field(message, key)
            if field is None:
                continue  # the body parsed, so this cannot happen; a mask never names it
            where = f"{path}.{field.name}" if path else field.name
            child_type: Descriptor | None = field.message_type
            if field.is_repeated or child_type is None or child_type.full_name == "google.protobuf.Any":
                paths.append(where)  # lists, maps, scalars and Any are leaves
            elif child_type.full_name in _DYNAMIC:
                paths.extend(_blind_paths(child, where))
            else:
                queue.append((child, child_type, where))
    return sorted(paths)


def _field(message: Descriptor, key: str) -> FieldDescriptor | None:
    found: FieldDescriptor | None = message.fields_by_name.get(key)
    if found is None:
        found = next((field for field in message.fields if field.json_name == key), None)
    return found


def _blind_paths(value: Any, path: str) -> list[str]:
    """Free-form JSON (a Struct): every key a path segment, as grpc-gateway builds them."""
    if not isinstance(value, dict) or not value:
        return [path]
    return [found for key, child in value.items() for found in _blind_paths(child, f"{path}.{key}")]
