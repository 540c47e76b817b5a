"""Where an outside provider and our ledger can disagree, and what keeps them together: lost
answers, events out of order, compensation racing other changes, retries with changed
inputs, money the provider moves later (partial captures, refunds that fail, disputes). Each
case is performed against the local Stripe API (`tests.support.stripe_api`) with the real
SDK and the real store; each was found by an attack on the first version and failed then.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from services.kit.domain_errors import InvalidArgument, Unavailable
from services.kit.money import Money
from services.payments.outside import OutsideSteps
from services.payments.provider_worker import ProviderWorker
from services.payments.providers import Charge, ProviderUnavailable
from services.payments.records import AUTHORIZED, CAPTURED, PENDING, REFUNDED, Account, Payment, Viewer
from services.payments.settings import StripeSettings
from services.payments.stripe_provider import StripeProvider
from tests.payments.local import ADMIN, ORDERS, LocalPayments, new_key, open_local
from tests.support.stripe_api import API_KEY, WEBHOOK_SECRET, LocalStripe

_INTENTS = "/v1/payment_intents"


def _anyone(owner: str, name: str) -> None:
    return None


def _customer(local: LocalPayments, token: str = "pm_card_visa") -> Account:
    return local.accounts.set_payment_method(local.customer().id, token, _anyone)


def _get(local: LocalPayments, payment: Payment) -> Payment:
    return local.payments.payment(payment.id, _anyone)


def _deliver(local: LocalPayments, event: dict[str, Any]) -> None:
    body, headers = LocalStripe.signed(event)
    local.payments.receive_event("stripe", {k.lower(): v for k, v in headers.items()}, body)


def _steps(local: LocalPayments) -> OutsideSteps:
    assert local.payments.outside is not None
    return local.payments.outside


def _worker(local: LocalPayments) -> ProviderWorker:
    return ProviderWorker(local.payments.transactions, _steps(local))


def test_a_cancelled_order_whose_capture_answer_was_lost_is_refunded(
    stripe_local: LocalPayments, stripe_api: LocalStripe
) -> None:
    held = stripe_local.authorize(_customer(stripe_local), 1000, order="orders/lost-capture")
    stripe_api.stall(f"{_INTENTS}/{held.provider_reference}/capture", 2.5)
    with pytest.raises(Unavailable):
        stripe_local.payments.capture(ORDERS, new_key(), held.id)  # Stripe captured; the answer was lost
    stripe_local.payments.cancel_order("orders/lost-capture", "customer cancelled")
    _worker(stripe_local).run_once()  # the void is refused (captured): captured, then refunded
    after = _get(stripe_local, held)
    assert (after.state, after.refunded, after.compensation) == (REFUNDED, 1000, "")
    assert [r["amount"] for r in stripe_api.refunds.values()] == [1000]


class _RacingProvider(StripeProvider):
    """Stripe, with an admin's partial refund landing while the worker's compensation call is
    on its way (no lock is held then)."""

    local: LocalPayments | None = None
    raced = False

    def refund(self, payment: Payment, amount: int, request: str) -> str:
        if request.startswith("cancel") and not self.raced and self.local is not None:
            self.raced = True
            self.local.payments.refund(ADMIN, new_key(), payment.id, Money("EUR", 300), "goodwill")
        return super().refund(payment, amount, request)


def test_compensation_racing_a_partial_refund_still_refunds_the_rest(
    tmp_path: Path, stripe_api: LocalStripe
) -> None:
    settings = StripeSettings(API_KEY, WEBHOOK_SECRET, stripe_api.api_base, 1.0)
    provider = _RacingProvider(settings)
    local = open_local(tmp_path / "payments.db", provider)
    provider.local = local
    try:
        held = local.authorize(_customer(local), 1000, order="orders/race")
        local.payments.capture(ORDERS, new_key(), held.id)
        local.payments.cancel_order("orders/race", "customer cancelled")
        worker = _worker(local)
        worker.run_once()  # Stripe refuses 1000 (300 went meanwhile): postponed, not dropped
        assert _get(local, held).compensation == "CANCEL"
        worker.run_once(dt.datetime.now(dt.UTC) + dt.timedelta(hours=2))
        after = _get(local, held)
        assert (after.state, after.refunded, after.compensation) == (REFUNDED, 1000, "")
        assert sorted(r["amount"] for r in stripe_api.refunds.values()) == [300, 700]
    finally:
        local.engine.dispose()


@pytest.mark.parametrize("later", ["refund", "dispute"])
def test_an_event_before_the_capture_it_builds_on_is_sent_again_not_lost(
    stripe_local: LocalPayments, stripe_api: LocalStripe, later: str
) -> None:
    held = stripe_local.authorize(_customer(stripe_local), 1000)
    captured = stripe_api.capture_in_dashboard(held.provider_reference)
    early = (
        stripe_api.refund_in_dashboard(held.provider_reference, 1000)
        if later == "refund"
        else stripe_api.dispute(held.provider_reference)
    )
    with pytest.raises(Unavailable) as too_early:
        _deliver(stripe_local, early)  # Stripe promises no order
    assert too_early.value.reason == "PROVIDER_EVENT_EARLY"
    _deliver(stripe_local, captured)
    _deliver(stripe_local, early)  # Stripe's retry: applied now
    if later == "refund":
        assert _get(stripe_local, held).refunded == 1000
    assert stripe_local.balances("merchant-eur", "stripe-eur") == {"merchant-eur": 0, "stripe-eur": 0}


def test_an_authorization_asked_again_after_the_method_changed_uses_the_first_method(
    stripe_local: LocalPayments, stripe_api: LocalStripe
) -> None:
    account = _customer(stripe_local)
    request_id, order = new_key(), "orders/method-changed"
    stripe_api.stall(_INTENTS, 2.5)
    with pytest.raises(Unavailable):
        stripe_local.authorize(account, 900, order=order, request_id=request_id)
    stripe_local.accounts.set_payment_method(account.id, "pm_card_visa", _anyone)  # a new card meanwhile
    retried = stripe_local.authorize(account, 900, order=order, request_id=request_id)
    assert retried.state == AUTHORIZED and len(stripe_api.intents) == 1


def test_a_partial_capture_in_the_dashboard_records_what_was_received(
    stripe_local: LocalPayments, stripe_api: LocalStripe
) -> None:
    held = stripe_local.authorize(_customer(stripe_local), 1000)
    intent = stripe_api.intents[held.provider_reference]
    intent.update(status="succeeded", amount_capturable=0, amount_received=400)
    _deliver(stripe_local, stripe_api.emit("payment_intent.succeeded", intent))
    assert _get(stripe_local, held).captured == 400
    assert stripe_local.balances("merchant-eur") == {"merchant-eur": 400}


def test_an_inquiry_takes_nothing_and_a_won_dispute_gives_the_money_back(
    stripe_local: LocalPayments, stripe_api: LocalStripe
) -> None:
    held = stripe_local.authorize(_customer(stripe_local), 800)
    stripe_local.payments.capture(ORDERS, new_key(), held.id)
    _deliver(stripe_local, stripe_api.dispute(held.provider_reference, inquiry=True))
    assert stripe_local.balances("merchant-eur") == {"merchant-eur": 800}, "an inquiry withdraws nothing"
    withdrawn = stripe_api.dispute(held.provider_reference)
    _deliver(stripe_local, withdrawn)
    assert stripe_local.balances("merchant-eur") == {"merchant-eur": 0}
    reinstated = stripe_api.dispute_won(withdrawn)
    _deliver(stripe_local, reinstated)
    _deliver(stripe_local, reinstated)
    assert stripe_local.balances("merchant-eur", "stripe-eur") == {"merchant-eur": 800, "stripe-eur": -800}


def test_a_refund_that_fails_at_stripe_afterwards_is_taken_back_once(
    stripe_local: LocalPayments, stripe_api: LocalStripe
) -> None:
    held = stripe_local.authorize(_customer(stripe_local), 1000)
    stripe_local.payments.capture(ORDERS, new_key(), held.id)
    refund = stripe_api.object(
        "refund",
        id="re_later_fails",
        amount=1000,
        currency="eur",
        payment_intent=held.provider_reference,
        status="pending",
        metadata={},
    )
    _deliver(stripe_local, stripe_api.emit("refund.created", refund))
    assert _get(stripe_local, held).state == REFUNDED
    failed = dict(refund, status="failed", failure_reason="lost_or_stolen_card")
    _deliver(stripe_local, stripe_api.emit("refund.failed", failed))
    _deliver(stripe_local, stripe_api.emit("refund.failed", failed))  # another event, same refund
    after = _get(stripe_local, held)
    assert (after.state, after.refunded) == (CAPTURED, 0)
    assert stripe_local.balances("merchant-eur") == {"merchant-eur": 1000}


def test_a_refund_asked_again_after_its_event_recorded_it_is_answered_not_refused(
    stripe_local: LocalPayments, stripe_api: LocalStripe
) -> None:
    held = stripe_local.authorize(_customer(stripe_local), 1000)
    stripe_local.payments.capture(ORDERS, new_key(), held.id)
    stripe_api.stall("/v1/refunds", 2.5)
    request_id = new_key()
    with pytest.raises(Unavailable):
        stripe_local.payments.refund(ADMIN, request_id, held.id, None, "returned")
    (event,) = stripe_api.of_type("refund.created")
    _deliver(stripe_local, event)
    again = stripe_local.payments.refund(ADMIN, request_id, held.id, None, "returned")
    assert (again.state, again.refunded) == (REFUNDED, 1000)
    assert len(stripe_api.refunds) == 1


def test_two_callers_reusing_a_request_id_get_two_refunds(
    stripe_local: LocalPayments, stripe_api: LocalStripe
) -> None:
    held = stripe_local.authorize(_customer(stripe_local), 1000)
    stripe_local.payments.capture(ORDERS, new_key(), held.id)
    shared = new_key()
    stripe_local.payments.refund("users/admin-a", shared, held.id, Money("EUR", 200), "")
    second = stripe_local.payments.refund("users/admin-b", shared, held.id, Money("EUR", 200), "")
    assert second.refunded == 400 and len(stripe_api.refunds) == 2


@pytest.mark.parametrize(
    "found",
    [
        {"object": "payment_intent", "id": "pi_x", "amount_received": "12.5", "metadata": {}},
        {"object": "refund", "id": "re_x", "amount": {"value": 1}, "metadata": {}},
        {"object": "refund", "id": "re_x", "amount": 1.5, "metadata": {}},
    ],
    ids=["amount-text", "amount-object", "amount-fraction"],
)
def test_a_signed_but_malformed_event_is_refused_cleanly(
    stripe_local: LocalPayments, found: dict[str, Any]
) -> None:
    event = {"id": "evt_x", "type": "refund.created", "data": {"object": found}}
    with pytest.raises(Exception) as refused:
        _deliver(stripe_local, event)
    assert refused.type.__module__ == "services.kit.domain_errors", "a clean gRPC error, never INTERNAL"


@pytest.mark.parametrize("token", ["", " ", "pm_", "card_123", "pm_x/../../v1/customers", "pm_\u00e9"])
def test_a_malformed_payment_method_is_refused_before_stripe_is_asked(
    stripe_local: LocalPayments, stripe_api: LocalStripe, token: str
) -> None:
    account = stripe_local.customer()
    with pytest.raises(InvalidArgument):
        stripe_local.accounts.set_payment_method(account.id, token, _anyone)
    assert stripe_api.requests == [], "no customer made, nothing sent"


def test_a_compensation_that_keeps_failing_is_asked_later_and_later_not_every_pass(
    stripe_local: LocalPayments, stripe_api: LocalStripe
) -> None:
    held = stripe_local.authorize(_customer(stripe_local), 500, order="orders/backoff")
    stripe_local.payments.cancel_order("orders/backoff", "cancelled")
    stripe_api.fail(f"{_INTENTS}/{held.provider_reference}/cancel", times=100)
    worker, now = _worker(stripe_local), dt.datetime.now(dt.UTC)
    assert worker.run_once(now) == 1
    assert worker.run_once(now + dt.timedelta(seconds=1)) == 0, "not due again yet"
    assert worker.run_once(now + dt.timedelta(seconds=3)) == 1
    assert _get(stripe_local, held).provider_attempts == 2
    stripe_api.fail(f"{_INTENTS}/{held.provider_reference}/cancel", times=0)


def test_an_authorization_still_processing_stays_pending_until_stripe_decides(
    stripe_local: LocalPayments, stripe_api: LocalStripe
) -> None:
    account = _customer(stripe_local)
    stripe_api.next_intent_status = "processing"  # a method that settles later: not a decline
    with pytest.raises(Unavailable):
        stripe_local.authorize(account, 700)
    (payment,) = stripe_local.payments.list_payments(
        _everyone(), size=0, token="", filter_text="", order_by=""
    ).payments
    assert payment.state == PENDING
    intent = stripe_api.intents[next(iter(stripe_api.intents))]
    intent.update(status="requires_capture", amount_capturable=700)
    _deliver(stripe_local, stripe_api.emit("payment_intent.amount_capturable_updated", intent))
    assert _get(stripe_local, payment).state == AUTHORIZED


_CONFLICT = {
    "error": {
        "type": "idempotency_error",
        "message": "There is currently another in-progress request using this Idempotent Key",
    }
}


class _Busy(BaseHTTPRequestHandler):
    """Stripe while the first request with a key is still running: 409 to the second."""

    def log_message(self, *args: Any) -> None:
        return

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        data = json.dumps(_CONFLICT).encode()
        self.send_response(409)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def busy() -> Iterator[StripeProvider]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Busy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield StripeProvider(
            StripeSettings(API_KEY, WEBHOOK_SECRET, f"http://127.0.0.1:{server.server_address[1]}", 2.0)
        )
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("step", ["authorize", "capture", "refund"])
def test_a_request_in_flight_with_the_same_key_is_unavailable_never_a_final_no(
    busy: StripeProvider, step: str
) -> None:
    now = dt.datetime.now(dt.UTC)
    payment = Payment(
        "p1",
        "orders/1",
        "a1",
        "users/u",
        "EUR",
        500,
        PENDING,
        "",
        now,
        now,
        provider="stripe",
        provider_reference="pi_1",
    )
    calls = {
        "authorize": lambda: busy.authorize(Charge(payment, "pm_1", "cus_1")),
        "capture": lambda: busy.capture(payment),
        "refund": lambda: busy.refund(payment, 100, "k"),
    }
    with pytest.raises(ProviderUnavailable):
        calls[step]()


def _everyone() -> Viewer:
    return Viewer(ADMIN, sees_all=True)
