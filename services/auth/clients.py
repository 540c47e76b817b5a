"""OAuth clients: creating, reading, listing and deleting them, and the client-credentials
grant that gives a machine client an access token.

A client is confidential (a machine, or a web app's back end: it holds a secret) or public (a
browser or native app: it holds none); it may use the grants it was registered with, and the
authorization server sends its users back only to its registered redirect URIs
(`redirects`). A client's secret is shown once, when it is created, and stored only as an
argon2id hash.
Token requests are throttled per client and per client address as logins are (`throttle`):
a wrong secret and an unknown client get the same answer, and count. A client's token carries
scopes, never roles, and only scopes in `SCOPES` that the client was granted.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from services.auth.domain import (
    AUTHORIZATION_CODE,
    CLIENT_CREDENTIALS,
    CONFIDENTIAL,
    DISPLAY_NAME_MAX,
    PUBLIC,
    REFRESH_TOKEN,
    Client,
    Clock,
    Hasher,
    Minter,
    TokenSet,
    Transactions,
    invalid_field,
    utc_now,
)
from services.auth.redirects import MAX_REDIRECT_URIS, redirect_uri_problem
from services.auth.settings import IdentitySettings
from services.auth.throttle import Throttle
from services.kit import paging
from services.kit.domain_errors import (
    AlreadyExists,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Unauthenticated,
)
from services.kit.names import chosen_id_problems
from services.kit.text import visible_text_problem

__all__ = ["GRANT_TYPES", "SCOPES", "Clients", "Registration"]

SCOPES: tuple[str, ...] = (
    "users.read",
    "orders.read",
    "orders.fulfill",
    "payments.read",
    "payments.fund",
    "payments.refund",
    "notifications.read",
)
"""Every scope a machine client may hold (the scopes named in the services' policies)."""
GRANT_TYPES: tuple[str, ...] = (CLIENT_CREDENTIALS, AUTHORIZATION_CODE, REFRESH_TOKEN)


@dataclass(frozen=True, slots=True)
class Registration:
    """How a client signs its users in (RFC 7591 metadata); the default is a machine client."""

    client_type: str = CONFIDENTIAL
    redirect_uris: tuple[str, ...] = ()
    grant_types: tuple[str, ...] = ()
    """Empty: client_credentials for a confidential client, authorization_code and
    refresh_token for a public one."""
    first_party: bool = False

    def problems(self, secret: str) -> list[FieldViolation]:
        grants = self.grants()
        violations = [
            FieldViolation(f"client.redirect_uris[{index}]", problem)
            for index, uri in enumerate(self.redirect_uris)
            if (problem := redirect_uri_problem(uri))
        ]
        checks = [
            (
                self.client_type not in (CONFIDENTIAL, PUBLIC),
                "client.client_type",
                "must be confidential or public",
            ),
            (
                len(self.redirect_uris) > MAX_REDIRECT_URIS,
                "client.redirect_uris",
                f"at most {MAX_REDIRECT_URIS}",
            ),
            (
                len(set(self.redirect_uris)) < len(self.redirect_uris),
                "client.redirect_uris",
                "must not repeat",
            ),
            (
                bool(set(grants) - set(GRANT_TYPES)),
                "client.grant_types",
                f"unknown grants: {' '.join(sorted(set(grants) - set(GRANT_TYPES)))}",
            ),
            (
                self.client_type == PUBLIC and CLIENT_CREDENTIALS in grants,
                "client.grant_types",
                "a public client has no secret, so no client_credentials grant",
            ),
            (
                AUTHORIZATION_CODE in grants and not self.redirect_uris,
                "client.redirect_uris",
                "the authorization_code grant needs at least one",
            ),
            (
                AUTHORIZATION_CODE not in grants and bool(self.redirect_uris),
                "client.redirect_uris",
                "only for the authorization_code grant",
            ),
            (
                REFRESH_TOKEN in grants and AUTHORIZATION_CODE not in grants,
                "client.grant_types",
                "refresh_token comes with authorization_code",
            ),
            (self.client_type == PUBLIC and bool(secret), "client.secret", "a public client has no secret"),
        ]
        return violations + [FieldViolation(field, why) for refused, field, why in checks if refused]

    def grants(self) -> tuple[str, ...]:
        """The grants asked for (or the type's default), once each, known ones in `GRANT_TYPES`
        order."""
        if not self.grant_types:
            return (
                (AUTHORIZATION_CODE, REFRESH_TOKEN) if self.client_type == PUBLIC else (CLIENT_CREDENTIALS,)
            )
        given = set(self.grant_types)
        return tuple(g for g in GRANT_TYPES if g in given) + tuple(sorted(given - set(GRANT_TYPES)))


@dataclass
class Clients:
    transactions: Transactions
    hasher: Hasher
    minter: Minter
    throttle: Throttle
    settings: IdentitySettings
    clock: Clock = utc_now

    def create_client(
        self,
        client_id: str,
        display_name: str,
        scopes: Sequence[str],
        secret: str,
        registration: Registration = Registration(),
    ) -> tuple[Client, str]:
        """The new client and its secret: `secret`, or a random one when empty, or "" for a
        public client (an empty `client_id` is chosen too)."""
        client_id = client_id or f"client-{secrets.token_hex(6)}"
        violations = chosen_id_problems(client_id, field="client_id")
        name_problem = visible_text_problem(display_name, max_length=DISPLAY_NAME_MAX)
        if name_problem:
            violations.append(FieldViolation("client.display_name", name_problem))
        unknown = sorted(set(scopes) - set(SCOPES))
        if unknown:
            violations.append(FieldViolation("client.scopes", f"unknown scopes: {' '.join(unknown)}"))
        if secret and not 32 <= len(secret) <= 256:
            violations.append(FieldViolation("client.secret", "must be 32 to 256 characters"))
        violations += registration.problems(secret)
        if violations:
            raise InvalidArgument("CLIENT_INVALID", "the client is invalid", violations=violations)
        public = registration.client_type == PUBLIC
        secret = "" if public else secret or secrets.token_urlsafe(32)
        client = Client(
            client_id,
            display_name,
            tuple(sorted(set(scopes))),
            self.clock(),
            client_type=registration.client_type,
            redirect_uris=registration.redirect_uris,
            grant_types=registration.grants(),
            first_party=registration.first_party,
        )
        secret_hash = "" if public else self.hasher.hash(secret)
        with self.transactions() as repo:
            if not repo.add_client(client, secret_hash):
                raise AlreadyExists("CLIENT_EXISTS", "clients/{client} already exists", client=client_id)
        return client, secret

    def client(self, client_id: str) -> Client:
        with self.transactions() as repo:
            found = repo.client(client_id)
        if found is None:
            raise NotFound("CLIENT_NOT_FOUND", "clients/{client} does not exist", client=client_id)
        return found[0]

    def list_clients(self, size: int, token: str) -> tuple[list[Client], str]:
        limit = paging.page_size(size)
        after = paging.decode_token(token, [])
        with self.transactions() as repo:
            found = repo.list_clients(after, limit + 1)
        return paging.split_page(
            found, limit, lambda last: [last.create_time.isoformat(), last.client_id], []
        )

    def delete_client(self, client_id: str) -> None:
        with self.transactions() as repo:
            repo.delete_client(client_id)

    def authenticate(self, client_id: str, secret: str, address: str, *, grant: str) -> Client:
        """The confidential client `client_id` whose secret is `secret` and that may use
        `grant`, checked under the client-token limits (per client and per address): a wrong
        secret, an unknown client and one without the grant (a public one has no secret) get
        the same answer after the same work, and count."""
        client_id = client_id if chosen_id_problems(client_id, field="client_id") == [] else ""
        keys = [f"client:{client_id}", f"address:{address}"]
        with self.transactions() as repo:
            attempt = self.throttle.reserve(repo, keys)
            found = repo.client(client_id) if client_id else None
        with self.throttle.settling(attempt):
            client, hashed = found if found else (None, None)
            allowed = client is not None and grant in client.grant_types
            if not self.hasher.verify(hashed or None, secret) or not allowed or client is None:
                self.throttle.fail(attempt)
                raise Unauthenticated("INVALID_CLIENT", "client id or secret is wrong")
        return client

    def client_token(self, client_id: str, secret: str, scope: str, address: str) -> TokenSet:
        """An access token for the client with `secret`, carrying the scopes in `scope`
        (space-separated; empty for every scope the client holds)."""
        client = self.authenticate(client_id, secret, address, grant=CLIENT_CREDENTIALS)
        requested = scope.split() or list(client.scopes)
        refused = sorted(set(requested) - set(client.scopes))
        if refused:
            raise invalid_field(
                "scope", f"not granted to this client: {' '.join(refused)}", "SCOPE_NOT_ALLOWED"
            )
        access = self.minter.access_token(
            subject=client.name,
            roles=(),
            scopes=sorted(set(requested)),
            now=self.clock(),
            client_id=client_id,
        )
        return TokenSet(access, self.settings.access_token_seconds, " ".join(sorted(set(requested))))
