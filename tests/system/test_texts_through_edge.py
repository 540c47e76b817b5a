"""Text messages as Twilio and a user meet them, over HTTP/JSON through the edge: auth, users and
notifications as processes (notifications texting through a local Twilio held to Twilio's
published OpenAPI document, `tests.support.twilio_api`), the JSON edge in front, and Twilio's
callbacks posted to the edge as Twilio posts them: a form body and ``X-Twilio-Signature`` over
the callback URL, passed to notifications byte for byte.

A user gives their number and opts in over JSON; a notification goes out as a text; Twilio's
report that it was undelivered fails its delivery once, however often it comes; a forged
report is 401 and changes nothing; a STOP texted back keeps the next text from going.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from poly.events.v1 import events_pb2
from poly.type.v1 import money_pb2
from tests.support.edge import edge_answers
from tests.support.env import free_port
from tests.support.http import Answer, http_call
from tests.support.identity import Deployment, start
from tests.support.notifications import Mailbox, sink_order_event
from tests.support.processes import Process
from tests.support.twilio_api import ACCOUNT_SID, AUTH_TOKEN, SENDER, LocalTwilio, local_twilio
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

NUMBER = "+4915123456789"


@dataclass
class App:
    deployment: Deployment
    twilio: LocalTwilio
    port: int
    callback: str

    def call(self, method: str, path: str, body: object = None, *, token: str = "") -> Answer:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return http_call(self.port, method, path, body, headers=headers)

    def report(self, signed: tuple[bytes, dict[str, str]]) -> Answer:
        """Post a callback to the edge exactly as Twilio does."""
        body, headers = signed
        return http_call(self.port, "POST", "/v1/channels/sms/events", raw=body, headers=headers)

    def texting_user(self, number: str) -> tuple[str, str]:
        """A user whose number is `number` and who opted into texts, over JSON; name, token."""
        name, email = self.deployment.register()
        token = eventually(lambda: self.deployment.login(email).access_token, what="a token")
        eventually(lambda: self.call("GET", f"/v1/{name}", token=token).status == 200, what="the profile")
        numbered = self.call(
            "PATCH", f"/v1/{name}?updateMask=phoneNumber", {"phoneNumber": number}, token=token
        )
        assert numbered.status == 200, numbered.body
        opted = self.call(
            "PATCH", f"/v1/{name}/preferences?updateMask=smsEnabled", {"smsEnabled": True}, token=token
        )
        assert opted.status == 200, opted.body
        return name, token

    def notify(self, user: str) -> str:
        paid = events_pb2.OrderPaid(
            order=f"orders/{uuid.uuid4().hex[:12]}",
            owner=user,
            payment="payments/p1",
            amount=money_pb2.Money(currency_code="EUR", amount_minor=990),
        )
        return sink_order_event(self.deployment, paid)[0]

    def payment_texts(self, number: str) -> list[dict[str, Any]]:
        """The texts Twilio took for `number` about a payment. The welcome may be texted too:
        it is resolved when notifications gets to the registration, and a slow notifications
        gets to it after the number and the opt-in have arrived."""
        return [m for m in self.twilio.to(number) if m["body"].startswith("Payment received")]

    def text_delivery(self, token: str, event_id: str) -> dict[str, Any] | None:
        """The settled text delivery of `event_id`, read through the edge, once every delivery
        of it is settled; None if it planned no text (no number known to notifications)."""

        def settled() -> list[dict[str, Any]] | None:
            query = f"/v1/deliveries?filter=event_id%3D%22{event_id}%22"
            found: list[dict[str, Any]] = self.call("GET", query, token=token).json().get("deliveries", [])
            return found if found and all(d["state"] != "STATE_PENDING" for d in found) else None

        deliveries = eventually(settled, timeout=30, what=f"the deliveries of {event_id}")
        return next((d for d in deliveries if d["channel"] == "CHANNEL_SMS"), None)

    def sent_text(self, user: str, token: str) -> dict[str, Any]:
        """The settled text of a notification to `user`, once their number and opt-in have
        reached notifications: users publishes each (ContactChanged) over the bus, and a
        notification resolved before the number arrives plans no text, one resolved before the
        opt-in arrives is SKIPPED "texts disabled"; another one is sent then."""

        def attempt() -> dict[str, Any] | None:
            found = self.text_delivery(token, self.notify(user))
            if found is None:
                return None
            skipped_before_opt_in = (found["state"], found["lastError"]) == (
                "STATE_SKIPPED",
                "texts disabled",
            )
            return None if skipped_before_opt_in else found

        # Each attempt waits up to 30 s for its own deliveries, so this bounds the attempts.
        return eventually(attempt, timeout=60, what=f"a text to {user} after its number and opt-in arrived")


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    port = free_port()
    callback = f"http://127.0.0.1:{port}/v1/channels/sms/events"
    mailbox = Mailbox()
    mailbox.start()
    try:
        with local_twilio() as twilio:
            environ = {
                "POLY_SMTP_PORT": str(mailbox.port),
                "POLY_GATEWAY_PORT": str(port),
                "POLY_TWILIO_ACCOUNT_SID": ACCOUNT_SID,
                "POLY_TWILIO_AUTH_TOKEN": AUTH_TOKEN,
                "POLY_TWILIO_FROM": SENDER,
                "POLY_TWILIO_CALLBACK_URL": callback,
                "POLY_TWILIO_API_BASE": twilio.api_base,
            }
            deployment = start(tmp_path_factory.mktemp("texts"), ["auth", "users", "notifications"], environ)
            edge = Process.module("gateway", deployment.environ)
            try:
                eventually(lambda: edge_answers(f"http://127.0.0.1:{port}"), timeout=30, what="the edge")
                yield App(deployment, twilio, port, callback)
                assert twilio.violations == [], "requests or answers outside Twilio's OpenAPI document"
                logged = "\n".join(p.output() for p in [*deployment.processes.values(), edge])
                assert AUTH_TOKEN not in logged, "the auth token was logged"
            finally:
                edge.stop()
                deployment.stop()
    finally:
        mailbox.stop()


def test_an_undelivered_text_reported_through_the_edge_fails_its_delivery_once(app: App) -> None:
    user, token = app.texting_user(NUMBER)
    sent = app.sent_text(user, token)
    assert (sent["state"], sent["destination"]) == ("STATE_SENT", NUMBER)
    (message,) = app.payment_texts(NUMBER)
    report = app.twilio.status(app.callback, message["sid"], "undelivered", "30003")
    assert app.report(report).status == 204
    assert app.report(report).status == 204, "Twilio retries its callbacks: applied once"

    def failed() -> dict[str, Any] | None:
        found = app.call("GET", f"/v1/{sent['name']}", token=token).json()
        return found if found["state"] == "STATE_FAILED" else None

    assert eventually(failed, what="the delivery failed")["lastError"] == "Twilio undelivered: error 30003"


@pytest.mark.parametrize("forge", ["tampered", "unsigned", "signed-for-another-url"])
def test_a_forged_report_through_the_edge_is_401_and_changes_nothing(app: App, forge: str) -> None:
    user, token = app.texting_user("+4915123456780")
    sent = app.sent_text(user, token)
    sid = app.payment_texts("+4915123456780")[-1]["sid"]  # each case texts the number once
    if forge == "signed-for-another-url":
        body, headers = app.twilio.status("https://attacker.example/sms", sid, "undelivered", "30003")
    else:
        body, headers = app.twilio.status(app.callback, sid, "undelivered", "30003")
        if forge == "tampered":
            body = body.replace(b"30003", b"30004")
        else:
            headers = {"Content-Type": headers["Content-Type"]}
    answer = app.report((body, headers))
    assert answer.status == 401, answer.body
    assert answer.json()["details"][0]["reason"] == "CHANNEL_EVENT_UNVERIFIED"
    assert app.call("GET", f"/v1/{sent['name']}", token=token).json()["state"] == "STATE_SENT"


def test_stop_texted_back_through_the_edge_keeps_the_next_text_from_going(app: App) -> None:
    number = "+4915123456781"
    user, token = app.texting_user(number)
    assert app.sent_text(user, token)["state"] == "STATE_SENT"
    assert app.report(app.twilio.inbound(app.callback, number, "STOP")).status == 204
    skipped = app.text_delivery(token, app.notify(user))
    assert skipped is not None, "the number is known: a text is planned, and skipped"
    assert (skipped["state"], skipped["lastError"]) == ("STATE_SKIPPED", "the number answered STOP")
    assert len(app.payment_texts(number)) == 1
