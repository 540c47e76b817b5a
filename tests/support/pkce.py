"""PKCE (RFC 7636) as an app makes it: a random verifier and its S256 challenge."""

from __future__ import annotations

import base64
import hashlib
import secrets

__all__ = ["pkce", "s256"]


def s256(verifier: str) -> str:
    """BASE64URL(SHA256(verifier)), unpadded."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def pkce() -> tuple[str, str]:
    """A new verifier (64 characters) and its challenge."""
    verifier = secrets.token_urlsafe(48)
    return verifier, s256(verifier)
