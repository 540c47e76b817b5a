"""What payments keeps and how it is asked for: account, ledger-entry and payment records, the
list queries and pages over them, and the `Repository` a store implements in one transaction.

Records are plain values. Their derived amounts (an account's balance and held, a payment's
captured and refunded) come from the ledger: the store sums them, or (a customer account's
balance and held) keeps them as running totals beside it, written with every change.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from services.kit import filters
from services.kit.filters import Ordering, Term

__all__ = [
    "ACCOUNT_FIELDS",
    "AUTHORIZED",
    "CAPTURED",
    "FAILED",
    "PARTIALLY_REFUNDED",
    "REFUNDED",
    "VOIDED",
    "CUSTOMER",
    "ENTRY_FIELDS",
    "FUNDING",
    "KINDS",
    "MERCHANT",
    "PAYMENT_FIELDS",
    "PENDING",
    "PROVIDER",
    "STATES",
    "Account",
    "AccountPage",
    "EntryPage",
    "LedgerEntry",
    "ListQuery",
    "Payment",
    "PaymentEvent",
    "PaymentPage",
    "Repository",
    "Viewer",
    "list_query",
]

# Account kinds: a user's account, and per currency the source of funding, the merchant and
# each outside payment provider's clearing account (what came in through it, as a debit).
CUSTOMER, FUNDING, MERCHANT, PROVIDER = "CUSTOMER", "FUNDING", "MERCHANT", "PROVIDER"
# Ledger entry kinds.
KINDS = ("FUNDING", "CAPTURE", "REFUND", "DISPUTE")
# Payment states.
AUTHORIZED, CAPTURED, VOIDED = "AUTHORIZED", "CAPTURED", "VOIDED"
PARTIALLY_REFUNDED, REFUNDED, FAILED = "PARTIALLY_REFUNDED", "REFUNDED", "FAILED"
PENDING = "PENDING"
"""Asked of an outside provider, its answer not recorded yet (`outside`)."""
STATES = (PENDING, AUTHORIZED, CAPTURED, VOIDED, PARTIALLY_REFUNDED, REFUNDED, FAILED)


@dataclass(frozen=True, slots=True)
class Account:
    id: str
    kind: str
    owner: str
    """``users/{user}``; empty for the system accounts."""
    currency: str
    create_time: dt.datetime
    update_time: dt.datetime
    balance: int = 0
    """Sum of the account's ledger entries (derived by the store, never stored)."""
    held: int = 0
    """Sum of the account's AUTHORIZED ledger payments (derived, never stored)."""
    payment_method: str = ""
    """The outside provider's reusable payment method the owner set (a Stripe ``pm_…``, a
    PayPal vault token); empty when payments are held in the ledger."""
    provider_customer: str = ""
    """The provider's customer the method belongs to (Stripe ``cus_…``), made on first use."""

    @property
    def name(self) -> str:
        return f"accounts/{self.id}"

    @property
    def available(self) -> int:
        return self.balance - self.held


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    id: str
    account_id: str
    transaction: str
    amount: int
    """Signed minor units: positive credits, negative debits."""
    currency: str
    kind: str
    payment_id: str
    """Empty for funding."""
    create_time: dt.datetime

    @property
    def name(self) -> str:
        return f"accounts/{self.account_id}/ledgerEntries/{self.id}"


@dataclass(frozen=True, slots=True)
class Payment:
    id: str
    order: str
    account_id: str
    """Empty when the owner had no account in the currency."""
    owner: str
    currency: str
    amount: int
    state: str
    failure_reason: str
    create_time: dt.datetime
    update_time: dt.datetime
    captured: int = 0
    """What the payment's CAPTURE transactions credited (derived by the store)."""
    refunded: int = 0
    """What its REFUND transactions credited (derived by the store)."""
    provider: str = ""
    """The outside provider holding the money ("stripe", "paypal"); empty: the ledger."""
    charged_method: str = ""
    """The provider's payment method the authorization is asked with (fixed when PENDING)."""
    charged_customer: str = ""
    provider_reference: str = ""
    """The provider's authorization (a Stripe PaymentIntent, a PayPal authorization)."""
    provider_capture: str = ""
    """The provider's capture, where refunds are asked of it (PayPal)."""
    compensation: str = ""
    """Saga compensation still to ask of the provider: CANCEL (void or refund the rest)."""
    compensation_reason: str = ""
    provider_attempts: int = 0
    """Failed attempts of the provider worker on this payment so far."""
    provider_retry_at: dt.datetime | None = None
    """When the provider worker may ask about it again (None: at once)."""

    @property
    def name(self) -> str:
        return f"payments/{self.id}"


@dataclass(frozen=True, slots=True)
class PaymentEvent:
    """What happened to a payment, for the store to publish as a ``poly.events.v1`` message."""

    kind: str
    """AUTHORIZED, FAILED, CAPTURED, VOIDED or REFUNDED."""
    payment: Payment
    amount: int
    """The amount this change moved (held, asked for, taken, released, returned)."""
    reason: str = ""


# -- list queries and pages ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListQuery:
    terms: tuple[Term, ...]
    ordering: Ordering


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who lists: a plain user sees only their own resources, `sees_all` callers everything."""

    subject: str
    sees_all: bool


@dataclass(frozen=True, slots=True)
class AccountPage:
    accounts: list[Account]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class EntryPage:
    entries: list[LedgerEntry]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class PaymentPage:
    payments: list[Payment]
    next_page_token: str


def _id_value(collection: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        prefix, _, found = raw.partition("/")
        if prefix != collection or not found or "/" in found:
            raise ValueError(f"must be {collection}/{{id}}")
        return found

    return parse


_TIME = filters.FieldSpec(filters.timestamp_value, filters.ORDERED)
ACCOUNT_FIELDS: filters.Fields = {
    "owner": filters.FieldSpec(filters.text_value),
    "currency_code": filters.FieldSpec(filters.text_value),
    "create_time": _TIME,
}
ENTRY_FIELDS: filters.Fields = {
    "kind": filters.FieldSpec(filters.enum_value(*KINDS, prefix="KIND_")),
    "payment": filters.FieldSpec(_id_value("payments")),
    "create_time": _TIME,
}
PAYMENT_FIELDS: filters.Fields = {
    "state": filters.FieldSpec(filters.enum_value(*STATES)),
    "order": filters.FieldSpec(filters.text_value),
    "account": filters.FieldSpec(_id_value("accounts")),
    "owner": filters.FieldSpec(filters.text_value),
    "create_time": _TIME,
}
_NEWEST_FIRST = Ordering("create_time", descending=True)


def list_query(
    filter_text: str, order_by: str, fields: filters.Fields, orderings: Sequence[str]
) -> ListQuery:
    """A List request's AIP-160 `filter_text` over `fields` and its `order_by` among
    `orderings` (newest first by default)."""
    terms = filters.parse_filter(filter_text, fields)
    return ListQuery(tuple(terms), filters.parse_order_by(order_by, orderings, default=_NEWEST_FIRST))


# -- storage ---------------------------------------------------------------------------


class Repository(Protocol):
    """The payments database, inside one transaction."""

    def account(self, account_id: str) -> Account | None:
        """With `balance` and `held` as committed (lock the account first to rely on them)."""

    def account_of(self, owner: str, currency: str) -> Account | None: ...
    def add_account(self, account: Account) -> bool:
        """False when it exists (same id, or same kind, owner and currency)."""

    def lock_account(self, account_id: str) -> bool:
        """Take the account's write lock for the rest of the transaction; False if none."""

    def lock_customer_account(self, owner: str, currency: str, account_id: str = "") -> str:
        """`lock_account` of `owner`'s CUSTOMER account in `currency` (and only if its id is
        `account_id`, when given); its id, or "" when there is no such account."""

    def lock_account_of(self, payment_id: str) -> bool:
        """`lock_account` of the payment's account; False if there is no such payment, or it
        has no account (a decline before one was found, an order cancelled first)."""

    def add_entries(self, entries: Sequence[LedgerEntry]) -> None: ...
    def entry(self, account_id: str, entry_id: str) -> LedgerEntry | None: ...
    def payment(self, payment_id: str) -> Payment | None: ...
    def payment_for_order(self, order: str) -> Payment | None: ...
    def add_payment(self, payment: Payment) -> bool:
        """False when the order already has a payment (the unique constraint decides)."""

    def set_state(
        self,
        payment: Payment,
        after: str,
        now: dt.datetime,
        *,
        failure_reason: str = "",
        reference: str = "",
        capture: str = "",
    ) -> bool:
        """Move the payment from its state as read (`payment.state`) to `after`; False if it
        was no longer in it. A non-empty `failure_reason`, provider `reference` or `capture`
        is written with it."""

    def set_payment_method(self, account_id: str, method: str, customer: str) -> None:
        """Not an amount: the account's update time stays."""

    def set_compensation(self, payment_id: str, compensation: str, reason: str) -> None:
        """Leave (or, with "", clear) saga compensation for the provider worker."""

    def payment_by_reference(self, provider: str, reference: str) -> Payment | None:
        """The payment `provider` knows as `reference`: its authorization's id or its capture's."""

    def first_sight(self, provider: str, key: str, kind: str) -> bool:
        """Record `key` (an event id, a refund's id) as seen from `provider` in the inbox; False
        when it was already there (waits for a concurrent recording of it)."""

    def provider_work(self, pending_before: dt.datetime, now: dt.datetime, limit: int) -> list[Payment]:
        """Outside-provider payments with compensation to ask for, or PENDING since before
        `pending_before` (their caller went away), whose retry time has come by `now`, the
        oldest change first."""

    def provider_payments(self, provider: str, since: dt.datetime, until: dt.datetime) -> list[Payment]:
        """Every payment `provider` holds created in [since, until), oldest first."""

    def postpone(self, payment_id: str, attempts: int, retry_at: dt.datetime | None) -> None:
        """The provider worker's next try of the payment (None: at once), after `attempts`."""

    def seen(self, provider: str, key: str) -> bool:
        """Whether `first_sight` recorded `key` from `provider` already (records nothing)."""

    def settle_request(self, caller: str, key: str, result: str) -> None:
        """Replace what an idempotency key stored (a request in flight, once it is done)."""

    def recall(self, caller: str, key: str) -> tuple[str, str] | None:
        """``(fingerprint, result id)`` stored for the caller's idempotency key."""

    def remember(self, caller: str, key: str, fingerprint: str, result: str, now: dt.datetime) -> bool:
        """False when the key is already stored."""

    def list_accounts(self, query: ListQuery, after: Sequence[str] | None, limit: int) -> list[Account]: ...
    def list_entries(
        self, account_id: str, query: ListQuery, after: Sequence[str] | None, limit: int
    ) -> list[LedgerEntry]: ...
    def list_payments(self, query: ListQuery, after: Sequence[str] | None, limit: int) -> list[Payment]: ...
    def publish(self, event: PaymentEvent) -> None: ...
