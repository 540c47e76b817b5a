"""Stripe's webhook events applied to payments: verified with Stripe's signature scheme
(``Stripe-Signature``, five minutes' tolerance) by the SDK before anything in them is read, and
applied once however often they are delivered (their id goes into the inbox in the
transaction that applies them). The events are the ones the local Stripe API makes for each
change, from Stripe's fixture event, signed as Stripe signs them.

Both ways: a correctly signed event is applied once, also when delivered twice; a tampered,
unsigned, wrongly signed or stale one is refused and changes nothing.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from sqlalchemy import func, select

from services.kit.domain_errors import NotFound, Unauthenticated, Unavailable
from services.kit.money import Money
from services.payments import store
from services.payments.records import AUTHORIZED, CAPTURED, PARTIALLY_REFUNDED, REFUNDED, Payment, Viewer
from tests.payments.local import ADMIN, ORDERS, LocalPayments, new_key, open_local
from tests.support.stripe_api import LocalStripe


def _deliver(local: LocalPayments, event: dict[str, Any], **signing: Any) -> None:
    body, headers = LocalStripe.signed(event, **signing)
    local.payments.receive_event("stripe", _lower(headers), body)


def _inbox_size(local: LocalPayments) -> int:
    with local.engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(store.BUS.inbox)).scalar_one())


def _captured_order(local: LocalPayments, amount: int) -> Payment:
    account = local.customer()
    account = local.accounts.set_payment_method(account.id, "pm_card_visa", lambda owner, name: None)
    held = local.authorize(account, amount)
    return local.payments.capture(ORDERS, new_key(), held.id)


def _payment(local: LocalPayments, payment: Payment) -> Payment:
    return local.payments.payment(payment.id, lambda owner, name: None)


def test_a_capture_made_in_stripes_dashboard_is_recorded_once_however_often_it_arrives(
    stripe_local: LocalPayments, stripe_api: LocalStripe
) -> None:
    account = stripe_local.accounts.set_payment_method(
        stripe_local.customer().id, "pm_card_visa", lambda owner, name: None
    )
    held = stripe_local.authorize(account, 1500)
    event = stripe_api.capture_in_dashboard(held.provider_reference)
    for _ in range(3):
        _deliver(stripe_local, event)
    captured = _payment(stripe_local, held)
    assert (captured.state, captured.captured) == (CAPTURED, 1500)
    assert stripe_local.balances("merchant-eur", "stripe-eur") == {"merchant-eur": 1500, "stripe-eur": -1500}
    assert stripe_local.published(held.name) == ["PaymentAuthorized", "PaymentCaptured"]
    # The saga's own capture afterwards finds it done, and Stripe is not asked to capture.
    assert stripe_local.payments.capture(ORDERS, new_key(), held.id).captured == 1500
    assert stripe_api.calls("POST", r"/v1/payment_intents/.*/capture") == []


def test_our_own_refund_and_its_event_are_one_refund(
    stripe_local: LocalPayments, stripe_api: LocalStripe
) -> None:
    paid = _captured_order(stripe_local, 1000)
    stripe_local.payments.refund(ADMIN, new_key(), paid.id, Money("EUR", 400), "damaged")
    (refunded,) = stripe_api.of_type("refund.created")
    _deliver(stripe_local, refunded)
    after = _payment(stripe_local, paid)
    assert (after.state, after.refunded) == (PARTIALLY_REFUNDED, 400)


def test_a_refund_made_in_stripes_dashboard_moves_the_ledger(
    stripe_local: LocalPayments, stripe_api: LocalStripe
) -> None:
    paid = _captured_order(stripe_local, 1000)
    _deliver(stripe_local, stripe_api.refund_in_dashboard(paid.provider_reference, 1000))
    after = _payment(stripe_local, paid)
    assert (after.state, after.refunded) == (REFUNDED, 1000)
    assert stripe_local.published(paid.name)[-1] == "PaymentRefunded"


def test_a_dispute_takes_the_money_back_from_the_merchant_once(
    stripe_local: LocalPayments, stripe_api: LocalStripe
) -> None:
    paid = _captured_order(stripe_local, 800)
    opened = stripe_api.dispute(paid.provider_reference)
    _deliver(stripe_local, opened)
    _deliver(stripe_local, opened)
    assert stripe_local.balances("merchant-eur", "stripe-eur") == {"merchant-eur": 0, "stripe-eur": 0}
    assert _payment(stripe_local, paid).state == CAPTURED, "a dispute is open, not decided"


def test_an_authorization_whose_answer_was_lost_is_recorded_from_its_event(
    stripe_local: LocalPayments, stripe_api: LocalStripe
) -> None:
    account = stripe_local.accounts.set_payment_method(
        stripe_local.customer().id, "pm_card_visa", lambda owner, name: None
    )
    stripe_api.stall("/v1/payment_intents", 2.5)
    with pytest.raises(Unavailable):
        stripe_local.authorize(account, 300)
    (event,) = stripe_api.of_type("payment_intent.amount_capturable_updated")
    _deliver(stripe_local, event)
    payment = stripe_local.payments.list_payments(
        _everyone(), size=0, token="", filter_text="", order_by=""
    ).payments[0]
    assert (payment.state, payment.provider_reference) == (AUTHORIZED, event["data"]["object"]["id"])


def _tampered(body: bytes, headers: dict[str, str], other: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    return body.replace(b'"amount": 700', b'"amount": 7'), headers


def _unsigned(body: bytes, headers: dict[str, str], other: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    return body, {}


def _made_up(body: bytes, headers: dict[str, str], other: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    return body, {"stripe-signature": f"t={int(time.time())},v1={'0' * 64}"}


def _anothers(body: bytes, headers: dict[str, str], other: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    return body, other  # a genuine signature, of another event


@pytest.mark.parametrize(
    "forge", [_tampered, _unsigned, _made_up, _anothers], ids=["tampered", "unsigned", "made-up", "anothers"]
)
def test_an_event_whose_signature_does_not_check_out_is_refused_and_changes_nothing(
    stripe_local: LocalPayments, stripe_api: LocalStripe, forge: Any
) -> None:
    paid = _captured_order(stripe_local, 700)
    before = _inbox_size(stripe_local)
    body, headers = LocalStripe.signed(stripe_api.refund_in_dashboard(paid.provider_reference, 700))
    _, other = LocalStripe.signed(stripe_api.of_type("payment_intent.succeeded")[0])
    forged_body, forged_headers = forge(body, _lower(headers), _lower(other))
    assert forged_body != body or forged_headers != _lower(headers)
    with pytest.raises(Unauthenticated) as refused:
        stripe_local.payments.receive_event("stripe", forged_headers, forged_body)
    assert refused.value.reason == "PROVIDER_EVENT_UNVERIFIED"
    assert _payment(stripe_local, paid).state == CAPTURED
    assert _inbox_size(stripe_local) == before, "nothing recorded"


def test_a_stale_event_is_refused_even_with_a_good_signature(
    stripe_local: LocalPayments, stripe_api: LocalStripe
) -> None:
    paid = _captured_order(stripe_local, 700)
    event = stripe_api.refund_in_dashboard(paid.provider_reference, 700)
    with pytest.raises(Unauthenticated):
        _deliver(stripe_local, event, at=int(time.time()) - 301)
    assert _payment(stripe_local, paid).state == CAPTURED
    _deliver(stripe_local, event)  # the same event, delivered fresh: applied
    assert _payment(stripe_local, paid).state == REFUNDED


def test_an_event_signed_with_another_secret_is_refused(
    stripe_local: LocalPayments, stripe_api: LocalStripe
) -> None:
    paid = _captured_order(stripe_local, 700)
    with pytest.raises(Unauthenticated):
        _deliver(stripe_local, stripe_api.dispute(paid.provider_reference), secret="whsec_someone_else")
    assert stripe_local.balances("merchant-eur") == {"merchant-eur": 700}


def test_a_signed_body_that_is_not_an_event_is_refused(stripe_local: LocalPayments) -> None:
    body, headers = LocalStripe.signed({"hello": "world"})
    with pytest.raises(Unauthenticated):
        stripe_local.payments.receive_event("stripe", _lower(headers), body)


def test_events_about_other_payments_are_recorded_and_ignored(
    stripe_local: LocalPayments, stripe_api: LocalStripe
) -> None:
    stranger = stripe_api.emit(
        "payment_intent.succeeded",
        stripe_api.object("payment_intent", id="pi_not_ours", metadata={"payment": "not-ours"}),
    )
    before = _inbox_size(stripe_local)
    _deliver(stripe_local, stranger)
    _deliver(stripe_local, stripe_api.emit("customer.created", stripe_api.object("customer")))
    assert _inbox_size(stripe_local) == before + 2


def test_events_for_a_provider_this_deployment_does_not_use_are_not_found(tmp_path: Any) -> None:
    ledger = open_local(tmp_path / "payments.db")
    try:
        body = json.dumps({"id": "evt_1"}).encode()
        with pytest.raises(NotFound) as refused:
            ledger.payments.receive_event("stripe", {}, body)
        assert refused.value.reason == "PROVIDER_NOT_CONFIGURED"
    finally:
        ledger.engine.dispose()


def test_a_pending_payment_is_never_moved_by_an_event_for_another_intent(
    stripe_local: LocalPayments, stripe_api: LocalStripe
) -> None:
    account = stripe_local.accounts.set_payment_method(
        stripe_local.customer().id, "pm_card_visa", lambda owner, name: None
    )
    held = stripe_local.authorize(account, 300)
    forged = stripe_api.emit(
        "payment_intent.succeeded",
        stripe_api.object(
            "payment_intent", id="pi_other", amount_received=300, metadata={"payment": held.id}
        ),
    )
    _deliver(stripe_local, forged)  # signed, but about another PaymentIntent than the payment's
    assert _payment(stripe_local, held).state == AUTHORIZED


def _everyone() -> Viewer:
    return Viewer(ADMIN, sees_all=True)


def _lower(headers: dict[str, str]) -> dict[str, str]:
    """Header names as gRPC metadata carries them."""
    return {name.lower(): value for name, value in headers.items()}
