"""The order saga with an outside provider holding the money, end to end, once with Stripe and
once with PayPal: auth, orders and payments as processes (payments with
``POLY_PAYMENTS_PROVIDER`` set), the JSON edge in front, payments talking to the provider's
local API (`tests.support.stripe_api`: Stripe's fixtures and the SDK's parameter types;
`tests.support.paypal_api`: PayPal's OpenAPI documents), and the provider's webhook events
posted through the edge as the provider posts them. Everything is done over HTTP/JSON.

Place -> authorize -> capture -> PAID; a decline; a provider that answers too late (asked
again by the saga, charged once); a refund; and webhook events: applied once however often
they arrive, refused when forged or stale. Stripe runs on SQLite and on PostgreSQL, PayPal on
SQLite (what differs between databases is the provider-independent code both exercise).
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.edge import edge_answers
from tests.support.http import Answer, http_call
from tests.support.identity import Deployment, start
from tests.support.paypal_api import CLIENT_ID, CLIENT_SECRET, WEBHOOK_ID, LocalPayPal, local_paypal
from tests.support.processes import Process
from tests.support.stripe_api import API_KEY, WEBHOOK_SECRET, LocalStripe, local_stripe
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

_PAID, _FAILED = "STATE_PAID", "STATE_PAYMENT_FAILED"


@dataclass(frozen=True)
class Provider:
    """What differs between providers, as the saga's tests see them."""

    name: str
    api: Any
    settings: dict[str, str]
    pays: str
    """A payment method that pays."""
    declines: tuple[str, str]
    """A payment method that is declined, and the reason the payment fails with."""
    authorize_path: str
    """Where an authorization is asked (stalled to make payments time out)."""
    secrets: tuple[str, ...]

    def authorizations(self, payment: str) -> int:
        """How many holds the provider made for our ``payments/{id}``."""
        ours = payment.removeprefix("payments/")
        if self.name == "stripe":
            return sum(1 for i in self.api.intents.values() if i["metadata"].get("payment") == ours)
        return sum(1 for a in self.api.authorizations.values() if a.get("custom_id") == ours)

    def refunded(self, payment: dict[str, Any]) -> list[int]:
        if self.name == "stripe":
            return [
                r["amount"]
                for r in self.api.refunds.values()
                if r["payment_intent"] == payment["providerReference"]
            ]
        return [
            round(float(r["amount"]["value"]) * 100)
            for r in self.api.refunds.values()
            if r.get("custom_id") == payment["name"].removeprefix("payments/")
        ]

    def dashboard_refund(self, payment: dict[str, Any]) -> tuple[bytes, dict[str, str], Callable[..., Any]]:
        """A refund of the whole payment made at the provider: its event, signed, and the
        signer (for stale copies)."""
        if self.name == "stripe":
            event = self.api.refund_in_dashboard(
                payment["providerReference"], int(payment["amount"]["amountMinor"])
            )
            return (*LocalStripe.signed(event), lambda: LocalStripe.signed(event, at=int(time.time()) - 600))
        capture = next(
            c
            for c in self.api.captures.values()
            if c["supplementary_data"]["related_ids"]["authorization_id"] == payment["providerReference"]
        )
        event = self.api.refund_in_dashboard(capture["id"], capture["amount"]["value"])
        stale = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)
        return (*LocalPayPal.signed(event), lambda: LocalPayPal.signed(event, at=stale))


def _stripe(api: LocalStripe) -> Provider:
    settings = {
        "POLY_STRIPE_API_KEY": API_KEY,
        "POLY_STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "POLY_STRIPE_API_BASE": api.api_base,
        "POLY_STRIPE_TIMEOUT_SECONDS": "1",
    }
    declined = ("pm_card_chargeDeclinedInsufficientFunds", "INSUFFICIENT_FUNDS")
    return Provider(
        "stripe", api, settings, "pm_card_visa", declined, "/v1/payment_intents", (API_KEY, WEBHOOK_SECRET)
    )


def _paypal(api: LocalPayPal) -> Provider:
    settings = {
        "POLY_PAYPAL_CLIENT_ID": CLIENT_ID,
        "POLY_PAYPAL_CLIENT_SECRET": CLIENT_SECRET,
        "POLY_PAYPAL_WEBHOOK_ID": WEBHOOK_ID,
        "POLY_PAYPAL_API_BASE": api.api_base,
        "POLY_PAYPAL_TIMEOUT_SECONDS": "1",
    }
    declined = ("vault_cannot_pay", "PAYER_CANNOT_PAY")
    return Provider("paypal", api, settings, "vault_ok", declined, "/v2/checkout/orders", (CLIENT_SECRET,))


@dataclass
class Shop:
    system: Deployment
    provider: Provider
    port: int
    admin: str

    def call(self, method: str, path: str, body: object = None, *, token: str = "") -> Answer:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return http_call(self.port, method, path, body, headers=headers)

    def customer(self, method: str) -> str:
        """A new customer's token, their account paying with `method`."""
        _, email = self.system.register()
        token = self.system.login(email).access_token
        account = self.system.own_account(token)
        answer = self.call("POST", f"/v1/{account}:setPaymentMethod", {"paymentMethod": method}, token=token)
        assert answer.status == 200, answer.body
        assert answer.json()["paymentMethod"]
        return token

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

    def paid(self, amount: int) -> tuple[str, dict[str, Any]]:
        token = self.customer(self.provider.pays)
        order = self.place(token, amount)
        assert self.settled(order, token)["state"] == _PAID
        return order, self.payment_of(order)

    def webhook(self, body: bytes, headers: dict[str, str]) -> Answer:
        return http_call(
            self.port, "POST", f"/v1/providers/{self.provider.name}/events", raw=body, headers=headers
        )


def _api(name: str) -> AbstractContextManager[Any]:
    return local_stripe() if name == "stripe" else local_paypal()


@pytest.fixture(
    scope="module",
    params=[("stripe", "sqlite"), ("stripe", "postgresql"), ("paypal", "sqlite")],
    ids="-".join,
)
def shop(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    name, database_kind = request.param
    database: dict[str, str] = {}
    if database_kind == "postgresql":
        make: Callable[[], str] = request.getfixturevalue("postgres_databases")
        database = {"POLY_PAYMENTS_DATABASE_URL": make()}
    with _api(name) as api:
        provider = _stripe(api) if name == "stripe" else _paypal(api)
        environ = {**database, "POLY_PAYMENTS_PROVIDER": name, **provider.settings}
        system = start(
            tmp_path_factory.mktemp(f"{name}-{database_kind}"), ["auth", "orders", "payments"], environ
        )
        edge = Process.module("gateway", system.environ)
        try:
            port = system.settings("gateway").server.port
            eventually(
                lambda: edge_answers(f"http://127.0.0.1:{port}"), timeout=30, what="the edge to answer"
            )
            yield Shop(system, provider, port, system.create_admin())
            assert api.violations == [], "requests or answers outside the provider's contract"
            logged = system.processes["payments"].output()
            assert not any(secret in logged for secret in provider.secrets), "a credential was logged"
        finally:
            edge.stop()
            system.stop()


def test_an_order_is_paid_by_one_hold_captured_into_the_ledger(shop: Shop) -> None:
    _, payment = shop.paid(2_500)
    assert (payment["state"], payment["provider"]) == ("STATE_CAPTURED", shop.provider.name)
    assert shop.provider.authorizations(payment["name"]) == 1
    merchant = shop.call("GET", "/v1/accounts/merchant-eur/ledgerEntries", token=shop.admin).json()
    taken = [e for e in merchant["ledgerEntries"] if e["payment"] == payment["name"]]
    assert [(e["kind"], e["amount"]["amountMinor"]) for e in taken] == [("KIND_CAPTURE", "2500")]


def test_a_declined_method_fails_the_order_with_the_providers_reason(shop: Shop) -> None:
    method, reason = shop.provider.declines
    token = shop.customer(method)
    order = shop.place(token, 900)
    assert shop.settled(order, token)["state"] == _FAILED
    payment = shop.payment_of(order)
    assert (payment["state"], payment["failureReason"]) == ("STATE_FAILED", reason)


def test_a_provider_that_answers_too_late_is_asked_again_and_charges_once(shop: Shop) -> None:
    token = shop.customer(shop.provider.pays)
    shop.provider.api.stall(shop.provider.authorize_path, 3.0)  # payments gives up after 1 s
    order = shop.place(token, 1_300)
    assert shop.settled(order, token, timeout=60)["state"] == _PAID
    payment = shop.payment_of(order)
    assert shop.provider.authorizations(payment["name"]) == 1, "asked twice, held once"


def test_an_admin_refund_goes_back_through_the_provider(shop: Shop) -> None:
    _, payment = shop.paid(4_000)
    body = {
        "amount": {"currencyCode": "EUR", "amountMinor": "1500"},
        "requestId": str(uuid.uuid4()),
        "reason": "late",
    }
    answer = shop.call("POST", f"/v1/{payment['name']}:refund", body, token=shop.admin)
    assert answer.status == 200, answer.body
    refunded = answer.json()
    assert (refunded["state"], refunded["refundedAmount"]["amountMinor"]) == (
        "STATE_PARTIALLY_REFUNDED",
        "1500",
    )
    assert shop.provider.refunded(payment) == [1_500]


def test_webhook_events_through_the_edge_are_applied_once_and_forgeries_refused(shop: Shop) -> None:
    order, payment = shop.paid(2_000)
    body, headers, stale = shop.provider.dashboard_refund(payment)

    assert shop.webhook(body.replace(b"20", b"02"), headers).status == 401, "altered after signing"
    assert shop.webhook(*stale()).status == 401, "signed too long ago"
    assert shop.webhook(body, {"Content-Type": "application/json"}).status == 401, "unsigned"
    assert shop.payment_of(order)["state"] == "STATE_CAPTURED", "refused events change nothing"

    for _ in range(2):
        answer = shop.webhook(body, headers)
        assert answer.status == 204, answer.body
    refunded = shop.payment_of(order)
    assert (refunded["state"], refunded["refundedAmount"]["amountMinor"]) == ("STATE_REFUNDED", "2000")


def test_events_for_a_provider_not_configured_are_not_found(shop: Shop) -> None:
    other = "paypal" if shop.provider.name == "stripe" else "stripe"
    answer = http_call(
        shop.port,
        "POST",
        f"/v1/providers/{other}/events",
        raw=b"{}",
        headers={"Content-Type": "application/json"},
    )
    assert answer.status == 404
    assert answer.json()["details"][0]["reason"] == "PROVIDER_NOT_CONFIGURED"
