"""Payments held by Stripe: the use cases over their real store (SQLite) and the real Stripe
SDK, against a local Stripe API built from Stripe's published fixtures, which checks every
request against the SDK's parameter types (`tests.support.stripe_api`).

What is proved: an authorization is a manual-capture PaymentIntent and capture, void and
refund move it; declines keep Stripe's reason; a timeout or a 500 is UNAVAILABLE and asking
again (the saga's retry, or the worker) sends the same idempotency key, so Stripe charges once;
the ledger records what Stripe did, balanced, without touching the customer's own account;
saga compensation is left for the worker, which voids or refunds at Stripe.
"""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import pytest

from services.kit.domain_errors import FailedPrecondition, InvalidArgument, PermissionDenied, Unavailable
from services.kit.money import Money
from services.payments.outside import OutsideSteps
from services.payments.provider_worker import ProviderWorker
from services.payments.records import (
    AUTHORIZED,
    CAPTURED,
    FAILED,
    PARTIALLY_REFUNDED,
    PENDING,
    REFUNDED,
    VOIDED,
    Account,
    Viewer,
)
from tests.payments.local import ADMIN, ORDERS, LocalPayments, new_key, open_local, stripe_provider
from tests.support.stripe_api import LocalStripe

_INTENTS = r"/v1/payment_intents"


@pytest.fixture
def local(stripe_local: LocalPayments) -> LocalPayments:
    return stripe_local


def _anyone(owner: str, name: str) -> None:
    return None


def _customer(local: LocalPayments, token: str = "pm_card_visa") -> Account:
    account = local.customer()
    return local.accounts.set_payment_method(account.id, token, _anyone)


def test_an_order_is_held_by_a_manual_capture_intent_and_captured_into_the_ledger(
    local: LocalPayments, stripe_api: LocalStripe
) -> None:
    account = _customer(local)
    assert account.payment_method.startswith("pm_") and account.payment_method != "pm_card_visa"
    held = local.authorize(account, 2500, order="orders/s1")
    assert (held.state, held.provider) == (AUTHORIZED, "stripe")
    intent = stripe_api.intents[held.provider_reference]
    assert (intent["amount"], intent["currency"], intent["capture_method"]) == (2500, "eur", "manual")
    assert intent["metadata"] == {"payment": held.id, "order": "orders/s1", "owner": account.owner}
    assert local.account(account.id).held == 0, "Stripe holds the money, not the ledger"

    captured = local.payments.capture(ORDERS, new_key(), held.id)
    assert (captured.state, captured.captured) == (CAPTURED, 2500)
    assert stripe_api.intents[held.provider_reference]["status"] == "succeeded"
    assert local.balances("stripe-eur", "merchant-eur", account.id) == {
        "stripe-eur": -2500,
        "merchant-eur": 2500,
        account.id: 0,
    }
    assert local.published(held.name) == ["PaymentAuthorized", "PaymentCaptured"]


def test_a_sale_is_held_then_captured_at_stripe_in_one_call(
    local: LocalPayments, stripe_api: LocalStripe
) -> None:
    account = _customer(local)
    sold = local.authorize(account, 1500, order="orders/s2", capture=True)
    assert (sold.state, sold.captured, sold.provider) == (CAPTURED, 1500, "stripe")
    assert stripe_api.intents[sold.provider_reference]["status"] == "succeeded"
    assert local.balances("stripe-eur", "merchant-eur") == {"stripe-eur": -1500, "merchant-eur": 1500}
    assert local.published(sold.name) == ["PaymentAuthorized", "PaymentCaptured"]


def test_a_sale_whose_capture_got_no_answer_is_left_held_and_taken_by_its_repeat(
    local: LocalPayments, stripe_api: LocalStripe
) -> None:
    account = _customer(local)
    request_id, order = new_key(), f"orders/{uuid.uuid4()}"
    stripe_api.fail(f"{_INTENTS}/")  # the capture's call (the create is `_INTENTS` itself)
    held = local.authorize(account, 800, order=order, request_id=request_id, capture=True)
    assert held.state == AUTHORIZED, "held, not yet taken: the caller asks again"
    sold = local.authorize(account, 800, order=order, request_id=request_id, capture=True)
    assert (sold.id, sold.state, sold.captured) == (held.id, CAPTURED, 800)
    assert len(stripe_api.intents) == 1, "held once"
    assert local.balances("merchant-eur") == {"merchant-eur": 800}


def test_refunds_go_back_through_stripe_and_never_past_what_was_captured(
    local: LocalPayments, stripe_api: LocalStripe
) -> None:
    account = _customer(local)
    held = local.authorize(account, 1000)
    local.payments.capture(ORDERS, new_key(), held.id)
    part = local.payments.refund(ADMIN, new_key(), held.id, Money("EUR", 300), "damaged")
    assert (part.state, part.refunded) == (PARTIALLY_REFUNDED, 300)
    with pytest.raises(FailedPrecondition) as too_much:
        local.payments.refund(ADMIN, new_key(), held.id, Money("EUR", 701), "")
    assert too_much.value.reason == "REFUND_EXCEEDS_CAPTURED"
    rest = local.payments.refund(ADMIN, new_key(), held.id, None, "returned")
    assert (rest.state, rest.refunded) == (REFUNDED, 1000)
    assert sorted(r["amount"] for r in stripe_api.refunds.values()) == [300, 700]
    assert local.balances("stripe-eur", "merchant-eur") == {"stripe-eur": 0, "merchant-eur": 0}


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("pm_card_chargeDeclined", "GENERIC_DECLINE"),
        ("pm_card_chargeDeclinedInsufficientFunds", "INSUFFICIENT_FUNDS"),
    ],
    ids=["declined", "insufficient-funds"],
)
def test_a_decline_is_a_failed_payment_with_stripes_reason(
    local: LocalPayments, stripe_api: LocalStripe, token: str, reason: str
) -> None:
    account = _customer(local, token)
    declined = local.authorize(account, 700)
    assert (declined.state, declined.failure_reason) == (FAILED, reason)
    assert local.published(declined.name) == ["PaymentFailed"]
    with pytest.raises(FailedPrecondition):
        local.payments.capture(ORDERS, new_key(), declined.id)


def test_an_account_without_a_payment_method_is_declined_without_asking_stripe(
    local: LocalPayments, stripe_api: LocalStripe
) -> None:
    declined = local.authorize(local.customer(), 700)
    assert (declined.state, declined.failure_reason) == (FAILED, "PAYMENT_METHOD_REQUIRED")
    assert stripe_api.calls("POST", _INTENTS) == []


def test_a_timeout_is_unavailable_and_the_retry_gets_the_first_intent(
    local: LocalPayments, stripe_api: LocalStripe
) -> None:
    account = _customer(local)
    request_id, order = new_key(), f"orders/{uuid.uuid4()}"
    stripe_api.stall(_INTENTS, 2.5)  # Stripe holds the money, the answer never arrives in time
    with pytest.raises(Unavailable) as timed_out:
        local.authorize(account, 900, order=order, request_id=request_id)
    assert timed_out.value.reason == "PAYMENT_PROVIDER_UNAVAILABLE"
    (pending,) = local.payments.list_payments(_all(), size=0, token="", filter_text="", order_by="").payments
    assert pending.state == PENDING

    held = local.authorize(account, 900, order=order, request_id=request_id)
    assert held.state == AUTHORIZED and held.id == pending.id
    assert len(stripe_api.intents) == 1, "asked twice, held once"
    keys = {key for method, path, _, key in stripe_api.requests if (method, path) == ("POST", _INTENTS)}
    assert keys == {f"poly-{held.id}-authorize"}


def test_a_capture_that_stripe_failed_is_asked_again_and_taken_once(
    local: LocalPayments, stripe_api: LocalStripe
) -> None:
    held = local.authorize(_customer(local), 400)
    stripe_api.fail(f"{_INTENTS}/{held.provider_reference}/capture")
    with pytest.raises(Unavailable):
        local.payments.capture(ORDERS, request := new_key(), held.id)
    assert local.payments.payment(held.id, _anyone).state == AUTHORIZED
    assert local.payments.capture(ORDERS, request, held.id).state == CAPTURED
    assert local.payments.capture(ORDERS, new_key(), held.id).captured == 400
    assert local.balances("merchant-eur") == {"merchant-eur": 400}


def test_the_worker_finishes_an_authorization_its_caller_gave_up_on(
    local: LocalPayments, stripe_api: LocalStripe
) -> None:
    account = _customer(local)
    stripe_api.stall(_INTENTS, 2.5)
    with pytest.raises(Unavailable):
        local.authorize(account, 650)
    worker = ProviderWorker(local.payments.transactions, _steps(local))
    assert worker.run_once() == 0, "a PENDING payment is left to its caller for a while"
    assert worker.run_once(dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)) == 1
    (payment,) = local.payments.list_payments(_all(), size=0, token="", filter_text="", order_by="").payments
    assert payment.state == AUTHORIZED and len(stripe_api.intents) == 1


@pytest.mark.parametrize("captured", [False, True], ids=["authorized", "captured"])
def test_a_cancelled_order_is_voided_or_refunded_at_stripe_by_the_worker(
    local: LocalPayments, stripe_api: LocalStripe, captured: bool
) -> None:
    account = _customer(local)
    held = local.authorize(account, 1200, order="orders/c1")
    if captured:
        local.payments.capture(ORDERS, new_key(), held.id)
    left = local.payments.cancel_order("orders/c1", "customer asked")
    assert left is not None and left.compensation == "CANCEL", (
        "no provider call inside the consumer's transaction"
    )
    worker = ProviderWorker(local.payments.transactions, _steps(local))
    assert worker.run_once() == 1
    settled = local.payments.payment(held.id, _anyone)
    intent = stripe_api.intents[held.provider_reference]
    if captured:
        assert (settled.state, settled.refunded) == (REFUNDED, 1200)
        assert [r["amount"] for r in stripe_api.refunds.values()] == [1200]
    else:
        assert settled.state == VOIDED and intent["status"] == "canceled"
    assert settled.compensation == ""
    assert worker.run_once() == 0, "done once"


def test_a_wrong_api_key_is_unavailable_never_a_decline(tmp_path: Path, stripe_api: LocalStripe) -> None:
    local = open_local(tmp_path / "payments.db", stripe_provider(stripe_api, key="sk_test_wrong"))
    try:
        with pytest.raises(Unavailable):
            local.accounts.set_payment_method(local.customer().id, "pm_card_visa", _anyone)
    finally:
        local.engine.dispose()


def test_payment_methods_are_checked_by_stripe_and_belong_to_the_owner(
    local: LocalPayments, stripe_api: LocalStripe
) -> None:
    account = local.customer()
    with pytest.raises(InvalidArgument) as unknown:
        local.accounts.set_payment_method(account.id, "pm_not_a_real_token", _anyone)
    assert unknown.value.reason == "PAYMENT_METHOD_INVALID"
    with pytest.raises(InvalidArgument):
        local.accounts.set_payment_method(account.id, "pm_\ncard", _anyone)

    def someone_else(owner: str, name: str) -> None:
        raise PermissionDenied("PERMISSION_DENIED", "not yours")

    with pytest.raises(PermissionDenied):
        local.accounts.set_payment_method(account.id, "pm_card_visa", someone_else)
    assert stripe_api.calls("POST", r"/v1/payment_methods/.*") == [{"customer": _only(stripe_api.customers)}]


def test_a_ledger_deployment_has_no_payment_methods(tmp_path: Path) -> None:
    local = open_local(tmp_path / "payments.db")
    try:
        with pytest.raises(FailedPrecondition) as refused:
            local.accounts.set_payment_method(local.customer().id, "pm_card_visa", _anyone)
        assert refused.value.reason == "PAYMENT_METHODS_NOT_USED"
    finally:
        local.engine.dispose()


def _only(found: dict[str, object]) -> str:
    (key,) = found
    return key


def _all() -> Viewer:
    return Viewer(ADMIN, sees_all=True)


def _steps(local: LocalPayments) -> OutsideSteps:
    assert local.payments.outside is not None
    return local.payments.outside
