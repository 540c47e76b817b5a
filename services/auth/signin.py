"""Sign-in: a person's email and password exchanged for a new session's tokens.

Each login is throttled per account and per client address (`throttle`), its attempt
reserved before the password is verified. A wrong password and an unknown email get the same
answer after the same argon2 work, and count; a DISABLED identity is refused once its password
is verified, and does not count. A success forgets the account's failures (not the address's)
and replaces a hash made with argon2 costs other than the current ones. The sign-in page of the
authorization code flow (`oauth`) checks a person the same way (`authenticate`), under the
same limits. With the password grant turned off (``POLY_AUTH_PASSWORD_GRANT``) `login` is
refused before anything is checked; the page still signs people in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from services.auth.domain import ACTIVE, Hasher, Identity, Repository, TokenSet, Transactions, normalise_email
from services.auth.sessions import Sessions
from services.auth.throttle import Throttle
from services.kit.domain_errors import (
    FailedPrecondition,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)

__all__ = ["SignIn"]

_T = TypeVar("_T")
_EMAIL_MAX = 254


@dataclass
class SignIn:
    transactions: Transactions
    hasher: Hasher
    throttle: Throttle
    sessions: Sessions
    password_grant: bool = True

    def login(self, email: str, password: str, address: str) -> TokenSet:
        if not self.password_grant:
            raise FailedPrecondition(
                "PASSWORD_GRANT_DISABLED",
                "signing in with a password here is turned off: apps sign people in at /oauth2/authorize",
            )
        identity, (family, refresh) = self._signed_in(email, password, address, self.sessions.open)
        return self.sessions.tokens(identity, family=family, refresh=refresh)

    def authenticate(self, email: str, password: str, address: str) -> Identity:
        """The ACTIVE identity whose email and password these are, checked as a login is."""
        identity, _ = self._signed_in(email, password, address, lambda repo, identity: None)
        return identity

    def _signed_in(
        self, email: str, password: str, address: str, then: Callable[[Repository, Identity], _T]
    ) -> tuple[Identity, _T]:
        """The identity, and what `then` did in the transaction that settles its attempt."""
        email = normalise_email(email)
        if len(email) > _EMAIL_MAX or not email.isprintable():
            # No account has such an email (registration refuses it), and no key may hold it:
            # the same answer as a wrong password, with nothing to verify.
            raise Unauthenticated("INVALID_CREDENTIALS", "email or password is wrong")
        keys = [f"account:{email}", f"address:{address}"]
        with self.transactions() as repo:
            attempt = self.throttle.reserve(repo, keys)
            found = repo.credentials(email)
        with self.throttle.settling(attempt):
            identity, hashed = found if found else (None, None)
            if not self.hasher.verify(hashed, password) or identity is None or hashed is None:
                self.throttle.fail(attempt)
                raise Unauthenticated("INVALID_CREDENTIALS", "email or password is wrong")
            if identity.state != ACTIVE:
                raise PermissionDenied("IDENTITY_DISABLED", "this account is disabled")
            rehashed = self._rehashed(hashed, password)
            with self.transactions() as repo:
                if rehashed:
                    repo.set_password_hash(identity.id, rehashed)
                repo.release_attempt(attempt.id)
                repo.clear_failures(keys[0])
                done = then(repo, identity)
            attempt.settled = True
        return identity, done

    def _rehashed(self, hashed: str, password: str) -> str | None:
        """A hash with the current costs when `hashed` has older ones (None when busy: the
        next login does it)."""
        if not self.hasher.needs_rehash(hashed):
            return None
        try:
            return self.hasher.hash(password)
        except ResourceExhausted:
            return None
