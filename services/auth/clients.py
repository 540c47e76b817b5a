"""Machine clients: creating, reading, listing and deleting them, and the OAuth
client-credentials grant that gives one an access token.

A client's secret is shown once, when it is created, and stored only as an argon2id hash.
Token requests are throttled per client and per client address as logins are (`throttle`):
a wrong secret and an unknown client get the same answer, and count. A client's token carries
scopes, never roles, and only scopes in `SCOPES` that the client was granted.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from services.auth.domain import (
    DISPLAY_NAME_MAX,
    Client,
    Clock,
    Hasher,
    Minter,
    TokenSet,
    Transactions,
    invalid_field,
    utc_now,
)
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

__all__ = ["SCOPES", "Clients"]

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


@dataclass
class Clients:
    transactions: Transactions
    hasher: Hasher
    minter: Minter
    throttle: Throttle
    settings: IdentitySettings
    clock: Clock = utc_now

    def create_client(
        self, client_id: str, display_name: str, scopes: Sequence[str], secret: str
    ) -> tuple[Client, str]:
        """The new client and its secret: `secret`, or a random one when empty (an empty
        `client_id` is chosen too)."""
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
        if violations:
            raise InvalidArgument("CLIENT_INVALID", "the client is invalid", violations=violations)
        secret = secret or secrets.token_urlsafe(32)
        client = Client(client_id, display_name, tuple(sorted(set(scopes))), self.clock())
        secret_hash = self.hasher.hash(secret)
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

    def client_token(self, client_id: str, secret: str, scope: str, address: str) -> TokenSet:
        """An access token for the client with `secret`, carrying the scopes in `scope`
        (space-separated; empty for every scope the client holds)."""
        keys = [f"client:{client_id}", f"address:{address}"]
        with self.transactions() as repo:
            attempt = self.throttle.reserve(repo, keys)
            found = repo.client(client_id)
        with self.throttle.settling(attempt):
            client, hashed = found if found else (None, None)
            if not self.hasher.verify(hashed, secret) or client is None:
                self.throttle.fail(attempt)
                raise Unauthenticated("INVALID_CLIENT", "client id or secret is wrong")
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
