"""The double-entry ledger (`services.payments.ledger`): balanced transactions, the system
accounts, and the ledger provider's decisions and postings."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.kit.filters import Ordering
from services.kit.money import Money
from services.payments.ledger import (
    INSUFFICIENT_FUNDS,
    LedgerImbalance,
    LedgerProvider,
    balanced_entries,
    system_account,
    system_account_id,
)
from services.payments.records import CUSTOMER, FUNDING, MERCHANT, Account, ListQuery
from tests.payments.local import ADMIN, ORDERS, LocalPayments, new_key

NOW = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
ALL_ENTRIES = ListQuery((), Ordering("create_time", descending=False))
_ACCOUNTS = st.sampled_from(["a", "b", "c", "d"])
_AMOUNTS = st.integers(min_value=-(10**15), max_value=10**15).filter(bool)


@pytest.mark.parametrize(
    "legs",
    [[("a", -100), ("b", 99)], [("a", 100)], [("a", 0), ("b", 0)], [("a", -5), ("b", 0), ("c", 5)], []],
    ids=["off-by-one", "one-leg", "zero-legs", "a-zero-leg", "empty"],
)
def test_an_unbalanced_transaction_is_never_built(legs: list[tuple[str, int]]) -> None:
    with pytest.raises(LedgerImbalance):
        balanced_entries(legs, "EUR", "FUNDING", "", NOW)


def test_a_balanced_transaction_shares_one_id_currency_and_kind() -> None:
    entries = balanced_entries([("a", -250), ("b", 100), ("c", 150)], "EUR", "CAPTURE", "p", NOW)
    assert sum(e.amount for e in entries) == 0
    assert len({e.transaction for e in entries}) == 1 and len({e.id for e in entries}) == 3
    assert {(e.currency, e.kind, e.payment_id) for e in entries} == {("EUR", "CAPTURE", "p")}


@st.composite
def _balanced_legs(draw: st.DrawFn) -> list[tuple[str, int]]:
    """Two or more non-zero legs whose amounts sum to zero."""
    legs = draw(st.lists(st.tuples(_ACCOUNTS, _AMOUNTS), min_size=1, max_size=6))
    rest = -sum(amount for _, amount in legs)
    if rest:  # (a single non-zero leg always leaves a rest, so there are two or more)
        legs.append((draw(_ACCOUNTS), rest))
    return legs


@settings(max_examples=200, deadline=None)
@given(legs=_balanced_legs(), currency=st.sampled_from(["EUR", "JPY", "KWD"]))
def test_every_balanced_transaction_is_built_exactly_as_asked(
    legs: list[tuple[str, int]], currency: str
) -> None:
    entries = balanced_entries(legs, currency, "REFUND", "p", NOW)
    assert [(e.account_id, e.amount) for e in entries] == legs
    assert sum(e.amount for e in entries) == 0
    assert len({e.transaction for e in entries}) == 1
    assert len({e.id for e in entries}) == len(legs)
    assert {e.currency for e in entries} == {currency}


@settings(max_examples=200, deadline=None)
@given(legs=st.lists(st.tuples(_ACCOUNTS, st.integers(-1000, 1000)), max_size=6))
def test_legs_are_refused_unless_they_balance(legs: list[tuple[str, int]]) -> None:
    balanced = len(legs) >= 2 and sum(a for _, a in legs) == 0 and all(a for _, a in legs)
    if balanced:
        assert sum(e.amount for e in balanced_entries(legs, "EUR", "FUNDING", "", NOW)) == 0
    else:
        with pytest.raises(LedgerImbalance):
            balanced_entries(legs, "EUR", "FUNDING", "", NOW)


@pytest.mark.parametrize(
    ("kind", "currency", "expected"),
    [(FUNDING, "EUR", "funding-eur"), (MERCHANT, "JPY", "merchant-jpy")],
    ids=["funding", "merchant"],
)
def test_a_system_account_id_names_its_kind_and_currency(kind: str, currency: str, expected: str) -> None:
    assert system_account_id(kind, currency) == expected


def test_a_system_account_is_opened_once_on_first_use(local: LocalPayments) -> None:
    with local.payments.transactions() as repo:
        assert repo.account("merchant-usd") is None
        first = system_account(repo, MERCHANT, "USD", NOW)
        second = system_account(repo, MERCHANT, "USD", NOW)
    assert first == second == "merchant-usd"
    opened = local.account("merchant-usd")
    assert (opened.kind, opened.owner, opened.currency, opened.balance) == (MERCHANT, "", "USD", 0)


@pytest.mark.parametrize(
    ("balance", "held", "amount", "decline"),
    [(1000, 0, 1000, ""), (1000, 1, 1000, INSUFFICIENT_FUNDS), (0, 0, 1, INSUFFICIENT_FUNDS)],
    ids=["exactly-available", "held-counts", "empty"],
)
def test_the_ledger_authorizes_only_what_is_available(
    balance: int, held: int, amount: int, decline: str
) -> None:
    account = Account("a", CUSTOMER, "users/u", "EUR", NOW, NOW, balance=balance, held=held)
    assert LedgerProvider().authorize(None, account, Money("EUR", amount)) == decline  # type: ignore[arg-type]


def _entries(local: LocalPayments, account_id: str) -> list[tuple[str, int, str, str]]:
    with local.payments.transactions() as repo:
        found = repo.list_entries(account_id, ALL_ENTRIES, None, 1000)
    return [(e.kind, e.amount, e.payment_id, e.transaction) for e in found]


def test_funding_moves_money_from_the_funding_account_in_one_transaction(local: LocalPayments) -> None:
    account = local.customer("EUR")
    local.accounts.fund(ADMIN, new_key(), account.id, Money("EUR", 700))
    [(kind, amount, payment, transaction)] = _entries(local, account.id)
    assert (kind, amount, payment) == ("FUNDING", 700, "")
    assert _entries(local, "funding-eur") == [("FUNDING", -700, "", transaction)]


def test_capture_and_refund_move_money_between_customer_and_merchant(local: LocalPayments) -> None:
    account = local.customer("EUR", funds=1000)
    held = local.authorize(account, 600)
    assert _entries(local, "merchant-eur") == [], "a hold moves no money"
    local.payments.capture(ORDERS, new_key(), held.id)
    local.payments.refund(ADMIN, new_key(), held.id, Money("EUR", 250), "damaged")
    customer = [e for e in _entries(local, account.id) if e[0] != "FUNDING"]
    merchant = _entries(local, "merchant-eur")
    assert [(k, a, p) for k, a, p, _ in customer] == [("CAPTURE", -600, held.id), ("REFUND", 250, held.id)]
    assert [(k, a, p) for k, a, p, _ in merchant] == [("CAPTURE", 600, held.id), ("REFUND", -250, held.id)]
    assert [t for *_, t in customer] == [t for *_, t in merchant], "each pair is one transaction"
    assert local.account("merchant-eur").balance == 350
    assert local.account(account.id).balance == 1000 - 600 + 250


def test_a_void_moves_no_money(local: LocalPayments) -> None:
    account = local.customer("EUR", funds=1000)
    held = local.authorize(account, 400)
    local.payments.void(ORDERS, new_key(), held.id)
    assert Counter(kind for kind, *_ in _entries(local, account.id)) == Counter({"FUNDING": 1})
    assert local.account(account.id).available == 1000
