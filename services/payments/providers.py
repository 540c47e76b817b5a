"""Outside payment providers (Stripe, PayPal): what the payments use cases ask of one
(`PaymentProvider`) and what it answers. No SDK and no HTTP here: each provider's own module
implements the protocol, and `outside` sequences its calls around the ledger's transactions.

Every call carries an idempotency key derived from our own ids (`keys`), so asking again after
a timeout, a crash or a retried saga step gets the provider's first answer, never a second
charge. Errors: `ProviderUnavailable` (no answer, or one worth asking again: asking again with
the same key is safe) and `ProviderRefused` (a final no, with an UPPER_SNAKE reason).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from services.payments.records import Account, Payment

__all__ = [
    "Authorization",
    "Charge",
    "EventRefused",
    "PaymentProvider",
    "ProviderEvent",
    "ProviderError",
    "ProviderRefused",
    "ProviderUnavailable",
    "keys",
]


class ProviderError(Exception):
    """Base of what a provider raises::

    ProviderError
    ├── ProviderUnavailable   no answer, a timeout, 429 or 5xx: ask again with the same key
    ├── ProviderRefused       a final refusal; `reason` says why (UPPER_SNAKE)
    └── EventRefused          a webhook event whose signature is missing, wrong or stale
    """


class ProviderUnavailable(ProviderError):
    pass


class ProviderRefused(ProviderError):
    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(message or reason)
        self.reason = reason


class EventRefused(ProviderError):
    pass


@dataclass(frozen=True, slots=True)
class ProviderEvent:
    """A verified webhook event, as the use cases apply it."""

    id: str
    """The provider's event id: a redelivery has the same one."""
    type: str
    """The provider's name for it (``payment_intent.succeeded``), kept with the id."""
    kind: str = ""
    """What it does to a payment: AUTHORIZED, FAILED, CAPTURED, VOIDED, REFUNDED,
    REFUND_FAILED (a refund the provider could not make after all), DISPUTED (funds withdrawn
    for a dispute), REINSTATED (returned after one); empty for an event that moves nothing
    here (recorded, then ignored)."""
    reference: str = ""
    """The provider's authorization it concerns (`records.Payment.provider_reference`)."""
    payment: str = ""
    """Our payment's id, where the provider echoes it back (metadata we set)."""
    amount: int = 0
    """What a capture, refund or dispute moved (minor units of the payment's currency)."""
    movement: str = ""
    """The provider's id of the capture, refund or dispute: each is recorded once, whether the
    call's answer or the event arrives first."""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Charge:
    """An authorization to ask for: the PENDING payment and the method that pays it."""

    payment: Payment
    payment_method: str
    customer: str


@dataclass(frozen=True, slots=True)
class Authorization:
    """The provider's answer to `authorize`: its authorization's id, or a decline."""

    reference: str
    decline: str = ""
    """Empty when authorized, else why not (e.g. INSUFFICIENT_FUNDS, CARD_DECLINED)."""


class keys:  # noqa: N801 - a namespace of key builders, read as keys.capture(...)
    """Idempotency keys, one per money movement, built from our own ids: the same step asked
    again (a retried saga step, the worker resuming after a crash) sends the same key."""

    @staticmethod
    def customer(account: Account) -> str:
        return f"poly-{account.id}-customer"

    @staticmethod
    def authorize(payment: Payment) -> str:
        return f"poly-{payment.id}-authorize"

    @staticmethod
    def capture(payment: Payment) -> str:
        return f"poly-{payment.id}-capture"

    @staticmethod
    def void(payment: Payment) -> str:
        return f"poly-{payment.id}-void"

    @staticmethod
    def refund(payment: Payment, request: str) -> str:
        """`request`: what makes this refund one (`keys.request`, or the saga's compensation)."""
        return f"poly-{payment.id}-refund-{request}"

    @staticmethod
    def request(caller: str, request_id: str) -> str:
        """A caller's request id as part of a key: two callers reusing one id stay apart."""
        return hashlib.sha256(f"{caller}\n{request_id}".encode()).hexdigest()[:32]


class PaymentProvider(Protocol):
    """An outside provider holding and moving a payment's money; the ledger records what it
    did. Called outside any database transaction; may raise `ProviderError`."""

    @property
    def name(self) -> str:
        """Short and stable ("stripe"): stored with each payment, names its clearing account."""

    def attach(self, account: Account, method: str) -> tuple[str, str]:
        """Makes `method` (a token from the provider's client-side flow) reusable for the
        account's owner: ``(method id, provider customer id)``."""

    def authorize(self, charge: Charge) -> Authorization: ...
    def capture(self, payment: Payment) -> str:
        """The whole authorized amount; the provider's capture id."""

    def void(self, payment: Payment) -> None:
        """Releases the authorization; one already released is not an error."""

    def refund(self, payment: Payment, amount: int, request: str) -> str:
        """Returns `amount` of the captured money (`keys.refund`); the provider's refund id."""

    def verify_event(self, headers: Mapping[str, str], body: bytes) -> ProviderEvent:
        """The webhook event in `body`, once its signature (in `headers`, lower-case names)
        checks out; raises `EventRefused` before reading anything else from it."""
