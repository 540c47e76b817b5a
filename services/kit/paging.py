"""Page sizes and page tokens for List methods (AIP-158).

A page token is opaque to clients: URL-safe base64 of a small JSON document holding the
keyset position after the last item served (e.g. ``[create_time, id]``) and a hash of the
request's other fields. A token reused with different filters, or altered, is
INVALID_ARGUMENT. A token holds no authority: the server filters by the caller as always.
The store reads a position back into SQL with `kit.sql.keyset_page`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from typing import TypeVar

from services.kit import b64url
from services.kit.domain_errors import FieldViolation, InvalidArgument

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "decode_token",
    "encode_token",
    "invalid_token",
    "page_size",
    "split_page",
]

_T = TypeVar("_T")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
_MAX_TOKEN_CHARS = 2048


def page_size(requested: int, *, default: int = DEFAULT_PAGE_SIZE, maximum: int = MAX_PAGE_SIZE) -> int:
    """0 means `default`, above `maximum` is clamped, negative is INVALID_ARGUMENT."""
    if requested < 0:
        raise InvalidArgument(
            "PAGE_SIZE_NEGATIVE",
            "page_size must not be negative",
            violations=[FieldViolation("page_size", "must be 0 (the default) or positive")],
        )
    return min(requested or default, maximum)


def _fingerprint(request_fields: Sequence[object]) -> str:
    return hashlib.sha256(json.dumps([str(f) for f in request_fields]).encode()).hexdigest()[:16]


def encode_token(position: Sequence[str], request_fields: Sequence[object]) -> str:
    """The token for the page after `position`, bound to `request_fields` (filter, order...)."""
    document = json.dumps({"p": list(position), "h": _fingerprint(request_fields)}, separators=(",", ":"))
    return b64url.encode(document.encode())


def invalid_token(why: str) -> InvalidArgument:
    return InvalidArgument(
        "PAGE_TOKEN_INVALID",
        "page_token is invalid: {why}",
        violations=[FieldViolation("page_token", why)],
        why=why,
    )


def decode_token(token: str, request_fields: Sequence[object]) -> list[str] | None:
    """The position in `token`, or None for an empty token (the first page)."""
    if not token:
        return None
    if len(token) > _MAX_TOKEN_CHARS:
        raise invalid_token("too long")
    try:
        document = json.loads(b64url.decode(token))
        position, digest = document["p"], document["h"]
    except (ValueError, TypeError, KeyError):
        raise invalid_token("not a token this method issued") from None
    if not isinstance(position, list) or not all(isinstance(p, str) for p in position):
        raise invalid_token("not a token this method issued")
    if digest != _fingerprint(request_fields):
        raise invalid_token("it was issued for a request with other filters or ordering")
    return position


def split_page(
    found: Sequence[_T], limit: int, position: Callable[[_T], Sequence[str]], request_fields: Sequence[object]
) -> tuple[list[_T], str]:
    """The page out of `found` (queried with ``limit + 1`` rows) and the token for the next
    one: empty when the extra row is absent, else the `position` of the page's last item."""
    page = list(found[:limit])
    if len(found) <= limit:
        return page, ""
    return page, encode_token(position(page[-1]), request_fields)
