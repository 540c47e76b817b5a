"""Text messages through Twilio, on a real database (SQLite and PostgreSQL), a real SMTP server
and a local Twilio held to Twilio's published OpenAPI document (`tests.support.twilio_api`): a
notification goes out as an email and, to an opted-in number, a text carrying its subject; the
texts' status callbacks and inbound STOP/START, signed by Twilio's own SDK, are verified and
applied; numbers are held to a per-hour limit; a forged report changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select
from twilio.request_validator import RequestValidator

from services.kit.domain_errors import NotFound, Unauthenticated
from services.notifications import events, store
from services.notifications.dispatch import Dispatch, DispatchSettings
from services.notifications.dispatcher import Dispatcher
from services.notifications.domain import EMAIL, FAILED, PENDING, SENT, SKIPPED, SMS, Contact
from services.notifications.senders import EmailSender, WebhookSender
from services.notifications.settings import NotificationsSettings, SmtpSettings, TwilioSettings
from services.notifications.sms import SmsSender
from services.notifications.sms_reports import twilio_signature
from services.notifications.texts import TextReports
from tests.support.mailbox import Mailbox, mailbox
from tests.support.notifications_db import NotificationsDatabase
from tests.support.twilio_api import ACCOUNT_SID, AUTH_TOKEN, SENDER, LocalTwilio, local_twilio

pytestmark = pytest.mark.slow

CALLBACK = "https://edge.example.test/v1/channels/sms/events"
NUMBER = "+4915123456789"


@pytest.fixture
def twilio() -> Iterator[LocalTwilio]:
    with local_twilio() as api:
        yield api
        assert api.violations == [], "requests or answers outside Twilio's OpenAPI document"


def _settings(api: LocalTwilio) -> TwilioSettings:
    return TwilioSettings(ACCOUNT_SID, AUTH_TOKEN, SENDER, CALLBACK, api.api_base, timeout_seconds=5)


class _Texting:
    """A dispatcher that texts through `twilio`, for contacts kept in `contacts`."""

    def __init__(
        self, notifications: NotificationsDatabase, twilio: LocalTwilio, box: Mailbox, per_hour: int
    ) -> None:
        self.contacts: dict[str, Contact] = {}
        settings = DispatchSettings(
            max_attempts=4, retry_base_seconds=60, lease_seconds=30, texts=True, texts_per_hour=per_hour
        )
        self.dispatcher = Dispatcher(
            Dispatch(notifications.store.transaction, settings),
            lambda user: self.contacts[user],
            EmailSender(SmtpSettings(host="127.0.0.1", port=box.port)),
            WebhookSender(NotificationsSettings()),
            concurrency=8,
            poll_seconds=3600,
            texts=SmsSender(_settings(twilio)),
        )
        self.handlers = events.handlers(
            lambda connection: store.SqlRepository(connection, notifications.outbox),
            lease=self.dispatcher.lease,
            on_commit=self.dispatcher.take,
        )
        self.notifications = notifications
        self.reports = TextReports(notifications.store.transaction, _settings(twilio))

    def notify(self, user: str, *, phone: str = NUMBER, texts: bool = True) -> dict[str, Any]:
        """One OrderPaid for `user`, once its deliveries settle: each by channel."""
        self.contacts[user] = Contact(
            user,
            f"{user.removeprefix('users/')}@example.com",
            "Ada",
            deleted=False,
            phone_number=phone,
            sms_enabled=texts,
        )
        event_id = self.notifications.record(self.handlers, user)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            found = {
                row.channel: row
                for row in self.notifications.rows(store.DeliveryRow)
                if row.event_id == event_id
            }
            if found and all(row.state != PENDING or row.last_error for row in found.values()):
                return found
            time.sleep(0.05)
        raise AssertionError(f"the deliveries of {event_id} never settled: {found}")

    def report(self, body: bytes, headers: dict[str, str]) -> None:
        self.reports.receive("sms", {k.lower(): v for k, v in headers.items()}, body)


@pytest.fixture
def texting(notifications: NotificationsDatabase, twilio: LocalTwilio) -> Iterator[_Texting]:
    with mailbox() as box:
        made = _Texting(notifications, twilio, box, per_hour=3)
        made.dispatcher.start()
        try:
            yield made
        finally:
            made.dispatcher.stop()


def test_a_notification_is_texted_to_an_opted_in_number_with_its_subject(
    texting: _Texting, twilio: LocalTwilio
) -> None:
    sent = texting.notify("users/t1")
    assert (sent[EMAIL].state, sent[SMS].state) == (SENT, SENT)
    (message,) = twilio.to(NUMBER)
    assert sent[SMS].provider_reference == message["sid"]
    assert message["body"].startswith("Payment received"), "the email's subject line"
    assert message["from"] == SENDER


def test_no_text_without_a_number_or_the_users_opt_in(texting: _Texting, twilio: LocalTwilio) -> None:
    assert SMS not in texting.notify("users/t2", phone="")
    skipped = texting.notify("users/t3", texts=False)[SMS]
    assert (skipped.state, skipped.last_error) == (SKIPPED, "texts disabled")
    assert twilio.messages == {}


def test_an_undelivered_text_fails_its_delivery_once(texting: _Texting, twilio: LocalTwilio) -> None:
    sent = texting.notify("users/t4")[SMS]
    body, headers = twilio.status(CALLBACK, sent.provider_reference, "undelivered", "30003")
    texting.report(body, headers)
    texting.report(body, headers)  # Twilio retries callbacks too
    (failed,) = [r for r in texting.notifications.rows(store.DeliveryRow) if r.id == sent.id]
    assert (failed.state, failed.last_error) == (FAILED, "Twilio undelivered: error 30003")
    with texting.notifications.engine.connect() as connection:
        published = connection.execute(select(store.BUS.outbox.c.event_type, store.BUS.outbox.c.aggregate_id))
        outcomes = [event_type for event_type, aggregate in published if aggregate == f"deliveries/{sent.id}"]
    assert outcomes == ["poly.events.v1.NotificationDelivered", "poly.events.v1.NotificationFailed"]


def test_a_delivered_report_changes_nothing(texting: _Texting, twilio: LocalTwilio) -> None:
    sent = texting.notify("users/t5")[SMS]
    texting.report(*twilio.status(CALLBACK, sent.provider_reference, "delivered"))
    (row,) = [r for r in texting.notifications.rows(store.DeliveryRow) if r.id == sent.id]
    assert row.state == SENT


@pytest.mark.parametrize("stop", [" stop ", "Stop.", "STOP ALL", "opt-out", "Unsubscribe!"])
def test_stop_opts_a_number_out_and_start_back_in(texting: _Texting, twilio: LocalTwilio, stop: str) -> None:
    texting.report(*twilio.inbound(CALLBACK, NUMBER, stop))
    skipped = texting.notify("users/t6")[SMS]
    assert (skipped.state, skipped.last_error) == (SKIPPED, "the number answered STOP")
    texting.report(*twilio.inbound(CALLBACK, NUMBER, "START"))
    assert texting.notify("users/t6")[SMS].state == SENT


def test_a_number_twilio_knows_as_opted_out_fails_and_is_not_texted_again(
    texting: _Texting, twilio: LocalTwilio
) -> None:
    twilio.refused.add(NUMBER)  # it answered STOP to Twilio directly
    refused = texting.notify("users/t7")[SMS]
    assert (refused.state, refused.last_error) == (FAILED, "Twilio HTTP 400: error 21610")
    assert texting.notify("users/t7")[SMS].state == SKIPPED


def test_a_number_gets_at_most_its_hourly_texts(texting: _Texting, twilio: LocalTwilio) -> None:
    states = [texting.notify("users/t8")[SMS] for _ in range(4)]
    assert [s.state for s in states[:3]] == [SENT, SENT, SENT]
    assert (states[3].state, states[3].last_error) == (
        PENDING,
        "held back: 3 texts to this number in the last hour",
    )
    assert states[3].attempts == 0, "waiting uses up no attempt"
    assert len(twilio.to(NUMBER)) == 3


@pytest.mark.parametrize(
    "forge",
    [
        lambda body, headers: (body.replace(b"undelivered", b"delivered"), headers),
        lambda body, headers: (body, {"X-Twilio-Signature": "", "Content-Type": headers["Content-Type"]}),
        lambda body, headers: (body, {**headers, "X-Twilio-Signature": headers["X-Twilio-Signature"][::-1]}),
    ],
    ids=["tampered", "unsigned", "wrong-signature"],
)
def test_a_report_whose_signature_does_not_match_is_refused_and_changes_nothing(
    texting: _Texting, twilio: LocalTwilio, forge: Any
) -> None:
    sent = texting.notify("users/t9")[SMS]
    body, headers = twilio.status(CALLBACK, sent.provider_reference, "undelivered", "30003")
    forged_body, forged_headers = forge(body, headers)
    with pytest.raises(Unauthenticated):
        texting.report(forged_body, forged_headers)
    elsewhere = twilio.status("https://attacker.example/sms", sent.provider_reference, "undelivered", "30003")
    with pytest.raises(Unauthenticated):
        texting.report(*elsewhere)  # signed by Twilio, for another URL
    (row,) = [r for r in texting.notifications.rows(store.DeliveryRow) if r.id == sent.id]
    assert row.state == SENT


def test_a_report_for_another_account_or_channel_is_refused(texting: _Texting, twilio: LocalTwilio) -> None:
    body, headers = LocalTwilio.signed(
        CALLBACK, {"AccountSid": "AC" + "f" * 32, "From": NUMBER, "Body": "STOP"}
    )
    with pytest.raises(Unauthenticated):
        texting.report(body, headers)
    with pytest.raises(NotFound):
        texting.reports.receive("push", {}, b"")
    unconfigured = TextReports(texting.notifications.store.transaction, TwilioSettings())
    with pytest.raises(NotFound):
        unconfigured.receive("sms", {}, b"")


_PARAM = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)


@given(
    st.dictionaries(st.from_regex(r"[A-Za-z][A-Za-z0-9]{0,15}", fullmatch=True), _PARAM, max_size=8), _PARAM
)
def test_our_signature_is_twilios(params: dict[str, str], path: str) -> None:
    url = f"https://edge.example.test/v1/channels/sms/events?{path}"
    assert twilio_signature(AUTH_TOKEN, url, list(params.items())) == RequestValidator(
        AUTH_TOKEN
    ).compute_signature(url, params)


def test_a_failure_reported_before_the_sending_was_recorded_is_kept(
    texting: _Texting, twilio: LocalTwilio
) -> None:
    """Twilio's callback can be quicker than the recording of the send's answer: the failure is
    kept by the text's SID (and applied when the SID is recorded), not lost."""
    sid = "SM" + "0" * 32
    twilio.messages[sid] = {"to": NUMBER, "from": SENDER, "status": "queued"}
    texting.report(*twilio.status(CALLBACK, sid, "failed", "30006"))
    with texting.notifications.engine.connect() as connection:
        kept = connection.execute(select(store.TextFailureRow.reference, store.TextFailureRow.error)).all()
    assert [tuple(row) for row in kept] == [(sid, "Twilio failed: error 30006")]
    twilio.messages.pop(sid)
