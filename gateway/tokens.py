"""Who a request's bearer token names, for the edge's rate limit only.

A `TokenVerifier` maps a bearer token to the principal it names (``users/{id}``, or
``clients/{id}`` for a machine client), or None when the token does not verify; it raises
`CannotVerify` when it cannot tell now (no signing keys yet, or a key it has not fetched
yet). The edge keys its rate limit on the principal of a token that verifies, and counts a
token that does not as a failed authentication of the client's address; it never refuses a
call because of it: the backends verify every token again and decide.

`JwksVerifier` is the one Polyservice's edge uses: the kit's `services.kit.authn.Verifier`
(EdDSA/RS256 only; issuer, audience and expiry checked) over the auth service's key set,
which it never waits for. The key set is fetched in the background (`JwksVerifier.run`)
when it is older than ``jwks_max_age_seconds`` or when a token names a ``kid`` it lacks, at
most once per ``jwks_min_refresh_seconds``; a request meanwhile is limited by its address.
A token that verified is remembered until it expires (or the key set changes), so a client
reusing its access token pays one dictionary lookup per request, not a signature check.

The standalone edge (`poly gateway` in front of other services) has no key set to verify
against: it runs without a verifier, and every request is limited by its address. A token of
an outside issuer the services accept (``POLY_FEDERATION_*``) is not verified here either: it
is limited by its address, and never counted as a failed authentication.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import grpc

from gateway import headers
from gateway.backends import credentials
from gateway.config import TokenCheck
from services.kit.authn import KeySet, KeySource, Verifier, jwks_from_auth, unverified_part
from services.kit.config import AuthSettings
from services.kit.domain_errors import Unauthenticated, Unavailable

__all__ = ["CannotVerify", "JwksVerifier", "OutsideToken", "TokenVerifier", "bearer_token", "verifying"]

_log = logging.getLogger("poly.gateway")

TokenVerifier = Callable[[str], str | None]
"""Maps a bearer token to the principal it names, or None when it does not verify; raises
`CannotVerify` when it cannot tell now."""

_CACHE_SIZE = 10_000
_RETRY_SECONDS = 1.0
"""The least time between two fetches after a failed one."""
_STARTING_SECONDS = 30.0
"""How long a first key set may take to arrive before each failed fetch is a warning."""


class CannotVerify(Exception):
    """The verifier cannot tell now whether the token is good: the edge limits the request by
    its address and lets the backend decide."""


class OutsideToken(CannotVerify):
    """The token is an outside issuer's: the services verify it, the edge never does."""


def bearer_token(values: Sequence[str]) -> str | None:
    """The token of the one ``Authorization`` value `values` holds when it is ``Bearer <token>``
    (the scheme in any case, RFC 7235); None for no header, several, or another scheme."""
    # Read as `gateway.headers.normalized_authorization` forwards it, so both agree on the token.
    return headers.bearer_credential(values[0]) if len(values) == 1 else None


class JwksVerifier:
    """A `TokenVerifier`: the kit's `Verifier` over a key set from `keys`, fetched by `run`.

    `keys` blocks (a gRPC call to the auth service), so `run` calls it in a worker thread;
    a call of the verifier itself never touches the network.
    """

    def __init__(
        self,
        keys: KeySource,
        settings: AuthSettings,
        *,
        cache_size: int = _CACHE_SIZE,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys, self._settings = keys, settings
        self._outside = frozenset(external.issuer for external in settings.external if external.audience)
        self._cache_size, self._clock, self._wall_clock = cache_size, clock, wall_clock
        self._document: Mapping[str, Any] | None = None
        self._verifier: Verifier | None = None
        self._verified: dict[str, tuple[str, float]] = {}
        """Token -> (principal, when it stops being accepted, as a wall-clock time)."""
        self._wanted = asyncio.Event()

    def __call__(self, token: str) -> str | None:
        remembered = self._verified.get(token)
        if remembered is not None:
            principal, until = remembered
            if self._wall_clock() < until:
                return principal
            del self._verified[token]  # expired: verified again, and refused as expired
        if _claimed_issuer(token) in self._outside:
            raise OutsideToken("a token of an outside issuer: the services verify it")
        verifier = self._verifier
        if verifier is None:
            self._wanted.set()
            raise CannotVerify("no signing keys yet")
        try:
            found = verifier.verify(token)
        except Unauthenticated as refused:
            if refused.reason == "TOKEN_KEY_UNKNOWN" and _names_a_key(token):
                self._wanted.set()  # a key published since the last fetch, or a forgery
                raise CannotVerify("the token names a key not fetched yet") from None
            return None
        except Unavailable:
            raise CannotVerify("no signing keys") from None
        self._remember(token, found.subject, found.expires_at.timestamp())
        return found.subject

    def _remember(self, token: str, principal: str, expires: float) -> None:
        if len(self._verified) >= self._cache_size:
            now = self._wall_clock()
            self._verified = {t: v for t, v in self._verified.items() if v[1] > now}
            if len(self._verified) >= self._cache_size:
                self._verified.clear()
        self._verified[token] = (principal, expires + self._settings.leeway_seconds)

    async def run(self) -> None:
        """`refresh` now, then again when the key set is older than ``jwks_max_age_seconds``
        or a token names an unknown key, never more often than ``jwks_min_refresh_seconds``;
        until cancelled. Until a first key set is in, it retries every second (the auth
        service may be starting too), and says so only after `_STARTING_SECONDS`."""
        max_age = self._settings.jwks_max_age_seconds
        min_refresh = self._settings.jwks_min_refresh_seconds
        started = self._clock()
        while True:
            self._wanted.clear()
            attempted = self._clock()
            starting = self._document is None
            loaded = await self._refresh(quiet=starting and attempted - started < _STARTING_SECONDS)
            interval = _RETRY_SECONDS if starting else max(min_refresh, _RETRY_SECONDS)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wanted.wait(), timeout=max_age if loaded else interval)
            if (pause := attempted + (_RETRY_SECONDS if starting else min_refresh) - self._clock()) > 0:
                await asyncio.sleep(pause)

    async def refresh(self) -> bool:
        """Fetch the key set now (in a worker thread) and verify with it from now on; False
        when the fetch failed, and the keys there were stay in use."""
        return await self._refresh(quiet=False)

    async def _refresh(self, *, quiet: bool) -> bool:
        try:
            document = await asyncio.to_thread(self._keys)
        except (grpc.RpcError, OSError, ValueError) as error:
            level = logging.DEBUG if quiet else logging.WARNING
            _log.log(level, "cannot fetch the signing keys", extra={"error": type(error).__name__})
            return False
        if document == self._document:
            return True
        verifier = await asyncio.to_thread(_verifier, document, self._settings)
        self._document, self._verifier = document, verifier
        self._verified = {}  # a withdrawn key's tokens must stop verifying
        _log.info("signing keys fetched", extra={"keys": len(document.get("keys", []))})
        return True


def _verifier(document: Mapping[str, Any], settings: AuthSettings) -> Verifier:
    """A kit `Verifier` over exactly `document`: its keys are parsed now, and never refetched
    (the edge fetches in the background and swaps in a new verifier)."""
    keys = KeySet(lambda: document, max_age=math.inf, min_refresh=math.inf)
    with contextlib.suppress(Unauthenticated, Unavailable):
        keys.key("")  # the first look-up parses the whole set
    return Verifier(keys, settings)


def _names_a_key(token: str) -> bool:
    """Whether the JWT header of `token` names a ``kid`` (read directly: PyJWT would decode
    all three segments again)."""
    kid = unverified_part(token, 0).get("kid")
    return isinstance(kid, str) and bool(kid)


def _claimed_issuer(token: str) -> str | None:
    """The ``iss`` the unverified payload of `token` claims."""
    issuer = unverified_part(token, 1).get("iss")
    return issuer if isinstance(issuer, str) else None


@contextlib.asynccontextmanager
async def verifying(check: TokenCheck | None) -> AsyncIterator[TokenVerifier | None]:
    """The `JwksVerifier` `check` describes, its keys fetched from the auth service over the
    check's transport and refreshed in the background while the block runs; None (no
    verification: limits by address) without a check."""
    if check is None:
        yield None
        return
    target = check.keys_from
    # An auth service that (re)starts is found within seconds, not after minutes of backoff.
    options: list[tuple[str, str | int]] = [
        ("grpc.initial_reconnect_backoff_ms", 250),
        ("grpc.max_reconnect_backoff_ms", 3_000),
    ]
    if target.transport.server_name:
        options.append(("grpc.ssl_target_name_override", target.transport.server_name))
    secure = credentials(target.transport)
    channel = (
        grpc.insecure_channel(target.address, options=options)
        if secure is None
        else grpc.secure_channel(target.address, secure, options=options)
    )
    verifier = JwksVerifier(jwks_from_auth(lambda: channel, timeout=check.timeout_seconds), check.auth)
    refresher = asyncio.create_task(verifier.run())
    try:
        yield verifier
    finally:
        refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refresher
        channel.close()
