"""Payments held by an outside provider: each change is asked of the provider outside any
database transaction, then its answer recorded in the ledger in a transaction of its own.

Why three steps and not one: a provider call can take seconds, and a transaction held open
over it would hold the account's lock (on SQLite, the whole database's) as long. So an
authorization is first recorded as a PENDING payment (taking the order's one payment, the
caller's request id, and the payment method it is asked with), the provider is asked with a
key derived from the payment's id (`providers.keys`), and the answer moves the payment on.
Whatever stops in between (a timeout, a crash, the caller going away) leaves a state from
which asking again is safe: the caller's retry, or `provider_worker.ProviderWorker`, asks with
the same key and the same parameters and gets the provider's first answer. What the provider
reports by webhook is applied by `provider_events`; both record through `Recorder`, so a
capture or refund is recorded once, whichever tells of it first.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import TypeVar

from services.kit.domain_errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from services.payments.idempotency import Request, remember, settle
from services.payments.ledger import provider_capture, provider_refund
from services.payments.providers import Charge, PaymentProvider, ProviderRefused, ProviderUnavailable
from services.payments.records import (
    AUTHORIZED,
    CAPTURED,
    FAILED,
    PARTIALLY_REFUNDED,
    PENDING,
    REFUNDED,
    VOIDED,
    Account,
    Payment,
    PaymentEvent,
    Repository,
)

__all__ = ["CANCEL", "OutsideSteps", "Recorder", "Transactions", "locked"]

CANCEL = "CANCEL"
"""Compensation: void the authorization, or refund what was captured."""

Transactions = Callable[[], AbstractContextManager[Repository]]
_T = TypeVar("_T")


def _unavailable(provider: PaymentProvider, payment: Payment) -> Unavailable:
    return Unavailable(
        "PAYMENT_PROVIDER_UNAVAILABLE",
        "{provider} did not answer for payments/{payment}; ask again with the same request_id",
        retry_after_seconds=1.0,
        provider=provider.name,
        payment=payment.id,
    )


def locked(repo: Repository, payment_id: str) -> Payment:
    """The payment, read once its account is locked (every change locks it)."""
    repo.lock_account_of(payment_id)
    found = repo.payment(payment_id)
    if found is None:
        raise NotFound("PAYMENT_NOT_FOUND", "payments/{payment} does not exist", payment=payment_id)
    return found


class Recorder:
    """What a provider did, written into the ledger inside the caller's transaction, once:
    by state for authorizations and captures, by the provider's id for refunds."""

    def __init__(self, provider: str, clock: Callable[[], dt.datetime]) -> None:
        self.provider = provider
        self._clock = clock

    def now(self) -> dt.datetime:
        return self._clock()

    def authorized(self, repo: Repository, payment: Payment, reference: str) -> None:
        if payment.state == PENDING:
            repo.set_state(payment, AUTHORIZED, self._clock(), reference=reference)
            held = replace(payment, state=AUTHORIZED, provider_reference=reference)
            repo.publish(PaymentEvent(AUTHORIZED, held, held.amount))

    def declined(self, repo: Repository, payment: Payment, reason: str, reference: str) -> None:
        if payment.state == PENDING:
            repo.set_state(payment, FAILED, self._clock(), failure_reason=reason, reference=reference)
            failed = replace(payment, state=FAILED, failure_reason=reason)
            repo.publish(PaymentEvent(FAILED, failed, failed.amount, reason))

    def captured(
        self, repo: Repository, payment: Payment, capture: str, amount: int, reference: str = ""
    ) -> None:
        """`amount` taken (all of it, or less when captured in part at the provider)."""
        if payment.state in (PENDING, AUTHORIZED):
            now = self._clock()
            repo.set_state(payment, CAPTURED, now, reference=reference, capture=capture)
            provider_capture(repo, payment, amount, now)
            taken = locked(repo, payment.id)
            repo.publish(PaymentEvent(CAPTURED, taken, amount))

    def voided(self, repo: Repository, payment: Payment) -> None:
        if payment.state == AUTHORIZED:
            repo.set_state(payment, VOIDED, self._clock())
            repo.publish(PaymentEvent(VOIDED, replace(payment, state=VOIDED), payment.amount))

    def refunded(self, repo: Repository, payment: Payment, refund: str, amount: int, reason: str) -> bool:
        """A refund the provider made, recorded once by its id, as it made it (even past what
        the ledger thought was left: reconciliation then shows why). False when it is not
        recordable yet: the payment's capture is not recorded."""
        if payment.state not in (CAPTURED, PARTIALLY_REFUNDED, REFUNDED):
            return False
        if amount > 0 and repo.first_sight(self.provider, f"refund:{refund}", "refund"):
            provider_refund(repo, payment, amount, self._clock())
            self._settle_refunds(repo, payment, amount, reason)
        return True

    def refund_failed(self, repo: Repository, payment: Payment, refund: str, amount: int) -> None:
        """A refund the provider could not make after all: its money back to the merchant, if
        it was recorded; either way a later report of it is not recorded."""
        recorded = not repo.first_sight(self.provider, f"refund:{refund}", "refund")
        if amount > 0 and recorded and repo.first_sight(self.provider, f"refund-failed:{refund}", "refund"):
            provider_refund(repo, payment, -amount, self._clock())
            self._settle_refunds(repo, payment, -amount, "")

    def _settle_refunds(self, repo: Repository, payment: Payment, moved: int, reason: str) -> None:
        after = locked(repo, payment.id)
        state = (
            CAPTURED
            if after.refunded <= 0
            else REFUNDED
            if after.refunded >= after.captured
            else PARTIALLY_REFUNDED
        )
        repo.set_state(payment, state, self._clock())
        if moved > 0:
            repo.publish(PaymentEvent(REFUNDED, locked(repo, payment.id), moved, reason))


class OutsideSteps:
    """The provider call of each change of an outside payment and the recording of its answer.
    Each method starts from the payment as committed and returns it as recorded."""

    def __init__(
        self, transactions: Transactions, provider: PaymentProvider, clock: Callable[[], dt.datetime]
    ) -> None:
        self._transactions = transactions
        self.provider = provider
        self.record = Recorder(provider.name, clock)
        self._clock = clock

    def attach(self, account: Account, method: str) -> Account:
        """Sets the account's payment method (made reusable at the provider first)."""
        try:
            method_id, customer = self.provider.attach(account, method)
        except ProviderUnavailable as error:
            raise Unavailable(
                "PAYMENT_PROVIDER_UNAVAILABLE",
                "{provider} did not answer; ask again",
                retry_after_seconds=1.0,
                provider=self.provider.name,
            ) from error
        except ProviderRefused as refused:
            raise InvalidArgument(
                "PAYMENT_METHOD_INVALID",
                "{provider} refused the payment method: {provider_reason}",
                provider=self.provider.name,
                provider_reason=refused.reason,
            ) from refused
        with self._transactions() as repo:
            repo.lock_account(account.id)
            repo.set_payment_method(account.id, method_id, customer)
            found = repo.account(account.id)
        assert found is not None
        return found

    def _ask(self, payment: Payment, call: Callable[[], _T], reason: str, verb: str) -> _T:
        """`call` of the provider about `payment`: no answer is UNAVAILABLE (ask again, the
        same key), a refusal FAILED_PRECONDITION `reason`."""
        try:
            return call()
        except ProviderUnavailable as error:
            raise _unavailable(self.provider, payment) from error
        except ProviderRefused as refused:
            raise FailedPrecondition(
                reason,
                "{provider} refused to " + verb + " payments/{payment}: {provider_reason}",
                provider=self.provider.name,
                payment=payment.id,
                provider_reason=refused.reason,
            ) from refused

    def authorization(self, payment: Payment) -> Payment:
        """PENDING -> AUTHORIZED or FAILED, as the provider answers; asked with the method the
        payment was recorded with, whatever the account's is now."""
        try:
            answer = self.provider.authorize(
                Charge(payment, payment.charged_method, payment.charged_customer)
            )
        except ProviderUnavailable as error:
            raise _unavailable(self.provider, payment) from error
        except ProviderRefused as refused:  # a refusal of the request itself is a decline too
            reference, decline = "", refused.reason
        else:
            reference, decline = answer.reference, answer.decline
        with self._transactions() as repo:
            current = locked(repo, payment.id)
            if decline:
                self.record.declined(repo, current, decline, reference)
            else:
                self.record.authorized(repo, current, reference)
            return locked(repo, payment.id)

    def capture(self, payment: Payment, request: Request | None) -> Payment:
        """AUTHORIZED -> CAPTURED. A provider's refusal (the authorization expired or was
        released there) is FAILED_PRECONDITION."""
        capture = self._ask(
            payment, lambda: self.provider.capture(payment), "PAYMENT_NOT_CAPTURABLE", "capture"
        )
        with self._transactions() as repo:
            self.record.captured(repo, locked(repo, payment.id), capture, payment.amount)
            if request is not None:
                remember(repo, request, payment.id, self._clock())
            return locked(repo, payment.id)

    def void(self, payment: Payment, request: Request | None) -> Payment:
        """AUTHORIZED -> VOIDED."""
        self._ask(payment, lambda: self.provider.void(payment), "PAYMENT_NOT_VOIDABLE", "release")
        with self._transactions() as repo:
            self.record.voided(repo, locked(repo, payment.id))
            if request is not None:
                remember(repo, request, payment.id, self._clock())
            return locked(repo, payment.id)

    def refund(
        self, payment: Payment, amount: int, reason: str, key: str, request: Request | None
    ) -> Payment:
        """Returns `amount` of what was captured; `key` (`providers.keys.request`, or the
        compensation's) makes the provider's idempotency key. A `request` stored as in flight
        (`domain.Payments.refund`) is settled once the refund is recorded."""
        refund = self._ask(
            payment, lambda: self.provider.refund(payment, amount, key), "PAYMENT_NOT_REFUNDABLE", "refund"
        )
        with self._transactions() as repo:
            self.record.refunded(repo, locked(repo, payment.id), refund, amount, reason)
            settle(repo, request, payment.id)
            return locked(repo, payment.id)
