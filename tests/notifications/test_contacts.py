"""Contacts kept from users' ContactChanged events (services/notifications/events.py, store.py,
dispatch.py), on a real database (SQLite file and PostgreSQL) with a real SMTP server: the
latest change wins whatever order the events arrive in, a resolve uses the recorded contact
and asks the users service only for a user it has none of, and the recorded preferences decide
what is sent."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from poly.events.v1 import events_pb2
from services.notifications import events, store
from services.notifications.dispatch import Dispatch, DispatchSettings
from services.notifications.dispatcher import Dispatcher
from services.notifications.domain import EMAIL, SENT, SKIPPED, Contact, Notification
from services.notifications.senders import EmailSender, WebhookSender
from services.notifications.settings import NotificationsSettings, SmtpSettings
from tests.support.mailbox import mailbox
from tests.support.notifications_db import NotificationsDatabase

pytestmark = pytest.mark.slow

SETTINGS = DispatchSettings(
    max_attempts=4, retry_base_seconds=2.0, retry_max_seconds=60.0, lease_seconds=30.0
)
ORDER_PAID = "poly.events.v1.OrderPaid"


def _handlers(notifications: NotificationsDatabase, **options: Any) -> Any:
    return events.handlers(lambda session: store.SqlRepository(session, notifications.outbox), **options)


def _change(
    notifications: NotificationsDatabase, handlers: Any, user: str, sequence: int = 1, **fields: Any
) -> None:
    """Consume ContactChanged for `user` at `sequence` (its position in users' outbox)."""
    values: dict[str, Any] = {
        "email": f"{user.removeprefix('users/')}@example.com",
        "display_name": "Ada",
        "email_enabled": True,
        "webhook_enabled": True,
        **fields,
    }
    changed = events_pb2.ContactChanged(user=user, **values)
    notifications.consume(handlers, changed, aggregate_id=user, sequence=sequence)


def _recorded(notifications: NotificationsDatabase, user: str) -> tuple[Contact | None, int | None]:
    """The contact a resolve would read for `user`, and the version it came from."""
    with notifications.store.transaction() as repo:
        found = repo.contact(user)
    versions = [row.version for row in notifications.rows(store.ContactRow) if row.recipient == user]
    return found, versions[0] if versions else None


def _name(notifications: NotificationsDatabase, user: str) -> tuple[str | None, int | None]:
    found, version = _recorded(notifications, user)
    return (found.display_name if found else None), version


def test_the_latest_change_wins_whatever_order_the_events_arrive_in(
    notifications: NotificationsDatabase,
) -> None:
    handlers = _handlers(notifications)
    _change(notifications, handlers, "users/u1", 5, display_name="Five")
    _change(notifications, handlers, "users/u1", 3, display_name="Three")
    _change(notifications, handlers, "users/u1", 5, display_name="Five again")
    assert _name(notifications, "users/u1") == ("Five", 5), "older or repeated events change nothing"
    _change(
        notifications,
        handlers,
        "users/u1",
        7,
        display_name="Seven",
        email_enabled=False,
        muted_event_types=[ORDER_PAID],
        deleted=True,
    )
    assert _recorded(notifications, "users/u1") == (
        Contact("users/u1", "u1@example.com", "Seven", True, False, True, (ORDER_PAID,)),
        7,
    )


def test_racing_changes_of_one_user_leave_the_latest(notifications: NotificationsDatabase) -> None:
    """Two consumers apply the first and second change of a new user at once (as RabbitMQ
    consumers may): whichever inserts, the later version is what stays."""
    handlers = _handlers(notifications)
    for n in range(12):
        user = f"users/race{n}"
        barrier = threading.Barrier(2)

        def apply(sequence: int, user: str = user, barrier: threading.Barrier = barrier) -> None:
            barrier.wait(5)
            _change(notifications, handlers, user, sequence, display_name=f"v{sequence}")

        appliers = [threading.Thread(target=apply, args=(sequence,)) for sequence in (1, 2)]
        for applier in appliers:
            applier.start()
        for applier in appliers:
            applier.join(30)
        assert _name(notifications, user) == ("v2", 2), user


def test_a_contact_read_from_users_is_recorded_only_where_none_is(
    notifications: NotificationsDatabase,
) -> None:
    dispatch = Dispatch(notifications.store.transaction, SETTINGS)
    handed: list[Notification] = []
    handlers = _handlers(notifications, lease=dispatch.lease, on_commit=handed.append)
    _change(notifications, handlers, "users/known", display_name="From the event")
    for user in ("users/known", "users/new"):
        notifications.record(handlers, user)
        looked_up = Contact(user, "looked-up@example.com", "From users", deleted=False)
        resolved = dispatch.resolve(handed.pop(), looked_up, take=True)
        assert [o.delivery.destination for o in resolved.taken] == ["looked-up@example.com"]
    assert _name(notifications, "users/known") == ("From the event", 1), "the event's copy stays"
    assert _name(notifications, "users/new") == ("From users", 0)
    _change(notifications, handlers, "users/new", display_name="Renamed")
    assert _name(notifications, "users/new") == ("Renamed", 1), "any event replaces a read"


def test_the_dispatcher_sends_by_recorded_contacts_and_asks_users_only_for_the_unknown(
    notifications: NotificationsDatabase,
) -> None:
    """Four users: one plain, one who muted the event, one deleted (all recorded from events)
    and one with no event yet. Only the last is looked up; the muted and deleted ones are
    skipped with their reason; the emails go to the recorded addresses."""
    lookups: list[str] = []

    def lookup(user: str) -> Contact:
        lookups.append(user)
        return Contact(user, "unknown@example.com", "Looked up", deleted=False)

    with mailbox() as box:
        dispatcher = Dispatcher(
            Dispatch(notifications.store.transaction, SETTINGS),
            lookup,
            EmailSender(SmtpSettings(host="127.0.0.1", port=box.port)),
            WebhookSender(NotificationsSettings()),
            concurrency=8,
            poll_seconds=3600,
        )
        handlers = _handlers(notifications, lease=dispatcher.lease, on_commit=dispatcher.take)
        changes: dict[str, dict[str, Any]] = {
            "users/plain": {"email": "plain@example.com"},
            "users/muted": {"muted_event_types": [ORDER_PAID]},
            "users/gone": {"deleted": True},
        }
        for user, fields in changes.items():
            _change(notifications, handlers, user, **fields)
        dispatcher.start()
        try:
            for user in (*changes, "users/unknown"):
                notifications.record(handlers, user)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and len(box.messages) < 2:
                time.sleep(0.02)
            while time.monotonic() < deadline and len(notifications.rows(store.DeliveryRow)) < 4:
                time.sleep(0.02)
        finally:
            dispatcher.stop()
    deliveries = notifications.rows(store.DeliveryRow)
    assert {(row.recipient, row.channel, row.state, row.last_error) for row in deliveries} == {
        ("users/plain", EMAIL, SENT, ""),
        ("users/muted", EMAIL, SKIPPED, "event type muted"),
        ("users/gone", EMAIL, SKIPPED, "user deleted"),
        ("users/unknown", EMAIL, SENT, ""),
    }
    assert sorted(str(m["To"]).split("<")[-1].rstrip(">") for m in box.messages) == [
        "plain@example.com",
        "unknown@example.com",
    ]
    assert lookups == ["users/unknown"], "users is asked only for a user with no recorded contact"
    recorded, version = _recorded(notifications, "users/unknown")
    assert (recorded.email if recorded else None, version) == ("unknown@example.com", 0), "the lookup is kept"
