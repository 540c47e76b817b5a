"""The payments service's own settings (services/payments/settings.py)."""

from __future__ import annotations

from pathlib import Path

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


def test_the_ledger_is_the_default_provider_and_needs_no_credentials() -> None:
    found = config.load_with("payments", payments_settings.read, {})[1]
    assert (found.provider, found.stripe.api_key) == ("ledger", "")


def test_stripe_needs_its_key_and_webhook_secret_and_keeps_them_out_of_reprs(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError) as caught:
        config.load_with("payments", payments_settings.read, {"POLY_PAYMENTS_PROVIDER": "stripe"})
    assert [p.split(":")[0] for p in caught.value.problems] == [
        "POLY_STRIPE_API_KEY",
        "POLY_STRIPE_WEBHOOK_SECRET",
    ]
    secret_file = tmp_path / "stripe-key"
    secret_file.write_text("sk_live_from_a_file\n")
    environ = {
        "POLY_PAYMENTS_PROVIDER": "Stripe",
        "POLY_STRIPE_API_KEY_FILE": str(secret_file),
        "POLY_STRIPE_WEBHOOK_SECRET": "whsec_abc",
    }
    found = config.load_with("payments", payments_settings.read, environ)[1]
    assert (found.provider, found.stripe.api_key, found.stripe.webhook_secret) == (
        "stripe",
        "sk_live_from_a_file",
        "whsec_abc",
    )
    assert "sk_live" not in repr(found) and "whsec" not in repr(found)


def test_an_unknown_provider_fails_start_up() -> None:
    with pytest.raises(config.ConfigError) as caught:
        config.load_with("payments", payments_settings.read, {"POLY_PAYMENTS_PROVIDER": "bitcoin"})
    assert [p.split(":")[0] for p in caught.value.problems] == ["POLY_PAYMENTS_PROVIDER"]


def test_paypal_needs_its_client_and_webhook_id_and_keeps_the_secret_out_of_reprs() -> None:
    with pytest.raises(config.ConfigError) as caught:
        config.load_with("payments", payments_settings.read, {"POLY_PAYMENTS_PROVIDER": "paypal"})
    assert [p.split(":")[0] for p in caught.value.problems] == [
        "POLY_PAYPAL_CLIENT_ID",
        "POLY_PAYPAL_CLIENT_SECRET",
        "POLY_PAYPAL_WEBHOOK_ID",
    ]
    environ = {
        "POLY_PAYMENTS_PROVIDER": "paypal",
        "POLY_PAYPAL_CLIENT_ID": "client-abc",
        "POLY_PAYPAL_CLIENT_SECRET": "EL-very-secret",
        "POLY_PAYPAL_WEBHOOK_ID": "WH123",
        "POLY_PAYPAL_API_BASE": "https://api-m.sandbox.paypal.com/",
    }
    found = config.load_with("payments", payments_settings.read, environ)[1]
    assert (found.paypal.client_id, found.paypal.webhook_id, found.paypal.api_base) == (
        "client-abc",
        "WH123",
        "https://api-m.sandbox.paypal.com",
    )
    assert "EL-very-secret" not in repr(found)


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("https://api.stripe.com", False),
        ("http://127.0.0.1:8080", False),
        ("http://localhost:9", False),
        ("http://api.stripe.com", True),
        ("ftp://api.stripe.com", True),
        ("https://", True),
    ],
    ids=["https", "loopback-ip", "loopback-name", "plain-http-elsewhere", "not-http", "no-host"],
)
def test_a_provider_api_is_reached_over_https_or_on_this_host_only(url: str, refused: bool) -> None:
    environ = {
        "POLY_PAYMENTS_PROVIDER": "stripe",
        "POLY_STRIPE_API_KEY": "sk_test_1",
        "POLY_STRIPE_WEBHOOK_SECRET": "whsec_1",
        "POLY_STRIPE_API_BASE": url,
    }
    if refused:
        with pytest.raises(config.ConfigError) as caught:
            config.load_with("payments", payments_settings.read, environ)
        assert [p.split(":")[0] for p in caught.value.problems] == ["POLY_STRIPE_API_BASE"]
    else:
        assert config.load_with("payments", payments_settings.read, environ)[1].stripe.api_base == url
