"""Money as integer minor units plus an ISO 4217 code; never a float.

`Money` is the plain value domain code computes with. `money_problems` checks an amount a
client sent (known currency, sign, bounds) and returns field violations instead of raising,
so a create call can report every bad field at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.kit.domain_errors import FieldViolation

__all__ = ["CURRENCIES", "MAX_AMOUNT_MINOR", "Money", "minor_unit_digits", "money_problems"]


def _codes(text: str) -> frozenset[str]:
    return frozenset(text.split())


CURRENCIES = _codes(
    """AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BOV BRL BSD
    BTN BWP BYN BZD CAD CDF CHE CHF CHW CLF CLP CNY COP COU CRC CUP CVE CZK DJF DKK DOP DZD
    EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD
    IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL
    MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN
    PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN
    SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD USN UYI UYU UYW UZS VED VES
    VND VUV WST XAF XCD XCG XOF XPF YER ZAR ZMW ZWG"""
)
"""Active ISO 4217 alphabetic codes (funds and precious metals excluded)."""

_NO_MINOR_UNITS = _codes("BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF")
_THREE_DIGITS = _codes("BHD IQD JOD KWD LYD OMR TND")

MAX_AMOUNT_MINOR = 10**15
"""Largest amount accepted from a client: far above any real payment, far below int64, so
sums of many amounts can never overflow."""


@dataclass(frozen=True, slots=True)
class Money:
    currency: str
    amount: int
    """Minor units; negative only where the field says so (ledger entries)."""

    def __add__(self, other: Money) -> Money:
        if other.currency != self.currency:
            raise ValueError(f"cannot add {other.currency} to {self.currency}")
        return Money(self.currency, self.amount + other.amount)

    def __sub__(self, other: Money) -> Money:
        return self + Money(other.currency, -other.amount)

    def __neg__(self) -> Money:
        return Money(self.currency, -self.amount)

    def times(self, quantity: int) -> Money:
        return Money(self.currency, self.amount * quantity)

    def __str__(self) -> str:
        digits = minor_unit_digits(self.currency)
        sign = "-" if self.amount < 0 else ""
        whole, part = divmod(abs(self.amount), 10**digits) if digits else (abs(self.amount), 0)
        return (
            f"{sign}{whole}.{part:0{digits}d} {self.currency}" if digits else f"{sign}{whole} {self.currency}"
        )


def minor_unit_digits(currency: str) -> int:
    """Digits after the decimal point of `currency` (2 for EUR, 0 for JPY, 3 for KWD)."""
    if currency in _NO_MINOR_UNITS:
        return 0
    return 3 if currency in _THREE_DIGITS else 2


def money_problems(
    field: str,
    currency: str,
    amount: int,
    *,
    positive: bool = False,
    maximum: int = MAX_AMOUNT_MINOR,
) -> list[FieldViolation]:
    """What is wrong with an amount a client sent, as violations on `field` (empty if fine).
    Negative is always refused; `positive` also refuses zero."""
    problems: list[FieldViolation] = []
    if currency not in CURRENCIES:
        problems.append(
            FieldViolation(f"{field}.currency_code", "must be an ISO 4217 code in upper case, e.g. EUR")
        )
    if amount < 0 or (positive and amount == 0):
        problems.append(
            FieldViolation(
                f"{field}.amount_minor", "must be positive" if positive else "must not be negative"
            )
        )
    elif amount > maximum:
        problems.append(FieldViolation(f"{field}.amount_minor", f"must be at most {maximum}"))
    return problems
