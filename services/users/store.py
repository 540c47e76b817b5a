"""The users service's own database: SQLAlchemy tables and queries (no other service reads it).

`UsersStore.transaction()` opens one connection and one transaction and yields a
`SqlRepository` (the `domain.Repository` over it); events published inside it join that transaction.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, cast

from google.protobuf.message import Message
from sqlalchemy import (
    Connection,
    Engine,
    Index,
    MetaData,
    Row,
    String,
    Table,
    Update,
    bindparam,
    case,
    false,
    select,
    true,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.kit.bus import BusTables, Outbox, bus_tables
from services.kit.db import Id, UtcDateTime, naming_convention, transactions
from services.kit.sql import filter_conditions, insert_if_absent, keyset_page
from services.users import events
from services.users.domain import (
    ACTIVE,
    DELETED,
    Preferences,
    PreferencesChange,
    ProfileChange,
    User,
    UserQuery,
)

__all__ = ["BUS", "Base", "SqlRepository", "UserRow", "UsersStore"]


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=naming_convention)


BUS: BusTables = bus_tables(Base.metadata)
"""Outbox, deliveries, inbox and subscriptions of this service's events."""


class UserRow(Base):
    """A profile and its preferences (a singleton child, so one row holds both)."""

    __tablename__ = "user_profile"
    __table_args__ = (
        Index("ix_user_profile_create_time_id", "create_time", "id"),
        Index("ix_user_profile_email_id", "email", "id"),
        Index("ix_user_profile_display_name_id", "display_name", "id"),
    )
    id: Mapped[Id]
    email: Mapped[str] = mapped_column(String(254))
    display_name: Mapped[str] = mapped_column(String(63))
    state: Mapped[str] = mapped_column(String(16))
    version: Mapped[int]
    """Bumped by every write of the profile; the etag is derived from it."""
    create_time: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    update_time: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    delete_time: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())
    email_enabled: Mapped[bool]
    webhook_enabled: Mapped[bool]
    muted_event_types: Mapped[str] = mapped_column(String(1000))
    """Space-separated full message names."""
    locale: Mapped[str] = mapped_column(String(35))
    preferences_update_time: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    phone_number: Mapped[str] = mapped_column(String(16), server_default="")
    sms_enabled: Mapped[bool] = mapped_column(server_default=false())
    push_enabled: Mapped[bool] = mapped_column(server_default=true())


def _user(row: Row[Any]) -> User:
    return User(
        row.id,
        row.email,
        row.display_name,
        row.state,
        row.version,
        row.create_time,
        row.update_time,
        row.delete_time,
        row.phone_number,
    )


def _preferences(row: Row[Any]) -> Preferences:
    return Preferences(
        row.id,
        row.email_enabled,
        row.webhook_enabled,
        tuple(row.muted_event_types.split()),
        row.locale,
        row.preferences_update_time,
        row.sms_enabled,
        row.push_enabled,
    )


_USERS = cast(Table, UserRow.__table__)
_PROFILE = select(_USERS).where(_USERS.c.id == bindparam("user_id"))
"""One profile with its preferences, as a plain row (built once: a statement costs more to
build than to run, and a row costs less to read than an ORM object)."""


_COLUMNS: dict[str, Any] = {
    "create_time": UserRow.create_time,
    "email": UserRow.email,
    "display_name": UserRow.display_name,
    "state": UserRow.state,
}


class SqlRepository:
    """`domain.Repository` over one connection (one transaction)."""

    def __init__(self, connection: Connection, outbox: Outbox | None) -> None:
        self._connection = connection
        self._outbox = outbox

    def add_user(self, user: User, preferences: Preferences) -> bool:
        values = {
            "id": user.id,
            "email": user.email,
            "display_name": user.display_name,
            "state": user.state,
            "version": user.version,
            "create_time": user.create_time,
            "update_time": user.update_time,
            "delete_time": user.delete_time,
            "email_enabled": preferences.email_enabled,
            "webhook_enabled": preferences.webhook_enabled,
            "muted_event_types": " ".join(preferences.muted_event_types),
            "locale": preferences.locale,
            "preferences_update_time": preferences.update_time or user.create_time,
            "phone_number": user.phone_number,
            "sms_enabled": preferences.sms_enabled,
            "push_enabled": preferences.push_enabled,
        }
        # False when the profile exists (the primary key decides, races included).
        return insert_if_absent(self._connection, UserRow, values)

    def _row(self, user_id: str) -> Row[Any] | None:
        return self._connection.execute(_PROFILE, {"user_id": user_id}).first()

    def user(self, user_id: str) -> User | None:
        row = self._row(user_id)
        return None if row is None else _user(row)

    def preferences(self, user_id: str) -> Preferences | None:
        row = self._row(user_id)
        return None if row is None else _preferences(row)

    def profile(self, user_id: str) -> tuple[User, Preferences] | None:
        row = self._row(user_id)
        return None if row is None else (_user(row), _preferences(row))

    def list_users(self, query: UserQuery, after: Sequence[str] | None, limit: int) -> list[User]:
        statement = select(_USERS).where(*filter_conditions(query.terms, _COLUMNS))
        if not query.show_deleted:
            statement = statement.where(UserRow.state != DELETED)
        statement = keyset_page(
            statement,
            (_COLUMNS[query.order_by], UserRow.id),
            after=after,
            descending=query.descending,
            limit=limit,
        )
        return [_user(row) for row in self._connection.execute(statement)]

    def update_user(
        self, user_id: str, change: ProfileChange, expected_version: int | None, now: dt.datetime
    ) -> bool:
        values: dict[str, object] = {"version": UserRow.version + 1, "update_time": now}
        if change.display_name is not None:
            values["display_name"] = change.display_name
        if change.phone_number is not None:
            values["phone_number"] = change.phone_number
            # Consent to texts is the old number's: a new number starts opted out.
            values["sms_enabled"] = case(
                (UserRow.phone_number == change.phone_number, UserRow.sms_enabled), else_=false()
            )
        statement = update(UserRow).where(UserRow.id == user_id, UserRow.state == ACTIVE)
        if expected_version is not None:
            statement = statement.where(UserRow.version == expected_version)
        return self._changed(statement.values(values))

    def delete_user(self, user_id: str, expected_version: int | None, now: dt.datetime) -> bool:
        statement = update(UserRow).where(UserRow.id == user_id, UserRow.state == ACTIVE)
        if expected_version is not None:
            statement = statement.where(UserRow.version == expected_version)
        return self._changed(
            statement.values(state=DELETED, delete_time=now, update_time=now, version=UserRow.version + 1)
        )

    def update_preferences(self, user_id: str, change: PreferencesChange, now: dt.datetime) -> bool:
        values: dict[str, object] = {"preferences_update_time": now}
        if change.email_enabled is not None:
            values["email_enabled"] = change.email_enabled
        if change.webhook_enabled is not None:
            values["webhook_enabled"] = change.webhook_enabled
        if change.muted_event_types is not None:
            values["muted_event_types"] = " ".join(change.muted_event_types)
        if change.locale is not None:
            values["locale"] = change.locale
        if change.sms_enabled is not None:
            values["sms_enabled"] = change.sms_enabled
        if change.push_enabled is not None:
            values["push_enabled"] = change.push_enabled
        return self._changed(
            update(UserRow).where(UserRow.id == user_id, UserRow.state == ACTIVE).values(values)
        )

    def _changed(self, statement: Update) -> bool:
        """Run a conditional UPDATE: True when it matched a row (the write decides, not a read)."""
        result = self._connection.execute(statement)
        return bool(getattr(result, "rowcount", 0))

    def publish_deleted(self, user: User) -> None:
        self._publish(events.user_deleted(user), user)

    def publish_contact(self, user: User, preferences: Preferences) -> None:
        self._publish(events.contact_changed(user, preferences), user)

    def _publish(self, event: Message, user: User) -> None:
        if self._outbox is None:
            raise RuntimeError("this repository was opened without an outbox and cannot publish")
        self._outbox.publish(self._connection, event, aggregate_id=user.name)


class UsersStore:
    """Transactions over the users database, each yielding a `SqlRepository`."""

    def __init__(self, engine: Engine, outbox: Outbox) -> None:
        self.transaction = transactions(engine, lambda connection: SqlRepository(connection, outbox))
