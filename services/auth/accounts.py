"""Accounts: registering identities, granting and revoking their roles, reading and listing
them, and disabling one whose user was deleted.

Email addresses are ASCII only (a domain in its IDNA ``xn--`` form), so none can look like
another's through look-alike or invisible characters; display names carry no control, format
or line-break characters (`kit.text`). A taken email is answered before any password is
hashed. Registrations count per client address (`throttle`), taken emails too. Disabling ends
every session of the identity. The last active admin cannot lose the role.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from services.auth.domain import (
    ACTIVE,
    DISABLED,
    DISPLAY_NAME_MAX,
    Clock,
    Hasher,
    Identity,
    IdentityPage,
    IdentityQuery,
    Repository,
    Transactions,
    invalid_field,
    normalise_email,
    utc_now,
)
from services.auth.throttle import REGISTRATION_THROTTLED, Throttle
from services.kit import paging
from services.kit.domain_errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from services.kit.text import visible_text_problem

__all__ = ["Accounts", "disable_identity"]

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
_ROLE = re.compile(r"[a-z][a-z0-9-]{1,31}", re.ASCII)


def _email_taken() -> AlreadyExists:
    return AlreadyExists("EMAIL_TAKEN", "an account with this email already exists")


def _identity_not_found(user_id: str) -> NotFound:
    return NotFound("IDENTITY_NOT_FOUND", "users/{user} does not exist", user=user_id)


def email_problem(email: str) -> str | None:
    """Why `email` (normalised) cannot be an account's address, or None."""
    if not _EMAIL.fullmatch(email) or len(email) > 254 or email.index("@") > 64:
        return _EMAIL_RULE
    return None


@dataclass
class Accounts:
    transactions: Transactions
    hasher: Hasher
    throttle: Throttle
    password_problem: Callable[[str], str | None]
    clock: Clock = utc_now

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
        if email_problem(email):
            violations.append(FieldViolation("email", _EMAIL_RULE))
        problem = self.password_problem(password)
        if problem:
            violations.append(FieldViolation("password", problem))
        name_problem = visible_text_problem(display_name, max_length=DISPLAY_NAME_MAX)
        if name_problem:
            violations.append(FieldViolation("display_name", name_problem))
        if violations:
            raise InvalidArgument(
                "REGISTRATION_INVALID", "the registration is invalid", violations=violations
            )
        keys = [] if address is None else [f"registration:{address}"]
        with self.transactions() as repo:
            attempt = self.throttle.reserve(repo, keys, throttled=REGISTRATION_THROTTLED)
            taken = repo.email_taken(email)
            if taken:
                repo.count_attempt(attempt.id, self.clock())
        if taken:
            raise _email_taken()
        with self.throttle.settling(attempt):  # a busy hasher: the attempt does not count
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

    def identity(self, user_id: str) -> Identity:
        with self.transactions() as repo:
            found = repo.identity(user_id)
        if found is None:
            raise _identity_not_found(user_id)
        return found

    def change_role(self, user_id: str, role: str, *, grant: bool) -> Identity:
        if not _ROLE.fullmatch(role):
            raise invalid_field(
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
            raise invalid_field(
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
                raise invalid_field("filter", "state must be ACTIVE or DISABLED", "FILTER_INVALID")
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
        raise invalid_field(
            "order_by", "must be create_time or email, optionally followed by asc or desc", "ORDER_BY_INVALID"
        )
    column: Literal["create_time", "email"] = "email" if chosen[0] == "email" else "create_time"
    return IdentityQuery(email=email, role=role, state=state, order_by=column, descending=chosen[1])
