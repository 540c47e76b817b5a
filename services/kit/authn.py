"""Who is calling: verify the bearer access token of a call.

`Verifier.verify(token)` returns the `Principal` a JWT names, after checking everything a
forged, stale or misdirected token could get wrong:

- the algorithm is on the allow-list (`ALGORITHMS`: EdDSA, RS256) *and* is the algorithm of
  the key named by ``kid``; ``none`` and every HS* are refused before any key is touched,
  so a public key can never be used as an HMAC secret;
- the signature verifies against the auth service's JWK Set (`KeySet`: cached, refetched
  when it is older than its max age or when a token names an unknown ``kid``, at most once
  per minimum interval, so random ``kid`` values cannot hammer the auth service);
- ``iss`` and ``aud`` are ours; ``exp``, ``nbf`` and ``iat`` hold within a small leeway;
  ``sub``, ``jti``, ``iat`` and ``exp`` are present.

A token whose ``iss`` names a trusted outside issuer (`TrustedIssuer`, see `kit.federation`) is
checked the same way against that issuer's keys and audience instead, and mapped to a principal
by it; the unverified ``iss`` only picks whose rules apply.

A token that verified is remembered (bounded, by its exact text) until it expires: the same
token on the next call costs a lookup, not a signature check. A remembered token is still
refused once it expires, and re-verified in full when its signing key is no longer the one it
was verified with (rotated out of, or withdrawn from, the key set).

Every refusal is `kit.errors.Unauthenticated` with a reason (``TOKEN_EXPIRED``, ...); an
unreachable auth service with no usable cached key is `Unavailable` (retryable), never a
false "your token is bad".
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import jwt
from google.protobuf.descriptor import ServiceDescriptor

from poly.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from services.kit import b64url
from services.kit.clients import Channels
from services.kit.config import AuthSettings, Settings
from services.kit.domain_errors import Unauthenticated, Unavailable

__all__ = [
    "ALGORITHMS",
    "AUTH_SERVICE",
    "KeySet",
    "KeySource",
    "MAX_TOKEN_BYTES",
    "Principal",
    "TrustedIssuer",
    "Verifier",
    "bearer_token",
    "jwks_from_auth",
    "unverified_part",
    "remote_verifier",
]

_log = logging.getLogger("poly.authn")

ALGORITHMS: tuple[str, ...] = ("EdDSA", "RS256")
"""The only signature algorithms accepted. Asymmetric only: the verifying key is public."""

MAX_TOKEN_BYTES = 8192
"""Longer bearer values are refused unparsed."""

AUTH_SERVICE: ServiceDescriptor = auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"]

KeySource = Callable[[], Mapping[str, Any]]
"""Returns the current JWK Set, ``{"keys": [{"kty": ..., "kid": ..., "alg": ...}, ...]}``."""

_REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub", "jti"]
_EXTERNAL_REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub"]


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller behind an access token."""

    subject: str
    """``users/{user}`` for people, ``clients/{client}`` for machine clients."""
    roles: frozenset[str]
    scopes: frozenset[str]
    token_id: str
    issued_at: dt.datetime
    expires_at: dt.datetime
    client_id: str = ""
    session: str = ""
    """The refresh-token family the token was issued from; empty for machine clients."""

    @property
    def is_client(self) -> bool:
        return self.subject.startswith("clients/")

    @property
    def is_admin(self) -> bool:
        return not self.is_client and "admin" in self.roles


def bearer_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` entry, or None when there is none.

    A present but malformed header (another scheme, no token, several of them) is refused
    rather than ignored: a caller who sent a credential must learn it was not accepted.
    """
    values = [value for key, value in metadata or () if key.lower() == "authorization"]
    if not values:
        return None
    if len(values) > 1:
        raise Unauthenticated("TOKEN_MALFORMED", "send exactly one authorization header")
    raw = values[0]
    text = raw.decode("latin-1") if isinstance(raw, bytes) else raw
    scheme, _, token = text.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("TOKEN_MALFORMED", "expected `authorization: Bearer <token>`")
    return token


class KeySet:
    """The auth service's public keys by ``kid``, cached and refreshed.

    The cache is refetched when older than `max_age` or when a token names a ``kid`` it
    lacks, but never more than once per `min_refresh` seconds. If a refetch fails, cached
    keys stay usable (a short auth outage must not log everyone out); with no cached key
    the caller gets UNAVAILABLE.
    """

    def __init__(
        self,
        source: KeySource,
        *,
        max_age: float = 300.0,
        min_refresh: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._max_age = max_age
        self._min_refresh = min_refresh
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, tuple[str, Any]] = {}
        self._fetched: float | None = None
        self._attempted: float | None = None

    def key(self, kid: str) -> tuple[str, Any]:
        """``(algorithm, public key)`` for `kid`."""
        with self._lock:
            now = self._clock()
            stale = self._fetched is None or now - self._fetched >= self._max_age
            due = self._attempted is None or now - self._attempted >= self._min_refresh
            if (stale or kid not in self._keys) and due:
                self._attempted = now
                try:
                    self._keys = _parse_jwks(self._source())
                    self._fetched = now
                except (grpc.RpcError, OSError, ValueError) as error:
                    _log.warning("cannot fetch the signing keys", extra={"error": type(error).__name__})
                    if self._fetched is None:
                        raise Unavailable(
                            "JWKS_UNAVAILABLE", "the token issuer's signing keys cannot be fetched"
                        ) from None
            found = self._keys.get(kid)
        if found is None:
            raise Unauthenticated("TOKEN_KEY_UNKNOWN", "the token is signed by an unknown key")
        return found

    def signing_key(self, header: Mapping[str, Any]) -> tuple[str, str, Any]:
        """``(kid, algorithm, public key)`` of the key a JWT's `header` names, when the header's
        algorithm is on the allow-list and is that key's own; else Unauthenticated."""
        algorithm, kid = header.get("alg"), header.get("kid")
        if algorithm not in ALGORITHMS:
            raise Unauthenticated(
                "TOKEN_ALGORITHM_REFUSED", "tokens signed with {alg} are refused", alg=algorithm
            )
        if not isinstance(kid, str) or not kid:
            raise Unauthenticated("TOKEN_KEY_UNKNOWN", "the token names no signing key")
        key_algorithm, key = self.key(kid)
        if key_algorithm != algorithm:
            raise Unauthenticated("TOKEN_ALGORITHM_REFUSED", "the token's algorithm does not match its key")
        return kid, key_algorithm, key


def _parse_jwks(document: Mapping[str, Any]) -> dict[str, tuple[str, Any]]:
    """The usable signing keys of a JWK Set by ``kid``; anything else in it is skipped."""
    keys: dict[str, tuple[str, Any]] = {}
    entries = document.get("keys") if isinstance(document, Mapping) else None
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        kid = entry.get("kid")
        algorithm = entry.get("alg") or _implied_algorithm(entry)
        if (
            algorithm not in ALGORITHMS
            or not isinstance(kid, str)
            or not kid
            or entry.get("use", "sig") != "sig"
        ):
            continue  # a key we would never accept a token for
        try:
            keys[kid] = (algorithm, jwt.PyJWK(dict(entry), algorithm=algorithm).key)
        except (jwt.PyJWTError, TypeError, ValueError):
            _log.warning("ignoring an unusable key in the key set", extra={"kid": kid})
    return keys


def _implied_algorithm(entry: Mapping[str, Any]) -> str | None:
    """The algorithm of a key published without ``alg`` (optional in RFC 7517; Entra ID leaves
    it out): RS256 for an RSA key, EdDSA for an Ed25519 one."""
    if entry.get("kty") == "RSA":
        return "RS256"
    if entry.get("kty") == "OKP" and entry.get("crv") == "Ed25519":
        return "EdDSA"
    return None


class TrustedIssuer(Protocol):
    """An outside issuer whose access tokens are accepted (`kit.federation.Trusted`)."""

    @property
    def issuer(self) -> str: ...
    @property
    def audience(self) -> str: ...
    @property
    def keys(self) -> KeySet: ...
    def principal(self, claims: Mapping[str, Any], token: str) -> Principal:
        """The principal of a verified token's `claims`; Unauthenticated if they do not fit."""


@dataclass(frozen=True, slots=True)
class _Verified:
    principal: Principal
    keys: KeySet
    """The key set it verified against."""
    kid: str
    key: Any
    """The key object it verified with: a refetched key set holds new objects."""
    expires: float
    """``exp`` plus the leeway, in seconds since the epoch."""


VERIFIED_TOKENS = 4096
"""Verified tokens remembered per process (least recently used dropped first)."""


class Verifier:
    """Checks access tokens against a `KeySet` and the issuer, audience and leeway in `settings`."""

    def __init__(
        self,
        keys: KeySet,
        settings: AuthSettings,
        *,
        remember: int = VERIFIED_TOKENS,
        clock: Callable[[], float] = time.time,
        external: Sequence[TrustedIssuer] = (),
    ) -> None:
        self._keys = keys
        self._external = {
            trusted.issuer: trusted for trusted in external if trusted.issuer != settings.issuer
        }
        self._issuer = settings.issuer
        self._audience = settings.audience
        self._leeway = settings.leeway_seconds
        self._remember = remember
        self._clock = clock
        self._verified: OrderedDict[str, _Verified] = OrderedDict()
        self._verified_lock = threading.Lock()

    @property
    def audience(self) -> str:
        return self._audience

    def verify(self, token: str) -> Principal:
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthenticated("TOKEN_MALFORMED", "the access token is too long")
        known = self._recall(token)
        if known is not None:
            return known
        keys, kid, key, principal = self._check(token)
        if self._remember > 0:
            expires = principal.expires_at.timestamp() + self._leeway
            with self._verified_lock:
                self._verified[token] = _Verified(principal, keys, kid, key, expires)
                while len(self._verified) > self._remember:
                    self._verified.popitem(last=False)
        return principal

    def _recall(self, token: str) -> Principal | None:
        """The principal of `token` if it verified before and nothing since makes it doubtful;
        None sends it through the full check (which then gives the right refusal)."""
        with self._verified_lock:
            known = self._verified.get(token)
            if known is None:
                return None
            self._verified.move_to_end(token)
        current: Any = None
        if self._clock() < known.expires:
            try:
                current = known.keys.key(known.kid)[1]
            except (Unauthenticated, Unavailable):
                current = None
        if current is not known.key:
            with self._verified_lock:
                self._verified.pop(token, None)
            return None
        return known.principal

    def _check(self, token: str) -> tuple[KeySet, str, Any, Principal]:
        """Everything about `token`: ``(key set, kid, key, principal)`` or a refusal."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("TOKEN_MALFORMED", "the access token is not a JWT") from None
        # Unverified, it only picks whose rules apply.
        claimed_issuer = unverified_part(token, 1).get("iss")
        trusted = self._external.get(claimed_issuer) if isinstance(claimed_issuer, str) else None
        if trusted is None and claimed_issuer != self._issuer:
            # Not ours and not trusted: refused before any key is looked up (or fetched).
            raise Unauthenticated("TOKEN_ISSUER_INVALID", "the access token has another issuer")
        keys = trusted.keys if trusted else self._keys
        kid, key_algorithm, key = keys.signing_key(header)
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[key_algorithm],
                audience=trusted.audience if trusted else self._audience,
                issuer=trusted.issuer if trusted else self._issuer,
                leeway=self._leeway,
                options={"require": _EXTERNAL_REQUIRED_CLAIMS if trusted else _REQUIRED_CLAIMS},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("TOKEN_EXPIRED", "the access token has expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated("TOKEN_NOT_YET_VALID", "the access token is not valid yet") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated(
                "TOKEN_AUDIENCE_INVALID", "the access token is for another audience"
            ) from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated("TOKEN_ISSUER_INVALID", "the access token has another issuer") from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated(
                "TOKEN_SIGNATURE_INVALID", "the access token's signature is invalid"
            ) from None
        except jwt.PyJWTError:
            raise Unauthenticated("TOKEN_CLAIMS_INVALID", "the access token's claims are invalid") from None
        return keys, kid, key, trusted.principal(claims, token) if trusted else _principal(claims)


def unverified_part(token: str, index: int) -> dict[str, Any]:
    """The JSON object of part `index` of a JWT (0 the header, 1 the claims), read without
    verifying anything; {} for a token that is not three parts or a part that is not one."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    try:
        found = json.loads(b64url.decode(parts[index]))
    except (ValueError, RecursionError):  # RecursionError: JSON nested thousands deep
        return {}
    return found if isinstance(found, dict) else {}


def _principal(claims: Mapping[str, Any]) -> Principal:
    roles, scope, subject = claims.get("roles", []), claims.get("scope", ""), claims["sub"]
    if (
        not isinstance(subject, str)
        or not subject.startswith(("users/", "clients/"))
        or not isinstance(roles, list)
        or not all(isinstance(role, str) for role in roles)
        or not isinstance(scope, str)
    ):
        raise Unauthenticated("TOKEN_CLAIMS_INVALID", "the access token's claims are invalid")
    return Principal(
        subject=subject,
        roles=frozenset(roles),
        scopes=frozenset(scope.split()),
        token_id=str(claims["jti"]),
        issued_at=dt.datetime.fromtimestamp(int(claims["iat"]), dt.UTC),
        expires_at=dt.datetime.fromtimestamp(int(claims["exp"]), dt.UTC),
        client_id=str(claims.get("client_id", "")),
        session=str(claims.get("sid", "")),
    )


def jwks_from_auth(channel: Callable[[], grpc.Channel], *, timeout: float = 5.0) -> KeySource:
    """A `KeySource` calling ``AuthService.GetJwks`` on the channel `channel()` returns
    (e.g. ``lambda: channels.get("auth")``, so a rotated client certificate is used)."""

    def fetch() -> Mapping[str, Any]:
        stub = auth_service_pb2_grpc.AuthServiceStub(channel())
        reply = stub.GetJwks(auth_service_pb2.GetJwksRequest(), timeout=timeout)
        fields = ("kty", "crv", "x", "kid", "use", "alg", "n", "e")
        return {"keys": [{f: getattr(k, f) for f in fields if getattr(k, f)} for k in reply.keys]}

    return fetch


def remote_verifier(
    settings: Settings, channels: Channels, *, external: Sequence[TrustedIssuer] = ()
) -> Verifier:
    """The verifier of every service but auth: keys fetched from the auth service over mTLS
    (``channels`` must know the ``auth`` peer; see `AUTH_SERVICE`), and the `external` issuers'."""
    keys = KeySet(
        jwks_from_auth(lambda: channels.get("auth"), timeout=settings.client_deadline_seconds),
        max_age=settings.auth.jwks_max_age_seconds,
        min_refresh=settings.auth.jwks_min_refresh_seconds,
    )
    return Verifier(keys, settings.auth, external=external)
