"""Payments held by an outside provider: each change is asked of the provider outside any
database transaction, then its answer recorded in the ledger in a transaction of its own.

Why three steps and not one: a provider call can take seconds, and a transaction held open
over it would hold the account's lock (on SQLite, the whole database's) as long. So an
authorization is first recorded as a PENDING payment (taking the order's one payment and the
caller's request id), the provider is asked with a key derived from the payment's id
(`providers.keys`), and the answer moves the payment on. Whatever stops in between (a
timeout, a crash, the caller going away) leaves a state from which asking again is safe: the
caller's retry, or `ProviderWorker`, asks with the same key and gets the provider's first
answer. Saga compensation (an order cancelled) arrives inside the event consumer's
transaction, so it is left on the payment (`compensation`) for the worker to ask for.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import replace

from services.kit.domain_errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from services.payments.idempotency import Request, remember
from services.payments.ledger import provider_capture, provider_dispute, provider_refund
from services.payments.providers import (
    Charge,
    PaymentProvider,
    ProviderEvent,
    ProviderRefused,
    ProviderUnavailable,
)
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

__all__ = ["CANCEL", "DISPUTED", "OutsideSteps", "ProviderWorker"]

_log = logging.getLogger(__name__)

DISPUTED = "DISPUTED"
CANCEL = "CANCEL"
"""Compensation: void the authorization, or refund what was captured."""
_SETTLED = (VOIDED, REFUNDED, FAILED)

Transactions = Callable[[], AbstractContextManager[Repository]]


def _unavailable(provider: PaymentProvider, payment: Payment) -> Unavailable:
    return Unavailable(
        "PAYMENT_PROVIDER_UNAVAILABLE",
        "{provider} did not answer for payments/{payment}; ask again with the same request_id",
        retry_after_seconds=1.0,
        provider=provider.name,
        payment=payment.id,
    )


class OutsideSteps:
    """The provider call of each change of an outside payment and the recording of its answer.
    Each method starts from the payment as committed and returns it as recorded."""

    def __init__(
        self, transactions: Transactions, provider: PaymentProvider, clock: Callable[[], dt.datetime]
    ) -> None:
        self._transactions = transactions
        self.provider = provider
        self._clock = clock

    def _locked(self, repo: Repository, payment_id: str) -> Payment:
        repo.lock_account_of(payment_id)
        found = repo.payment(payment_id)
        if found is None:
            raise NotFound("PAYMENT_NOT_FOUND", "payments/{payment} does not exist", payment=payment_id)
        return found

    def attach(self, account: Account, method: str) -> Account:
        """Sets the account's payment method (asked of the provider first)."""
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

    def authorization(self, payment: Payment) -> Payment:
        """PENDING -> AUTHORIZED or FAILED, as the provider answers."""
        with self._transactions() as repo:
            account = repo.account(payment.account_id)
        assert account is not None  # a payment's account is never removed
        try:
            answer = self.provider.authorize(
                Charge(payment, account.payment_method, account.provider_customer)
            )
        except ProviderUnavailable as error:
            raise _unavailable(self.provider, payment) from error
        except ProviderRefused as refused:  # a refusal of the request itself is a decline too
            answer_reference, decline = "", refused.reason
        else:
            answer_reference, decline = answer.reference, answer.decline
        with self._transactions() as repo:
            current = self._locked(repo, payment.id)
            if current.state != PENDING:
                return current  # recorded meanwhile (the worker, another retry)
            now = self._clock()
            if decline:
                repo.set_state(current, FAILED, now, failure_reason=decline, reference=answer_reference)
                failed = replace(current, state=FAILED, failure_reason=decline)
                repo.publish(PaymentEvent(FAILED, failed, failed.amount, decline))
            else:
                repo.set_state(current, AUTHORIZED, now, reference=answer_reference)
                held = replace(current, state=AUTHORIZED, provider_reference=answer_reference)
                repo.publish(PaymentEvent(AUTHORIZED, held, held.amount))
            return self._locked(repo, payment.id)

    def capture(self, payment: Payment, request: Request | None) -> Payment:
        """AUTHORIZED -> CAPTURED. A provider's refusal (the authorization expired or was
        released there) is FAILED_PRECONDITION."""
        try:
            capture = self.provider.capture(payment)
        except ProviderUnavailable as error:
            raise _unavailable(self.provider, payment) from error
        except ProviderRefused as refused:
            raise FailedPrecondition(
                "PAYMENT_NOT_CAPTURABLE",
                "{provider} refused to capture payments/{payment}: {provider_reason}",
                provider=self.provider.name,
                payment=payment.id,
                provider_reason=refused.reason,
            ) from refused
        with self._transactions() as repo:
            current = self._locked(repo, payment.id)
            if current.state == AUTHORIZED:
                now = self._clock()
                repo.set_state(current, CAPTURED, now, capture=capture)
                provider_capture(repo, current, now)
                captured = self._locked(repo, payment.id)
                repo.publish(PaymentEvent(CAPTURED, captured, captured.amount))
            if request is not None:
                remember(repo, request, payment.id, self._clock())
            return self._locked(repo, payment.id)

    def void(self, payment: Payment, request: Request | None) -> Payment:
        """AUTHORIZED -> VOIDED."""
        try:
            self.provider.void(payment)
        except ProviderUnavailable as error:
            raise _unavailable(self.provider, payment) from error
        except ProviderRefused as refused:
            raise FailedPrecondition(
                "PAYMENT_NOT_VOIDABLE",
                "{provider} refused to release payments/{payment}: {provider_reason}",
                provider=self.provider.name,
                payment=payment.id,
                provider_reason=refused.reason,
            ) from refused
        with self._transactions() as repo:
            current = self._locked(repo, payment.id)
            if current.state == AUTHORIZED:
                repo.set_state(current, VOIDED, self._clock())
                repo.publish(PaymentEvent(VOIDED, replace(current, state=VOIDED), current.amount))
            if request is not None:
                remember(repo, request, payment.id, self._clock())
            return self._locked(repo, payment.id)

    def refund(
        self, payment: Payment, amount: int, reason: str, request_key: str, request: Request | None
    ) -> Payment:
        """Returns `amount` of what was captured; `request_key` makes the provider's key."""
        try:
            refund = self.provider.refund(payment, amount, request_key)
        except ProviderUnavailable as error:
            raise _unavailable(self.provider, payment) from error
        except ProviderRefused as refused:
            raise FailedPrecondition(
                "PAYMENT_NOT_REFUNDABLE",
                "{provider} refused to refund payments/{payment}: {provider_reason}",
                provider=self.provider.name,
                payment=payment.id,
                provider_reason=refused.reason,
            ) from refused
        with self._transactions() as repo:
            current = self._locked(repo, payment.id)
            self._record_refund(repo, current, refund, amount, reason)
            if request is not None:
                remember(repo, request, payment.id, self._clock())
            return self._locked(repo, payment.id)

    def _record_refund(
        self, repo: Repository, payment: Payment, refund: str, amount: int, reason: str
    ) -> None:
        """A refund the provider made, recorded once by its id (the call's answer and its
        webhook event both tell of it), as the provider made it: even past what the ledger
        thought was left (reconciliation then shows why)."""
        if payment.state not in (CAPTURED, PARTIALLY_REFUNDED, REFUNDED):
            return
        if not repo.first_sight(self.provider.name, f"refund:{refund}", "refund"):
            return
        now = self._clock()
        after = REFUNDED if payment.refunded + amount >= payment.captured else PARTIALLY_REFUNDED
        repo.set_state(payment, after, now)
        provider_refund(repo, payment, amount, now)
        refunded = self._locked(repo, payment.id)
        repo.publish(PaymentEvent(REFUNDED, refunded, amount, reason))

    def apply(self, event: ProviderEvent) -> None:
        """A verified webhook event, applied once: its id goes into the inbox in the same
        transaction. A state the use cases reached first is left as it is."""
        with self._transactions() as repo:
            if not repo.first_sight(self.provider.name, f"event:{event.id}", event.type):
                return  # delivered again
            found = self._payment_of(repo, event)
            if found is None or not event.kind:
                return  # another system's payment on the same provider account, or not ours to act on
            payment = self._locked(repo, found.id)
            now = self._clock()
            if event.kind == AUTHORIZED and payment.state == PENDING:
                repo.set_state(payment, AUTHORIZED, now, reference=event.reference)
                repo.publish(PaymentEvent(AUTHORIZED, replace(payment, state=AUTHORIZED), payment.amount))
            elif event.kind in (FAILED, VOIDED) and payment.state == PENDING:
                reason = event.reason or f"PROVIDER_{event.kind}"
                repo.set_state(payment, FAILED, now, failure_reason=reason, reference=event.reference)
                failed = replace(payment, state=FAILED, failure_reason=reason)
                repo.publish(PaymentEvent(FAILED, failed, payment.amount, reason))
            elif event.kind == CAPTURED and payment.state in (PENDING, AUTHORIZED):
                repo.set_state(payment, CAPTURED, now, reference=event.reference, capture=event.movement)
                provider_capture(repo, payment, now)
                captured = self._locked(repo, payment.id)
                repo.publish(PaymentEvent(CAPTURED, captured, captured.amount))
            elif event.kind == VOIDED and payment.state == AUTHORIZED:
                repo.set_state(payment, VOIDED, now)
                repo.publish(PaymentEvent(VOIDED, replace(payment, state=VOIDED), payment.amount))
            elif event.kind == REFUNDED:
                self._record_refund(repo, payment, event.movement, event.amount, event.reason)
            elif (
                event.kind == DISPUTED
                and payment.state in (CAPTURED, PARTIALLY_REFUNDED, REFUNDED)
                and repo.first_sight(self.provider.name, f"dispute:{event.movement}", "dispute")
            ):
                provider_dispute(repo, payment, event.amount, now)

    def _payment_of(self, repo: Repository, event: ProviderEvent) -> Payment | None:
        """The payment `event` is about: by the provider's reference, or (a PENDING one, whose
        reference the provider's answer has not told yet) by our id echoed in its metadata."""
        found = repo.payment_by_reference(self.provider.name, event.reference)
        if found is None and event.payment:
            found = repo.payment(event.payment)
            if found is not None and (
                found.provider != self.provider.name or found.provider_reference not in ("", event.reference)
            ):
                return None  # not the payment the provider's object belongs to
        return found

    def compensate(self, payment: Payment) -> Payment:
        """Saga compensation left on the payment: settle it at the provider, then clear it."""
        if payment.state == PENDING:
            payment = self.authorization(payment)
        if payment.state == AUTHORIZED:
            payment = self.void(payment, None)
        elif payment.state in (CAPTURED, PARTIALLY_REFUNDED):
            rest = payment.captured - payment.refunded
            payment = self.refund(payment, rest, payment.compensation_reason, "cancel", None)
        if payment.state in _SETTLED:
            with self._transactions() as repo:
                repo.set_compensation(payment.id, "", "")
        return payment


class ProviderWorker:
    """Finishes what callers left with the provider: a PENDING payment whose caller went away
    (a timeout, a crash) and saga compensation. Asks with the same keys as the first attempt,
    so a step already done at the provider is only recorded. Several replicas may run it: the
    keys make a double attempt harmless, and the recording moves each payment once."""

    def __init__(
        self,
        transactions: Transactions,
        steps: OutsideSteps,
        *,
        interval: float = 1.0,
        pending_for: dt.timedelta = dt.timedelta(seconds=30),
        batch: int = 32,
    ) -> None:
        self._transactions = transactions
        self._steps = steps
        self._interval = interval
        self._pending_for = pending_for
        self._batch = batch
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self, now: dt.datetime | None = None) -> int:
        """One pass; how many payments it asked the provider about."""
        now = now or dt.datetime.now(dt.UTC)
        with self._transactions() as repo:
            work = repo.provider_work(now - self._pending_for, self._batch)
        for payment in work:
            try:
                if payment.compensation:
                    self._steps.compensate(payment)
                elif payment.state == PENDING:
                    self._steps.authorization(payment)
            except Unavailable as error:
                _log.warning(
                    "provider step left for later", extra={"payment": payment.name, "reason": error.reason}
                )
            except FailedPrecondition as error:
                # A final no from the provider (e.g. it refunded already): asking again would not
                # change it; the compensation is dropped and reconciliation shows the difference.
                _log.error(
                    "provider refused compensation", extra={"payment": payment.name, "reason": error.reason}
                )
                with self._transactions() as repo:
                    repo.set_compensation(payment.id, "", "")
        return len(work)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.run_once()
            except Exception:  # noqa: BLE001 - one bad pass must not stop the worker
                _log.exception("provider pass failed; its payments come back next pass")

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="payments-provider", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
