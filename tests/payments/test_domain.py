"""Pure rules of the payments domain: balanced transactions and the ledger provider's decision."""

from __future__ import annotations

import datetime as dt

import pytest

from services.kit.money import Money
from services.payments.domain import CUSTOMER, Account, LedgerImbalance, LedgerProvider, balanced_entries

NOW = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    "legs",
    [[("a", -100), ("b", 99)], [("a", 100)], [("a", 0), ("b", 0)], []],
    ids=["off-by-one", "one-leg", "zero-legs", "empty"],
)
def test_an_unbalanced_transaction_is_never_built(legs: list[tuple[str, int]]) -> None:
    with pytest.raises(LedgerImbalance):
        balanced_entries(legs, "EUR", "FUNDING", "", NOW)


def test_a_balanced_transaction_shares_one_id_currency_and_kind() -> None:
    entries = balanced_entries([("a", -250), ("b", 100), ("c", 150)], "EUR", "CAPTURE", "p", NOW)
    assert sum(e.amount for e in entries) == 0
    assert len({e.transaction for e in entries}) == 1 and len({e.id for e in entries}) == 3
    assert {(e.currency, e.kind, e.payment_id) for e in entries} == {("EUR", "CAPTURE", "p")}


@pytest.mark.parametrize(
    ("balance", "held", "amount", "decline"),
    [(1000, 0, 1000, ""), (1000, 1, 1000, "INSUFFICIENT_FUNDS"), (0, 0, 1, "INSUFFICIENT_FUNDS")],
    ids=["exactly-available", "held-counts", "empty"],
)
def test_the_ledger_authorizes_only_what_is_available(
    balance: int, held: int, amount: int, decline: str
) -> None:
    account = Account("a", CUSTOMER, "users/u", "EUR", NOW, NOW, balance=balance, held=held)
    assert LedgerProvider().authorize(None, account, Money("EUR", amount)) == decline  # type: ignore[arg-type]
