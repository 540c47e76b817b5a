"""The payments service as a process, on SQLite and PostgreSQL: accounts, funding, the saga
steps (authorize and capture as orders calls them, void/refund on OrderCancelled), refunds, reads,
bad input and who may call what. Every test that moves money checks the ledger sums to zero.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message

from poly.events.v1 import event_sink_pb2, events_pb2
from poly.payments.v1 import payments_service_pb2 as pb
from poly.payments.v1 import resources_pb2
from services.kit.money import MAX_AMOUNT_MINOR
from tests.payments.helpers import Customer, System, eur, new_key, refused
from tests.support.status import refusal

pytestmark = pytest.mark.slow  # starts the payments service

State = resources_pb2.Payment.State
Kind = resources_pb2.LedgerEntry.Kind


def _capture(system: System, payment: str, key: str = "") -> resources_pb2.Payment:
    request = pb.CapturePaymentRequest(name=payment, request_id=key or new_key())
    reply: resources_pb2.Payment = system.orders.CapturePayment(request, timeout=10)
    return reply


def _refund(system: System, payment: str, amount: int | None, key: str = "") -> resources_pb2.Payment:
    request = pb.RefundPaymentRequest(name=payment, request_id=key or new_key(), reason="damaged")
    if amount is not None:
        request.amount.CopyFrom(eur(amount))
    reply: resources_pb2.Payment = system.payments().RefundPayment(request, metadata=system.admin, timeout=10)
    return reply


def _entries(system: System, customer: Customer, filter_text: str = "") -> list[resources_pb2.LedgerEntry]:
    request = pb.ListLedgerEntriesRequest(parent=customer.account, filter=filter_text)
    reply = system.payments().ListLedgerEntries(request, metadata=customer.metadata, timeout=10)
    return list(reply.ledger_entries)


# -- accounts and funding -----------------------------------------------------------------


def test_registration_opens_one_account_in_the_default_currency(system: System) -> None:
    customer = system.customer()
    account = system.payments().GetAccount(
        pb.GetAccountRequest(name=customer.account), metadata=customer.metadata, timeout=10
    )
    assert (account.owner, account.currency_code) == (customer.user, "EUR")
    assert account.balance.amount_minor == account.held.amount_minor == account.available.amount_minor == 0
    # UserRegistered delivered again under another event id: still one account.
    event = events_pb2.UserRegistered(user=customer.user, email="again@example.com")
    assert (
        system.push(event, customer.user, source="auth") == event_sink_pb2.PushEventResponse.OUTCOME_APPLIED
    )
    reply = system.payments().ListAccounts(pb.ListAccountsRequest(), metadata=customer.metadata, timeout=10)
    assert [a.name for a in reply.accounts] == [customer.account]


def test_funding_books_a_balanced_transaction_once_per_request_id(system: System) -> None:
    before = system.ledger_total()
    customer = system.customer()
    key = new_key()
    request = pb.FundAccountRequest(name=customer.account, amount=eur(5000), request_id=key)
    funded = system.payments().FundAccount(request, metadata=system.admin, timeout=10)
    again = system.payments().FundAccount(request, metadata=system.admin, timeout=10)
    assert funded.balance.amount_minor == again.balance.amount_minor == 5000
    [entry] = _entries(system, customer)
    assert (entry.kind, entry.amount.amount_minor, entry.payment) == (Kind.KIND_FUNDING, 5000, "")
    fetched = system.payments().GetLedgerEntry(
        pb.GetLedgerEntryRequest(name=entry.name), metadata=customer.metadata, timeout=10
    )
    assert fetched == entry
    request.amount.amount_minor = 6000
    reused = refusal(refused(system.payments().FundAccount, request, metadata=system.admin))
    assert (reused.code, reused.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "REQUEST_ID_REUSED")
    missing = pb.FundAccountRequest(name="accounts/nope", amount=eur(1), request_id=new_key())
    assert refusal(refused(system.payments().FundAccount, missing, metadata=system.admin)).code == (
        grpc.StatusCode.NOT_FOUND
    )
    merchant = pb.FundAccountRequest(name="accounts/funding-eur", amount=eur(1), request_id=new_key())
    system_account = refusal(refused(system.payments().FundAccount, merchant, metadata=system.admin))
    assert (system_account.code, system_account.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "ACCOUNT_NOT_FUNDABLE",
    )
    assert system.ledger_total() == before == 0


# -- the saga: authorize, capture, refund, void ---------------------------------------------


def test_a_sale_over_grpc_answers_the_payment_captured(system: System) -> None:
    customer = system.customer(funds=10_000)
    request = pb.AuthorizePaymentRequest(
        order=f"orders/{uuid.uuid4()}",
        owner=customer.user,
        amount=eur(2500),
        request_id=new_key(),
        capture=True,
    )
    sold = system.orders.AuthorizePayment(request, timeout=10)
    assert (sold.state, sold.captured_amount.amount_minor) == (State.STATE_CAPTURED, 2500)
    assert system.orders.AuthorizePayment(request, timeout=10) == sold, "a repeat returns it unchanged"
    account = system.account(customer.account)
    assert (account.balance.amount_minor, account.held.amount_minor) == (7500, 0)
    [capture] = _entries(system, customer, "kind = KIND_CAPTURE")
    assert (capture.amount.amount_minor, capture.payment) == (-2500, sold.name)
    request.capture = False
    reused = refusal(refused(system.orders.AuthorizePayment, request))
    assert (reused.code, reused.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "REQUEST_ID_REUSED")
    assert system.ledger_total() == 0


def test_an_authorization_holds_funds_then_capture_and_refunds_move_them(system: System) -> None:
    customer = system.customer(funds=10_000)
    order = system.authorized(customer, 2500)
    payment = system.payment_of(order)
    assert (payment.state, payment.owner, payment.account) == (
        State.STATE_AUTHORIZED,
        customer.user,
        customer.account,
    )
    account = system.account(customer.account)
    assert (account.balance.amount_minor, account.held.amount_minor, account.available.amount_minor) == (
        10_000,
        2500,
        7500,
    )

    key = new_key()
    captured = _capture(system, payment.name, key)
    assert (captured.state, captured.captured_amount.amount_minor) == (State.STATE_CAPTURED, 2500)
    assert _capture(system, payment.name, key) == captured, "a repeat returns the payment unchanged"
    assert _capture(system, payment.name).state == State.STATE_CAPTURED, "so does a capture with a new key"
    account = system.account(customer.account)
    assert (account.balance.amount_minor, account.held.amount_minor) == (7500, 0)
    [capture] = _entries(system, customer, "kind = KIND_CAPTURE")
    assert (capture.amount.amount_minor, capture.payment) == (-2500, payment.name)

    refund_key = new_key()
    partial = _refund(system, payment.name, 1000, refund_key)
    assert (partial.state, partial.refunded_amount.amount_minor) == (State.STATE_PARTIALLY_REFUNDED, 1000)
    assert _refund(system, payment.name, 1000, refund_key) == partial
    reused = refusal(
        refused(
            system.payments().RefundPayment,
            _refund_request(payment.name, 900, refund_key),
            metadata=system.admin,
        )
    )
    assert (reused.code, reused.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "REQUEST_ID_REUSED")
    too_much = refusal(
        refused(system.payments().RefundPayment, _refund_request(payment.name, 1501), metadata=system.admin)
    )
    assert (too_much.code, too_much.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "REFUND_EXCEEDS_CAPTURED",
    )
    rest = _refund(system, payment.name, None)
    assert (rest.state, rest.refunded_amount.amount_minor) == (State.STATE_REFUNDED, 2500)
    done = refusal(
        refused(system.payments().RefundPayment, _refund_request(payment.name, 1), metadata=system.admin)
    )
    assert (done.code, done.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PAYMENT_NOT_REFUNDABLE")

    assert system.account(customer.account).balance.amount_minor == 10_000
    assert system.outbox(payment.name) == [
        "PaymentAuthorized",
        "PaymentCaptured",
        "PaymentRefunded",
        "PaymentRefunded",
    ]
    assert system.ledger_total() == 0


def _refund_request(payment: str, amount: int, key: str = "") -> pb.RefundPaymentRequest:
    return pb.RefundPaymentRequest(name=payment, amount=eur(amount), request_id=key or new_key())


def test_insufficient_funds_fail_the_payment_and_it_cannot_be_captured(system: System) -> None:
    customer = system.customer(funds=1000)
    payment = system.payment_of(system.authorized(customer, 1001))
    assert (payment.state, payment.failure_reason) == (State.STATE_FAILED, "INSUFFICIENT_FUNDS")
    assert system.account(customer.account).held.amount_minor == 0
    refused_capture = refusal(
        refused(
            system.orders.CapturePayment, pb.CapturePaymentRequest(name=payment.name, request_id=new_key())
        )
    )
    assert (refused_capture.code, refused_capture.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "PAYMENT_NOT_CAPTURABLE",
    )
    assert system.outbox(payment.name) == ["PaymentFailed"]
    assert system.ledger_total() == 0


def test_an_order_in_a_currency_without_an_account_fails_with_account_not_found(system: System) -> None:
    customer = system.customer(funds=1000)
    payment = system.payment_of(system.authorized(customer, 100, currency="USD"))
    assert (payment.state, payment.failure_reason, payment.account) == (
        State.STATE_FAILED,
        "ACCOUNT_NOT_FOUND",
        "",
    )


def test_cancelling_voids_a_hold_and_refunds_a_capture(system: System) -> None:
    customer = system.customer(funds=5000)
    held = system.authorized(customer, 1200)
    taken = system.authorized(customer, 800)
    _capture(system, system.payment_of(taken).name)
    system.order_cancelled(customer, held)
    system.order_cancelled(customer, taken)
    voided, refunded = system.payment_of(held), system.payment_of(taken)
    assert voided.state == State.STATE_VOIDED
    assert (refunded.state, refunded.refunded_amount.amount_minor) == (State.STATE_REFUNDED, 800)
    account = system.account(customer.account)
    assert (account.balance.amount_minor, account.held.amount_minor) == (5000, 0)
    assert system.outbox(voided.name) == ["PaymentAuthorized", "PaymentVoided"]
    void = pb.VoidPaymentRequest(name=voided.name, request_id=new_key())
    assert system.orders.VoidPayment(void, timeout=10) == voided, "voiding again changes nothing"
    capture = refusal(
        refused(
            system.orders.CapturePayment, pb.CapturePaymentRequest(name=voided.name, request_id=new_key())
        )
    )
    assert capture.reason == "PAYMENT_NOT_CAPTURABLE"
    failed = system.authorized(customer, 1_000_000)
    system.order_cancelled(customer, failed)
    system.order_cancelled(customer, f"orders/{uuid.uuid4()}")  # never had a payment: nothing
    assert system.payment_of(failed).state == State.STATE_FAILED
    assert system.ledger_total() == 0


def test_an_order_cancelled_before_its_authorization_holds_no_funds(system: System) -> None:
    """Orders' AuthorizePayment arriving after OrderCancelled was applied (it was in flight
    when the order was cancelled): the order's payment is FAILED (ORDER_CANCELLED) and
    nothing is held or published for it."""
    customer = system.customer(funds=900)
    order = f"orders/{uuid.uuid4()}"
    system.order_cancelled(customer, order, total=900)
    system.authorized(customer, 900, order=order)
    payment = system.payment_of(order)
    assert (payment.state, payment.failure_reason) == (State.STATE_FAILED, "ORDER_CANCELLED")
    assert payment.amount.amount_minor == 900
    account = system.account(customer.account)
    assert (account.balance.amount_minor, account.held.amount_minor) == (900, 0)
    assert system.outbox(payment.name) == [], "no PaymentAuthorized or PaymentFailed for orders"
    request = pb.AuthorizePaymentRequest(
        order=order, owner=customer.user, amount=eur(900), request_id=new_key()
    )
    assert system.orders.AuthorizePayment(request, timeout=10) == payment


def test_void_rpc_releases_the_hold(system: System) -> None:
    customer = system.customer(funds=700)
    payment = system.payment_of(system.authorized(customer, 700))
    voided = system.orders.VoidPayment(
        pb.VoidPaymentRequest(name=payment.name, request_id=new_key()), timeout=10
    )
    assert voided.state == State.STATE_VOIDED
    assert system.account(customer.account).available.amount_minor == 700


def test_an_order_has_one_payment(system: System) -> None:
    customer = system.customer(funds=3000)
    order = system.authorized(customer, 1000)
    first = system.payment_of(order)
    system.authorized(customer, 1000, order=order)  # asked again with the order's key: the same
    assert system.payment_of(order) == first
    request = pb.AuthorizePaymentRequest(
        order=order, owner=customer.user, amount=eur(1000), request_id=new_key()
    )
    second = refusal(refused(system.orders.AuthorizePayment, request))
    assert (second.code, second.reason) == (grpc.StatusCode.ALREADY_EXISTS, "ORDER_ALREADY_AUTHORIZED")
    # It names the payment and says whether funds are held (a caller that lost the answer).
    named = {key: second.metadata[key] for key in ("payment", "state", "failure_reason")}
    assert named == {
        "payment": first.name.removeprefix("payments/"),
        "state": "AUTHORIZED",
        "failure_reason": "",
    }
    declined = system.authorized(customer, 5000)  # more than the account has
    request = pb.AuthorizePaymentRequest(
        order=declined, owner=customer.user, amount=eur(5000), request_id=new_key()
    )
    again = refusal(refused(system.orders.AuthorizePayment, request))
    assert (again.metadata["state"], again.metadata["failure_reason"]) == ("FAILED", "INSUFFICIENT_FUNDS")

    other = f"orders/{uuid.uuid4()}"
    request = pb.AuthorizePaymentRequest(
        order=other, owner=customer.user, amount=eur(500), request_id=new_key()
    )
    made = system.orders.AuthorizePayment(request, timeout=10)
    assert system.orders.AuthorizePayment(request, timeout=10) == made, "a repeat returns the first result"
    assert made.state == State.STATE_AUTHORIZED and made.name != first.name
    assert system.account(customer.account).held.amount_minor == 1500
    assert system.ledger_total() == 0


def test_racing_authorizations_never_overdraw_the_account(system: System) -> None:
    customer = system.customer(funds=3000)
    orders = [f"orders/{uuid.uuid4()}" for _ in range(10)]
    start = threading.Barrier(len(orders))

    def authorize(order: str) -> None:
        request = pb.AuthorizePaymentRequest(
            order=order, owner=customer.user, amount=eur(1000), request_id=new_key()
        )
        start.wait()
        system.orders.AuthorizePayment(request, timeout=30)

    threads = [threading.Thread(target=authorize, args=(order,)) for order in orders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results = [system.payment_of(order) for order in orders]
    states = sorted(State.Name(r.state) for r in results)
    assert states == ["STATE_AUTHORIZED"] * 3 + ["STATE_FAILED"] * 7
    assert {r.failure_reason for r in results if r.state == State.STATE_FAILED} == {"INSUFFICIENT_FUNDS"}
    account = system.account(customer.account)
    assert (account.held.amount_minor, account.available.amount_minor) == (3000, 0)
    assert system.ledger_total() == 0


def test_racing_changes_of_one_account_keep_its_totals_equal_to_its_ledger(system: System) -> None:
    """Funding, holds, captures, voids and refunds of one account at once: the balance and
    held amount its row keeps as running totals end as its entries and payments sum to."""
    customer = system.customer(funds=2000)
    orders = [system.authorized(customer, 100) for _ in range(6)]
    payments = [system.payment_of(order).name for order in orders]
    start = threading.Barrier(12)
    errors: list[BaseException] = []

    def run(step: Callable[[], object]) -> None:
        start.wait()
        try:
            step()
        except Exception as error:  # reported by the assertion below
            errors.append(error)

    def void(payment: str) -> None:
        request = pb.VoidPaymentRequest(name=payment, request_id=new_key())
        system.orders.VoidPayment(request, timeout=30)

    def capture_and_refund(payment: str) -> None:
        _capture(system, payment)
        _refund(system, payment, 40)

    steps: list[Callable[[], object]] = [
        *(lambda p=p: _capture(system, p) for p in payments[:2]),
        *(lambda p=p: void(p) for p in payments[2:4]),
        *(lambda p=p: capture_and_refund(p) for p in payments[4:]),
        *(lambda: system.fund(customer.account, 500) for _ in range(2)),
        *(lambda: system.authorized(customer, 300) for _ in range(4)),
    ]
    threads = [threading.Thread(target=run, args=(step,)) for step in steps]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    account = system.account(customer.account)
    # 2000 + 1000 funded - 4 x 100 captured + 2 x 40 refunded; 4 new holds of 300 (all fit).
    assert (account.balance.amount_minor, account.held.amount_minor) == (2680, 1200)
    assert system.ledger_total() == 0  # and every account's totals are what its ledger sums to


# -- reads ----------------------------------------------------------------------------------


def test_lists_page_without_gaps_and_users_see_only_their_own(system: System) -> None:
    customer = system.customer()
    for amount in (100, 200, 300, 400, 500):
        system.fund(customer.account, amount)
    orders = [system.authorized(customer, 10) for _ in range(3)]
    seen: list[str] = []
    token = ""
    while True:
        request = pb.ListLedgerEntriesRequest(parent=customer.account, page_size=2, page_token=token)
        reply = system.payments().ListLedgerEntries(request, metadata=customer.metadata, timeout=10)
        assert len(reply.ledger_entries) <= 2
        seen.extend(e.name for e in reply.ledger_entries)
        token = reply.next_page_token
        if not token:
            break
    assert len(seen) == len(set(seen)) == 5
    oldest_first = pb.ListLedgerEntriesRequest(parent=customer.account, order_by="create_time asc")
    ascending = system.payments().ListLedgerEntries(oldest_first, metadata=customer.metadata, timeout=10)
    assert [e.amount.amount_minor for e in ascending.ledger_entries] == [100, 200, 300, 400, 500]

    other = system.customer(funds=100)
    system.authorized(other, 10)
    mine = system.payments().ListPayments(
        pb.ListPaymentsRequest(page_size=1000), metadata=customer.metadata, timeout=10
    )
    assert sorted(p.order for p in mine.payments) == sorted(orders)
    theirs = pb.ListPaymentsRequest(filter=f'owner = "{other.user}"')
    assert not system.payments().ListPayments(theirs, metadata=customer.metadata, timeout=10).payments
    assert len(system.payments().ListPayments(theirs, metadata=system.admin, timeout=10).payments) == 1
    authorized = pb.ListPaymentsRequest(filter="state = AUTHORIZED", page_size=2)
    page = system.payments().ListPayments(authorized, metadata=customer.metadata, timeout=10)
    assert len(page.payments) == 2 and page.next_page_token
    changed = pb.ListPaymentsRequest(filter="state = FAILED", page_token=page.next_page_token)
    bad_token = refusal(refused(system.payments().ListPayments, changed, metadata=customer.metadata))
    assert (bad_token.code, bad_token.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "PAGE_TOKEN_INVALID")
    everyone = system.payments().ListAccounts(
        pb.ListAccountsRequest(filter=f'owner = "{other.user}"'), metadata=system.admin, timeout=10
    )
    assert [a.name for a in everyone.accounts] == [other.account]


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.ListPaymentsRequest(filter="state = 99"), "filter"),
        (pb.ListPaymentsRequest(filter="amount > 5"), "filter"),
        (pb.ListPaymentsRequest(order_by="amount"), "order_by"),
        (pb.ListPaymentsRequest(page_size=-1), "page_size"),
        (pb.ListAccountsRequest(filter='create_time > "yesterday"'), "filter"),
    ],
    ids=["unknown-state", "unknown-field", "bad-order", "negative-size", "bad-time"],
)
def test_bad_list_requests_are_invalid(system: System, request_: Message, field: str) -> None:
    stub = system.payments()
    call = stub.ListPayments if isinstance(request_, pb.ListPaymentsRequest) else stub.ListAccounts
    found = refusal(refused(call, request_, metadata=system.admin))
    assert found.code == grpc.StatusCode.INVALID_ARGUMENT and field in found.violations


# -- bad input ------------------------------------------------------------------------------

Build = Callable[[Customer, str], tuple[str, Message]]


def _fund(**fields: Any) -> Build:
    def build(customer: Customer, payment: str) -> tuple[str, Message]:
        values: dict[str, Any] = {"name": customer.account, "amount": eur(100), "request_id": new_key()}
        return "FundAccount", pb.FundAccountRequest(**{**values, **fields})

    return build


def _refund_of(**fields: Any) -> Build:
    def build(customer: Customer, payment: str) -> tuple[str, Message]:
        values: dict[str, Any] = {"name": payment, "amount": eur(100), "request_id": new_key()}
        return "RefundPayment", pb.RefundPaymentRequest(**{**values, **fields})

    return build


def _authorize(**fields: Any) -> Build:
    def build(customer: Customer, payment: str) -> tuple[str, Message]:
        values: dict[str, Any] = {
            "order": f"orders/{uuid.uuid4()}",
            "owner": customer.user,
            "amount": eur(100),
            "request_id": new_key(),
        }
        return "AuthorizePayment", pb.AuthorizePaymentRequest(**{**values, **fields})

    return build


BAD_INPUT: list[tuple[Build, set[str]]] = [
    (_fund(request_id=""), {"request_id"}),
    (_fund(request_id="not-a-uuid"), {"request_id"}),
    (_fund(request_id=str(uuid.uuid1())), {"request_id"}),
    (_fund(amount=eur(-5)), {"amount.amount_minor"}),
    (_fund(amount=eur(0)), {"amount.amount_minor"}),
    (_fund(amount=eur(MAX_AMOUNT_MINOR + 1)), {"amount.amount_minor"}),
    (_fund(amount=eur(100, "eur")), {"amount.currency_code"}),
    (_fund(amount=eur(100, "USD")), {"amount.currency_code"}),
    (
        _fund(amount=eur(-1, "XXX"), request_id="not-a-uuid"),  # present: the domain names all three
        {"request_id", "amount.currency_code", "amount.amount_minor"},
    ),
    (_fund(name="accounts"), {"name"}),
    (_fund(name="users/x"), {"name"}),
    (_refund_of(request_id=""), {"request_id"}),
    (_refund_of(amount=eur(-100)), {"amount.amount_minor"}),
    (_refund_of(amount=eur(0)), {"amount.amount_minor"}),
    (_refund_of(amount=eur(100, "USD")), {"amount.currency_code"}),
    (_refund_of(amount=eur(100, "usd")), {"amount.currency_code"}),
    (_refund_of(reason="x" * 501), {"reason"}),
    (_refund_of(reason="damaged\x00\x1b[2J"), {"reason"}),
    (_refund_of(reason="damaged \u202egnp.exe"), {"reason"}),
    (_refund_of(name="payments/a/b"), {"name"}),
    (_authorize(request_id="x"), {"request_id"}),
    (_authorize(amount=eur(0)), {"amount.amount_minor"}),
    (_authorize(amount=eur(MAX_AMOUNT_MINOR + 1)), {"amount.amount_minor"}),
    (_authorize(amount=eur(5, "E")), {"amount.currency_code"}),
    (_authorize(order="order-1"), {"order"}),
    (_authorize(owner="clients/x"), {"owner"}),
    (_authorize(account="users/x"), {"account"}),
]
BAD_INPUT_IDS = [
    "fund-no-key",
    "fund-key-not-uuid",
    "fund-key-uuid1",
    "fund-negative",
    "fund-zero",
    "fund-oversized",
    "fund-lower-case-currency",
    "fund-wrong-currency",
    "fund-every-field",
    "fund-bad-name",
    "fund-other-collection",
    "refund-no-key",
    "refund-negative",
    "refund-zero",
    "refund-wrong-currency",
    "refund-lower-case-currency",
    "refund-long-reason",
    "refund-control-reason",
    "refund-bidi-reason",
    "refund-bad-name",
    "authorize-bad-key",
    "authorize-zero",
    "authorize-oversized",
    "authorize-bad-currency",
    "authorize-bad-order",
    "authorize-bad-owner",
    "authorize-bad-account",
]


@pytest.fixture(scope="module")
def captured(system: System) -> tuple[Customer, str]:
    """A customer with a captured payment of 1000 (of 5000 funded)."""
    customer = system.customer(funds=5000)
    payment = system.payment_of(system.authorized(customer, 1000)).name
    _capture(system, payment)
    return customer, payment


@pytest.mark.parametrize(("build", "fields"), BAD_INPUT, ids=BAD_INPUT_IDS)
def test_bad_input_is_invalid_and_changes_nothing(
    system: System, captured: tuple[Customer, str], build: Build, fields: set[str]
) -> None:
    customer, payment = captured
    method, request = build(customer, payment)
    before = (system.account(customer.account), system.payment(payment))
    stub = system.orders if method == "AuthorizePayment" else system.payments()
    metadata = () if method == "AuthorizePayment" else system.admin
    found = refusal(refused(getattr(stub, method), request, metadata=metadata))
    assert found.code == grpc.StatusCode.INVALID_ARGUMENT
    assert set(found.violations) == fields, found.violations
    assert (system.account(customer.account), system.payment(payment)) == before
    assert system.ledger_total() == 0


# -- who may call what ----------------------------------------------------------------------


def test_a_user_cannot_read_another_users_account_payment_or_ledger(
    system: System, captured: tuple[Customer, str]
) -> None:
    owner, payment = captured
    intruder = system.customer()
    stub = system.payments()
    [entry] = _entries(system, owner, "kind = KIND_CAPTURE")
    attempts = [
        (stub.GetAccount, pb.GetAccountRequest(name=owner.account)),
        (stub.GetAccount, pb.GetAccountRequest(name="accounts/merchant-eur")),
        (stub.GetAccount, pb.GetAccountRequest(name="accounts/does-not-exist")),
        (stub.ListLedgerEntries, pb.ListLedgerEntriesRequest(parent=owner.account)),
        (stub.GetLedgerEntry, pb.GetLedgerEntryRequest(name=entry.name)),
        (stub.GetPayment, pb.GetPaymentRequest(name=payment)),
        (stub.GetPayment, pb.GetPaymentRequest(name="payments/does-not-exist")),
    ]
    # AIP-211: permission before existence, so another's resource and a missing one get the
    # same PERMISSION_DENIED, naming only the name asked for, never the owner.
    for call, request in attempts:
        asked = getattr(request, "name", "") or getattr(request, "parent", "")
        found = refusal(refused(call, request, metadata=intruder.metadata))
        assert (found.code, found.reason) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_OWNER"), request
        assert found.message == f"the caller may not access {asked}", request
        assert found.metadata == {"resource": asked}, request
        assert owner.user not in found.message, request
    # Only an admin (who may see everything) learns that a resource does not exist.
    for call, request, reason in (
        (stub.GetPayment, pb.GetPaymentRequest(name="payments/nope"), "PAYMENT_NOT_FOUND"),
        (stub.GetAccount, pb.GetAccountRequest(name="accounts/nope"), "ACCOUNT_NOT_FOUND"),
        (
            stub.GetLedgerEntry,
            pb.GetLedgerEntryRequest(name=f"{owner.account}/ledgerEntries/nope"),
            "LEDGER_ENTRY_NOT_FOUND",
        ),
    ):
        missing = refusal(refused(call, request, metadata=system.admin))
        assert (missing.code, missing.reason) == (grpc.StatusCode.NOT_FOUND, reason), request
    listed = stub.ListAccounts(pb.ListAccountsRequest(), metadata=intruder.metadata, timeout=10)
    assert [a.name for a in listed.accounts] == [intruder.account]


def test_only_admins_fund_and_refund(system: System, captured: tuple[Customer, str]) -> None:
    customer, payment = captured
    before = system.account(customer.account)
    fund = pb.FundAccountRequest(name=customer.account, amount=eur(10**6), request_id=new_key())
    refund = pb.RefundPaymentRequest(name=payment, request_id=new_key())
    for call, request in ((system.payments().FundAccount, fund), (system.payments().RefundPayment, refund)):
        found = refusal(refused(call, request, metadata=customer.metadata))
        assert (found.code, found.reason) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_MISSING")
        assert refusal(refused(call, request)).code == grpc.StatusCode.UNAUTHENTICATED
    assert system.account(customer.account) == before


@pytest.mark.parametrize("component", ["cli", "gateway", "users", "notifications"])
def test_internal_methods_admit_only_the_orders_service(
    system: System, captured: tuple[Customer, str], component: str
) -> None:
    customer, payment = captured
    stub = system.payments(component)
    attempts = [
        (
            stub.AuthorizePayment,
            pb.AuthorizePaymentRequest(
                order=f"orders/{uuid.uuid4()}", owner=customer.user, amount=eur(1), request_id=new_key()
            ),
        ),
        (stub.CapturePayment, pb.CapturePaymentRequest(name=payment, request_id=new_key())),
        (stub.VoidPayment, pb.VoidPaymentRequest(name=payment, request_id=new_key())),
    ]
    for call, request in attempts:
        found = refusal(refused(call, request, metadata=customer.metadata))
        assert (found.code, found.reason) == (grpc.StatusCode.PERMISSION_DENIED, "CALLER_NOT_ALLOWED")
    assert system.ledger_total() == 0
