"""The order saga with Stripe holding the money, end to end: auth, orders and payments as
processes (payments with ``POLY_PAYMENTS_PROVIDER=stripe``), the JSON edge in front, the real
Stripe SDK in payments talking to a local Stripe API (`tests.support.stripe_api`: Stripe's
fixture objects, requests checked against the SDK's parameter types), and Stripe's webhook
events posted through the edge as Stripe posts them. Everything is done over HTTP/JSON.

Place -> authorize -> capture -> PAID; a decline; a Stripe that times out (asked again by the
saga, charged once); a refund; and webhook events: applied once however often they arrive,
refused when forged or stale. Once on SQLite, once with payments on PostgreSQL.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.edge import edge_answers
from tests.support.http import Answer, http_call
from tests.support.identity import Deployment, start
from tests.support.processes import Process
from tests.support.stripe_api import API_KEY, WEBHOOK_SECRET, LocalStripe, local_stripe
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

_INTENTS = "/v1/payment_intents"
_PAID, _FAILED = "STATE_PAID", "STATE_PAYMENT_FAILED"


@dataclass
class Shop:
    system: Deployment
    stripe: LocalStripe
    port: int
    admin: str

    def call(self, method: str, path: str, body: object = None, *, token: str = "", **extra: Any) -> Answer:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return http_call(
            self.port, method, path, body, headers={**headers, **extra.pop("headers", {})}, **extra
        )

    def customer(self, card: str) -> tuple[str, str]:
        """A new customer's token and account, the account paying with `card` (a Stripe test token)."""
        _, email = self.system.register()
        token = self.system.login(email).access_token
        account = self.system.own_account(token)
        answer = self.call("POST", f"/v1/{account}:setPaymentMethod", {"paymentMethod": card}, token=token)
        assert answer.status == 200, answer.body
        assert answer.json()["paymentMethod"].startswith("pm_")
        return token, account

    def place(self, token: str, amount: int) -> str:
        line = {
            "sku": "BOOK-1",
            "quantity": 1,
            "unitPrice": {"currencyCode": "EUR", "amountMinor": str(amount)},
        }
        answer = self.call("POST", "/v1/orders", {"lines": [line]}, token=token)
        assert answer.status == 201, answer.body
        return str(answer.json()["name"])

    def settled(self, order: str, token: str, *, timeout: float = 30.0) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            found = self.call("GET", f"/v1/{order}", token=token).json()
            return found if found.get("state") in (_PAID, _FAILED) else None

        return eventually(done, timeout=timeout, what=f"{order} to be paid or declined")

    def payment_of(self, order: str) -> dict[str, Any]:
        answer = self.call("GET", f"/v1/payments?filter=order%20%3D%20%22{order}%22", token=self.admin)
        (payment,) = answer.json()["payments"]
        return dict(payment)

    def webhook(self, body: bytes, headers: dict[str, str]) -> Answer:
        return http_call(self.port, "POST", "/v1/providers/stripe/events", raw=body, headers=headers)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def shop(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    database: dict[str, str] = {}
    if request.param == "postgresql":
        make: Callable[[], str] = request.getfixturevalue("postgres_databases")
        database = {"POLY_PAYMENTS_DATABASE_URL": make()}
    with local_stripe() as stripe:
        environ = {
            **database,
            "POLY_PAYMENTS_PROVIDER": "stripe",
            "POLY_STRIPE_API_KEY": API_KEY,
            "POLY_STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "POLY_STRIPE_API_BASE": stripe.api_base,
            "POLY_STRIPE_TIMEOUT_SECONDS": "1",
        }
        system = start(
            tmp_path_factory.mktemp(f"stripe-{request.param}"), ["auth", "orders", "payments"], environ
        )
        edge = Process.module("gateway", system.environ)
        try:
            port = system.settings("gateway").server.port
            eventually(
                lambda: edge_answers(f"http://127.0.0.1:{port}"), timeout=30, what="the edge to answer"
            )
            yield Shop(system, stripe, port, system.create_admin())
            assert stripe.violations == [], "requests outside the SDK's parameter types"
            assert "sk_test" not in system.processes["payments"].output(), "the API key was logged"
        finally:
            edge.stop()
            system.stop()


def test_an_order_paid_by_card_is_one_captured_payment_intent(shop: Shop) -> None:
    token, _ = shop.customer("pm_card_visa")
    order = shop.place(token, 2_500)
    assert shop.settled(order, token)["state"] == _PAID
    payment = shop.payment_of(order)
    assert (payment["state"], payment["provider"]) == ("STATE_CAPTURED", "stripe")
    intent = shop.stripe.intents[payment["providerReference"]]
    assert (intent["status"], intent["amount"], intent["capture_method"]) == ("succeeded", 2_500, "manual")
    assert [i for i in shop.stripe.intents.values() if i["metadata"].get("order") == order] == [intent]
    merchant = shop.call("GET", "/v1/accounts/merchant-eur/ledgerEntries", token=shop.admin).json()
    taken = [e for e in merchant["ledgerEntries"] if e["payment"] == payment["name"]]
    assert [(e["kind"], e["amount"]["amountMinor"]) for e in taken] == [("KIND_CAPTURE", "2500")]


def test_a_declined_card_fails_the_order_with_stripes_reason(shop: Shop) -> None:
    token, _ = shop.customer("pm_card_chargeDeclinedInsufficientFunds")
    order = shop.place(token, 900)
    assert shop.settled(order, token)["state"] == _FAILED
    payment = shop.payment_of(order)
    assert (payment["state"], payment["failureReason"]) == ("STATE_FAILED", "INSUFFICIENT_FUNDS")


def test_a_stripe_that_answers_too_late_is_asked_again_and_charges_once(shop: Shop) -> None:
    token, _ = shop.customer("pm_card_visa")
    shop.stripe.stall(_INTENTS, 3.0)  # payments gives up after 1 s; Stripe holds the money anyway
    order = shop.place(token, 1_300)
    assert shop.settled(order, token, timeout=60)["state"] == _PAID
    intents = [i for i in shop.stripe.intents.values() if i["metadata"].get("order") == order]
    assert len(intents) == 1 and intents[0]["status"] == "succeeded"
    key = f"poly-{intents[0]['metadata']['payment']}-authorize"
    asked = [k for m, p, _, k in shop.stripe.requests if (m, p) == ("POST", _INTENTS) and k == key]
    assert len(asked) >= 2, "asked again, with the same idempotency key"


def test_an_admin_refund_goes_back_through_stripe(shop: Shop) -> None:
    token, _ = shop.customer("pm_card_visa")
    order = shop.place(token, 4_000)
    shop.settled(order, token)
    payment = shop.payment_of(order)
    body = {
        "amount": {"currencyCode": "EUR", "amountMinor": "1500"},
        "requestId": str(uuid.uuid4()),
        "reason": "late",
    }
    answer = shop.call("POST", f"/v1/{payment['name']}:refund", body, token=shop.admin)
    assert answer.status == 200, answer.body
    assert (answer.json()["state"], answer.json()["refundedAmount"]["amountMinor"]) == (
        "STATE_PARTIALLY_REFUNDED",
        "1500",
    )
    refunds = [r for r in shop.stripe.refunds.values() if r["payment_intent"] == payment["providerReference"]]
    assert [r["amount"] for r in refunds] == [1_500]


def test_webhook_events_through_the_edge_are_applied_once_and_forgeries_refused(shop: Shop) -> None:
    token, _ = shop.customer("pm_card_visa")
    order = shop.place(token, 2_000)
    shop.settled(order, token)
    payment = shop.payment_of(order)
    event = shop.stripe.refund_in_dashboard(payment["providerReference"], 2_000)
    body, headers = LocalStripe.signed(event)

    forged = body.replace(b'"amount": 2000', b'"amount": 2')
    assert shop.webhook(forged, headers).status == 401
    stale_body, stale_headers = LocalStripe.signed(event, at=int(time.time()) - 600)
    assert shop.webhook(stale_body, stale_headers).status == 401
    assert shop.webhook(body, {"Content-Type": "application/json"}).status == 401
    assert shop.payment_of(order)["state"] == "STATE_CAPTURED", "refused events change nothing"

    for _ in range(2):
        answer = shop.webhook(body, headers)
        assert answer.status == 204, answer.body
    refunded = shop.payment_of(order)
    assert (refunded["state"], refunded["refundedAmount"]["amountMinor"]) == ("STATE_REFUNDED", "2000")


def test_events_for_a_provider_not_configured_are_not_found(shop: Shop) -> None:
    answer = http_call(
        shop.port,
        "POST",
        "/v1/providers/paypal/events",
        raw=b"{}",
        headers={"Content-Type": "application/json"},
    )
    assert answer.status == 404
    assert answer.json()["details"][0]["reason"] == "PROVIDER_NOT_CONFIGURED"
