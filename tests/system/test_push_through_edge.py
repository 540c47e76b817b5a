"""Web Push as a browser app uses it, over HTTP/JSON through the edge: auth, users and
notifications as processes (notifications with a VAPID key from a mounted PEM file), the JSON
edge in front, a real SMTP server, and a local push service that is also the browsers
(`tests.support.push_service`: VAPID verified per RFC 8292, every message decrypted per RFC
8291 with the browser's keys, or the test fails).

The page reads the application server key (public), subscribes, posts what
``PushSubscription.toJSON()`` gives (``expirationTime: null`` included), and its user is
pushed what they are emailed; the delivery log shows the push. Another user can neither read
nor remove the subscription; bad keys are 400 with the field named; no credential is logged.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from poly.events.v1 import events_pb2
from poly.type.v1 import money_pb2
from services.notifications.push_keys import application_server_key
from tests.support.edge import edge_answers
from tests.support.http import Answer, http_call
from tests.support.identity import Deployment, start
from tests.support.notifications import Mailbox, sink_order_event
from tests.support.processes import Process
from tests.support.push_service import LocalPushService, local_push_service
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

VAPID_KEY = ec.generate_private_key(ec.SECP256R1())
SERVER_KEY = application_server_key(VAPID_KEY)


@dataclass
class App:
    deployment: Deployment
    push_service: LocalPushService
    port: int

    def call(self, method: str, path: str, body: object = None, *, token: str = "") -> Answer:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return http_call(self.port, method, path, body, headers=headers)

    def user(self) -> tuple[str, str]:
        """A registered user's name and access token."""
        name, email = self.deployment.register()
        return name, eventually(lambda: self.deployment.login(email).access_token, what="a token")


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    home = tmp_path_factory.mktemp("push")
    pem = home / "vapid.pem"
    pem.write_bytes(
        VAPID_KEY.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    mailbox = Mailbox()
    mailbox.start()
    environ = {
        "POLY_SMTP_PORT": str(mailbox.port),
        "POLY_WEBHOOK_ALLOW_PRIVATE": "true",
        "POLY_PUSH_VAPID_PRIVATE_KEY_FILE": str(pem),
        "POLY_PUSH_VAPID_SUBJECT": "mailto:ops@example.com",
    }
    try:
        with local_push_service(SERVER_KEY) as push_service:
            deployment = start(home / "system", ["auth", "users", "notifications"], environ)
            edge = Process.module("gateway", deployment.environ)
            try:
                port = deployment.settings("gateway").server.port
                eventually(lambda: edge_answers(f"http://127.0.0.1:{port}"), timeout=30, what="the edge")
                yield App(deployment, push_service, port)
                assert push_service.violations == [], "messages a push service or browser would refuse"
                logged = "\n".join(p.output() for p in [*deployment.processes.values(), edge])
                secrets = [Path(pem).read_text().splitlines()[1]]
                secrets += [b.subscription()["keys"]["auth"] for b in push_service.browsers.values()]
                assert not any(secret in logged for secret in secrets), "a credential was logged"
            finally:
                edge.stop()
                deployment.stop()
    finally:
        mailbox.stop()


@pytest.fixture(scope="module")
def token(app: App) -> str:
    """One signed-in user's access token, for tests that need any user."""
    return app.user()[1]


def _subscribe(app: App, token: str) -> tuple[Any, dict[str, Any]]:
    browser = app.push_service.subscribe()
    answer = app.call("POST", "/v1/pushSubscriptions", browser.subscription(), token=token)
    assert answer.status == 201, answer.body
    return browser, answer.json()


def _payment_pushes(app: App, browser: Any) -> list[dict[str, Any]]:
    return [p for p in app.push_service.to(browser) if p["title"].startswith("Payment received")]


def test_a_browser_subscribes_with_the_public_key_and_is_pushed_what_its_user_is_emailed(app: App) -> None:
    config = app.call("GET", "/v1/pushConfig")  # before signing in: the page needs it first
    assert (config.status, config.json()) == (200, {"name": "pushConfig", "applicationServerKey": SERVER_KEY})
    user, token = app.user()
    browser, created = _subscribe(app, token)
    assert created["owner"] == user
    assert created["endpoint"] == browser.endpoint
    assert created.get("keys") is None, "the keys are input only"

    paid = events_pb2.OrderPaid(
        order=f"orders/{uuid.uuid4().hex[:12]}",
        owner=user,
        payment="payments/p1",
        amount=money_pb2.Money(currency_code="EUR", amount_minor=1234),
    )
    event_id, _ = sink_order_event(app.deployment, paid)
    # Only the payment's push counts: the welcome is pushed too when notifications handles
    # the registration after the browser subscribed, which is right when it is busy.
    (pushed,) = eventually(lambda: _payment_pushes(app, browser), what="the push to the browser")
    assert "12.34" in pushed["body"]

    def logged() -> list[dict[str, Any]] | None:
        query = (
            f"/v1/deliveries?filter=event_id%20%3D%20%22{event_id}%22%20AND%20channel%20%3D%20CHANNEL_PUSH"
        )
        found = app.call("GET", query, token=token).json().get("deliveries", [])
        return found if found and found[0]["state"] != "STATE_PENDING" else None

    (delivery,) = eventually(logged, what="the push in the delivery log")
    assert (delivery["state"], delivery["destination"]) == ("STATE_SENT", created["name"])
    assert pushed["delivery"] == delivery["name"]
    assert len(_payment_pushes(app, browser)) == 1, "the payment was pushed once"


def test_subscribing_needs_a_signed_in_user(app: App) -> None:
    browser = app.push_service.subscribe()
    answer = app.call("POST", "/v1/pushSubscriptions", browser.subscription())
    assert answer.status == 401
    assert app.call("GET", "/v1/pushSubscriptions").status == 401


def test_another_user_can_neither_read_nor_remove_a_subscription(app: App) -> None:
    _, owner_token = app.user()
    _, other_token = app.user()
    _, created = _subscribe(app, owner_token)
    path = f"/v1/{created['name']}"
    assert app.call("GET", path, token=other_token).status == 403
    assert app.call("DELETE", path, token=other_token).status == 403
    assert app.call("GET", "/v1/pushSubscriptions", token=other_token).json()["pushSubscriptions"] == []
    assert app.call("GET", path, token=owner_token).json()["name"] == created["name"]
    assert app.call("DELETE", path, token=owner_token).status == 204
    # Gone now: it answers as any name the caller has no subscription under (AIP-211).
    assert app.call("GET", path, token=owner_token).status == 403
    assert app.call("GET", "/v1/pushSubscriptions", token=owner_token).json()["pushSubscriptions"] == []


@pytest.mark.parametrize(
    ("keys", "field"),
    [
        ({"p256dh": "BAAA", "auth": "AAAAAAAAAAAAAAAAAAAAAA"}, "push_subscription.keys.p256dh"),
        ({"auth": "AAAAAAAAAAAAAAAAAAAAAA"}, "push_subscription.keys.p256dh"),
        (None, "push_subscription.keys.auth"),
    ],
    ids=["short-p256dh", "no-p256dh", "no-auth"],
)
def test_unusable_keys_are_400_naming_the_field(
    app: App, token: str, keys: dict[str, str] | None, field: str
) -> None:
    given = app.push_service.subscribe().subscription()
    given["keys"] = keys if keys is not None else {"p256dh": given["keys"]["p256dh"]}
    answer = app.call("POST", "/v1/pushSubscriptions", given, token=token)
    assert answer.status == 400, answer.body
    details = answer.json()["details"]
    violations = [v["field"] for d in details for v in d.get("fieldViolations", [])]
    assert violations == [field]


def test_a_subscription_that_expired_by_the_browsers_clock_is_refused(app: App, token: str) -> None:
    given = app.push_service.subscribe().subscription()
    given["expirationTime"] = int(time.time() * 1000) - 1000
    answer = app.call("POST", "/v1/pushSubscriptions", given, token=token)
    assert answer.status == 400, answer.body
