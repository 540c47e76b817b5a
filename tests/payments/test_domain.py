"""The `Payments` use cases over the real store (SQLite, no server): funding, holds, capture,
void, refund, the saga's steps, idempotency keys, permission before existence, and listing."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from services.kit.domain_errors import (
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from services.kit.idempotency import fingerprint
from services.kit.money import Money
from services.payments.domain import ORDER_CANCELLED, Payments
from services.payments.ledger import INSUFFICIENT_FUNDS, LedgerProvider
from services.payments.records import (
    AUTHORIZED,
    CAPTURED,
    CUSTOMER,
    FAILED,
    PARTIALLY_REFUNDED,
    REFUNDED,
    VOIDED,
    Account,
    Payment,
    Repository,
    Viewer,
)
from services.payments.rules import ACCOUNT_NOT_FOUND, OwnerCheck
from tests.payments.local import ADMIN, ORDERS, LocalPayments, new_key

EUR = "EUR"


def _eur(amount: int) -> Money:
    return Money(EUR, amount)


def _reason(error: pytest.ExceptionInfo[DomainError]) -> str:
    return error.value.reason


def _anyone(owner: str, name: str) -> None:
    """An owner check that lets every caller through (an admin's)."""


# -- accounts and funding ---------------------------------------------------------------


def test_opening_an_account_twice_returns_the_first(local: LocalPayments) -> None:
    owner = f"users/{uuid.uuid4()}"
    first = local.accounts.open_account(owner, EUR)
    assert local.accounts.open_account(owner, EUR) == first
    other = local.accounts.open_account(owner, "JPY")
    assert other.id != first.id
    assert (first.kind, first.owner, first.balance, first.held, first.available) == (CUSTOMER, owner, 0, 0, 0)


def test_funding_credits_the_account_once_per_request_id(local: LocalPayments) -> None:
    account = local.customer()
    key = new_key()
    assert local.accounts.fund(ADMIN, key, account.id, _eur(500)).balance == 500
    assert local.accounts.fund(ADMIN, key, account.id, _eur(500)).balance == 500, "a repeat funds nothing"
    assert local.accounts.fund(ADMIN, new_key(), account.id, _eur(250)).balance == 750
    assert local.balances("funding-eur") == {"funding-eur": -750}


def test_a_request_id_in_the_other_case_is_the_same_request(local: LocalPayments) -> None:
    # A UUID is valid in either case: a retry that changes the case must not fund twice.
    account = local.customer()
    key = new_key()
    assert local.accounts.fund(ADMIN, key.upper(), account.id, _eur(500)).balance == 500
    assert local.accounts.fund(ADMIN, key.lower(), account.id, _eur(500)).balance == 500
    assert local.accounts.fund(ADMIN, key.upper(), account.id, _eur(500)).balance == 500


def test_a_request_id_stored_as_given_before_ids_were_canonical_still_replays(local: LocalPayments) -> None:
    account = local.customer()
    key = new_key().upper()
    first = local.accounts.fund(ADMIN, new_key(), account.id, _eur(500))
    with local.payments.transactions() as repo:  # what an earlier version stored: the id as sent
        assert repo.remember(
            ADMIN, key, fingerprint("fund", account.id, _eur(700)), account.id, first.create_time
        )
    assert local.accounts.fund(ADMIN, key, account.id, _eur(700)).balance == 500, "a replay, not a new credit"


def test_a_request_id_reused_with_other_fields_is_refused(local: LocalPayments) -> None:
    account = local.customer()
    key = new_key()
    local.accounts.fund(ADMIN, key, account.id, _eur(500))
    with pytest.raises(FailedPrecondition) as refused:
        local.accounts.fund(ADMIN, key, account.id, _eur(501))
    assert _reason(refused) == "REQUEST_ID_REUSED"
    assert local.account(account.id).balance == 500


def test_request_ids_belong_to_their_caller(local: LocalPayments) -> None:
    account = local.customer()
    key = new_key()
    local.accounts.fund(ADMIN, key, account.id, _eur(500))
    assert local.accounts.fund("users/another-admin", key, account.id, _eur(500)).balance == 1000


@pytest.mark.parametrize(
    ("key", "amount", "field"),
    [
        ("not-a-uuid", _eur(1), "request_id"),
        ("", _eur(1), "request_id"),
        (None, _eur(0), "amount.amount_minor"),
    ],
    ids=["bad-key", "no-key", "zero-amount"],
)
def test_an_invalid_funding_names_the_field(
    local: LocalPayments, key: str | None, amount: Money, field: str
) -> None:
    account = local.customer()
    with pytest.raises(InvalidArgument) as refused:
        local.accounts.fund(ADMIN, new_key() if key is None else key, account.id, amount)
    assert _reason(refused) == "FUND_INVALID"
    assert [v.field for v in refused.value.violations] == [field]


def test_funding_is_refused_where_money_cannot_go(local: LocalPayments) -> None:
    account = local.customer(funds=100)  # opens funding-eur
    with pytest.raises(NotFound) as missing:
        local.accounts.fund(ADMIN, new_key(), "no-such-account", _eur(1))
    with pytest.raises(FailedPrecondition) as system:
        local.accounts.fund(ADMIN, new_key(), "funding-eur", _eur(1))
    with pytest.raises(InvalidArgument) as currency:
        local.accounts.fund(ADMIN, new_key(), account.id, Money("JPY", 1))
    assert (_reason(missing), _reason(system), _reason(currency)) == (
        "ACCOUNT_NOT_FOUND",
        "ACCOUNT_NOT_FUNDABLE",
        "CURRENCY_MISMATCH",
    )
    assert local.account(account.id).balance == 100


# -- authorization ------------------------------------------------------------------------


def test_a_hold_takes_exactly_the_available_balance_and_no_more(local: LocalPayments) -> None:
    account = local.customer(funds=1000)
    held = local.authorize(account, 1000)
    declined = local.authorize(account, 1)
    assert (held.state, held.failure_reason, held.account_id) == (AUTHORIZED, "", account.id)
    assert (declined.state, declined.failure_reason) == (FAILED, INSUFFICIENT_FUNDS)
    after = local.account(account.id)
    assert (after.balance, after.held, after.available) == (1000, 1000, 0)
    assert local.published(held.name) == ["PaymentAuthorized"]
    assert local.published(declined.name) == ["PaymentFailed"]


def test_an_owner_without_an_account_in_the_currency_is_declined(local: LocalPayments) -> None:
    account = local.customer(funds=1000)
    jpy = local.payments.authorize(
        ORDERS, new_key(), order="orders/jpy", owner=account.owner, account_id="", amount=Money("JPY", 5)
    )
    others = local.payments.authorize(
        ORDERS, new_key(), order="orders/other", owner="users/other", account_id=account.id, amount=_eur(5)
    )
    assert [(p.state, p.failure_reason, p.account_id) for p in (jpy, others)] == [
        (FAILED, ACCOUNT_NOT_FOUND, ""),
        (FAILED, ACCOUNT_NOT_FOUND, ""),
    ]
    assert local.account(account.id).held == 0


def test_an_order_is_authorized_once(local: LocalPayments) -> None:
    account = local.customer(funds=1000)
    key = new_key()

    def authorize(key: str, amount: int = 300) -> Payment:
        return local.payments.authorize(
            ORDERS, key, order="orders/1", owner=account.owner, account_id="", amount=_eur(amount)
        )

    first = authorize(key)
    assert authorize(key) == first, "a repeat of the call gets the first payment"
    with pytest.raises(AlreadyExists) as second:
        authorize(new_key())
    with pytest.raises(FailedPrecondition) as reused:
        authorize(key, 301)
    assert (_reason(second), _reason(reused)) == ("ORDER_ALREADY_AUTHORIZED", "REQUEST_ID_REUSED")
    assert local.account(account.id).held == 300


def test_the_saga_authorizes_an_order_once_however_often_it_asks(local: LocalPayments) -> None:
    # Orders' payment worker asks again with the order's one key after a lost answer.
    account = local.customer(funds=1000)
    key = str(uuid.uuid5(uuid.NAMESPACE_URL, "orders/7/authorize"))
    first = local.authorize(account, 400, order="orders/7", request_id=key)
    again = local.authorize(account, 400, order="orders/7", request_id=key)
    assert again == first and first.state == AUTHORIZED
    assert local.account(account.id).held == 400
    assert local.published(first.name) == ["PaymentAuthorized"]


@pytest.mark.parametrize("amount", [_eur(0), _eur(-5), Money("XXX", 5)], ids=["zero", "negative", "currency"])
def test_an_amount_no_payment_could_have_is_invalid_and_records_nothing(
    local: LocalPayments, amount: Money
) -> None:
    account = local.customer(funds=1000)
    order = f"orders/{uuid.uuid4()}"
    with pytest.raises(InvalidArgument) as invalid:
        local.payments.authorize(
            ORDERS, new_key(), order=order, owner=account.owner, account_id="", amount=amount
        )
    assert _reason(invalid) == "AUTHORIZE_INVALID"
    with local.payments.transactions() as repo:
        assert repo.payment_for_order(order) is None, "no payment recorded"
    assert local.account(account.id).held == 0


# -- sales: authorize with capture ----------------------------------------------------------


def test_a_sale_holds_and_takes_the_amount_in_one_step(local: LocalPayments) -> None:
    account = local.customer(funds=1000)
    key = new_key()
    sold = local.authorize(account, 600, order="orders/s1", request_id=key, capture=True)
    assert (sold.state, sold.captured, sold.refunded) == (CAPTURED, 600, 0)
    assert local.payments.payment(sold.id, _anyone) == sold, "the answer is the payment as stored"
    after = local.account(account.id)
    assert (after.balance, after.held, after.available) == (400, 0, 400)
    assert local.balances("merchant-eur") == {"merchant-eur": 600}
    assert local.unbalanced_transactions() == []
    assert local.published(sold.name) == ["PaymentCaptured"], "never held on its own: no PaymentAuthorized"
    again = local.authorize(account, 600, order="orders/s1", request_id=key, capture=True)
    assert again == sold, "a repeat takes nothing more"
    assert local.account(account.id).balance == 400
    with pytest.raises(FailedPrecondition) as reused:
        local.authorize(account, 600, order="orders/s1", request_id=key)
    assert _reason(reused) == "REQUEST_ID_REUSED", "a hold is another request than a sale"
    assert local.payments.capture(ORDERS, new_key(), sold.id) == sold, "capturing it again changes nothing"


def test_a_declined_sale_takes_nothing(local: LocalPayments) -> None:
    account = local.customer(funds=100)
    declined = local.authorize(account, 600, capture=True)
    assert (declined.state, declined.failure_reason, declined.captured) == (FAILED, INSUFFICIENT_FUNDS, 0)
    assert local.published(declined.name) == ["PaymentFailed"]
    assert local.account(account.id).available == 100


def test_a_sale_of_an_order_cancelled_before_it_takes_nothing(local: LocalPayments) -> None:
    account = local.customer(funds=1000)
    owner = local.account(account.id).owner
    cancelled = local.payments.cancel_order("orders/s3", "", owner=owner, total=_eur(300))
    assert local.authorize(account, 300, order="orders/s3", capture=True) == cancelled
    assert local.account(account.id).balance == 1000


def test_a_sale_cancelled_after_it_is_refunded_in_full(local: LocalPayments) -> None:
    # An order cancelled while its sale was asked for: the saga's compensation refunds it.
    account = local.customer(funds=1000)
    sold = local.authorize(account, 300, order="orders/s4", capture=True)
    refunded = local.payments.cancel_order("orders/s4", "changed my mind", total=_eur(300))
    assert refunded is not None
    assert (refunded.state, refunded.refunded) == (REFUNDED, 300)
    assert local.account(account.id).balance == 1000
    assert local.published(sold.name) == ["PaymentCaptured", "PaymentRefunded"]


# -- capture and void ---------------------------------------------------------------------


def test_capture_takes_the_hold_once(local: LocalPayments) -> None:
    account = local.customer(funds=1000)
    held = local.authorize(account, 600)
    captured = local.payments.capture(ORDERS, new_key(), held.id)
    assert local.payments.capture(ORDERS, new_key(), held.id) == captured, "a capture again changes nothing"
    assert (captured.state, captured.captured, captured.refunded) == (CAPTURED, 600, 0)
    after = local.account(account.id)
    assert (after.balance, after.held, after.available) == (400, 0, 400)
    assert local.published(held.name) == ["PaymentAuthorized", "PaymentCaptured"]


def test_void_releases_the_hold_and_moves_no_money(local: LocalPayments) -> None:
    account = local.customer(funds=1000)
    held = local.authorize(account, 600)
    voided = local.payments.void(ORDERS, new_key(), held.id)
    assert local.payments.void(ORDERS, new_key(), held.id) == voided
    assert (voided.state, voided.captured) == (VOIDED, 0)
    after = local.account(account.id)
    assert (after.balance, after.held, after.available) == (1000, 0, 1000)
    assert local.published(held.name) == ["PaymentAuthorized", "PaymentVoided"]


def _act(local: LocalPayments, action: str, payment_id: str) -> Payment:
    """Capture, void or refund (all of the rest) the payment, as its callers do."""
    if action == "capture":
        return local.payments.capture(ORDERS, new_key(), payment_id)
    if action == "void":
        return local.payments.void(ORDERS, new_key(), payment_id)
    return local.payments.refund(ADMIN, new_key(), payment_id, None, "")


@pytest.mark.parametrize(
    ("settle", "action", "reason"),
    [
        ("void", "capture", "PAYMENT_NOT_CAPTURABLE"),
        ("capture", "void", "PAYMENT_NOT_VOIDABLE"),
        ("", "refund", "PAYMENT_NOT_REFUNDABLE"),
        ("void", "refund", "PAYMENT_NOT_REFUNDABLE"),
        ("refund", "refund", "PAYMENT_NOT_REFUNDABLE"),
        ("refund", "void", "PAYMENT_NOT_VOIDABLE"),
    ],
    ids=[
        "capture-voided",
        "void-captured",
        "refund-held",
        "refund-voided",
        "refund-refunded",
        "void-refunded",
    ],
)
def test_a_payment_moves_only_along_its_state_machine(
    local: LocalPayments, settle: str, action: str, reason: str
) -> None:
    account = local.customer(funds=1000)
    payment = local.authorize(account, 600)
    if settle == "refund":
        _act(local, "capture", payment.id)
    if settle:
        _act(local, settle, payment.id)
    before = local.account(account.id)
    with pytest.raises(FailedPrecondition) as refused:
        _act(local, action, payment.id)
    assert _reason(refused) == reason
    assert local.account(account.id) == before


@pytest.mark.parametrize(
    ("action", "reason"),
    [
        ("capture", "PAYMENT_NOT_CAPTURABLE"),
        ("void", "PAYMENT_NOT_VOIDABLE"),
        ("refund", "PAYMENT_NOT_REFUNDABLE"),
    ],
    ids=["capture", "void", "refund"],
)
def test_a_declined_payment_stays_declined(local: LocalPayments, action: str, reason: str) -> None:
    declined = local.authorize(local.customer(), 1)
    with pytest.raises(FailedPrecondition) as refused:
        _act(local, action, declined.id)
    assert _reason(refused) == reason
    assert local.payments.payment(declined.id, _anyone) == declined


def test_a_missing_payment_is_not_found(local: LocalPayments) -> None:
    with pytest.raises(NotFound) as missing:
        local.payments.capture(ORDERS, new_key(), "no-such-payment")
    assert _reason(missing) == "PAYMENT_NOT_FOUND"


# -- refunds ------------------------------------------------------------------------------


def _captured(local: LocalPayments, amount: int = 600) -> tuple[Account, Payment]:
    account = local.customer(funds=1000)
    payment = local.authorize(account, amount)
    return account, local.payments.capture(ORDERS, new_key(), payment.id)


def test_refunds_return_at_most_what_was_captured(local: LocalPayments) -> None:
    account, payment = _captured(local, 600)
    part = local.payments.refund(ADMIN, new_key(), payment.id, _eur(200), "one broken")
    assert (part.state, part.refunded) == (PARTIALLY_REFUNDED, 200)
    with pytest.raises(FailedPrecondition) as over:
        local.payments.refund(ADMIN, new_key(), payment.id, _eur(401), "")
    assert _reason(over) == "REFUND_EXCEEDS_CAPTURED" and over.value.metadata["rest"] == "400"
    rest = local.payments.refund(ADMIN, new_key(), payment.id, None, "")
    assert (rest.state, rest.captured, rest.refunded) == (REFUNDED, 600, 600)
    assert local.account(account.id).balance == 1000
    assert local.balances("merchant-eur") == {"merchant-eur": 0}
    assert local.published(payment.name)[-2:] == ["PaymentRefunded", "PaymentRefunded"]


def test_a_refund_repeated_with_its_request_id_returns_money_once(local: LocalPayments) -> None:
    account, payment = _captured(local, 600)
    key = new_key()
    first = local.payments.refund(ADMIN, key, payment.id, _eur(100), "late")
    assert local.payments.refund(ADMIN, key, payment.id, _eur(100), "late") == first
    assert first.refunded == 100
    assert local.account(account.id).balance == 500


@pytest.mark.parametrize(
    ("amount", "reason", "error", "code"),
    [
        (Money("JPY", 100), "", InvalidArgument, "CURRENCY_MISMATCH"),
        (_eur(0), "", InvalidArgument, "REFUND_INVALID"),
        (_eur(100), "bad\x00reason", InvalidArgument, "REFUND_INVALID"),
        (_eur(100), "x" * 501, InvalidArgument, "REFUND_INVALID"),
    ],
    ids=["other-currency", "zero", "control-character", "long-reason"],
)
def test_an_invalid_refund_is_refused_and_moves_nothing(
    local: LocalPayments, amount: Money, reason: str, error: type[DomainError], code: str
) -> None:
    account, payment = _captured(local)
    with pytest.raises(error) as refused:
        local.payments.refund(ADMIN, new_key(), payment.id, amount, reason)
    assert _reason(refused) == code
    assert local.account(account.id).balance == 400


# -- saga compensation --------------------------------------------------------------------


def test_cancelling_an_order_voids_a_hold(local: LocalPayments) -> None:
    account = local.customer(funds=1000)
    held = local.authorize(account, 300, order="orders/c1")
    cancelled = local.payments.cancel_order("orders/c1", "changed my mind")
    assert cancelled is not None and (cancelled.id, cancelled.state) == (held.id, VOIDED)
    assert local.account(account.id).available == 1000


def test_cancelling_an_order_refunds_the_rest_of_a_capture(local: LocalPayments) -> None:
    account = local.customer(funds=1000)
    held = local.authorize(account, 600, order="orders/c2")
    local.payments.capture(ORDERS, new_key(), held.id)
    local.payments.refund(ADMIN, new_key(), held.id, _eur(100), "")
    cancelled = local.payments.cancel_order("orders/c2", "changed my mind")
    assert cancelled is not None and (cancelled.state, cancelled.refunded) == (REFUNDED, 600)
    assert local.account(account.id).balance == 1000
    assert local.payments.cancel_order("orders/c2", "again") == cancelled, "a redelivery changes nothing"


def test_cancelling_leaves_declined_payments_and_unknown_orders_alone(local: LocalPayments) -> None:
    declined = local.authorize(local.customer(), 5, order="orders/c3")
    assert local.payments.cancel_order("orders/c3", "", total=_eur(5)) == declined
    assert local.payments.cancel_order("orders/none", "") is None, "an event without a total records nothing"


def test_an_order_cancelled_before_its_authorization_never_holds_funds(local: LocalPayments) -> None:
    """OrderCancelled applied before orders' AuthorizePayment for the order (in flight when
    the order was cancelled): the order's one payment is a FAILED one, so the late
    authorization holds nothing."""
    account = local.customer(funds=1000)
    owner = local.account(account.id).owner
    cancelled = local.payments.cancel_order("orders/c4", "changed my mind", owner=owner, total=_eur(300))
    assert cancelled is not None
    assert (cancelled.state, cancelled.failure_reason, cancelled.amount) == (FAILED, ORDER_CANCELLED, 300)
    assert local.authorize(account, 300, order="orders/c4") == cancelled, "not ALREADY_EXISTS"
    asked = local.payments.authorize(
        ORDERS, new_key(), order="orders/c4", owner=owner, account_id=account.id, amount=_eur(300)
    )
    assert asked == cancelled, "with the account named, the same answer"
    assert local.account(account.id).available == 1000
    again = local.payments.cancel_order("orders/c4", "again", owner=owner, total=_eur(300))
    assert again == cancelled, "a redelivery changes nothing"


def test_an_authorization_of_a_cancelled_order_for_another_owner_or_total_is_refused(
    local: LocalPayments,
) -> None:
    account = local.customer(funds=1000)
    owner = local.account(account.id).owner
    local.payments.cancel_order("orders/c5", "", owner=owner, total=_eur(300))
    other = local.customer(funds=1000)
    for asked_owner, asked_account, amount in (
        (owner, account.id, 299),
        (local.account(other.id).owner, other.id, 300),
    ):
        with pytest.raises(FailedPrecondition) as refused:
            local.payments.authorize(
                ORDERS,
                new_key(),
                order="orders/c5",
                owner=asked_owner,
                account_id=asked_account,
                amount=_eur(amount),
            )
        assert refused.value.reason == ORDER_CANCELLED
    assert local.account(account.id).available == local.account(other.id).available == 1000


def test_a_request_id_answered_with_a_cancelled_orders_payment_is_remembered(local: LocalPayments) -> None:
    account = local.customer(funds=1000)
    owner = local.account(account.id).owner
    cancelled = local.payments.cancel_order("orders/c6", "", owner=owner, total=_eur(300))
    key = new_key()
    asked = {"order": "orders/c6", "owner": owner, "account_id": account.id, "amount": _eur(300)}
    assert local.payments.authorize(ORDERS, key, **asked) == cancelled
    assert local.payments.authorize(ORDERS, key, **asked) == cancelled, "a repeat gets the same answer"
    with pytest.raises(FailedPrecondition) as reused:
        local.payments.authorize(ORDERS, key, **{**asked, "order": "orders/c7"})
    assert reused.value.reason == "REQUEST_ID_REUSED"


@pytest.mark.parametrize(
    "total", [_eur(0), Money("EURO", 300), _eur(-5)], ids=["zero", "bad-currency", "negative"]
)
def test_a_cancellation_with_a_total_no_payment_could_have_records_nothing(
    local: LocalPayments, total: Money
) -> None:
    assert local.payments.cancel_order("orders/c8", "", owner="users/u1", total=total) is None


# -- reads: permission before existence, lists --------------------------------------------


class _Denied(PermissionDenied):
    pass


def _deny_all_but(owner: str) -> tuple[list[tuple[str, str]], OwnerCheck]:
    """An owner check refusing all but `owner`'s resources, and the (owner, name) it was asked."""
    asked: list[tuple[str, str]] = []

    def check(resource_owner: str, name: str) -> None:
        asked.append((resource_owner, name))
        if resource_owner != owner:
            raise _Denied("PERMISSION_DENIED", "no access to {name}", name=name)

    return asked, check


def test_permission_is_checked_before_existence(local: LocalPayments) -> None:
    account = local.customer()
    asked, check = _deny_all_but(account.owner)
    for read in (
        lambda: local.accounts.account("missing", check),
        lambda: local.payments.payment("missing", check),
        lambda: local.accounts.entry("missing", "e1", check),
    ):
        with pytest.raises(_Denied):
            read()
    assert asked == [
        ("", "accounts/missing"),
        ("", "payments/missing"),
        ("", "accounts/missing/ledgerEntries/e1"),
    ]
    assert local.accounts.account(account.id, check) == local.account(account.id)


def test_a_plain_user_lists_only_their_own(local: LocalPayments) -> None:
    mine, theirs = local.customer(funds=100), local.customer(funds=100)
    local.authorize(mine, 10)
    local.authorize(theirs, 10)
    me = Viewer(mine.owner, sees_all=False)
    everything = Viewer(ADMIN, sees_all=True)
    theirs_only = f'owner = "{theirs.owner}"'
    accounts = local.accounts.list_accounts(me, size=0, token="", filter_text=theirs_only, order_by="")
    payments = local.payments.list_payments(me, size=0, token="", filter_text="", order_by="")
    assert accounts.accounts == [], "a filter cannot widen a plain user's list"
    assert {p.owner for p in payments.payments} == {mine.owner}
    listed = local.accounts.list_accounts(everything, size=0, token="", filter_text="", order_by="").accounts
    assert {mine.id, theirs.id, "funding-eur"} <= {a.id for a in listed}


def test_pages_cover_the_entries_once_and_a_token_keeps_its_filter(local: LocalPayments) -> None:
    account = local.customer()
    for _ in range(5):
        local.accounts.fund(ADMIN, new_key(), account.id, _eur(10))
    seen, token = [], ""
    while True:
        page = local.accounts.list_entries(
            account.id, _anyone, size=2, token=token, filter_text="kind = FUNDING", order_by=""
        )
        seen += [e.id for e in page.entries]
        token = page.next_page_token
        if not token:
            break
        with pytest.raises(InvalidArgument) as changed:
            local.accounts.list_entries(account.id, _anyone, size=2, token=token, filter_text="", order_by="")
        assert _reason(changed) == "PAGE_TOKEN_INVALID"
    assert len(seen) == len(set(seen)) == 5


# -- the provider is replaceable ------------------------------------------------------------


class _Declining(LedgerProvider):
    """A provider that declines every hold (a card network saying no)."""

    def authorize(self, repo: Repository, account: Account, amount: Money) -> str:
        return "CARD_DECLINED"


def test_the_ledger_decides_holds_and_its_decline_reason_is_kept(local: LocalPayments) -> None:
    account = local.customer(funds=1000)
    declining = Payments(local.payments.transactions, ledger=_Declining())
    declined = declining.authorize(
        ORDERS, new_key(), order="orders/p1", owner=account.owner, account_id="", amount=_eur(5)
    )
    assert (declined.state, declined.failure_reason) == (FAILED, "CARD_DECLINED")
    assert isinstance(Payments(local.payments.transactions).ledger, LedgerProvider)


def test_the_clock_stamps_payments(local: LocalPayments) -> None:
    at = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    account = local.customer(funds=1000)
    stamped = Payments(local.payments.transactions, clock=lambda: at)
    held = stamped.authorize(
        ORDERS, new_key(), order="orders/t1", owner=account.owner, account_id="", amount=_eur(5)
    )
    assert (held.create_time, held.update_time) == (at, at)
