"""Signing in through an outside OpenID provider (federation, mode a): the sign-in page sends
the person there (`start`), and their return (`complete`) becomes an identity here, for which
the app's own authorization request then goes on as if they had signed in with a password.

- Each sign-in sent out is kept (`domain.FederatedLogin`) under its state's SHA-256 with its
  nonce, PKCE verifier, the app's request and a hash of the browser's sign-in cookie; the
  return takes it once, unexpired (`LOGIN_SECONDS`), from the same browser only (else a
  person could be signed in as someone else: login CSRF), and the provider's ``iss``, when it
  sends one, must be the one it was sent to (RFC 9207: no mix-up between providers).
- The person is found by their link (provider and subject). The first time, an account here
  with the same email is linked only when the provider says it verified the address;
  without that an existing account is never taken over. Sign-up here does not verify
  addresses, so an account whose address no provider had confirmed is handed over to the
  person who now does (its password, other links and sessions end): whoever registered the
  address first, maybe to lie in wait for its owner (pre-hijacking), keeps no way in.
  Otherwise a new account is made, with no password, the id `kit.federation.external_user_id`
  gives (the id the services give the provider's access tokens), its address marked verified
  only if the provider says so, and ``UserRegistered`` is published as for any account.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from services.auth.accounts import email_problem
from services.auth.domain import (
    ACTIVE,
    DISPLAY_NAME_MAX,
    Clock,
    FederatedLogin,
    Identity,
    Repository,
    Transactions,
    normalise_email,
    utc_now,
)
from services.kit import b64url
from services.kit.federation import external_user_id
from services.kit.text import visible_text_problem

__all__ = ["LOGIN_SECONDS", "FederatedSignIn", "FederationRefused", "IdClaims", "Upstream", "UpstreamError"]

LOGIN_SECONDS = 600
"""How long a person has at the provider before the sign-in sent there expires."""


class UpstreamError(Exception):
    """The provider could not be reached, refused, or answered what cannot be accepted."""


class FederationRefused(Exception):
    """A return from a provider that signs no one in; the message is for the person."""


@dataclass(frozen=True, slots=True)
class IdClaims:
    """What an accepted ID token says of the person who signed in."""

    subject: str
    email: str
    email_verified: bool
    name: str


class Upstream(Protocol):
    """An outside provider people sign in through (`relying.Upstream`)."""

    @property
    def alias(self) -> str: ...
    @property
    def issuer(self) -> str: ...
    @property
    def names_itself(self) -> bool:
        """Whether each of its answers carries ``iss`` (RFC 9207)."""

    def form_targets(self) -> tuple[str, ...]:
        """The URLs a browser is sent to to sign in there."""

    def authorization_url(self, *, state: str, nonce: str, challenge: str) -> str: ...
    def claims(self, code: str, verifier: str, nonce: str) -> IdClaims:
        """Who the provider says signed in; UpstreamError if that cannot be had or trusted."""


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass
class FederatedSignIn:
    transactions: Transactions
    upstreams: Mapping[str, Upstream]
    clock: Clock = utc_now

    def start(self, alias: str, request: str, binding: str) -> str:
        """Where to send the browser holding sign-in cookie `binding` to sign in at provider
        `alias` for the app's authorization request `request` (its query string)."""
        upstream = self.upstreams.get(alias)
        if upstream is None:
            raise FederationRefused("There is no such way to sign in here.")
        state, nonce, verifier = (secrets.token_urlsafe(32) for _ in range(3))
        challenge = b64url.encode(hashlib.sha256(verifier.encode()).digest())
        try:
            location = upstream.authorization_url(state=state, nonce=nonce, challenge=challenge)
        except UpstreamError:
            raise FederationRefused(
                f"{alias} cannot be reached now. Try again, or sign in another way."
            ) from None
        now = self.clock()
        login = FederatedLogin(alias, nonce, verifier, request, _digest(binding))
        with self.transactions() as repo:
            repo.add_federated_login(_digest(state), login, now + dt.timedelta(seconds=LOGIN_SECONDS), now)
        return location

    def complete(
        self, *, state: str, code: str, issuer: str, error: str, binding: str
    ) -> tuple[str, Identity | None]:
        """The app's authorization request (its query string) and who signed in, or None when
        the person turned the provider down (the app is then told ``access_denied``)."""
        with self.transactions() as repo:
            login = repo.take_federated_login(_digest(state), self.clock())
        if login is None:
            raise FederationRefused("This sign-in has expired or was already used. Start again from the app.")
        if not hmac.compare_digest(login.binding, _digest(binding)):
            raise FederationRefused("This sign-in was started in another browser. Start again from the app.")
        upstream = self.upstreams.get(login.alias)
        if (
            upstream is None
            or (issuer and issuer != upstream.issuer)
            or (not issuer and upstream.names_itself)
        ):
            raise FederationRefused("This answer did not come from the provider the sign-in was sent to.")
        if error:
            return login.request, None
        try:
            claims = upstream.claims(code, login.code_verifier, login.nonce)
        except UpstreamError:
            raise FederationRefused(
                f"{login.alias} did not confirm who signed in. Start again from the app."
            ) from None
        return login.request, self._identity(upstream.issuer, claims)

    def _identity(self, issuer: str, claims: IdClaims) -> Identity:
        now = self.clock()
        with self.transactions() as repo:
            identity = repo.linked_identity(issuer, claims.subject) or self._first(repo, issuer, claims, now)
        if identity.state != ACTIVE:
            raise FederationRefused("This account is disabled.")
        return identity

    def _first(self, repo: Repository, issuer: str, claims: IdClaims, now: dt.datetime) -> Identity:
        """The identity of a person's first sign-in through `issuer`: linked, or new."""
        # The rule sign-up applies, to the address as given: lower-casing can make ASCII of
        # what was not (the Kelvin sign becomes "k").
        email = normalise_email(claims.email)
        if not claims.email.isascii() or email_problem(email):
            raise FederationRefused("The provider did not share an email address an account here can have.")
        found = repo.credentials(email)
        if found is not None:
            identity = found[0]
            if not claims.email_verified:
                raise FederationRefused(
                    "An account with this email address exists here, and the provider did not "
                    "confirm the address is yours. Sign in with that account's password."
                )
            if identity.state != ACTIVE:
                raise FederationRefused("This account is disabled.")
            if not identity.email_verified:
                # Nobody had proved the address here (sign-up does not verify it): the account
                # is the prover's alone now, so no one who made it first keeps a way in.
                repo.hand_over(identity.id, now)
                identity = dataclasses.replace(identity, email_verified=True)
            repo.link_identity(issuer, claims.subject, identity.id, now)
            return identity
        identity = Identity(
            external_user_id(issuer, claims.subject),
            email,
            (),
            ACTIVE,
            now,
            now,
            email_verified=claims.email_verified,
        )
        if not repo.add_identity(identity, ""):  # no password: it signs in through the provider
            raise FederationRefused("This account is being created by another sign-in. Try again.")
        repo.link_identity(issuer, claims.subject, identity.id, now)
        name = claims.name[:DISPLAY_NAME_MAX].strip()
        repo.publish_registered(
            identity, "" if visible_text_problem(name, max_length=DISPLAY_NAME_MAX) else name
        )
        return identity
