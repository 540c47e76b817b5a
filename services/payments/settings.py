"""The payments service's own settings, read with the kit's `config.Reader` (see
``services/notifications/settings.py`` for how every service's settings are read)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # types only: the domain imports these settings, and knows no kit config
    from services.kit.config import Reader, Settings

__all__ = ["PaymentsSettings", "read"]


@dataclass(frozen=True, slots=True)
class PaymentsSettings:
    default_currency: str = "EUR"
    """Currency of the account opened for each new user."""


def read(env: Reader, settings: Settings | None = None) -> PaymentsSettings:
    currency = env.text("POLY_PAYMENTS_DEFAULT_CURRENCY", "EUR").upper()
    if not re.fullmatch(r"[A-Z]{3}", currency):
        env.problems.append(f"POLY_PAYMENTS_DEFAULT_CURRENCY: expected an ISO 4217 code, got {currency!r}")
    return PaymentsSettings(default_currency=currency)
