"""What identity is made of: records, states, and the `Repository` the store implements.

Invariants: an email names at most one identity (lower case); a password is stored only as
an argon2id hash, a refresh token and a client secret only as hashes. Identity states:
ACTIVE -> DISABLED (when the user is deleted); DISABLED refuses login and refresh. Refresh
tokens: ACTIVE -> ROTATED (used once) or REVOKED (its family logged out, reused or disabled).
The rules, one job a module: `accounts` (registration, roles, lookups), `signin` (login),
`sessions` (refresh, logout, introspection), `clients` (OAuth clients, and machine clients'
tokens), `redirects` (which redirect URIs a client may register),
`throttle` (the attempt limits of sign-in, client tokens and registration), `codes` (the
one-time codes of the authorization code flow), `oauth` (that flow's HTTP protocol, by authlib),
`pages` and `forms` (the sign-in page and what protects its form), `federated` and `relying`
(signing in through an outside OpenID provider).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Literal, Protocol

from services.kit.domain_errors import FieldViolation, InvalidArgument

__all__ = [
    "ACTIVE",
    "AUTHORIZATION_CODE",
    "CLIENT_CREDENTIALS",
    "CONFIDENTIAL",
    "DISABLED",
    "DISPLAY_NAME_MAX",
    "Client",
    "Clock",
    "CodeClaim",
    "FederatedLogin",
    "Grant",
    "Hasher",
    "Identity",
    "IdentityPage",
    "IdentityQuery",
    "Minter",
    "PUBLIC",
    "REFRESH_TOKEN",
    "RefreshClaim",
    "Repository",
    "TokenSet",
    "Transactions",
    "invalid_field",
    "normalise_email",
    "utc_now",
]

ACTIVE = "ACTIVE"
DISABLED = "DISABLED"
DISPLAY_NAME_MAX = 63
"""The longest display name of an account or a machine client."""


@dataclass(frozen=True, slots=True)
class Identity:
    id: str
    email: str
    roles: tuple[str, ...]
    state: str
    create_time: dt.datetime
    update_time: dt.datetime
    email_verified: bool = False
    """An outside provider confirmed the address (sign-up here does not verify addresses)."""

    @property
    def name(self) -> str:
        return f"users/{self.id}"


CONFIDENTIAL, PUBLIC = "CONFIDENTIAL", "PUBLIC"
CLIENT_CREDENTIALS, AUTHORIZATION_CODE, REFRESH_TOKEN = (
    "client_credentials",
    "authorization_code",
    "refresh_token",
)


@dataclass(frozen=True, slots=True)
class Client:
    """An OAuth client: a machine (client credentials) or an app its users sign in to
    (authorization code), confidential (it holds a secret) or public (it cannot)."""

    client_id: str
    display_name: str
    scopes: tuple[str, ...]
    create_time: dt.datetime
    client_type: str = CONFIDENTIAL
    redirect_uris: tuple[str, ...] = ()
    grant_types: tuple[str, ...] = (CLIENT_CREDENTIALS,)
    first_party: bool = False

    @property
    def name(self) -> str:
        return f"clients/{self.client_id}"


@dataclass(frozen=True, slots=True)
class TokenSet:
    access_token: str
    expires_in: int
    scope: str
    refresh_token: str = ""
    refresh_expires_in: int = 0


@dataclass(frozen=True, slots=True)
class RefreshClaim:
    """What happened to a presented refresh token when it was claimed."""

    outcome: Literal["claimed", "unknown", "reused", "revoked", "expired"]
    family: str = ""
    user_id: str = ""
    client_id: str = ""
    """The client its session was issued to; empty for a password login's."""
    scope: str = ""
    """What that client was granted (space-separated)."""


@dataclass(frozen=True, slots=True)
class Grant:
    """What a person allowed a client by signing in at the authorization endpoint: what its
    one-time code stands for (OAuth 2.1 4.1)."""

    client_id: str
    user_id: str
    redirect_uri: str
    scope: str
    """Space-separated."""
    code_challenge: str
    """BASE64URL(SHA256(code_verifier)) (RFC 7636, S256 only)."""
    nonce: str
    auth_time: dt.datetime


@dataclass(frozen=True, slots=True)
class CodeClaim:
    """What happened to a presented authorization code when it was claimed."""

    outcome: Literal["claimed", "unknown", "used", "expired"]
    grant: Grant | None = None


@dataclass(frozen=True, slots=True)
class FederatedLogin:
    """A sign-in sent to an outside provider, awaiting the person's return (`federated`)."""

    alias: str
    nonce: str
    code_verifier: str
    request: str
    """The app's authorization request, as its query string: resumed on return."""
    binding: str
    """SHA-256 of the browser's sign-in cookie: only the browser that left may come back."""


@dataclass(frozen=True, slots=True)
class IdentityQuery:
    email: str | None = None
    role: str | None = None
    state: str | None = None
    order_by: Literal["create_time", "email"] = "create_time"
    descending: bool = True


@dataclass(frozen=True, slots=True)
class IdentityPage:
    identities: list[Identity]
    next_page_token: str


class Repository(Protocol):
    """The auth database, inside one transaction."""

    # -- accounts (`accounts`, `signin`) -------------------------------------------------------

    def add_identity(self, identity: Identity, password_hash: str) -> bool:
        """False when the email is taken."""

    def email_taken(self, email: str) -> bool: ...

    def identity(self, user_id: str) -> Identity | None: ...
    def credentials(self, email: str) -> tuple[Identity, str] | None:
        """The identity with `email` and its password hash."""

    def set_password_hash(self, user_id: str, password_hash: str) -> None: ...
    def set_roles(self, user_id: str, roles: Sequence[str], now: dt.datetime) -> None: ...
    def set_state(self, user_id: str, state: str, now: dt.datetime) -> None: ...
    def count_admins(self) -> int:
        """How many ACTIVE identities hold the admin role."""

    def list_identities(
        self, query: IdentityQuery, after: Sequence[str] | None, limit: int
    ) -> list[Identity]: ...
    def publish_registered(self, identity: Identity, display_name: str) -> None: ...

    # -- sessions (`sessions`) -----------------------------------------------------------------

    def add_refresh_token(
        self,
        token_hash: str,
        family: str,
        user_id: str,
        expire_time: dt.datetime,
        now: dt.datetime,
        *,
        client_id: str = "",
        scope: str = "",
    ) -> None:
        """A refresh token of `family`, which is new when unknown: a session `client_id` (empty
        for a password login) was granted `scope` in."""

    def claim_refresh_token(self, token_hash: str, now: dt.datetime) -> RefreshClaim:
        """Atomically move an ACTIVE, unexpired token to ROTATED, or say why not."""

    def revoke_family(self, family: str, now: dt.datetime) -> None: ...
    def revoke_families_of(self, user_id: str, now: dt.datetime) -> None: ...
    def family_of(self, token_hash: str) -> str | None: ...
    def family_active(self, family: str) -> bool: ...

    # -- authorization codes (`codes`) ---------------------------------------------------------

    def add_authorization_code(
        self, code_hash: str, grant: Grant, expire_time: dt.datetime, now: dt.datetime
    ) -> None:
        """Keep `grant` under `code_hash` until it is used or expires (and forget codes long
        expired)."""

    def claim_authorization_code(self, code_hash: str, now: dt.datetime) -> CodeClaim:
        """Atomically mark an unused, unexpired code used and return its grant, or say why not."""

    def set_code_family(self, code_hash: str, family: str) -> bool:
        """Record the session a code's use opened (revoked if the code is presented again);
        False when the code was presented again first (`flag_code_reused`)."""

    def flag_code_reused(self, code_hash: str) -> str:
        """Note that a used code was presented again: the session its use opened, or "" when
        it has none yet (its exchange then finds the flag, and opens none)."""

    # -- outside providers (`federated`) ----------------------------------------------------------

    def add_federated_login(
        self, state_hash: str, login: FederatedLogin, expire_time: dt.datetime, now: dt.datetime
    ) -> None:
        """Keep `login` under its state until the person returns or it expires (and forget
        sign-ins long expired)."""

    def take_federated_login(self, state_hash: str, now: dt.datetime) -> FederatedLogin | None:
        """Remove and return the unexpired sign-in of `state_hash` (once: a second return finds none)."""

    def linked_identity(self, issuer: str, subject: str) -> Identity | None:
        """The identity the person `subject` of `issuer` signs in as."""

    def link_identity(self, issuer: str, subject: str, user_id: str, now: dt.datetime) -> bool:
        """Sign `subject` of `issuer` in as `user_id` from now on; False when already linked."""

    def hand_over(self, user_id: str, now: dt.datetime) -> None:
        """Give the identity to the person who just proved its address: its email marked
        verified, and nothing else left that signs in as it (password, other links, sessions)."""

    # -- attempts (`throttle`) -----------------------------------------------------------------

    def lock_throttle_keys(self, keys: Sequence[str]) -> None:
        """Until this transaction ends, no other one decides on any of `keys`."""

    def attempts_since(self, key: str, since: dt.datetime, now: dt.datetime) -> list[dt.datetime]:
        """When each failure of `key` after `since`, and each reservation live at `now`, began."""

    def forget_attempts(self, keys: Sequence[str], before: dt.datetime, now: dt.datetime) -> None:
        """Drop what of `keys` began at or before `before` and is no longer pending at `now`."""

    def reserve_attempt(self, keys: Sequence[str], now: dt.datetime, until: dt.datetime) -> str:
        """Count a pending attempt against each of `keys` until it is settled or `until`; its id."""

    def count_attempt(self, attempt: str, now: dt.datetime) -> None:
        """Settle a reserved attempt as one that counts (a failed login, a registration) from
        `now` until it ages out of the window."""

    def release_attempt(self, attempt: str) -> None:
        """Settle a reserved attempt as one that does not count (a successful login)."""

    def clear_failures(self, key: str) -> None:
        """Forget the failures of `key` (not attempts still pending)."""

    # -- machine clients (`clients`) -----------------------------------------------------------

    def add_client(self, client: Client, secret_hash: str) -> bool:
        """False when the client id is taken."""

    def client(self, client_id: str) -> tuple[Client, str] | None:
        """The client and its secret hash."""

    def list_clients(self, after: Sequence[str] | None, limit: int) -> list[Client]: ...
    def delete_client(self, client_id: str) -> bool: ...


Transactions = Callable[[], AbstractContextManager[Repository]]
"""Opens one transaction over the auth database (`store.AuthStore.transaction`)."""

Clock = Callable[[], dt.datetime]
"""The time now, timezone-aware."""


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Hasher(Protocol):
    """Slow hashing of passwords and client secrets (`passwords.Argon2Hasher`)."""

    def hash(self, secret: str) -> str: ...
    def verify(self, hashed: str | None, secret: str) -> bool: ...
    def needs_rehash(self, hashed: str) -> bool: ...


class Minter(Protocol):
    """Signs access tokens (`tokens.JwtMinter`)."""

    def access_token(
        self,
        *,
        subject: str,
        roles: Sequence[str],
        scopes: Sequence[str],
        now: dt.datetime,
        client_id: str = "",
        session: str = "",
    ) -> str: ...


def normalise_email(email: str) -> str:
    return email.strip().lower()


def invalid_field(field_name: str, problem: str, reason: str) -> InvalidArgument:
    """`reason`, naming one field of the request and what is wrong with it."""
    return InvalidArgument(
        reason,
        "{field} {problem}",
        violations=[FieldViolation(field_name, problem)],
        field=field_name,
        problem=problem,
    )
