"""Resource names (AIP-122): ``orders/{order}`` in requests, ids inside a service."""

from __future__ import annotations

import re

from services.kit.errors import FieldViolation, InvalidArgument

__all__ = ["resource_id"]

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._~-]{0,63}$")


def resource_id(name: str, collection: str, *, field: str = "name") -> str:
    """The ``{id}`` of ``<collection>/{id}``; anything else is INVALID_ARGUMENT on `field`."""
    prefix, _, resource = name.partition("/")
    if prefix != collection or not _ID.match(resource):
        raise InvalidArgument(
            "NAME_INVALID",
            "{field} must be {collection}/{{id}}, got {name!r}",
            violations=[FieldViolation(field, f"must be {collection}/{{id}}")],
            field=field,
            collection=collection,
            name=name[:100],
        )
    return resource
