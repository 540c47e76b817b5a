"""The payments service's own settings, read with the kit's `config.Reader` (see
``services/notifications/settings.py`` for how every service's settings are read): the
currency of new accounts, and which provider holds payments, with its credentials."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from services.kit.urls import is_https_or_loopback

if TYPE_CHECKING:  # types only: the domain imports these settings, and knows no kit config
    from services.kit.config import Reader, Settings

__all__ = ["PROVIDERS", "PayPalSettings", "PaymentsSettings", "StripeSettings", "read"]

PROVIDERS = ("ledger", "stripe", "paypal")
"""What POLY_PAYMENTS_PROVIDER may name: the ledger (funded accounts) or an outside provider."""


@dataclass(frozen=True, slots=True)
class StripeSettings:
    api_key: str = field(default="", repr=False)
    """A secret (``sk_…``) or restricted (``rk_…``) key: never logged."""
    webhook_secret: str = field(default="", repr=False)
    """The webhook endpoint's signing secret (``whsec_…``) that Stripe-Signature is checked with."""
    api_base: str = "https://api.stripe.com"
    """Where the SDK sends its calls: Stripe itself, or a local server in tests."""
    timeout_seconds: float = 10.0
    """Per call; a call that outlasts it is asked again later with the same idempotency key."""


@dataclass(frozen=True, slots=True)
class PayPalSettings:
    client_id: str = ""
    client_secret: str = field(default="", repr=False)
    """With the client id, what the OAuth 2.0 client-credentials grant asks tokens with."""
    webhook_id: str = ""
    """The id PayPal gave the webhook registered for this edge: part of what it verifies."""
    api_base: str = "https://api-m.paypal.com"
    """PayPal (``https://api-m.sandbox.paypal.com`` for its sandbox), or a local server in tests."""
    timeout_seconds: float = 10.0


@dataclass(frozen=True, slots=True)
class PaymentsSettings:
    default_currency: str = "EUR"
    """Currency of the account opened for each new user."""
    provider: str = "ledger"
    stripe: StripeSettings = StripeSettings()
    paypal: PayPalSettings = PayPalSettings()


def read(env: Reader, settings: Settings | None = None) -> PaymentsSettings:
    currency = env.text("POLY_PAYMENTS_DEFAULT_CURRENCY", "EUR").upper()
    if not re.fullmatch(r"[A-Z]{3}", currency):
        env.problems.append(f"POLY_PAYMENTS_DEFAULT_CURRENCY: expected an ISO 4217 code, got {currency!r}")
    provider = env.text("POLY_PAYMENTS_PROVIDER", "ledger").lower()
    if provider not in PROVIDERS:
        env.problems.append(
            f"POLY_PAYMENTS_PROVIDER: expected one of {', '.join(PROVIDERS)}, got {provider!r}"
        )
    stripe = StripeSettings(
        api_key=env.secret("POLY_STRIPE_API_KEY"),
        webhook_secret=env.secret("POLY_STRIPE_WEBHOOK_SECRET"),
        api_base=env.text("POLY_STRIPE_API_BASE", "https://api.stripe.com").rstrip("/"),
        timeout_seconds=env.number("POLY_STRIPE_TIMEOUT_SECONDS", 10.0, low=0.1, high=120.0),
    )
    if provider == "stripe":
        if not stripe.api_key:
            env.problems.append("POLY_STRIPE_API_KEY: required when POLY_PAYMENTS_PROVIDER is stripe")
        if not stripe.webhook_secret:
            env.problems.append("POLY_STRIPE_WEBHOOK_SECRET: required when POLY_PAYMENTS_PROVIDER is stripe")
        if problem := _api_base_problem(stripe.api_base):
            env.problems.append(f"POLY_STRIPE_API_BASE: {problem}")
    paypal = PayPalSettings(
        client_id=env.secret("POLY_PAYPAL_CLIENT_ID"),
        client_secret=env.secret("POLY_PAYPAL_CLIENT_SECRET"),
        webhook_id=env.optional("POLY_PAYPAL_WEBHOOK_ID"),
        api_base=env.text("POLY_PAYPAL_API_BASE", "https://api-m.paypal.com").rstrip("/"),
        timeout_seconds=env.number("POLY_PAYPAL_TIMEOUT_SECONDS", 10.0, low=0.1, high=120.0),
    )
    if provider == "paypal":
        for name, value in (
            ("POLY_PAYPAL_CLIENT_ID", paypal.client_id),
            ("POLY_PAYPAL_CLIENT_SECRET", paypal.client_secret),
            ("POLY_PAYPAL_WEBHOOK_ID", paypal.webhook_id),
        ):
            if not value:
                env.problems.append(f"{name}: required when POLY_PAYMENTS_PROVIDER is paypal")
        if problem := _api_base_problem(paypal.api_base):
            env.problems.append(f"POLY_PAYPAL_API_BASE: {problem}")
    return PaymentsSettings(default_currency=currency, provider=provider, stripe=stripe, paypal=paypal)


def _api_base_problem(url: str) -> str | None:
    """Why `url` cannot carry a provider's credentials: anything but https, except plain http
    to this host (a local stand-in; the key would otherwise cross the network readable)."""
    if is_https_or_loopback(url):
        return None
    return f"expected an https URL (http only to this host), got {url!r}"
