"""Sessions: the refresh-token family a login starts, rotated by each refresh, ended by logout.

A refresh token is 256 random bits, stored only as its SHA-256, and used at most once: using
it rotates it (ACTIVE -> ROTATED, a new token in the same family). Presenting a ROTATED token
again means one of its two holders is a thief, so the whole family is revoked, as logout
revokes it; a DISABLED identity gets no new token. A session of a third-party app (not
`first_party`) has access tokens without the person's roles: an app an admin signs in to
does not get to act as an admin. Access tokens name their family (``sid``),
so introspection reports them inactive as soon as it is revoked. A session opened for a client
(the authorization code flow) is bound to it: only that client refreshes it, and a refresh
token presented by anyone else revokes it, as reuse does.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from services.auth.domain import (
    ACTIVE,
    Clock,
    Identity,
    Minter,
    RefreshClaim,
    Repository,
    TokenSet,
    Transactions,
    utc_now,
)
from services.auth.settings import IdentitySettings
from services.kit.domain_errors import InvalidArgument, Unauthenticated

__all__ = ["Sessions", "Verified", "hash_token"]


class Verified(Protocol):
    """What an access-token check returns (`kit.authn.Principal`): its session, if any."""

    @property
    def session(self) -> str: ...


_V = TypeVar("_V", bound=Verified)

_REFUSALS = {
    "reused": ("REFRESH_TOKEN_REUSED", "this refresh token was already used; its session is revoked"),
    "revoked": ("REFRESH_TOKEN_REVOKED", "this session was revoked (logged out or a token reused)"),
    "expired": ("REFRESH_TOKEN_EXPIRED", "this refresh token has expired"),
}
"""The refusal (reason and message) of each claim outcome; any other is REFRESH_TOKEN_INVALID."""
_INVALID = ("REFRESH_TOKEN_INVALID", "this refresh token is not valid")


def hash_token(token: str) -> str:
    """Refresh tokens are stored as SHA-256: they are 256-bit random, so no slow hash is needed."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class Sessions:
    transactions: Transactions
    minter: Minter
    settings: IdentitySettings
    clock: Clock = utc_now

    def open(
        self, repo: Repository, identity: Identity, *, client_id: str = "", scope: str = ""
    ) -> tuple[str, str]:
        """A new session of `identity` (issued to `client_id`, granted `scope`, when a client
        asked for it), in `repo`'s transaction: its family and first refresh token."""
        family = str(uuid.uuid4())
        return family, self._add_refresh_token(
            repo, identity, family=family, client_id=client_id, scope=scope
        )

    def tokens(
        self,
        identity: Identity,
        *,
        family: str,
        refresh: str,
        client_id: str = "",
        scope: str = "",
        roles: Sequence[str] | None = None,
    ) -> TokenSet:
        """The access token of `family` beside its newest refresh token `refresh`, carrying
        `roles` (the person's own when None). Minted after the refresh token's transaction:
        the key ring reads in a transaction of its own."""
        access = self.minter.access_token(
            subject=identity.name,
            roles=identity.roles if roles is None else roles,
            scopes=scope.split(),
            now=self.clock(),
            client_id=client_id,
            session=family,
        )
        lifetime = self.settings.refresh_token_seconds if refresh else 0
        return TokenSet(access, self.settings.access_token_seconds, scope, refresh, lifetime)

    def _add_refresh_token(
        self, repo: Repository, identity: Identity, *, family: str, client_id: str = "", scope: str = ""
    ) -> str:
        now = self.clock()
        refresh = secrets.token_urlsafe(32)
        expires = now + dt.timedelta(seconds=self.settings.refresh_token_seconds)
        repo.add_refresh_token(
            hash_token(refresh), family, identity.id, expires, now, client_id=client_id, scope=scope
        )
        return refresh

    def refresh(self, refresh_token: str, *, client_id: str = "", scope: str = "") -> TokenSet:
        """New tokens for a session's refresh token, presented by the client it was issued to
        (`client_id`; empty for a password login's session). A `scope` narrows the new access
        token to part of what was granted (the session keeps the rest); asking beyond it is
        `SCOPE_NOT_GRANTED`, and leaves the refresh token unused."""
        now = self.clock()
        with self.transactions() as repo:
            claim = repo.claim_refresh_token(hash_token(refresh_token), now)
            client = repo.client(claim.client_id) if claim.outcome == "claimed" and claim.client_id else None
            if claim.outcome == "reused" or (
                claim.outcome == "claimed"
                and (claim.client_id != client_id or (client_id and client is None))
            ):
                # Someone used a token that was already exchanged, or that another client
                # holds (or one of a client since deleted): one of its holders is a thief.
                # Revoke the family (committed), so both must sign in again.
                repo.revoke_family(claim.family, now)
                claim = RefreshClaim("reused" if claim.outcome == "reused" else "unknown")
            identity = repo.identity(claim.user_id) if claim.outcome == "claimed" else None
            refresh = None
            if identity is not None and identity.state == ACTIVE:
                asked = set(scope.split())
                if not asked <= set(claim.scope.split()):
                    # Raised inside the transaction: the claim is rolled back, the token kept.
                    raise InvalidArgument(
                        "SCOPE_NOT_GRANTED", "the session was not granted {scope}", scope=scope
                    )
                refresh = self._add_refresh_token(
                    repo, identity, family=claim.family, client_id=claim.client_id, scope=claim.scope
                )
        if identity is not None and refresh is not None:
            first_party = client is None or client[0].first_party
            return self.tokens(
                identity,
                family=claim.family,
                refresh=refresh,
                client_id=claim.client_id,
                scope=scope or claim.scope,
                roles=None if first_party else (),
            )
        raise Unauthenticated(*_REFUSALS.get(claim.outcome, _INVALID))

    def logout(self, refresh_token: str) -> None:
        with self.transactions() as repo:
            family = repo.family_of(hash_token(refresh_token))
            if family is not None:
                repo.revoke_family(family, self.clock())

    def session_active(self, family: str) -> bool:
        with self.transactions() as repo:
            return repo.family_active(family)

    def introspect(self, token: str, verify: Callable[[str], _V]) -> _V | None:
        """What `verify` makes of `token` while the token and its session are live; None for
        an invalid, expired or logged-out token (RFC 7662 ``active: false``)."""
        try:
            verified = verify(token)
        except Unauthenticated:
            return None
        if verified.session and not self.session_active(verified.session):
            return None
        return verified
