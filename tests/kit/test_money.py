"""Money: integer minor units, known currencies, and the problems of a client's amount."""

from __future__ import annotations

import pytest

from services.kit.money import CURRENCIES, MAX_AMOUNT_MINOR, Money, minor_unit_digits, money_problems


def test_arithmetic_stays_in_one_currency() -> None:
    assert Money("EUR", 250) + Money("EUR", 100) == Money("EUR", 350)
    assert Money("EUR", 250) - Money("EUR", 300) == Money("EUR", -50)
    assert Money("EUR", 199).times(3) == Money("EUR", 597)
    with pytest.raises(ValueError, match="USD"):
        _ = Money("EUR", 1) + Money("USD", 1)


@pytest.mark.parametrize(
    ("money", "text"),
    [
        (Money("EUR", 1999), "19.99 EUR"),
        (Money("EUR", 5), "0.05 EUR"),
        (Money("EUR", -150), "-1.50 EUR"),
        (Money("JPY", 1200), "1200 JPY"),
        (Money("KWD", 1234), "1.234 KWD"),
    ],
    ids=["cents", "small", "negative", "no-minor-units", "three-digits"],
)
def test_it_prints_in_the_currency_s_own_digits(money: Money, text: str) -> None:
    assert str(money) == text


def test_known_codes() -> None:
    assert {"EUR", "USD", "JPY", "GBP", "CHF"} <= CURRENCIES
    assert "eur" not in CURRENCIES
    assert minor_unit_digits("EUR") == 2


@pytest.mark.parametrize(
    ("currency", "amount", "positive", "fields"),
    [
        ("EUR", 100, False, []),
        ("EUR", 0, False, []),
        ("EUR", 0, True, ["price.amount_minor"]),
        ("EUR", -1, False, ["price.amount_minor"]),
        ("eur", 1, False, ["price.currency_code"]),
        ("XYZ", 1, False, ["price.currency_code"]),
        ("", -5, False, ["price.currency_code", "price.amount_minor"]),
        ("EUR", MAX_AMOUNT_MINOR + 1, False, ["price.amount_minor"]),
    ],
    ids=["fine", "zero-allowed", "zero-refused", "negative", "lower-case", "unknown", "both", "too-large"],
)
def test_problems_name_the_bad_fields(currency: str, amount: int, positive: bool, fields: list[str]) -> None:
    assert [p.field for p in money_problems("price", currency, amount, positive=positive)] == fields
