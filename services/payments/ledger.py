"""The double-entry ledger: balanced transactions, each currency's system accounts, and the
`LedgerProvider`, the built-in payment provider that moves a payment's money in the ledger."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence

from services.kit.money import Money
from services.payments.records import MERCHANT, PROVIDER, Account, LedgerEntry, Payment, Repository

__all__ = [
    "INSUFFICIENT_FUNDS",
    "LedgerImbalance",
    "LedgerProvider",
    "balanced_entries",
    "provider_capture",
    "provider_dispute",
    "provider_refund",
    "system_account",
    "system_account_id",
]

INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"


class LedgerImbalance(RuntimeError):
    """A transaction's legs do not sum to zero or mix currencies: a bug, never written."""


def balanced_entries(
    legs: Sequence[tuple[str, int]], currency: str, kind: str, payment_id: str, now: dt.datetime
) -> list[LedgerEntry]:
    """The entries of one double-entry transaction; refuses legs that do not sum to zero."""
    if len(legs) < 2 or sum(amount for _, amount in legs) != 0 or any(a == 0 for _, a in legs):
        raise LedgerImbalance(f"unbalanced {kind} transaction: {list(legs)}")
    transaction = str(uuid.uuid4())
    return [
        LedgerEntry(str(uuid.uuid4()), account, transaction, amount, currency, kind, payment_id, now)
        for account, amount in legs
    ]


def system_account_id(kind: str, currency: str) -> str:
    """The id of the FUNDING or MERCHANT account of `currency`. Only these may go below zero,
    and only FUNDING does: it is the source of every funding, so its balance is minus all
    that was funded. MERCHANT receives captures and pays refunds, which never exceed them."""
    return f"{kind.lower()}-{currency.lower()}"


def system_account(repo: Repository, kind: str, currency: str, now: dt.datetime) -> str:
    """The funding or merchant account of `currency`, opened on first use.

    Opened by an insert that does nothing when it exists, not by reading it first: reading
    a system account sums its entries, and these two take an entry for every payment ever
    made (which is also why they keep no running totals: each payment would wait for the
    one before it to commit to update the same row)."""
    account_id = system_account_id(kind, currency)
    repo.add_account(Account(account_id, kind, "", currency, now, now))
    return account_id


class LedgerProvider:
    """The built-in provider (`domain.PaymentProvider`): a hold is the AUTHORIZED payment itself
    (counted in `held`); capture moves it to the merchant account, a refund moves money back."""

    def authorize(self, repo: Repository, account: Account, amount: Money) -> str:
        return "" if amount.amount <= account.available else INSUFFICIENT_FUNDS

    def capture(self, repo: Repository, payment: Payment, now: dt.datetime) -> None:
        merchant = system_account(repo, MERCHANT, payment.currency, now)
        legs = [(payment.account_id, -payment.amount), (merchant, payment.amount)]
        repo.add_entries(balanced_entries(legs, payment.currency, "CAPTURE", payment.id, now))

    def void(self, repo: Repository, payment: Payment, now: dt.datetime) -> None:
        """Nothing to move: leaving AUTHORIZED releases the hold."""

    def refund(self, repo: Repository, payment: Payment, amount: int, now: dt.datetime) -> None:
        merchant = system_account(repo, MERCHANT, payment.currency, now)
        legs = [(merchant, -amount), (payment.account_id, amount)]
        repo.add_entries(balanced_entries(legs, payment.currency, "REFUND", payment.id, now))


def _provider_account(repo: Repository, provider: str, currency: str, now: dt.datetime) -> str:
    """The clearing account of an outside provider in `currency` (``stripe-eur``), opened on
    first use: debited with all that came in through the provider, credited with what went
    back, so its balance is minus what the provider holds for the merchant."""
    account_id = f"{provider}-{currency.lower()}"
    repo.add_account(Account(account_id, PROVIDER, f"providers/{provider}", currency, now, now))
    return account_id


def provider_capture(repo: Repository, payment: Payment, amount: int, now: dt.datetime) -> None:
    """A capture of `amount` at the payment's outside provider: its money reaches the merchant
    through the provider's clearing account (the customer's ledger account is not involved)."""
    _through_clearing(repo, payment, amount, "CAPTURE", now)


def provider_refund(repo: Repository, payment: Payment, amount: int, now: dt.datetime) -> None:
    """A refund of `amount` at the provider; a negative one is a refund it failed afterwards,
    whose money comes back to the merchant."""
    _through_clearing(repo, payment, -amount, "REFUND", now)


def provider_dispute(repo: Repository, payment: Payment, amount: int, now: dt.datetime) -> None:
    """`amount` the provider took from the merchant for a dispute; negative: returned to it
    (the dispute was won)."""
    _through_clearing(repo, payment, -amount, "DISPUTE", now)


def _through_clearing(repo: Repository, payment: Payment, amount: int, kind: str, now: dt.datetime) -> None:
    """`amount` from the provider's clearing account to the merchant (negative: back)."""
    clearing = _provider_account(repo, payment.provider, payment.currency, now)
    merchant = system_account(repo, MERCHANT, payment.currency, now)
    legs = [(clearing, -amount), (merchant, amount)]
    repo.add_entries(balanced_entries(legs, payment.currency, kind, payment.id, now))
