"""The dispatcher's claims on a real database (SQLite file and PostgreSQL): a delivery whose
dispatcher died mid-send is claimed again once its lease expires, and that claim is counted
and logged, since the first attempt may already have been sent; a claimed webhook delivery
carries its webhook's signing secret."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import pytest

from services.kit import bus, db
from services.kit.config import DatabaseSettings
from services.notifications import store
from services.notifications.dispatch import Dispatch, DispatchSettings
from services.notifications.domain import EMAIL, PENDING, SENT, WEBHOOK, Delivery, Webhook
from tests.support.clock import Clock

pytestmark = pytest.mark.slow

SETTINGS = DispatchSettings(
    max_attempts=4, retry_base_seconds=2.0, retry_max_seconds=60.0, lease_seconds=30.0
)


@pytest.fixture
def notifications(database_url: str) -> Iterator[store.NotificationsStore]:
    engine = db.engine(DatabaseSettings(url=database_url))
    store.Base.metadata.create_all(engine)
    outbox = bus.Outbox(store.BUS, source="notifications", routing=lambda _session, _type: [])
    try:
        yield store.NotificationsStore(engine, outbox)
    finally:
        engine.dispose()


def _pending(notifications: store.NotificationsStore, clock: Clock, channel: str) -> Delivery:
    delivery = Delivery(
        id=str(uuid.uuid4()),
        recipient="users/u1",
        channel=channel,
        template="templates/order-paid" if channel == EMAIL else "",
        event_type="poly.events.v1.OrderPaid",
        event_id=str(uuid.uuid4()),
        destination="u1@example.com" if channel == EMAIL else "https://hooks.example.com/u1",
        webhook="" if channel == EMAIL else "webhooks/w1",
        state=PENDING,
        attempts=0,
        last_error="",
        next_attempt_time=clock(),
        create_time=clock(),
        update_time=clock(),
    )
    with notifications.transaction() as repo:
        assert repo.add_delivery(delivery, {"subject": "Paid", "text": "t", "html": "h", "body": "{}"})
    return delivery


def _dispatch(notifications: store.NotificationsStore, clock: Clock, owner: str) -> Dispatch:
    return Dispatch(notifications.transaction, SETTINGS, owner=owner, clock=clock)


@pytest.mark.parametrize("channel", [EMAIL, WEBHOOK])
def test_a_delivery_claimed_again_after_its_lease_expired_is_counted_and_logged(
    notifications: store.NotificationsStore, channel: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    delivery = _pending(notifications, clock, channel)
    dying = _dispatch(notifications, clock, "dying")
    [first] = dying.claim_deliveries(10)
    assert not first.reclaimed, "a first claim"
    # The dispatcher is killed while sending: no outcome is recorded, the lease stays.
    survivor = _dispatch(notifications, clock, "survivor")
    assert survivor.claim_deliveries(10) == [], "the lease still holds"
    clock.advance(SETTINGS.lease_seconds + 1)
    with caplog.at_level(logging.WARNING, logger="poly.notifications.dispatch"):
        [again] = survivor.claim_deliveries(10)
    assert again.reclaimed and again.delivery.id == delivery.id and again.delivery.attempts == 2
    assert again.content == first.content, "the same message again (same Message-ID / webhook-id)"
    assert survivor.metrics.snapshot() == {("reclaimed", channel): 1}
    assert dying.metrics.total("reclaimed") == 0
    [line] = [r for r in caplog.records if "lease expired" in r.getMessage()]
    assert line.levelno == logging.WARNING
    assert (line.delivery, line.channel, line.attempt) == (delivery.name, channel, 2)  # type: ignore[attr-defined]

    settled = survivor.sent(again)
    assert settled is not None and settled.state == SENT
    clock.advance(SETTINGS.lease_seconds + 1)
    assert survivor.claim_deliveries(10) == []
    assert survivor.metrics.total("reclaimed") == 1


def test_a_retry_after_a_recorded_failure_is_not_counted(
    notifications: store.NotificationsStore, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    delivery = _pending(notifications, clock, EMAIL)
    dispatch = _dispatch(notifications, clock, "only")
    [first] = dispatch.claim_deliveries(10)
    assert dispatch.failed(first, "421 try again later", permanent=False) is not None
    clock.advance(SETTINGS.lease_seconds + SETTINGS.retry_max_seconds)  # past the backoff and the old lease
    with caplog.at_level(logging.WARNING, logger="poly.notifications.dispatch"):
        [again] = dispatch.claim_deliveries(10)
    assert again.delivery.id == delivery.id and again.delivery.attempts == 2
    assert not again.reclaimed and dispatch.metrics.total("reclaimed") == 0
    assert not [r for r in caplog.records if "lease expired" in r.getMessage()]


def test_a_claimed_webhook_delivery_carries_its_webhooks_current_secret(
    notifications: store.NotificationsStore,
) -> None:
    clock = Clock()
    hook = Webhook("w1", "users/u1", "https://hooks.example.com/u1", (), clock())
    with notifications.transaction() as repo:
        assert repo.add_webhook(hook, "whsec_current", "", "")
    webhook_delivery, email_delivery = (
        _pending(notifications, clock, WEBHOOK),
        _pending(notifications, clock, EMAIL),
    )
    claimed = {c.delivery.id: c for c in _dispatch(notifications, clock, "only").claim_deliveries(10)}
    assert claimed[webhook_delivery.id].secret == "whsec_current"
    assert claimed[email_delivery.id].secret == ""
