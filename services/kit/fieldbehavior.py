"""Field behaviour (AIP-203), enforced once for every method from the request descriptors.

`middleware(descriptors)` runs after authorization and before the handler, so a caller who
may not call a method learns nothing about its fields. For each request it:

- refuses a request missing a ``REQUIRED`` field: INVALID_ARGUMENT, reason
  ``REQUIRED_FIELD_MISSING``, one ``BadRequest`` violation per field with its full path
  (``client.display_name``, ``order.lines[0].quantity``). Missing means unset for a message
  field or a field with presence, empty for a repeated or map field, and the zero value for
  any other scalar. Message fields are descended into only when set, so an empty request
  names only its top-level REQUIRED fields.
- in an Update (a request with a ``google.protobuf.FieldMask update_mask``), checks the
  REQUIRED fields inside the resource only for the paths the mask names: no mask means the
  fields that are set, ``*`` means all of them. A mask path naming an ``IMMUTABLE`` field is
  refused (``UPDATE_MASK_INVALID``, the violation on ``update_mask.paths[i]``).
- clears every ``OUTPUT_ONLY`` field the client sent. AIP-203 says a server must ignore
  them and must not fail because of them, so a resource read, edited and sent back works,
  and a handler can never act on a value only the server may set.

``IDENTIFIER`` fields are left alone: a Create may omit its resource's ``name``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
from google.api import field_behavior_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from services.kit.domain_errors import FieldViolation, InvalidArgument
from services.kit.types import CallInfo, Handler, Middleware

__all__ = ["Rules", "middleware"]

_Mask = frozenset[str] | None
"""Field paths (relative to the message at hand) whose REQUIRED checks apply; None: all."""

_MASK_TYPE = "google.protobuf.FieldMask"
_GOOGLE = "google."
"""Well-known and googleapis types carry no field behaviour of ours: never descended into."""


def _behaviours(descriptor: FieldDescriptor) -> frozenset[int]:
    return frozenset(descriptor.GetOptions().Extensions[field_behavior_pb2.field_behavior])


def _is_map(descriptor: FieldDescriptor) -> bool:
    message_type = descriptor.message_type
    return message_type is not None and message_type.GetOptions().map_entry


def _is_repeated(descriptor: FieldDescriptor) -> bool:
    return bool(descriptor.is_repeated)


def _missing(message: Message, descriptor: FieldDescriptor) -> bool:
    if _is_repeated(descriptor):
        return len(getattr(message, descriptor.name)) == 0
    if descriptor.has_presence:
        return not message.HasField(descriptor.name)
    return bool(getattr(message, descriptor.name) == descriptor.default_value)


def _in_mask(name: str, mask: _Mask) -> bool:
    return mask is None or name in mask or any(path.startswith(name + ".") for path in mask)


def _sub_mask(name: str, mask: _Mask) -> _Mask:
    if mask is None or name in mask:
        return None
    return frozenset(path[len(name) + 1 :] for path in mask if path.startswith(name + "."))


@dataclass(eq=False)
class _Node:
    """What to do in one message type: its REQUIRED and OUTPUT_ONLY fields, and where to descend."""

    required: list[FieldDescriptor] = field(default_factory=list)
    output_only: list[FieldDescriptor] = field(default_factory=list)
    children: list[tuple[FieldDescriptor, _Node]] = field(default_factory=list)


def _node(descriptor: Descriptor, built: dict[str, _Node]) -> _Node:
    found = built.get(descriptor.full_name)
    if found is not None:
        return found  # also ends recursive message types
    node = built[descriptor.full_name] = _Node()
    for child in descriptor.fields:
        behaviours = _behaviours(child)
        if field_behavior_pb2.OUTPUT_ONLY in behaviours:
            node.output_only.append(child)
            continue
        if field_behavior_pb2.REQUIRED in behaviours:
            node.required.append(child)
        message_type = child.message_type
        if message_type is not None and not _is_map(child) and not message_type.full_name.startswith(_GOOGLE):
            node.children.append((child, _node(message_type, built)))
    return node


def _immutable_problem(descriptor: Descriptor | None, path: str) -> bool:
    """Whether the dotted `path` of `descriptor` crosses an IMMUTABLE field."""
    current: Descriptor | None = descriptor
    for part in path.split("."):
        found = current.fields_by_name.get(part) if current is not None else None
        if found is None:
            return False  # unknown paths are the handler's (kit.fieldmask) to refuse
        if field_behavior_pb2.IMMUTABLE in _behaviours(found):
            return True
        current = found.message_type
    return False


class Rules:
    """The field behaviour of one request message type, computed once from its descriptor."""

    def __init__(self, descriptor: Descriptor) -> None:
        self._root = _node(descriptor, {})
        mask = descriptor.fields_by_name.get("update_mask")
        self._updates = bool(mask and mask.message_type and mask.message_type.full_name == _MASK_TYPE)
        self.required = tuple(f.name for f in self._root.required)
        """The request's own REQUIRED fields (top level), in declaration order."""

    def apply(self, request: Message) -> None:
        """Clear `request`'s OUTPUT_ONLY fields, then refuse it if it breaks a REQUIRED or
        IMMUTABLE rule (INVALID_ARGUMENT naming every offending field at once)."""
        violations: list[FieldViolation] = []
        masks: dict[str, _Mask] = {}
        immutable: list[FieldViolation] = []
        if self._updates:
            paths = list(cast(Any, request).update_mask.paths)
            for child, _ in self._root.children:  # the resource (never the mask: google.*)
                if not _is_repeated(child):
                    masks[child.name] = self._resource_mask(request, child, paths, immutable)
        _walk(request, self._root, violations, masks=masks)
        if violations:
            names = ", ".join(v.field for v in violations)
            raise InvalidArgument(
                "REQUIRED_FIELD_MISSING",
                "required fields are missing: {fields}",
                violations=violations + immutable,
                fields=names,
            )
        if immutable:
            raise InvalidArgument(
                "UPDATE_MASK_INVALID",
                "{field} names fields that cannot be updated",
                violations=immutable,
                field="update_mask",
            )

    @staticmethod
    def _resource_mask(
        request: Message, resource: FieldDescriptor, paths: list[str], immutable: list[FieldViolation]
    ) -> _Mask:
        if paths == ["*"]:
            return None
        if not paths:  # no mask: the fields that are set
            given = getattr(request, resource.name)
            return frozenset(f.name for f, _ in given.ListFields())
        for index, path in enumerate(paths):
            if _immutable_problem(resource.message_type, path):
                immutable.append(
                    FieldViolation(
                        f"update_mask.paths[{index}]", f"{path!r} is immutable and cannot be updated"
                    )
                )
        return frozenset(paths)


def _walk(
    message: Message,
    node: _Node,
    violations: list[FieldViolation],
    *,
    prefix: str = "",
    mask: _Mask = None,
    masks: dict[str, _Mask] | None = None,
) -> None:
    """Clear OUTPUT_ONLY fields and collect missing REQUIRED ones, depth first. `masks` gives
    the resource fields of an Update request their mask."""
    for output in node.output_only:
        message.ClearField(output.name)
    for required in node.required:
        if _in_mask(required.name, mask) and _missing(message, required):
            violations.append(FieldViolation(prefix + required.name, "is required"))
    for child, child_node in node.children:
        sub = masks[child.name] if masks and child.name in masks else _sub_mask(child.name, mask)
        if _is_repeated(child):
            for index, item in enumerate(getattr(message, child.name)):
                _walk(item, child_node, violations, prefix=f"{prefix}{child.name}[{index}].", mask=sub)
        elif message.HasField(child.name):
            _walk(
                getattr(message, child.name),
                child_node,
                violations,
                prefix=f"{prefix}{child.name}.",
                mask=sub,
            )


def _each(requests: Iterator[Any], rules: Rules) -> Iterator[Any]:
    for request in requests:
        rules.apply(request)
        yield request


def middleware(descriptors: list[ServiceDescriptor] | tuple[ServiceDescriptor, ...]) -> Middleware:
    """Enforces field behaviour on every method of `descriptors` (place it after authorization)."""
    table = {
        f"/{service.full_name}/{method.name}": Rules(method.input_type)
        for service in descriptors
        for method in service.methods
    }

    def enforce(request: Any, context: grpc.ServicerContext, call: CallInfo, proceed: Handler) -> Any:
        rules = table.get(call.method)
        if rules is None:
            return proceed(request, context)
        if call.request_streaming:
            return proceed(_each(request, rules), context)
        rules.apply(request)
        return proceed(request, context)

    return enforce
