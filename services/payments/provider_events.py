"""An outside provider's webhook events, once verified, applied to payments: each once, its
id going into the inbox in the transaction that applies it (`apply_event`).

An event can arrive before what it builds on is recorded (providers promise no order: a
refund's event before the capture's, when the capture's answer was lost). Such an event is
not recorded at all: `Unavailable` rolls its inbox row back, the edge answers 503, and the
provider sends it again later, when it applies.
"""

from __future__ import annotations

from services.kit.domain_errors import Unavailable
from services.payments.ledger import provider_dispute
from services.payments.outside import Recorder, Transactions, locked
from services.payments.providers import ProviderEvent
from services.payments.records import (
    AUTHORIZED,
    CAPTURED,
    FAILED,
    PARTIALLY_REFUNDED,
    PENDING,
    REFUNDED,
    VOIDED,
    Payment,
    Repository,
)

__all__ = ["apply_event"]

_TAKEN = (CAPTURED, PARTIALLY_REFUNDED, REFUNDED)
_AFTER_CAPTURE = ("REFUNDED", "REFUND_FAILED", "DISPUTED", "REINSTATED")


def _too_early(event: ProviderEvent, payment: Payment) -> Unavailable:
    return Unavailable(
        "PROVIDER_EVENT_EARLY",
        "{event} is about payments/{payment}, whose capture is not recorded yet; send it again",
        retry_after_seconds=30.0,
        event=event.id,
        payment=payment.id,
    )


def apply_event(transactions: Transactions, record: Recorder, event: ProviderEvent) -> None:
    """Apply `event` (verified) once. A state the use cases reached first is left as it is."""
    with transactions() as repo:
        if not repo.first_sight(record.provider, f"event:{event.id}", event.type):
            return  # delivered again
        found = _payment_of(repo, record.provider, event)
        if found is None or not event.kind:
            return  # another system's payment on the same provider account, or nothing to do here
        payment = locked(repo, found.id)
        if event.kind in _AFTER_CAPTURE and payment.state not in _TAKEN:
            raise _too_early(event, payment)
        if event.kind == AUTHORIZED:
            record.authorized(repo, payment, event.reference)
        elif event.kind in (FAILED, VOIDED) and payment.state == PENDING:
            record.declined(repo, payment, event.reason or f"PROVIDER_{event.kind}", event.reference)
        elif event.kind == CAPTURED:
            amount = event.amount if 0 < event.amount <= payment.amount else payment.amount
            record.captured(repo, payment, event.movement, amount, event.reference)
        elif event.kind == VOIDED:
            record.voided(repo, payment)
        elif event.kind == "REFUNDED":
            record.refunded(repo, payment, event.movement, event.amount, event.reason)
        elif event.kind == "REFUND_FAILED":
            record.refund_failed(repo, payment, event.movement, event.amount)
        elif event.kind in ("DISPUTED", "REINSTATED") and event.amount > 0:
            key = f"{event.kind.lower()}:{event.movement}"
            if repo.first_sight(record.provider, key, "dispute"):
                moved = event.amount if event.kind == "DISPUTED" else -event.amount
                provider_dispute(repo, payment, moved, record.now())


def _payment_of(repo: Repository, provider: str, event: ProviderEvent) -> Payment | None:
    """The payment `event` is about: by the provider's reference, or (a PENDING one, whose
    reference the provider's answer has not told yet) by our id echoed in its metadata."""
    found = repo.payment_by_reference(provider, event.reference)
    if found is None and event.payment:
        found = repo.payment(event.payment)
        if found is not None and (
            found.provider != provider or found.provider_reference not in ("", event.reference)
        ):
            return None  # not the payment the provider's object belongs to
    return found
