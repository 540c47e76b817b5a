"""Rules of user profiles and their notification preferences: plain dataclasses, no gRPC, no SQL.

Invariants: a profile has the id of its auth identity and is created once, from
UserRegistered (a repeat changes nothing); its email is copied from registration, never
written here. Every write bumps the profile's `version` (the etag derives from it: a stale
one is ABORTED) and publishes ContactChanged, the whole contact, in its transaction. States:
ACTIVE -> DELETED (soft delete, AIP-164, which publishes UserDeleted exactly once). DELETED
is terminal: readable, refuses updates, a repeated delete returns it unchanged. Preferences:
email and webhook on and locale "en" unless changed; muted event types from a fixed list.
Writes are single conditional UPDATEs (never read-check-write); a miss is then explained.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Literal, Protocol

from services.kit import etags, filters, paging
from services.kit.domain_errors import Aborted, FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from services.kit.text import is_e164, visible_text, visible_text_problem

__all__ = [
    "ACTIVE",
    "DEFAULT_LOCALE",
    "DELETED",
    "DISPLAY_NAME_MAX",
    "MUTABLE_EVENT_TYPES",
    "Contact",
    "Preferences",
    "PreferencesChange",
    "Repository",
    "User",
    "UserPage",
    "UserQuery",
    "Users",
    "create_profile",
    "display_name_problem",
]

ACTIVE = "ACTIVE"
DELETED = "DELETED"
DEFAULT_LOCALE = "en"
DISPLAY_NAME_MAX = 63
MUTED_MAX = 10
LOCALE_MAX = 35
MUTABLE_EVENT_TYPES: tuple[str, ...] = (
    "poly.events.v1.OrderPaid",
    "poly.events.v1.OrderPaymentFailed",
    "poly.events.v1.OrderCancelled",
    "poly.events.v1.UserRegistered",
)
"""The event types a user may mute (the ones notifications sends messages for)."""

# BCP 47 language tags in their common shape: language, optional script, optional region,
# optional variants ("en", "en-GB", "pt-BR", "zh-Hant-TW", "de-CH-1996").
_LOCALE = re.compile(
    r"[A-Za-z]{2,3}(-[A-Za-z]{4})?(-(?:[A-Za-z]{2}|[0-9]{3}))?(-(?:[A-Za-z0-9]{5,8}|[0-9][A-Za-z0-9]{3}))*",
    re.ASCII,
)
_USER_FILTER: filters.Fields = {
    "state": filters.FieldSpec(filters.enum_value(ACTIVE, DELETED)),
    "email": filters.FieldSpec(lambda raw: filters.text_value(raw).strip().lower()),
    "display_name": filters.FieldSpec(filters.text_value),
    "create_time": filters.FieldSpec(filters.timestamp_value, filters.ORDERED),
}
_OrderField = Literal["create_time", "email", "display_name"]
_USER_ORDER: dict[str, _OrderField] = {
    "create_time": "create_time",
    "email": "email",
    "display_name": "display_name",
}


@dataclass(frozen=True, slots=True)
class User:
    id: str
    email: str
    display_name: str
    state: str
    version: int
    create_time: dt.datetime
    update_time: dt.datetime
    delete_time: dt.datetime | None = None
    phone_number: str = ""
    """E.164 (``+4915123456789``), or empty."""

    @property
    def name(self) -> str:
        return f"users/{self.id}"

    @property
    def etag(self) -> str:
        return etags.etag(self.version)


@dataclass(frozen=True, slots=True)
class Preferences:
    user_id: str
    email_enabled: bool = True
    webhook_enabled: bool = True
    muted_event_types: tuple[str, ...] = ()
    locale: str = DEFAULT_LOCALE
    update_time: dt.datetime | None = None
    sms_enabled: bool = False
    """Texts are opted into: off until the user turns them on."""
    push_enabled: bool = True

    @property
    def name(self) -> str:
        return f"users/{self.user_id}/preferences"


@dataclass(frozen=True, slots=True)
class PreferencesChange:
    """The preferences an update writes; None leaves a field as it is."""

    email_enabled: bool | None = None
    webhook_enabled: bool | None = None
    muted_event_types: tuple[str, ...] | None = None
    locale: str | None = None
    sms_enabled: bool | None = None
    push_enabled: bool | None = None


@dataclass(frozen=True, slots=True)
class ProfileChange:
    """The profile fields an update writes; None leaves a field as it is."""

    display_name: str | None = None
    phone_number: str | None = None


@dataclass(frozen=True, slots=True)
class Contact:
    user: User
    preferences: Preferences

    @property
    def locale(self) -> str:
        return self.preferences.locale or DEFAULT_LOCALE


@dataclass(frozen=True, slots=True)
class UserQuery:
    terms: tuple[filters.Term, ...] = ()
    show_deleted: bool = False
    order_by: _OrderField = "create_time"
    descending: bool = True


@dataclass(frozen=True, slots=True)
class UserPage:
    users: list[User]
    next_page_token: str


class Repository(Protocol):
    """The users database, inside one transaction."""

    def add_user(self, user: User, preferences: Preferences) -> bool:
        """False when a profile with this id exists (the primary key decides, races included)."""

    def user(self, user_id: str) -> User | None: ...
    def preferences(self, user_id: str) -> Preferences | None: ...
    def profile(self, user_id: str) -> tuple[User, Preferences] | None:
        """The user and their preferences, read once."""

    def list_users(self, query: UserQuery, after: Sequence[str] | None, limit: int) -> list[User]: ...
    def update_user(
        self, user_id: str, change: ProfileChange, expected_version: int | None, now: dt.datetime
    ) -> bool:
        """Write an ACTIVE user (at `expected_version` when given), bumping its version;
        False when no row matched."""

    def delete_user(self, user_id: str, expected_version: int | None, now: dt.datetime) -> bool:
        """ACTIVE -> DELETED (at `expected_version` when given); False when no row matched."""

    def update_preferences(self, user_id: str, change: PreferencesChange, now: dt.datetime) -> bool:
        """Write the preferences of an ACTIVE user; False when no row matched."""

    def publish_deleted(self, user: User) -> None: ...
    def publish_contact(self, user: User, preferences: Preferences) -> None:
        """ContactChanged: the contact as of this transaction's write."""


Transactions = Callable[[], AbstractContextManager[Repository]]


def display_name_problem(display_name: str) -> str | None:
    return visible_text_problem(display_name, max_length=DISPLAY_NAME_MAX)


def phone_number_problem(phone_number: str) -> str | None:
    """Why `phone_number` is not an E.164 number (empty clears it)."""
    if phone_number and not is_e164(phone_number):
        return (
            'must be an E.164 number: "+", then 8 to 15 digits with the country code, e.g. "+4915123456789"'
        )
    return None


def _locale_problem(locale: str) -> str | None:
    if locale and (len(locale) > LOCALE_MAX or not _LOCALE.fullmatch(locale)):
        return f'must be a BCP 47 language tag of at most {LOCALE_MAX} characters, e.g. "en-GB"'
    return None


def _muted_problems(muted: Sequence[str], field_name: str) -> list[FieldViolation]:
    violations = []
    if len(muted) > MUTED_MAX:
        violations.append(FieldViolation(field_name, f"must name at most {MUTED_MAX} event types"))
    for index, event_type in enumerate(muted):
        where = f"{field_name}[{index}]"
        if event_type not in MUTABLE_EVENT_TYPES:
            violations.append(FieldViolation(where, f"must be one of {', '.join(MUTABLE_EVENT_TYPES)}"))
        elif event_type in muted[:index]:
            violations.append(FieldViolation(where, "is listed twice"))
    return violations


def _refuse(reason: str, message: str, violations: list[FieldViolation]) -> None:
    if violations:
        raise InvalidArgument(reason, message, violations=violations)


def _not_found(user_id: str) -> NotFound:
    return NotFound("USER_NOT_FOUND", "users/{user} does not exist", user=user_id)


def _deleted(user_id: str) -> FailedPrecondition:
    return FailedPrecondition("USER_DELETED", "users/{user} is deleted and cannot change", user=user_id)


def _stale(user: User, etag: str) -> Aborted:
    return Aborted(
        "ETAG_MISMATCH",
        "users/{user} changed since etag {etag} was read; read it again",
        user=user.id,
        etag=etag[:40],
    )


def create_profile(repo: Repository, user_id: str, email: str, display_name: str, now: dt.datetime) -> None:
    """The profile of a newly registered user (a repeat is a no-op). The registration was
    already accepted by auth: a display name this service would refuse is cleaned, never
    refused, so the event is never retried forever."""
    cleaned = visible_text(display_name)
    user = User(user_id, email, cleaned[:DISPLAY_NAME_MAX], ACTIVE, 1, now, now)
    preferences = Preferences(user_id, update_time=now)
    if repo.add_user(user, preferences):
        repo.publish_contact(user, preferences)


def _published(repo: Repository, user_id: str) -> tuple[User, Preferences]:
    """The profile just written, its ContactChanged published."""
    found = repo.profile(user_id)
    assert found is not None  # the write that matched it is in this transaction
    repo.publish_contact(*found)
    return found


def _user_query(filter_text: str, order_by: str, show_deleted: bool) -> UserQuery:
    terms = filters.parse_filter(filter_text, _USER_FILTER)
    ordering = filters.parse_order_by(
        order_by, tuple(_USER_ORDER), default=filters.Ordering("create_time", descending=True)
    )
    return UserQuery(tuple(terms), show_deleted, _USER_ORDER[ordering.field], ordering.descending)


@dataclass
class Users:
    """The use cases of profiles and preferences."""

    transactions: Transactions
    clock: Callable[[], dt.datetime] = field(default=lambda: dt.datetime.now(dt.UTC))

    def get(self, user_id: str) -> User:
        with self.transactions() as repo:
            found = repo.user(user_id)
        if found is None:
            raise _not_found(user_id)
        return found

    def list(self, size: int, token: str, filter_text: str, order_by: str, show_deleted: bool) -> UserPage:
        limit = paging.page_size(size)
        query = _user_query(filter_text, order_by, show_deleted)
        request = [filter_text, order_by, show_deleted]
        after = paging.decode_token(token, request)
        with self.transactions() as repo:
            found = repo.list_users(query, after, limit + 1)

        def position(last: User) -> list[str]:
            key = {"email": last.email, "display_name": last.display_name}
            return [key.get(query.order_by, last.create_time.isoformat()), last.id]

        return UserPage(*paging.split_page(found, limit, position, request))

    def update(self, user_id: str, paths: Sequence[str], given: ProfileChange, etag: str) -> User:
        """Write the `paths` of the profile (``display_name``, ``phone_number``)."""
        display_name, phone_number = given.display_name or "", given.phone_number or ""
        violations = []
        if "display_name" in paths and (problem := display_name_problem(display_name)):
            violations.append(FieldViolation("user.display_name", problem))
        if "phone_number" in paths and (problem := phone_number_problem(phone_number)):
            violations.append(FieldViolation("user.phone_number", problem))
        _refuse("USER_INVALID", "the user is invalid", violations)
        written = ProfileChange(
            display_name if "display_name" in paths else None,
            phone_number if "phone_number" in paths else None,
        )
        with self.transactions() as repo:
            if repo.update_user(user_id, written, etags.version_of(etag), self.clock()):
                return _published(repo, user_id)[0]
            found = repo.user(user_id)
        if found is None:
            raise _not_found(user_id)
        if found.state == DELETED:
            raise _deleted(user_id)
        raise _stale(found, etag)

    def delete(self, user_id: str, etag: str) -> User:
        """Soft delete, UserDeleted and ContactChanged in one transaction; a deleted user is
        returned as is."""
        with self.transactions() as repo:
            if repo.delete_user(user_id, etags.version_of(etag), self.clock()):
                deleted = _published(repo, user_id)[0]
                repo.publish_deleted(deleted)
                return deleted
            found = repo.user(user_id)
        if found is None:
            raise _not_found(user_id)
        if found.state == DELETED:
            return found
        raise _stale(found, etag)

    def preferences(self, user_id: str) -> Preferences:
        with self.transactions() as repo:
            found = repo.preferences(user_id)
        if found is None:
            raise _not_found(user_id)
        return found

    def update_preferences(self, user_id: str, paths: Sequence[str], given: PreferencesChange) -> Preferences:
        """Write the `paths` of the preferences; an unset flag in the mask goes back to its
        default (on; texts off)."""
        violations = []
        if "locale" in paths and (problem := _locale_problem(given.locale or "")):
            violations.append(FieldViolation("preferences.locale", problem))
        if "muted_event_types" in paths:
            violations += _muted_problems(given.muted_event_types or (), "preferences.muted_event_types")
        _refuse("PREFERENCES_INVALID", "the preferences are invalid", violations)
        change = PreferencesChange(
            email_enabled=(given.email_enabled is not False) if "email_enabled" in paths else None,
            webhook_enabled=(given.webhook_enabled is not False) if "webhook_enabled" in paths else None,
            muted_event_types=tuple(given.muted_event_types or ()) if "muted_event_types" in paths else None,
            locale=(given.locale or "") if "locale" in paths else None,
            sms_enabled=(given.sms_enabled is True) if "sms_enabled" in paths else None,
            push_enabled=(given.push_enabled is not False) if "push_enabled" in paths else None,
        )
        with self.transactions() as repo:
            if repo.update_preferences(user_id, change, self.clock()):
                return _published(repo, user_id)[1]
            found = repo.user(user_id)
        if found is None:
            raise _not_found(user_id)
        raise _deleted(user_id)

    def contact(self, user_id: str) -> Contact:
        with self.transactions() as repo:
            found = repo.profile(user_id)
        if found is None:
            raise _not_found(user_id)
        return Contact(*found)
