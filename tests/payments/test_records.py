"""The payments records and list queries (`services.payments.records`)."""

from __future__ import annotations

import datetime as dt

import pytest

from services.kit.domain_errors import InvalidArgument
from services.kit.filters import Fields, Ordering, Term
from services.payments.records import (
    ACCOUNT_FIELDS,
    CUSTOMER,
    ENTRY_FIELDS,
    PAYMENT_FIELDS,
    Account,
    LedgerEntry,
    Payment,
    list_query,
)

NOW = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def test_records_are_named_as_the_api_names_them() -> None:
    account = Account("a1", CUSTOMER, "users/u", "EUR", NOW, NOW, balance=900, held=300)
    entry = LedgerEntry("e1", "a1", "t1", -5, "EUR", "CAPTURE", "p1", NOW)
    payment = Payment("p1", "orders/o", "a1", "users/u", "EUR", 5, "CAPTURED", "", NOW, NOW)
    assert (account.name, entry.name, payment.name) == (
        "accounts/a1",
        "accounts/a1/ledgerEntries/e1",
        "payments/p1",
    )
    assert account.available == 600


def test_a_list_is_newest_first_unless_asked_otherwise() -> None:
    assert list_query("", "", ACCOUNT_FIELDS, ["create_time"]).ordering == Ordering("create_time", True)
    asked = list_query("", "update_time asc", PAYMENT_FIELDS, ["create_time", "update_time"])
    assert asked.ordering == Ordering("update_time", False)


@pytest.mark.parametrize(
    ("fields", "text", "terms"),
    [
        (ENTRY_FIELDS, "kind = KIND_REFUND", (Term("kind", "=", "REFUND"),)),
        (ENTRY_FIELDS, "payment = payments/p1", (Term("payment", "=", "p1"),)),
        (
            PAYMENT_FIELDS,
            'account = "accounts/a1" AND state = CAPTURED',
            (Term("account", "=", "a1"), Term("state", "=", "CAPTURED")),
        ),
        (ACCOUNT_FIELDS, 'owner = "users/u"', (Term("owner", "=", "users/u"),)),
    ],
    ids=["entry-kind", "entry-payment", "payment-account-and-state", "account-owner"],
)
def test_a_filter_becomes_typed_terms(fields: Fields, text: str, terms: tuple[Term, ...]) -> None:
    assert list_query(text, "", fields, ["create_time"]).terms == terms


@pytest.mark.parametrize(
    ("fields", "text"),
    [
        (ENTRY_FIELDS, "payment = accounts/a1"),
        (ENTRY_FIELDS, "payment = payments/p1/x"),
        (PAYMENT_FIELDS, "state = SHIPPED"),
        (ACCOUNT_FIELDS, "balance > 5"),
    ],
    ids=["wrong-collection", "nested-name", "unknown-state", "unknown-field"],
)
def test_a_bad_filter_is_invalid(fields: Fields, text: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        list_query(text, "", fields, ["create_time"])
    assert refused.value.reason == "FILTER_INVALID"
