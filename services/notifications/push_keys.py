"""The keys of Web Push: the deployment's VAPID key pair (RFC 8292), and the checks of a
browser's subscription keys (RFC 8291). Pure functions over `cryptography`; no I/O.

A VAPID private key is given either as the unpadded base64url of its 32-byte scalar (what
``npx web-push generate-vapid-keys`` prints) or as a PEM file's text (``vapid --gen``); either
way it must be on P-256. A subscription's ``p256dh`` must be an uncompressed P-256 point that
is on the curve, and its ``auth`` 16 bytes: anything else cannot be encrypted to, and is
refused when registered rather than failing every push later.
"""

from __future__ import annotations

import binascii
import re
from urllib.parse import urlsplit

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.kit import b64url
from services.kit.domain_errors import FieldViolation

__all__ = [
    "application_server_key",
    "decode",
    "encode",
    "key_problems",
    "origin",
    "subject_problem",
    "vapid_private_key",
]

_BASE64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}", re.ASCII)
_SUBJECT = re.compile(r"mailto:[^@\s]+@[\w-]+(\.[\w-]+)+|https://[\w-]+(\.[\w-]+)+", re.ASCII)
"""A contact every VAPID signer takes: a mail address at a dotted domain, or an https origin
without port or path (py_vapid's own check refuses, for instance, ``https://x.example/``)."""
_DEFAULT_PORTS = {"https": 443, "http": 80}


def decode(text: str) -> bytes:
    """Base64url, padded or not (ValueError otherwise)."""
    if not _BASE64URL.fullmatch(text):
        raise ValueError("not base64url")
    bare = text.rstrip("=")
    try:
        return b64url.decode(bare)
    except binascii.Error as error:
        raise ValueError("not base64url") from error


def encode(data: bytes) -> str:
    """Unpadded base64url, as Web Push writes keys."""
    return b64url.encode(data)


def vapid_private_key(text: str) -> ec.EllipticCurvePrivateKey:
    """The VAPID signing key from its base64url scalar or PEM text; ValueError when it is
    neither, or not on P-256."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_private_key(text.encode(), password=None)
        except (TypeError, UnsupportedAlgorithm) as error:  # encrypted, or not a key we know
            raise ValueError("expected an unencrypted P-256 private key") from error
    else:
        scalar = decode(text)
        if len(scalar) != 32:
            raise ValueError("expected the base64url of a 32-byte P-256 private key, or its PEM")
        key = ec.derive_private_key(int.from_bytes(scalar, "big"), ec.SECP256R1())
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("expected a P-256 (prime256v1) private key")
    return key


def application_server_key(key: ec.EllipticCurvePrivateKey | str) -> str:
    """The public half of a VAPID key (or of its text) as browsers take it: unpadded base64url
    of the uncompressed point."""
    if isinstance(key, str):
        key = vapid_private_key(key)
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return encode(point)


def subject_problem(subject: str) -> str | None:
    """Why `subject` cannot be the VAPID ``sub`` claim (RFC 8292 section 2.1), or None."""
    if _SUBJECT.fullmatch(subject):
        return None
    return f"expected mailto:<address> or https://<host> (no port or path), got {subject!r}"


def origin(endpoint: str) -> str | None:
    """The origin of a push endpoint, as the VAPID ``aud`` claim names it (lower-case host, the
    port only when it is not the scheme's); None for a URL no VAPID signature can name (an
    IPv6 literal, no host)."""
    try:
        parts = urlsplit(endpoint)
        port = parts.port
    except ValueError:
        return None
    host = (parts.hostname or "").rstrip(".")
    if parts.scheme not in _DEFAULT_PORTS or not host or ":" in host:
        return None
    shown = "" if port in (None, _DEFAULT_PORTS[parts.scheme]) else f":{port}"
    return f"{parts.scheme}://{host}{shown}"


def key_problems(p256dh: str, auth: str, *, field: str) -> list[FieldViolation]:
    """What is wrong with a subscription's keys, as violations of ``{field}.p256dh`` and
    ``{field}.auth``."""
    violations: list[FieldViolation] = []
    try:
        point = decode(p256dh)
        if len(point) != 65 or point[0] != 4:
            raise ValueError("not an uncompressed point")
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except ValueError:
        violations.append(
            FieldViolation(f"{field}.p256dh", "must be the base64url of an uncompressed P-256 public key")
        )
    try:
        secret = decode(auth)
    except ValueError:
        secret = b""
    if len(secret) != 16:
        violations.append(FieldViolation(f"{field}.auth", "must be the base64url of 16 bytes"))
    return violations
