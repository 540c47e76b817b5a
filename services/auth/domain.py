"""Rules of identity: accounts, sessions (refresh-token families), machine clients, roles.

Invariants: an email names at most one identity (lower case); a password is stored only as
an argon2id hash, a refresh token and a client secret only as hashes. A refresh token is
used at most once: using it rotates it (ACTIVE -> ROTATED, a new one in the same family);
presenting a ROTATED token again is theft, and revokes its whole family, as logout does.
Failed logins count per account and client address; an attempt counts from the limit check
that admits it (one transaction) until it is settled or its lease ends, so a burst cannot
overshoot. Past the limit, even correct logins are refused until the oldest failure ages out.
Registrations count per client address the same way (taken emails included), and a taken
email is answered before any password is hashed. Email addresses are ASCII only (a domain
in its IDNA ``xn--`` form), so none can look like another's through look-alike or invisible
characters; display names carry no control, format or line-break characters (`kit.text`).
Identity states: ACTIVE -> DISABLED (when the user is deleted); DISABLED refuses login and
refresh. The last active admin cannot lose the role.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeVar

from services.auth.settings import IdentitySettings
from services.kit import paging
from services.kit.domain_errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from services.kit.names import chosen_id_problems
from services.kit.text import visible_text_problem

__all__ = [
    "ACTIVE",
    "DISABLED",
    "SCOPES",
    "Client",
    "Hasher",
    "Identity",
    "IdentityPage",
    "IdentityProvider",
    "IdentityQuery",
    "Minter",
    "RefreshClaim",
    "Repository",
    "TokenSet",
    "Verified",
    "disable_identity",
    "hash_token",
    "normalise_email",
]

ACTIVE = "ACTIVE"
DISABLED = "DISABLED"
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

# fullmatch only (`$` also matches before a final newline), on the lower-cased address.
# ASCII only: the local part is an RFC 5322 dot-atom, the domain two or more LDH labels
# (an internationalised domain in its IDNA A-label form, ``xn--...``). No control, invisible
# or look-alike character (U+200B, U+202E, fullwidth or Cyrillic letters, dotless i) passes.
_EMAIL = re.compile(
    r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?",
    re.ASCII,
)
_EMAIL_RULE = "must be an email address of ASCII characters (an internationalised domain as xn--)"
_DISPLAY_NAME_MAX = 63
_ROLE = re.compile(r"[a-z][a-z0-9-]{1,31}", re.ASCII)
_BAD_CREDENTIALS = "email or password is wrong"
_LOGIN_THROTTLED = ("LOGIN_THROTTLED", "too many failed logins; try again in {seconds} seconds")
_REGISTRATION_THROTTLED = (
    "REGISTRATION_THROTTLED",
    "too many registrations from this address; try again in {seconds} seconds",
)
_RESERVATION_SECONDS = 60.0
"""How long an attempt being verified counts at most: a process that dies before settling
it (or cannot reach its database to) frees it after this."""


@dataclass(frozen=True, slots=True)
class Identity:
    id: str
    email: str
    roles: tuple[str, ...]
    state: str
    create_time: dt.datetime
    update_time: dt.datetime

    @property
    def name(self) -> str:
        return f"users/{self.id}"


@dataclass(frozen=True, slots=True)
class Client:
    client_id: str
    display_name: str
    scopes: tuple[str, ...]
    create_time: dt.datetime

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

    def add_identity(self, identity: Identity, password_hash: str) -> bool:
        """False when the email is taken."""

    def email_taken(self, email: str) -> bool: ...

    def identity(self, user_id: str) -> Identity | None: ...
    def credentials(self, email: str) -> tuple[Identity, str] | None:
        """The identity with `email` and its password hash."""

    def set_password_hash(self, user_id: str, password_hash: str) -> None: ...
    def set_roles(self, user_id: str, roles: Sequence[str], now: dt.datetime) -> None: ...
    def set_state(self, user_id: str, state: str, now: dt.datetime) -> None: ...
    def count_admins(self) -> int: ...
    def list_identities(
        self, query: IdentityQuery, after: Sequence[str] | None, limit: int
    ) -> list[Identity]: ...
    def publish_registered(self, identity: Identity, display_name: str) -> None: ...

    def add_refresh_token(
        self, token_hash: str, family: str, user_id: str, expire_time: dt.datetime, now: dt.datetime
    ) -> None: ...
    def claim_refresh_token(self, token_hash: str, now: dt.datetime) -> RefreshClaim:
        """Atomically move an ACTIVE, unexpired token to ROTATED, or say why not."""

    def revoke_family(self, family: str, now: dt.datetime) -> None: ...
    def revoke_families_of(self, user_id: str, now: dt.datetime) -> None: ...
    def family_of(self, token_hash: str) -> str | None: ...
    def family_active(self, family: str) -> bool: ...

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

    def add_client(self, client: Client, secret_hash: str) -> bool:
        """False when the client id is taken."""

    def client(self, client_id: str) -> tuple[Client, str] | None:
        """The client and its secret hash."""

    def list_clients(self, after: Sequence[str] | None, limit: int) -> list[Client]: ...
    def delete_client(self, client_id: str) -> bool: ...


class Hasher(Protocol):
    def hash(self, secret: str) -> str: ...
    def verify(self, hashed: str | None, secret: str) -> bool: ...
    def needs_rehash(self, hashed: str) -> bool: ...


class Minter(Protocol):
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


class Verified(Protocol):
    """What an access-token check returns (`kit.authn.Principal`): its session, if any."""

    @property
    def session(self) -> str: ...


_V = TypeVar("_V", bound=Verified)


@dataclass(slots=True)
class _Attempt:
    """A login, client-token or registration attempt reserved against its throttling keys."""

    id: str
    settled: bool = False


Transactions = Callable[[], AbstractContextManager[Repository]]


def normalise_email(email: str) -> str:
    return email.strip().lower()


def _email_taken() -> AlreadyExists:
    return AlreadyExists("EMAIL_TAKEN", "an account with this email already exists")


def _identity_not_found(user_id: str) -> NotFound:
    return NotFound("IDENTITY_NOT_FOUND", "users/{user} does not exist", user=user_id)


def hash_token(token: str) -> str:
    """Refresh tokens are stored as SHA-256: they are 256-bit random, so no slow hash is needed."""
    return hashlib.sha256(token.encode()).hexdigest()


def _invalid(field_name: str, problem: str, reason: str) -> InvalidArgument:
    return InvalidArgument(
        reason,
        "{field} {problem}",
        violations=[FieldViolation(field_name, problem)],
        field=field_name,
        problem=problem,
    )


@dataclass
class IdentityProvider:
    transactions: Transactions
    hasher: Hasher
    minter: Minter
    settings: IdentitySettings
    password_problem: Callable[[str], str | None]
    clock: Callable[[], dt.datetime] = field(default=lambda: dt.datetime.now(dt.UTC))

    # -- accounts -----------------------------------------------------------------------

    def register(
        self,
        email: str,
        password: str,
        display_name: str = "",
        *,
        address: str | None,
        roles: Sequence[str] = (),
    ) -> Identity:
        """A new account. Each call from `address` that gets past validation counts against
        its registration limit, a taken email too; None (an operator's ``poly admin create``)
        counts against nothing. A taken email is answered before the password is hashed
        (Register says so anyway); the unique email column still decides a race."""
        email = normalise_email(email)
        violations = []
        if not _EMAIL.fullmatch(email) or len(email) > 254 or email.index("@") > 64:
            violations.append(FieldViolation("email", _EMAIL_RULE))
        problem = self.password_problem(password)
        if problem:
            violations.append(FieldViolation("password", problem))
        name_problem = visible_text_problem(display_name, max_length=_DISPLAY_NAME_MAX)
        if name_problem:
            violations.append(FieldViolation("display_name", name_problem))
        if violations:
            raise InvalidArgument(
                "REGISTRATION_INVALID", "the registration is invalid", violations=violations
            )
        keys = [] if address is None else [f"registration:{address}"]
        with self.transactions() as repo:
            attempt = self._reserve(repo, keys, throttled=_REGISTRATION_THROTTLED)
            taken = repo.email_taken(email)
            if taken:
                repo.count_attempt(attempt.id, self.clock())
        if taken:
            raise _email_taken()
        with self._settling(attempt):  # a busy hasher: the attempt does not count
            password_hash = self.hasher.hash(password)
            now = self.clock()
            identity = Identity(str(uuid.uuid4()), email, tuple(sorted(set(roles))), ACTIVE, now, now)
            with self.transactions() as repo:
                created = repo.add_identity(identity, password_hash)
                if created:
                    repo.publish_registered(identity, display_name)
                repo.count_attempt(attempt.id, now)
            attempt.settled = True
        if not created:
            raise _email_taken()
        return identity

    def login(self, email: str, password: str, address: str) -> TokenSet:
        email = normalise_email(email)
        keys = [f"account:{email}", f"address:{address}"]
        with self.transactions() as repo:
            attempt = self._reserve(repo, keys)
            found = repo.credentials(email)
        with self._settling(attempt):
            identity, hashed = found if found else (None, None)
            if not self.hasher.verify(hashed, password) or identity is None or hashed is None:
                self._fail(attempt)
                raise Unauthenticated("INVALID_CREDENTIALS", _BAD_CREDENTIALS)
            if identity.state != ACTIVE:
                raise PermissionDenied("IDENTITY_DISABLED", "this account is disabled")
            rehashed = self._rehashed(hashed, password)
            family = str(uuid.uuid4())
            with self.transactions() as repo:
                if rehashed:
                    repo.set_password_hash(identity.id, rehashed)
                repo.release_attempt(attempt.id)
                repo.clear_failures(keys[0])
                refresh = self._add_refresh_token(repo, identity, family=family)
            attempt.settled = True
        return self._session_tokens(identity, family=family, refresh=refresh)

    def _reserve(
        self, repo: Repository, keys: Sequence[str], *, throttled: tuple[str, str] = _LOGIN_THROTTLED
    ) -> _Attempt:
        """Refuse (`throttled`: reason and message) if any of `keys` is at its limit, else count
        this attempt against them all: one decision per key at a time, so concurrent attempts
        cannot all pass the check."""
        repo.lock_throttle_keys(keys)
        now = self.clock()
        window = dt.timedelta(seconds=self.settings.login_window_seconds)
        repo.forget_attempts(keys, now - window, now)
        for key in keys:
            attempts = repo.attempts_since(key, now - window, now)
            if len(attempts) >= self._limit(key):
                retry_after = max(1.0, (min(attempts) + window - now).total_seconds())
                raise ResourceExhausted(
                    *throttled,
                    retry_after_seconds=retry_after,
                    seconds=int(retry_after + 0.999),
                )
        until = now + dt.timedelta(seconds=_RESERVATION_SECONDS)
        return _Attempt(repo.reserve_attempt(keys, now, until))

    def _limit(self, key: str) -> int:
        kind = key.partition(":")[0]
        if kind == "registration":
            return self.settings.registrations_per_address
        if kind == "address":
            return self.settings.login_failures_per_address
        return self.settings.login_failures_per_account  # account: or client:

    def _fail(self, attempt: _Attempt) -> None:
        with self.transactions() as repo:
            repo.count_attempt(attempt.id, self.clock())
        attempt.settled = True

    @contextmanager
    def _settling(self, attempt: _Attempt) -> Iterator[None]:
        """Releases `attempt` if the block leaves it unsettled: whatever ended the block (a
        correct secret, a busy hasher, a disabled account), it was not a wrong secret."""
        try:
            yield
        finally:
            if not attempt.settled:
                # A busy database (Unavailable): the reservation's lease frees it instead.
                with suppress(Unavailable), self.transactions() as repo:
                    repo.release_attempt(attempt.id)

    def _rehashed(self, hashed: str, password: str) -> str | None:
        """A hash with the current costs when `hashed` has older ones (None when busy: the
        next login does it)."""
        if not self.hasher.needs_rehash(hashed):
            return None
        try:
            return self.hasher.hash(password)
        except ResourceExhausted:
            return None

    def _add_refresh_token(self, repo: Repository, identity: Identity, *, family: str) -> str:
        now = self.clock()
        refresh = secrets.token_urlsafe(32)
        expires = now + dt.timedelta(seconds=self.settings.refresh_token_seconds)
        repo.add_refresh_token(hash_token(refresh), family, identity.id, expires, now)
        return refresh

    def _session_tokens(self, identity: Identity, *, family: str, refresh: str) -> TokenSet:
        # Minted after the refresh token's transaction: the key ring reads its own.
        access = self.minter.access_token(
            subject=identity.name, roles=identity.roles, scopes=(), now=self.clock(), session=family
        )
        lifetime = self.settings.refresh_token_seconds
        return TokenSet(access, self.settings.access_token_seconds, "", refresh, lifetime)

    def refresh(self, refresh_token: str) -> TokenSet:
        now = self.clock()
        with self.transactions() as repo:
            claim = repo.claim_refresh_token(hash_token(refresh_token), now)
            if claim.outcome == "reused":
                # Someone used a token that was already exchanged: one of the two holders
                # is a thief. Revoke the family (committed), so both must log in again.
                repo.revoke_family(claim.family, now)
            identity = repo.identity(claim.user_id) if claim.outcome == "claimed" else None
            refresh = None
            if identity is not None and identity.state == ACTIVE:
                refresh = self._add_refresh_token(repo, identity, family=claim.family)
        if identity is not None and refresh is not None:
            return self._session_tokens(identity, family=claim.family, refresh=refresh)
        reasons = {
            "reused": ("REFRESH_TOKEN_REUSED", "this refresh token was already used; its session is revoked"),
            "revoked": ("REFRESH_TOKEN_REVOKED", "this session was revoked (logged out or a token reused)"),
            "expired": ("REFRESH_TOKEN_EXPIRED", "this refresh token has expired"),
        }
        reason, message = reasons.get(
            claim.outcome, ("REFRESH_TOKEN_INVALID", "this refresh token is not valid")
        )
        raise Unauthenticated(reason, message)

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

    def disable(self, user_id: str) -> None:
        with self.transactions() as repo:
            disable_identity(repo, user_id, self.clock())

    # -- identities and roles -----------------------------------------------------------

    def identity(self, user_id: str) -> Identity:
        with self.transactions() as repo:
            found = repo.identity(user_id)
        if found is None:
            raise _identity_not_found(user_id)
        return found

    def change_role(self, user_id: str, role: str, *, grant: bool) -> Identity:
        if not _ROLE.fullmatch(role):
            raise _invalid(
                "role",
                "must be 2 to 32 characters of a-z, 0-9 and '-', starting with a letter",
                "ROLE_INVALID",
            )
        with self.transactions() as repo:
            found = repo.identity(user_id)
            if found is None:
                raise _identity_not_found(user_id)
            roles = set(found.roles) | {role} if grant else set(found.roles) - {role}
            if role == "admin" and not grant and "admin" in found.roles and repo.count_admins() <= 1:
                raise FailedPrecondition("LAST_ADMIN", "the last admin cannot lose the admin role")
            if roles != set(found.roles):
                repo.set_roles(user_id, sorted(roles), self.clock())
            updated = repo.identity(user_id)
        assert updated is not None
        return updated

    def list_identities(self, size: int, token: str, filter_text: str, order_by: str) -> IdentityPage:
        limit = paging.page_size(size)
        query = _identity_query(filter_text, order_by)
        request = [filter_text, order_by]
        after = paging.decode_token(token, request)
        with self.transactions() as repo:
            found = repo.list_identities(query, after, limit + 1)

        def position(last: Identity) -> list[str]:
            return [last.email if query.order_by == "email" else last.create_time.isoformat(), last.id]

        return IdentityPage(*paging.split_page(found, limit, position, request))

    # -- machine clients ----------------------------------------------------------------

    def create_client(
        self, client_id: str, display_name: str, scopes: Sequence[str], secret: str
    ) -> tuple[Client, str]:
        client_id = client_id or f"client-{secrets.token_hex(6)}"
        violations = chosen_id_problems(client_id, field="client_id")
        name_problem = visible_text_problem(display_name, max_length=_DISPLAY_NAME_MAX)
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
        keys = [f"client:{client_id}", f"address:{address}"]
        with self.transactions() as repo:
            attempt = self._reserve(repo, keys)
            found = repo.client(client_id)
        with self._settling(attempt):
            client, hashed = found if found else (None, None)
            if not self.hasher.verify(hashed, secret) or client is None:
                self._fail(attempt)
                raise Unauthenticated("INVALID_CLIENT", "client id or secret is wrong")
        requested = scope.split() or list(client.scopes)
        refused = sorted(set(requested) - set(client.scopes))
        if refused:
            raise _invalid("scope", f"not granted to this client: {' '.join(refused)}", "SCOPE_NOT_ALLOWED")
        access = self.minter.access_token(
            subject=client.name,
            roles=(),
            scopes=sorted(set(requested)),
            now=self.clock(),
            client_id=client_id,
        )
        return TokenSet(access, self.settings.access_token_seconds, " ".join(sorted(set(requested))))


def disable_identity(repo: Repository, user_id: str, now: dt.datetime) -> None:
    """The user was deleted: no more logins, and every session ends (idempotent)."""
    if repo.identity(user_id) is not None:
        repo.set_state(user_id, DISABLED, now)
        repo.revoke_families_of(user_id, now)


def _identity_query(filter_text: str, order_by: str) -> IdentityQuery:
    """AIP-160 subset: ``email = "a@b"``, ``state = ACTIVE``, ``roles:"admin"``, joined by AND."""
    email = role = state = None
    for term in (t.strip() for t in re.split(r"\s+AND\s+", filter_text.strip()) if t.strip()):
        match = re.fullmatch(r'(email|state)\s*=\s*"?([^"\s]+)"?|roles\s*:\s*"?([a-z][a-z0-9-]*)"?', term)
        if match is None:
            raise _invalid(
                "filter",
                f'unsupported term {term!r}; use email = "...", state = ACTIVE|DISABLED, '
                'roles:"..." joined by AND',
                "FILTER_INVALID",
            )
        if match.group(3):
            role = match.group(3)
        elif match.group(1) == "email":
            email = normalise_email(match.group(2))
        else:
            state = match.group(2).upper().removeprefix("STATE_")
            if state not in (ACTIVE, DISABLED):
                raise _invalid("filter", "state must be ACTIVE or DISABLED", "FILTER_INVALID")
    orders = {
        "": ("create_time", True),
        "create_time desc": ("create_time", True),
        "create_time": ("create_time", False),
        "create_time asc": ("create_time", False),
        "email": ("email", False),
        "email asc": ("email", False),
        "email desc": ("email", True),
    }
    chosen = orders.get(" ".join(order_by.split()).lower())
    if chosen is None:
        raise _invalid(
            "order_by", "must be create_time or email, optionally followed by asc or desc", "ORDER_BY_INVALID"
        )
    column: Literal["create_time", "email"] = "email" if chosen[0] == "email" else "create_time"
    return IdentityQuery(email=email, role=role, state=state, order_by=column, descending=chosen[1])
