"""Payments held by PayPal: the use cases over their real store (SQLite) and the PayPal
provider's real HTTP calls, against a local PayPal API that validates every request and answer
against PayPal's published OpenAPI documents (`tests.support.paypal_api`).

What is proved: an order is created with intent AUTHORIZE from the vaulted wallet and then
authorized, in PayPal's decimal amounts; capture, void and refund act on its authorization and
capture; OAuth tokens are fetched once and renewed when refused; a timeout or a 500 is asked
again with the same PayPal-Request-Id and pays once; webhook events are verified by PayPal's
postback API and applied once, and refused when forged, stale or unsigned.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from services.kit.domain_errors import FailedPrecondition, Unauthenticated, Unavailable
from services.kit.money import Money
from services.payments.paypal_provider import amount_value, minor_units
from services.payments.provider_worker import ProviderWorker
from services.payments.records import (
    AUTHORIZED,
    CAPTURED,
    FAILED,
    PENDING,
    REFUNDED,
    VOIDED,
    Account,
    Payment,
    Viewer,
)
from tests.payments.local import ADMIN, ORDERS, LocalPayments, new_key, open_local, paypal_provider
from tests.support.paypal_api import LocalPayPal

_ORDERS = "/v2/checkout/orders"


def _anyone(owner: str, name: str) -> None:
    return None


def _wallet(local: LocalPayments, vault: str = "vault_ok", currency: str = "EUR") -> Account:
    return local.accounts.set_payment_method(local.customer(currency).id, vault, _anyone)


def _payment(local: LocalPayments, payment: Payment) -> Payment:
    return local.payments.payment(payment.id, _anyone)


def _deliver(local: LocalPayments, event: dict[str, Any], **signing: Any) -> None:
    body, headers = LocalPayPal.signed(event, **signing)
    local.payments.receive_event("paypal", {k.lower(): v for k, v in headers.items()}, body)


@pytest.mark.parametrize(
    ("minor", "currency", "value"),
    [(2500, "EUR", "25.00"), (1, "USD", "0.01"), (2500, "JPY", "2500"), (12345, "KWD", "12.345")],
    ids=["eur", "cent", "jpy-no-minor-units", "kwd-three-digits"],
)
def test_amounts_are_paypals_decimal_strings_both_ways(minor: int, currency: str, value: str) -> None:
    assert amount_value(minor, currency) == value
    assert minor_units(value, currency) == minor
    with pytest.raises(ValueError):
        minor_units("0.001", "EUR")


def test_an_order_is_authorized_from_the_vaulted_wallet_and_captured_into_the_ledger(
    paypal_local: LocalPayments, paypal_api: LocalPayPal
) -> None:
    account = _wallet(paypal_local)
    assert account.payment_method == "vault_ok"
    held = paypal_local.authorize(account, 2500, order="orders/p1")
    assert (held.state, held.provider) == (AUTHORIZED, "paypal")
    (created,) = paypal_api.calls("POST", _ORDERS)
    assert created["intent"] == "AUTHORIZE"
    assert created["payment_source"] == {"paypal": {"vault_id": "vault_ok"}}
    assert created["purchase_units"][0]["amount"] == {"currency_code": "EUR", "value": "25.00"}
    assert created["purchase_units"][0]["custom_id"] == held.id
    assert paypal_api.authorizations[held.provider_reference]["status"] == "CREATED"

    captured = paypal_local.payments.capture(ORDERS, new_key(), held.id)
    assert (captured.state, captured.captured, captured.provider_capture) == (
        CAPTURED,
        2500,
        next(iter(paypal_api.captures)),
    )
    assert paypal_local.balances("paypal-eur", "merchant-eur", account.id) == {
        "paypal-eur": -2500,
        "merchant-eur": 2500,
        account.id: 0,
    }
    assert paypal_api.tokens_issued == 1, "one OAuth token for every call while it lasts"


def test_a_sale_is_authorized_then_captured_at_paypal_in_one_call(
    paypal_local: LocalPayments, paypal_api: LocalPayPal
) -> None:
    account = _wallet(paypal_local)
    sold = paypal_local.authorize(account, 1200, order="orders/p2", capture=True)
    assert (sold.state, sold.captured, sold.provider) == (CAPTURED, 1200, "paypal")
    assert sold.provider_capture in paypal_api.captures
    assert paypal_local.balances("paypal-eur", "merchant-eur") == {"paypal-eur": -1200, "merchant-eur": 1200}


def test_refunds_go_back_through_the_capture(paypal_local: LocalPayments, paypal_api: LocalPayPal) -> None:
    held = paypal_local.authorize(_wallet(paypal_local, currency="JPY"), 5000)
    paypal_local.payments.capture(ORDERS, new_key(), held.id)
    paypal_local.payments.refund(ADMIN, new_key(), held.id, Money("JPY", 1200), "broken")
    rest = paypal_local.payments.refund(ADMIN, new_key(), held.id, None, "returned")
    assert (rest.state, rest.refunded) == (REFUNDED, 5000)
    assert sorted(r["amount"]["value"] for r in paypal_api.refunds.values()) == ["1200", "3800"]


def test_a_wallet_that_cannot_pay_is_a_decline(paypal_local: LocalPayments) -> None:
    declined = paypal_local.authorize(_wallet(paypal_local, "vault_cannot_pay"), 700)
    assert (declined.state, declined.failure_reason) == (FAILED, "PAYER_CANNOT_PAY")


def test_a_timeout_is_asked_again_with_the_same_request_id_and_pays_once(
    paypal_local: LocalPayments, paypal_api: LocalPayPal
) -> None:
    account, request_id = _wallet(paypal_local), new_key()
    paypal_api.stall(_ORDERS, 2.5)
    with pytest.raises(Unavailable):
        paypal_local.authorize(account, 900, order="orders/t1", request_id=request_id)
    held = paypal_local.authorize(account, 900, order="orders/t1", request_id=request_id)
    assert held.state == AUTHORIZED
    assert len(paypal_api.orders) == 1 and len(paypal_api.authorizations) == 1
    ids = {key for method, path, _, key in paypal_api.requests if (method, path) == ("POST", _ORDERS)}
    assert ids == {f"poly-{held.id}-authorize"}


def test_a_500_on_capture_is_asked_again_and_captures_once(
    paypal_local: LocalPayments, paypal_api: LocalPayPal
) -> None:
    held = paypal_local.authorize(_wallet(paypal_local), 400)
    paypal_api.fail("/v2/payments/authorizations")
    with pytest.raises(Unavailable):
        paypal_local.payments.capture(ORDERS, request := new_key(), held.id)
    assert paypal_local.payments.capture(ORDERS, request, held.id).state == CAPTURED
    assert len(paypal_api.captures) == 1


def test_a_revoked_token_is_renewed_once_and_the_call_goes_through(
    paypal_local: LocalPayments, paypal_api: LocalPayPal
) -> None:
    held = paypal_local.authorize(_wallet(paypal_local), 400)
    paypal_api.revoke_tokens()
    assert paypal_local.payments.capture(ORDERS, new_key(), held.id).state == CAPTURED
    assert paypal_api.tokens_issued == 2


def test_wrong_client_credentials_are_unavailable_never_a_decline(
    tmp_path: Path, paypal_api: LocalPayPal
) -> None:
    local = open_local(tmp_path / "payments.db", paypal_provider(paypal_api, secret="not-the-secret"))
    try:
        with pytest.raises(Unavailable):
            local.authorize(local.accounts.set_payment_method(local.customer().id, "vault_ok", _anyone), 100)
        (payment,) = local.payments.list_payments(
            Viewer(ADMIN, sees_all=True), size=0, token="", filter_text="", order_by=""
        ).payments
        assert payment.state == PENDING, "asked again later, by the saga or the worker"
    finally:
        local.engine.dispose()


def test_a_cancelled_order_is_voided_at_paypal_by_the_worker(
    paypal_local: LocalPayments, paypal_api: LocalPayPal
) -> None:
    held = paypal_local.authorize(_wallet(paypal_local), 1200, order="orders/c1")
    paypal_local.payments.cancel_order("orders/c1", "changed my mind")
    worker = ProviderWorker(paypal_local.payments.transactions, _outside(paypal_local))
    assert worker.run_once() == 1
    assert _payment(paypal_local, held).state == VOIDED
    assert paypal_api.authorizations[held.provider_reference]["status"] == "VOIDED"


def test_a_capture_and_a_refund_made_at_paypal_arrive_as_events_applied_once(
    paypal_local: LocalPayments, paypal_api: LocalPayPal
) -> None:
    held = paypal_local.authorize(_wallet(paypal_local), 3000)
    captured = paypal_api.capture_in_dashboard(held.provider_reference)
    _deliver(paypal_local, captured)
    _deliver(paypal_local, captured)
    after = _payment(paypal_local, held)
    assert (after.state, after.provider_capture) == (CAPTURED, captured["resource"]["id"])
    refunded = paypal_api.refund_in_dashboard(after.provider_capture, "30.00")
    _deliver(paypal_local, refunded)
    _deliver(paypal_local, refunded)
    assert _payment(paypal_local, held).refunded == 3000
    assert paypal_local.balances("merchant-eur") == {"merchant-eur": 0}


def test_our_refund_and_its_event_are_one_refund(
    paypal_local: LocalPayments, paypal_api: LocalPayPal
) -> None:
    held = paypal_local.authorize(_wallet(paypal_local), 1000)
    paypal_local.payments.capture(ORDERS, new_key(), held.id)
    paypal_local.payments.refund(ADMIN, new_key(), held.id, Money("EUR", 250), "")
    (event,) = paypal_api.of_type("PAYMENT.CAPTURE.REFUNDED")
    _deliver(paypal_local, event)
    assert _payment(paypal_local, held).refunded == 250


@pytest.mark.parametrize(
    "signing",
    [
        {"webhook_id": "WH0ANOTHER0ENDPOINT"},
        {"at": -dt.timedelta(minutes=6)},
        {"at": dt.timedelta(minutes=6)},
    ],
    ids=["another-webhook", "stale", "from-the-future"],
)
def test_an_event_paypal_does_not_vouch_for_now_is_refused(
    paypal_local: LocalPayments, paypal_api: LocalPayPal, signing: dict[str, Any]
) -> None:
    if "at" in signing:  # off by that much from when the test runs, not from when it was collected
        signing = {"at": dt.datetime.now(dt.UTC) + signing["at"]}
    held = paypal_local.authorize(_wallet(paypal_local), 500)
    with pytest.raises(Unauthenticated):
        _deliver(paypal_local, paypal_api.capture_in_dashboard(held.provider_reference), **signing)
    assert _payment(paypal_local, held).state == AUTHORIZED


def test_a_tampered_or_unsigned_event_is_refused(
    paypal_local: LocalPayments, paypal_api: LocalPayPal
) -> None:
    held = paypal_local.authorize(_wallet(paypal_local), 500)
    body, headers = LocalPayPal.signed(paypal_api.capture_in_dashboard(held.provider_reference))
    lowered = {k.lower(): v for k, v in headers.items()}
    with pytest.raises(Unauthenticated):
        paypal_local.payments.receive_event("paypal", lowered, body.replace(b'"5.00"', b'"0.05"'))
    with pytest.raises(Unauthenticated):
        paypal_local.payments.receive_event("paypal", {"content-type": "application/json"}, body)
    assert _payment(paypal_local, held).state == AUTHORIZED


def test_an_event_paypal_cannot_verify_now_is_unavailable_so_paypal_sends_it_again(
    paypal_local: LocalPayments, paypal_api: LocalPayPal
) -> None:
    held = paypal_local.authorize(_wallet(paypal_local), 500)
    event = paypal_api.capture_in_dashboard(held.provider_reference)
    paypal_api.fail("/v1/notifications/verify-webhook-signature")
    with pytest.raises(Unavailable):
        _deliver(paypal_local, event)
    _deliver(paypal_local, event)
    assert _payment(paypal_local, held).state == CAPTURED


def test_a_capture_paypal_refuses_is_a_failed_precondition(
    paypal_local: LocalPayments, paypal_api: LocalPayPal
) -> None:
    held = paypal_local.authorize(_wallet(paypal_local), 500)
    paypal_api.authorizations[held.provider_reference]["status"] = "VOIDED"  # expired at PayPal
    with pytest.raises(FailedPrecondition) as refused:
        paypal_local.payments.capture(ORDERS, new_key(), held.id)
    assert refused.value.metadata["provider_reason"] == "AUTHORIZATION_VOIDED"


def _outside(local: LocalPayments) -> Any:
    assert local.payments.outside is not None
    return local.payments.outside
