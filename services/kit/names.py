"""Resource names (AIP-122): ``orders/{order}`` in requests, ids inside a service, and the
ids clients choose for new resources (AIP-133). Request ids (AIP-155) are `kit.idempotency`'s.

Every pattern here is ASCII only (``[0-9]``, never ``\\d``, which also matches U+0660 and
fullwidth digits) and is applied with ``fullmatch`` (``$`` also matches before a final
newline, so ``re.match(r"^...$")`` accepts ``"order-1\\n"``).
"""

from __future__ import annotations

import re

from services.kit.domain_errors import FieldViolation, InvalidArgument

__all__ = ["CHOSEN_ID_RULE", "chosen_id_problems", "resource_id"]

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~-]{0,63}", re.ASCII)
_CHOSEN_ID = re.compile(r"[a-z][a-z0-9-]{3,62}", re.ASCII)
CHOSEN_ID_RULE = "must be 4 to 63 characters of [a-z0-9-], starting with a letter"
"""What a client-chosen id (`chosen_id_problems`) must look like, as its field violation says."""


def resource_id(name: str, collection: str, *, field: str = "name") -> str:
    """The ``{id}`` of ``<collection>/{id}``; anything else is INVALID_ARGUMENT on `field`."""
    prefix, _, resource = name.partition("/")
    if prefix != collection or not _ID.fullmatch(resource):
        raise InvalidArgument(
            "NAME_INVALID",
            "{field} must be {collection}/{{id}}, got {name!r}",
            violations=[FieldViolation(field, f"must be {collection}/{{id}}")],
            field=field,
            collection=collection,
            name=name[:100],
        )
    return resource


def chosen_id_problems(chosen: str, *, field: str) -> list[FieldViolation]:
    """What is wrong with an id the client chose for a new resource (AIP-133 ``order_id``,
    ``webhook_id``, ``client_id``). Empty is fine: the service picks one."""
    if chosen and not _CHOSEN_ID.fullmatch(chosen):
        return [FieldViolation(field, CHOSEN_ID_RULE)]
    return []
