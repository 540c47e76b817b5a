"""The payments service's own settings (services/payments/settings.py)."""

from __future__ import annotations

import pytest

from services.kit import config
from services.payments import settings as payments_settings


def test_the_default_currency_is_an_upper_case_iso_4217_code() -> None:
    assert config.load_with("payments", payments_settings.read, {})[1].default_currency == "EUR"
    found = config.load_with("payments", payments_settings.read, {"POLY_PAYMENTS_DEFAULT_CURRENCY": "usd"})
    assert found[1].default_currency == "USD"


@pytest.mark.parametrize("currency", ["euro", "E1R", "€"])
def test_a_currency_that_is_no_code_fails_start_up(currency: str) -> None:
    with pytest.raises(config.ConfigError) as caught:
        config.load_with("payments", payments_settings.read, {"POLY_PAYMENTS_DEFAULT_CURRENCY": currency})
    assert [p.split(":")[0] for p in caught.value.problems] == ["POLY_PAYMENTS_DEFAULT_CURRENCY"]
