"""Ledger invariants under any sequence of fund, authorize, capture, void, refund and cancel,
driven through the real `Payments` use cases over the real store (SQLite, no server).

After every step: each transaction's entries sum to zero in its one currency; a customer's
balance and holds are exactly what the steps imply (and the running totals its account row
keeps are exactly what its entries and payments sum to), and its available balance never goes
below zero; no payment refunds more than it captured; only a FUNDING account goes negative,
and the MERCHANT account holds exactly what was captured minus what was refunded.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from services.kit.domain_errors import FailedPrecondition
from services.kit.filters import Ordering, Term
from services.kit.money import Money
from services.payments.ledger import INSUFFICIENT_FUNDS, system_account_id
from services.payments.records import (
    AUTHORIZED,
    CAPTURED,
    FAILED,
    FUNDING,
    MERCHANT,
    PARTIALLY_REFUNDED,
    REFUNDED,
    STATES,
    VOIDED,
    ListQuery,
    Payment,
)
from tests.payments.local import ADMIN, ORDERS, LocalPayments, new_key

CURRENCIES = ("EUR", "JPY")
_AMOUNTS = st.integers(min_value=1, max_value=3000)
"""Of holds and refunds; funding moves more, so that most holds are accepted and some are not."""
_FUNDS = st.integers(min_value=1000, max_value=20_000)
_STAGES = ("held", "captured", "partly refunded")
_REFUNDABLE = (CAPTURED, PARTIALLY_REFUNDED)
_TAKEN = (CAPTURED, PARTIALLY_REFUNDED, REFUNDED)


@dataclass(frozen=True)
class _Expected:
    """What a payment must look like after the steps so far."""

    order: str
    currency: str
    amount: int
    state: str
    captured: int = 0
    refunded: int = 0


@dataclass(frozen=True)
class _Refund:
    key: str
    payment: str
    amount: Money | None


class LedgerMachine(RuleBasedStateMachine):
    """One customer with an account in each of `CURRENCIES`, and a model of what each step
    must do to it, its payments and the system accounts."""

    def __init__(self, local: LocalPayments) -> None:
        super().__init__()
        self.local = local
        self.owner = f"users/{uuid.uuid4()}"
        self.accounts = {c: local.accounts.open_account(self.owner, c).id for c in CURRENCIES}
        self.balance = dict.fromkeys(CURRENCIES, 0)
        self.funded = dict.fromkeys(CURRENCIES, 0)
        self.merchant = dict.fromkeys(CURRENCIES, 0)
        """Captured minus refunded, of this customer's payments."""
        self.system = [(kind, c) for kind in (FUNDING, MERCHANT) for c in CURRENCIES]
        self.system_before = self._system_balances()
        self.expected: dict[str, _Expected] = {}
        self.last_fund: tuple[str, str, Money] | None = None
        self.last_refund: _Refund | None = None

    # -- steps ------------------------------------------------------------------------

    @initialize(
        eur=st.just(0) | _FUNDS,
        jpy=st.just(0) | _FUNDS,
        orders=st.lists(
            st.tuples(st.sampled_from(CURRENCIES), _AMOUNTS, st.sampled_from(_STAGES)), max_size=4
        ),
    )
    def open_with_funds_and_payments(self, eur: int, jpy: int, orders: list[tuple[str, int, str]]) -> None:
        """Most sequences start funded, with payments held, captured or partly refunded, so
        that each step meets payments in every state whichever steps a sequence leaves out."""
        for currency, amount in (("EUR", eur), ("JPY", jpy)):
            if amount:
                self.fund(currency, amount)
        for currency, amount, stage in orders:
            payment = self._authorize(currency, amount, "owner's account")
            if stage != "held" and self.expected[payment].state == AUTHORIZED:
                self._capture(payment)
                if stage == "partly refunded" and amount > 1:
                    self._refund(payment, amount // 2)

    @rule(currency=st.sampled_from(CURRENCIES), amount=_FUNDS)
    def fund(self, currency: str, amount: int) -> None:
        key, money = new_key(), Money(currency, amount)
        funded = self.local.accounts.fund(ADMIN, key, self.accounts[currency], money)
        self.balance[currency] += amount
        self.funded[currency] += amount
        assert funded.balance == self.balance[currency]
        self.last_fund = (key, currency, money)

    @precondition(lambda self: self.last_fund is not None)
    @rule()
    def repeat_the_last_funding(self) -> None:
        assert self.last_fund is not None
        key, currency, money = self.last_fund
        again = self.local.accounts.fund(ADMIN, key, self.accounts[currency], money)
        assert again.balance == self.balance[currency], "a repeated request_id funds once"

    @rule(
        data=st.data(),
        currency=st.sampled_from(CURRENCIES),
        how=st.sampled_from(["owner's account", "named account"]),
    )
    def authorize(self, data: st.DataObject, currency: str, how: str) -> None:
        """Any amount, or one just around what is available."""
        available = self.balance[currency] - self._held(currency)
        amount = data.draw(_AMOUNTS | st.integers(max(1, available - 1), max(1, available + 1)))
        self._authorize(currency, amount, how)

    @precondition(lambda self: self._some(AUTHORIZED))
    @rule(data=st.data())
    def capture_a_hold(self, data: st.DataObject) -> None:
        self._capture(self._pick(data, AUTHORIZED))

    @precondition(lambda self: self._some(AUTHORIZED))
    @rule(data=st.data())
    def void_a_hold(self, data: st.DataObject) -> None:
        self._void(self._pick(data, AUTHORIZED))

    @precondition(lambda self: self._some(*_REFUNDABLE))
    @rule(data=st.data())
    def refund_a_capture(self, data: st.DataObject) -> None:
        payment = self._pick(data, *_REFUNDABLE)
        self._refund(payment, self._refund_amount(data, payment))

    @precondition(lambda self: self._some(AUTHORIZED, *_REFUNDABLE))
    @rule(data=st.data())
    def cancel_an_order(self, data: st.DataObject) -> None:
        self._cancel(self._pick(data, AUTHORIZED, *_REFUNDABLE))

    @precondition(lambda self: self.expected)
    @rule(data=st.data(), action=st.sampled_from(["capture", "void", "refund", "cancel"]))
    def act_on_a_payment_in_any_state(self, data: st.DataObject, action: str) -> None:
        """Refused unless the payment's state allows it; a repeat returns it unchanged, and
        so does cancelling an order whose payment is settled."""
        payment = self._pick(data, *STATES)
        if action == "capture":
            self._capture(payment)
        elif action == "void":
            self._void(payment)
        elif action == "refund":
            self._refund(payment, self._refund_amount(data, payment))
        else:
            self._cancel(payment)

    @precondition(lambda self: self.last_refund is not None)
    @rule()
    def repeat_the_last_refund(self) -> None:
        assert self.last_refund is not None
        last = self.last_refund
        self._check(self.local.payments.refund(ADMIN, last.key, last.payment, last.amount, "returned"))

    # -- what each step must do -------------------------------------------------------

    def _cancel(self, payment: str) -> None:
        """The saga's compensation: void a hold, refund the rest of a capture."""
        before = self.expected[payment]
        if before.state == AUTHORIZED:
            self.expected[payment] = replace(before, state=VOIDED)
        elif before.state in _REFUNDABLE:
            rest = before.captured - before.refunded
            self.expected[payment] = replace(before, state=REFUNDED, refunded=before.captured)
            self.balance[before.currency] += rest
            self.merchant[before.currency] -= rest
        cancelled = self.local.payments.cancel_order(before.order, "changed my mind")
        assert cancelled is not None
        self._check(cancelled)

    def _authorize(self, currency: str, amount: int, how: str) -> str:
        order, money = f"orders/{uuid.uuid4()}", Money(currency, amount)
        account_id = self.accounts[currency] if how == "named account" else ""
        payment = self.local.payments.authorize(
            ORDERS, new_key(), order=order, owner=self.owner, account_id=account_id, amount=money
        )
        enough = amount <= self.balance[currency] - self._held(currency)
        assert (payment.state, payment.failure_reason) == (
            (AUTHORIZED, "") if enough else (FAILED, INSUFFICIENT_FUNDS)
        )
        assert payment.account_id == self.accounts[currency]
        self.expected[payment.id] = _Expected(order, currency, amount, payment.state)
        return payment.id

    def _capture(self, payment: str) -> None:
        before = self.expected[payment]
        if before.state not in (AUTHORIZED, *_TAKEN):
            self._refused(
                "PAYMENT_NOT_CAPTURABLE", lambda: self.local.payments.capture(ORDERS, new_key(), payment)
            )
            return
        if before.state == AUTHORIZED:
            self.expected[payment] = replace(before, state=CAPTURED, captured=before.amount)
            self.balance[before.currency] -= before.amount
            self.merchant[before.currency] += before.amount
        self._check(self.local.payments.capture(ORDERS, new_key(), payment))

    def _void(self, payment: str) -> None:
        before = self.expected[payment]
        if before.state not in (AUTHORIZED, VOIDED):
            self._refused(
                "PAYMENT_NOT_VOIDABLE", lambda: self.local.payments.void(ORDERS, new_key(), payment)
            )
            return
        self.expected[payment] = replace(before, state=VOIDED)
        self._check(self.local.payments.void(ORDERS, new_key(), payment))

    def _refund(self, payment: str, amount: int | None) -> None:
        before = self.expected[payment]
        key, money = new_key(), None if amount is None else Money(before.currency, amount)

        def refund() -> Payment:
            return self.local.payments.refund(ADMIN, key, payment, money, "returned")

        rest = before.captured - before.refunded
        value = rest if amount is None else amount
        if before.state not in _REFUNDABLE:
            self._refused("PAYMENT_NOT_REFUNDABLE", refund)
        elif value > rest:
            self._refused("REFUND_EXCEEDS_CAPTURED", refund)
        else:
            refunded = before.refunded + value
            state = REFUNDED if refunded == before.captured else PARTIALLY_REFUNDED
            self.expected[payment] = replace(before, state=state, refunded=refunded)
            self.balance[before.currency] += value
            self.merchant[before.currency] -= value
            self._check(refund())
            self.last_refund = _Refund(key, payment, money)

    def _refund_amount(self, data: st.DataObject, payment: str) -> int | None:
        """All of the rest (None), any amount, or one just around the rest."""
        before = self.expected[payment]
        rest = before.captured - before.refunded
        return data.draw(st.none() | _AMOUNTS | st.integers(max(1, rest - 1), rest + 1))

    def _some(self, *states: str) -> bool:
        return any(p.state in states for p in self.expected.values())

    def _pick(self, data: st.DataObject, *states: str) -> str:
        """One of the payments now in `states` (the first made is the simplest example)."""
        return data.draw(st.sampled_from([i for i, p in self.expected.items() if p.state in states]))

    def _held(self, currency: str) -> int:
        return sum(
            p.amount for p in self.expected.values() if p.currency == currency and p.state == AUTHORIZED
        )

    def _check(self, payment: Payment) -> None:
        want = self.expected[payment.id]
        got = (
            payment.order,
            payment.currency,
            payment.amount,
            payment.state,
            payment.captured,
            payment.refunded,
        )
        assert got == (want.order, want.currency, want.amount, want.state, want.captured, want.refunded)

    @staticmethod
    def _refused(reason: str, call: Callable[[], Payment]) -> None:
        with pytest.raises(FailedPrecondition) as refused:
            call()
        assert refused.value.reason == reason

    def _system_balances(self) -> dict[tuple[str, str], int]:
        """FUNDING and MERCHANT balances by (kind, currency), summed from their entries."""
        ids = {key: system_account_id(*key) for key in self.system}
        found = self.local.balances(*ids.values())
        return {key: found[account_id] for key, account_id in ids.items()}

    # -- invariants -------------------------------------------------------------------

    @invariant()
    def the_ledger_balances_and_only_funding_goes_below_zero(self) -> None:
        assert self.local.unbalanced_transactions() == []
        assert all(account.startswith("funding-") for account in self.local.overdrawn())
        now = self._system_balances()
        for currency in CURRENCIES:
            funding, merchant = (FUNDING, currency), (MERCHANT, currency)
            assert now[funding] - self.system_before[funding] == -self.funded[currency]
            assert now[merchant] - self.system_before[merchant] == self.merchant[currency]
            assert self.merchant[currency] >= 0

    @invariant()
    def the_running_totals_are_what_the_ledger_sums_to(self) -> None:
        assert self.local.drifted_totals() == {}

    @invariant()
    def the_customer_never_goes_below_zero_nor_refunds_past_a_capture(self) -> None:
        mine = ListQuery((Term("owner", "=", self.owner),), Ordering("create_time", descending=True))
        with self.local.payments.transactions() as repo:
            accounts = {currency: repo.account(account_id) for currency, account_id in self.accounts.items()}
            payments = repo.list_payments(mine, None, 1000)
        for currency, account in accounts.items():
            assert account is not None
            assert (account.balance, account.held) == (self.balance[currency], self._held(currency))
            assert account.available >= 0 and account.balance >= 0
        assert len(payments) == len(self.expected)
        for payment in payments:
            assert 0 <= payment.refunded <= payment.captured
            assert payment.captured in (0, payment.amount)
            self._check(payment)


@pytest.mark.slow
def test_the_ledger_holds_its_invariants_under_any_sequence_of_operations(
    shared_local: LocalPayments,
) -> None:
    class OverTheSharedDatabase(LedgerMachine):
        def __init__(self) -> None:
            super().__init__(shared_local)

    bounded = settings(max_examples=50, stateful_step_count=20, deadline=None)
    run_state_machine_as_test(OverTheSharedDatabase, settings=bounded)
