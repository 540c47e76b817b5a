"""Work handed over, not claimed (services/notifications/dispatcher.py), on a real database
(SQLite file and PostgreSQL) and a real SMTP server: a consumed event's notification is
written taken by the dispatcher and sent with no claim query; work a dead dispatcher had taken
is claimed by another once its lease runs out; a retry a dispatcher records is claimed when it
falls due, not at the next poll."""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Any

import pytest

from services.notifications import domain, events, store
from services.notifications.contacts import ContactUnavailable
from services.notifications.dispatch import Dispatch, DispatchSettings
from services.notifications.dispatcher import Dispatcher
from services.notifications.domain import EMAIL, RESOLVED, SENT, Contact, Lease, Notification
from services.notifications.senders import EmailSender, WebhookSender
from services.notifications.settings import NotificationsSettings, SmtpSettings
from tests.support.clock import Clock
from tests.support.mailbox import Mailbox, mailbox
from tests.support.notifications import Mailbox as FailingMailbox
from tests.support.notifications_db import NotificationsDatabase

pytestmark = pytest.mark.slow

SETTINGS = DispatchSettings(
    max_attempts=4, retry_base_seconds=2.0, retry_max_seconds=60.0, lease_seconds=30.0
)


def _contact(user: str) -> Contact:
    return Contact(user, f"{user.removeprefix('users/')}@example.com", "Ada", deleted=False)


def _dispatcher(
    notifications: NotificationsDatabase,
    box: Mailbox | FailingMailbox,
    *,
    concurrency: int,
    settings: DispatchSettings = SETTINGS,
    lookup: Any = _contact,
) -> Dispatcher:
    return Dispatcher(
        Dispatch(notifications.store.transaction, settings),
        lookup,
        EmailSender(SmtpSettings(host="127.0.0.1", port=box.port)),
        WebhookSender(NotificationsSettings()),
        concurrency=concurrency,
        poll_seconds=3600,  # no periodic claim in the test's time: only handed work can be sent
    )


def _handing_to(dispatcher: Dispatcher, notifications: NotificationsDatabase) -> Any:
    """The consumer's handlers, recording each notification taken by `dispatcher` and
    handing it over on commit."""
    return events.handlers(
        lambda session: store.SqlRepository(session, notifications.outbox),
        lease=dispatcher.lease,
        on_commit=dispatcher.take,
    )


def _wait_for(condition: Any, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@pytest.mark.parametrize("concurrency", [16, 3])
def test_consumed_notifications_are_sent_with_no_claim_query_while_sends_are_free(
    notifications: NotificationsDatabase, concurrency: int
) -> None:
    """10 events at once: with 16 sends free, each email is handed over; with 3, those beyond
    the free sends wait for a claim (taken work never exceeds the concurrency), and all go."""
    with mailbox() as box:
        dispatcher = _dispatcher(notifications, box, concurrency=concurrency)
        dispatcher.start()
        try:
            assert _wait_for(lambda: len(notifications.claims) >= 2), "the first round claims once"
            started_claims = len(notifications.claims)
            handlers = _handing_to(dispatcher, notifications)
            users = [f"users/u{n}" for n in range(10)]
            recorders = [threading.Thread(target=notifications.record, args=(handlers, u)) for u in users]
            for recorder in recorders:
                recorder.start()
            for recorder in recorders:
                recorder.join(30)
            assert _wait_for(lambda: len(box.messages) == len(users)), (
                f"{len(box.messages)} of {len(users)} sent"
            )
        finally:
            dispatcher.stop()
    assert sorted(str(m["To"]).split("<")[-1].rstrip(">") for m in box.messages) == sorted(
        f"{u.removeprefix('users/')}@example.com" for u in users
    )
    if concurrency > len(users):
        assert notifications.claims[started_claims:] == [], "handed-over work needs no claim"
    recorded = notifications.rows(store.NotificationRow)
    assert [(r.state, r.attempts, r.lease_owner) for r in recorded] == [(RESOLVED, 1, None)] * len(users)
    deliveries = notifications.rows(store.DeliveryRow)
    assert [(d.channel, d.state, d.attempts, d.lease_owner) for d in deliveries] == [
        (EMAIL, SENT, 1, None)
    ] * len(users)


def test_work_a_dead_dispatcher_had_taken_is_claimed_once_its_lease_runs_out(
    notifications: NotificationsDatabase,
) -> None:
    clock = Clock(dt.datetime.now(dt.UTC))  # the consumer records with the real time
    dead = Dispatch(notifications.store.transaction, SETTINGS, owner="dead", clock=clock)
    survivor = Dispatch(notifications.store.transaction, SETTINGS, owner="survivor", clock=clock)
    handlers = events.handlers(
        lambda session: store.SqlRepository(session, notifications.outbox), lease=dead.lease
    )
    event_id = notifications.record(handlers, "users/u1")  # taken by `dead`, which never resolves it
    assert survivor.claim_notifications(10) == [], "the lease holds"
    clock.advance(SETTINGS.lease_seconds + 1)
    [claimed] = survivor.claim_notifications(10)
    assert (claimed.event_id, claimed.attempts) == (event_id, 2)
    resolved = survivor.resolve(claimed, _contact("users/u1"), take=True)
    [outgoing] = resolved.taken
    assert (outgoing.delivery.channel, outgoing.delivery.attempts, resolved.waiting) == (EMAIL, 1, 0)
    assert dead.resolve(claimed, _contact("users/u1"), take=True).taken == [], (
        "only the lease holder resolves"
    )
    assert survivor.sent(outgoing) is not None
    assert dead.sent(outgoing) is None, "only the lease holder records an outcome"


def test_a_notification_recorded_twice_is_handed_over_once(notifications: NotificationsDatabase) -> None:
    handed: list[Notification] = []
    lease = Lease("d1", dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30))
    with notifications.store.transaction() as repo:
        first = Notification("e1", "poly.events.v1.OrderPaid", "users/u1", {}, {}, dt.datetime.now(dt.UTC))
        recorded = domain.record_notification(repo, first, dt.datetime.now(dt.UTC), lease)
        again = domain.record_notification(repo, first, dt.datetime.now(dt.UTC), lease)
        handed += [n for n in (recorded, again) if n is not None]
    assert [(n.event_id, n.attempts) for n in handed] == [("e1", 1)]


def test_a_stopping_dispatcher_takes_no_notification(notifications: NotificationsDatabase) -> None:
    with mailbox() as box:
        dispatcher = _dispatcher(notifications, box, concurrency=4)
        dispatcher.stop()  # never started: stopping from the start
    handed: list[Notification] = []
    handlers = events.handlers(
        lambda session: store.SqlRepository(session, notifications.outbox),
        lease=dispatcher.lease,
        on_commit=handed.append,
    )
    event_id = notifications.record(handlers, "users/u1")
    assert handed == [], "not handed to a dispatcher that stops"
    survivor = Dispatch(notifications.store.transaction, SETTINGS)
    assert [(n.event_id, n.attempts) for n in survivor.claim_notifications(10)] == [(event_id, 1)]


QUICK_RETRIES = DispatchSettings(
    max_attempts=4, retry_base_seconds=0.2, retry_max_seconds=0.5, lease_seconds=30.0
)


def test_a_failed_send_is_claimed_again_when_its_retry_falls_due_not_at_the_next_poll(
    notifications: NotificationsDatabase,
) -> None:
    """The SMTP server answers 451 once: the retry the dispatcher recorded is claimed and sent
    within seconds, though its periodic claim comes only once an hour."""
    box = FailingMailbox()
    box.start()
    box.fail("u1@example.com", "451 4.3.0 Try again later", times=1)
    try:
        dispatcher = _dispatcher(notifications, box, concurrency=4, settings=QUICK_RETRIES)
        dispatcher.start()
        try:
            assert _wait_for(lambda: len(notifications.claims) >= 2), "the first round claims once"
            started_claims = len(notifications.claims)
            notifications.record(_handing_to(dispatcher, notifications), "users/u1")
            assert _wait_for(lambda: len(box.messages) == 1, seconds=10), "the retry was sent"
        finally:
            dispatcher.stop()
    finally:
        box.stop()
    [delivery] = notifications.rows(store.DeliveryRow)
    assert (delivery.state, delivery.attempts, delivery.last_error != "") == (SENT, 2, True)
    # One round of claims for the retry (notifications and deliveries), not a poll's stream of them.
    assert 1 <= len(notifications.claims) - started_claims <= 4, notifications.claims[started_claims:]


def test_a_postponed_notification_is_claimed_again_when_its_retry_falls_due(
    notifications: NotificationsDatabase,
) -> None:
    """The users service cannot give the contact once: the notification is postponed, and
    claimed and sent when its retry falls due, with the hourly poll nowhere near."""
    asked: list[str] = []

    def lookup(user: str) -> Contact:
        asked.append(user)
        if len(asked) == 1:
            raise ContactUnavailable("users UNAVAILABLE")
        return _contact(user)

    with mailbox() as box:
        dispatcher = _dispatcher(notifications, box, concurrency=4, settings=QUICK_RETRIES, lookup=lookup)
        dispatcher.start()
        try:
            handlers = _handing_to(dispatcher, notifications)
            assert _wait_for(lambda: len(notifications.claims) >= 2), "the first round claims once"
            started_claims = len(notifications.claims)
            notifications.record(handlers, "users/u1")
            assert _wait_for(lambda: len(box.messages) == 1, seconds=10), f"asked {len(asked)} times"
        finally:
            dispatcher.stop()
    assert asked == ["users/u1", "users/u1"]
    assert 1 <= len(notifications.claims) - started_claims <= 4, notifications.claims[started_claims:]
    [recorded] = notifications.rows(store.NotificationRow)
    assert (recorded.state, recorded.attempts) == (RESOLVED, 2)
