"""Unpadded base64url (RFC 4648 section 5), as JOSE (JWTs, JWKs, PKCE) and the page tokens
write it: one pair of functions instead of a copy of the padding arithmetic per module."""

from __future__ import annotations

import base64

__all__ = ["decode", "encode"]


def encode(data: bytes) -> str:
    """`data` in base64url, without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def decode(text: str) -> bytes:
    """The bytes of unpadded (or padded) base64url `text`; ValueError (binascii.Error) when it
    is not base64. Lenient as Python's decoder is: check the result's length where it matters."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
