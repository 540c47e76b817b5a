"""Signing keys: Ed25519 key pairs, encrypted at rest, published as a JWK Set.

A key is a row of the auth database. Its private half is sealed with AES-256-GCM under the
key-encryption key from configuration (a 32-byte file, ``POLY_AUTH_KEY_ENCRYPTION_KEY_FILE``)
with the ``kid`` as associated data, so a sealed key cannot be moved to another row. The
newest key signs; it and the one before it are published (`PUBLISHED_KEYS`), so tokens
signed before a rotation stay valid until they expire, and keys older than that are
withdrawn: tokens they signed stop verifying everywhere.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.kit import b64url

__all__ = [
    "ALGORITHM",
    "PUBLISHED_KEYS",
    "KeyEncryptionError",
    "SealedKey",
    "SigningKey",
    "ensure_key_encryption_key",
    "jwk",
    "load_key_encryption_key",
    "new_key",
    "unseal",
]

ALGORITHM = "EdDSA"
PUBLISHED_KEYS = 2
"""The current key and the previous one."""
_NONCE_BYTES = 12


class KeyEncryptionError(RuntimeError):
    """The key-encryption key is missing or malformed, or does not open a stored key."""


@dataclass(frozen=True, slots=True)
class SealedKey:
    """A signing key as stored: public half in the clear, private half encrypted."""

    kid: str
    algorithm: str
    public_key: bytes
    sealed_private_key: bytes
    create_time: dt.datetime


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    private_key: Ed25519PrivateKey


def ensure_key_encryption_key(path: Path) -> bool:
    """Create a random key-encryption key at `path` (mode 0600) unless one exists; for
    development set-ups (``poly certs``). Returns whether it wrote one."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(b64url.encode(secrets.token_bytes(32)) + "\n")
    return True


def load_key_encryption_key(path: Path) -> bytes:
    try:
        text = path.read_text().strip()
    except OSError as error:
        raise KeyEncryptionError(
            f"cannot read the key-encryption key {path} ({error.strerror}); `poly certs` creates one"
        ) from None
    try:
        key = b64url.decode(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise KeyEncryptionError(f"{path}: expected 32 bytes in base64url")
    return key


def new_key(encryption_key: bytes, now: dt.datetime) -> SealedKey:
    """A fresh Ed25519 key pair, sealed under `encryption_key`."""
    private = Ed25519PrivateKey.generate()
    kid = f"{now:%Y%m%d}-{secrets.token_hex(4)}"
    raw = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    nonce = secrets.token_bytes(_NONCE_BYTES)
    sealed = nonce + AESGCM(encryption_key).encrypt(nonce, raw, kid.encode())
    public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return SealedKey(kid, ALGORITHM, public, sealed, now)


def unseal(sealed: SealedKey, encryption_key: bytes) -> SigningKey:
    nonce, ciphertext = sealed.sealed_private_key[:_NONCE_BYTES], sealed.sealed_private_key[_NONCE_BYTES:]
    try:
        raw = AESGCM(encryption_key).decrypt(nonce, ciphertext, sealed.kid.encode())
    except InvalidTag:
        raise KeyEncryptionError(
            f"signing key {sealed.kid} does not open with the configured key-encryption key"
        ) from None
    return SigningKey(sealed.kid, Ed25519PrivateKey.from_private_bytes(raw))


def jwk(sealed: SealedKey) -> dict[str, str]:
    """The public JWK (RFC 8037) of a key."""
    Ed25519PublicKey.from_public_bytes(sealed.public_key)  # refuses a corrupt row loudly
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": b64url.encode(sealed.public_key),
        "kid": sealed.kid,
        "use": "sig",
        "alg": sealed.algorithm,
    }
