"""Access tokens: signing keys from the auth database, and JWTs signed with the newest one.

`KeyRing` reads the keys through the store (so a `poly keys rotate` by another process is
seen at the next token), unseals private keys once each, and publishes the JWK Set.

A rotated-in key is published at once but signs only after `activation_delay` (the
services' minimum JWKS refetch interval): by then any service that meets its ``kid`` is
allowed to refetch, so no valid token is ever refused as signed by an unknown key.
`JwtMinter` issues EdDSA JWTs with ``kid``, ``iss``, ``sub``, ``aud``, ``exp``, ``nbf``,
``iat``, ``jti``, ``roles`` and ``scope`` (plus ``sid`` for user sessions and ``client_id``
for machine clients).
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import jwt

from services.auth import keys
from services.auth.store import AuthStore
from services.kit.config import AuthSettings

__all__ = ["JwtMinter", "KeyRing"]


class KeyRing:
    def __init__(
        self,
        store: AuthStore,
        encryption_key: bytes,
        *,
        activation_delay: float = 0.0,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._store = store
        self._activation_delay = dt.timedelta(seconds=activation_delay)
        self._encryption_key = encryption_key
        self._clock = clock
        self._unsealed: dict[str, keys.SigningKey] = {}
        self._lock = threading.Lock()

    def ensure(self) -> keys.SealedKey:
        """The current key, creating the first one on a fresh database."""
        with self._store.transaction() as repo:
            existing = repo.signing_keys(1)
            if existing:
                return existing[0]
            created = keys.new_key(self._encryption_key, self._clock())
            repo.add_signing_key(created)
            return created

    def rotate(self) -> keys.SealedKey:
        """Add a new key: it signs from now on; the previous one stays published."""
        created = keys.new_key(self._encryption_key, self._clock())
        with self._store.transaction() as repo:
            repo.add_signing_key(created)
        return created

    def _keys(self) -> tuple[list[keys.SealedKey], int]:
        """The newest keys and the position of the signing one among them."""
        with self._store.transaction() as repo:
            newest = repo.signing_keys(keys.PUBLISHED_KEYS + 3)
        if not newest:
            raise keys.KeyEncryptionError("the auth database holds no signing key")
        return newest, self._signing_index(newest)

    def _signing_index(self, newest_first: list[keys.SealedKey]) -> int:
        """The newest key old enough to sign, or the oldest one when none is (a fresh ring)."""
        ready = self._clock() - self._activation_delay
        return next(
            (i for i, key in enumerate(newest_first) if key.create_time <= ready), len(newest_first) - 1
        )

    def current(self) -> keys.SigningKey:
        newest, signing = self._keys()
        sealed = newest[signing]
        with self._lock:
            found = self._unsealed.get(sealed.kid)
            if found is None:
                found = self._unsealed[sealed.kid] = keys.unseal(sealed, self._encryption_key)
        return found

    def published(self) -> list[tuple[keys.SealedKey, str]]:
        """Every key with its role: ``next`` (not signing yet), ``signing``, ``previous``,
        or ``withdrawn`` (no longer published: tokens it signed are refused)."""
        with self._store.transaction() as repo:
            stored = repo.signing_keys(limit=1000)
        if not stored:
            return []
        signing = self._signing_index(stored)
        roles = ["next"] * signing + ["signing", "previous"]
        return [(key, roles[i] if i < len(roles) else "withdrawn") for i, key in enumerate(stored)]

    def jwks(self) -> dict[str, Any]:
        """The JWK Set: keys rotated in but not signing yet, the signing key, the previous one."""
        newest, signing = self._keys()
        return {"keys": [keys.jwk(sealed) for sealed in newest[: signing + 2]]}


class JwtMinter:
    """`domain.Minter`: access tokens signed by the ring's current key."""

    def __init__(self, ring: KeyRing, settings: AuthSettings, lifetime_seconds: int = 900) -> None:
        self._ring = ring
        self._settings = settings
        self._lifetime_seconds = lifetime_seconds

    def access_token(
        self,
        *,
        subject: str,
        roles: Sequence[str],
        scopes: Sequence[str],
        now: dt.datetime,
        client_id: str = "",
        session: str = "",
    ) -> str:
        key = self._ring.current()
        issued = int(now.timestamp())
        claims: dict[str, Any] = {
            "iss": self._settings.issuer,
            "sub": subject,
            "aud": self._settings.audience,
            "iat": issued,
            "nbf": issued,
            "exp": issued + self._lifetime_seconds,
            "jti": str(uuid.uuid4()),
            "roles": sorted(roles),
            "scope": " ".join(sorted(scopes)),
        }
        if client_id:
            claims["client_id"] = client_id
        if session:
            claims["sid"] = session
        return jwt.encode(
            claims, key.private_key, algorithm=keys.ALGORITHM, headers={"kid": key.kid, "typ": "at+jwt"}
        )

    def id_token(
        self,
        *,
        subject: str,
        audience: str,
        now: dt.datetime,
        auth_time: dt.datetime,
        nonce: str = "",
        email: str = "",
    ) -> str:
        """An OpenID Connect ID token (Core 2) telling client `audience` who signed in: not an
        access token (its ``typ`` is JWT and its audience a client), so no service accepts it."""
        key = self._ring.current()
        issued = int(now.timestamp())
        claims: dict[str, Any] = {
            "iss": self._settings.issuer,
            "sub": subject,
            "aud": audience,
            "azp": audience,
            "iat": issued,
            "exp": issued + self._lifetime_seconds,
            "auth_time": int(auth_time.timestamp()),
        }
        if nonce:
            claims["nonce"] = nonce
        if email:
            claims["email"] = email
            claims["email_verified"] = False  # sign-up does not verify addresses
        return jwt.encode(
            claims, key.private_key, algorithm=keys.ALGORITHM, headers={"kid": key.kid, "typ": "JWT"}
        )
