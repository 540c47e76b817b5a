"""Authorization codes: what a person allowed a client, redeemed once for that client's tokens.

A code is 256 random bits, stored only as its SHA-256 with its `domain.Grant` (client, redirect
URI, PKCE challenge, scope, nonce), and lives `CODE_SECONDS`. Claiming it marks it used in one
conditional update, so of two concurrent exchanges exactly one gets the grant; a code presented
again after its use revokes the session its first use opened (OAuth 2.1 4.1.3: the code leaked).
The tokens it is redeemed for belong to a session bound to its client (`sessions`).
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass

from services.auth.domain import ACTIVE, Clock, Grant, Identity, TokenSet, Transactions, utc_now
from services.auth.sessions import Sessions, hash_token

__all__ = ["CODE_SECONDS", "Codes"]

CODE_SECONDS = 60
"""A code's lifetime: the client exchanges it at once (OAuth 2.1 asks for minutes at most)."""


@dataclass
class Codes:
    transactions: Transactions
    sessions: Sessions
    clock: Clock = utc_now

    def issue(self, grant: Grant) -> str:
        code = secrets.token_urlsafe(32)
        now = self.clock()
        with self.transactions() as repo:
            repo.add_authorization_code(
                hash_token(code), grant, now + dt.timedelta(seconds=CODE_SECONDS), now
            )
        return code

    def claim(self, code: str, client_id: str) -> Grant | None:
        """The grant of an unused, unexpired `code` issued to `client_id`, the code now used;
        None for any other code (which is used up all the same)."""
        now, code_hash = self.clock(), hash_token(code)
        with self.transactions() as repo:
            claim = repo.claim_authorization_code(code_hash, now)
            if claim.outcome == "used":
                family = repo.flag_code_reused(code_hash)
                if family:
                    repo.revoke_family(family, now)
        grant = claim.grant
        return grant if grant is not None and grant.client_id == client_id else None

    def redeem(
        self, code: str, grant: Grant, *, refresh: bool, first_party: bool
    ) -> tuple[Identity, TokenSet] | None:
        """The person of a claimed code's `grant` and their tokens from a new session bound to
        its client (with a refresh token when `refresh`; with the person's roles only for a
        `first_party` client); None when the person is no longer ACTIVE, or the code was
        presented again meanwhile (it leaked: nothing is issued for it)."""
        with self.transactions() as repo:
            identity = repo.identity(grant.user_id)
            if identity is None or identity.state != ACTIVE:
                return None
            family, refresh_token = self.sessions.open(
                repo, identity, client_id=grant.client_id, scope=grant.scope
            )
            if not repo.set_code_family(hash_token(code), family):
                repo.revoke_family(family, self.clock())
                return None
        tokens = self.sessions.tokens(
            identity,
            family=family,
            refresh=refresh_token if refresh else "",
            client_id=grant.client_id,
            scope=grant.scope,
            roles=None if first_party else (),
        )
        return identity, tokens
