"""The provider worker: finishes what callers left with an outside provider.

Two kinds of work: a PENDING payment whose caller went away (a timeout, a crash), and saga
compensation (an order cancelled: void the hold, or refund what was taken), which arrives
inside the event consumer's transaction and so is left on the payment. Each step asks with
the same keys as any earlier attempt, so one done at the provider already is only recorded.
Compensation is cleared only once the payment is settled (voided, refunded, failed); a step
the provider refuses is planned again from the payment as recorded then (a void refused
because the money was captured meanwhile becomes a capture, then a refund), and a payment
that keeps failing is asked again later and later (`_backoff`). Several replicas may run it:
the keys make a double attempt harmless, and the recording moves each payment once.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable

from services.kit.domain_errors import FailedPrecondition, Unavailable
from services.payments.outside import OutsideSteps, Transactions, locked
from services.payments.records import (
    AUTHORIZED,
    CAPTURED,
    FAILED,
    PARTIALLY_REFUNDED,
    PENDING,
    REFUNDED,
    VOIDED,
    Payment,
)

__all__ = ["ProviderWorker", "compensate"]

_log = logging.getLogger(__name__)

_SETTLED = (VOIDED, REFUNDED, FAILED)
_STEPS = 4
"""Steps one compensation may take in a pass (authorize, void, capture, refund)."""


def _backoff(attempts: int) -> dt.timedelta:
    """How long the worker waits before asking about a payment again: 2 s doubling, at most
    an hour."""
    return dt.timedelta(seconds=min(3600, 2 ** min(attempts, 12)))


def compensate(steps: OutsideSteps, transactions: Transactions, payment: Payment) -> Payment:
    """Settle `payment` at the provider (void, or refund the rest), then clear its compensation.
    Raises `Unavailable` or `FailedPrecondition` when a step cannot be taken now."""
    for _ in range(_STEPS):
        with transactions() as repo:
            payment = locked(repo, payment.id)  # as recorded now, not as first read
            if payment.state in _SETTLED:
                repo.set_compensation(payment.id, "", "")
                return payment
        if payment.state == PENDING:
            payment = steps.authorization(payment)
        elif payment.state == AUTHORIZED:
            try:
                payment = steps.void(payment, None)
            except FailedPrecondition:
                # Refused: the money may have been taken meanwhile (a capture whose answer was
                # lost). Its capture, asked again with its own key, is then only recorded.
                payment = steps.capture(payment, None)
        elif payment.state in (CAPTURED, PARTIALLY_REFUNDED):
            rest = payment.captured - payment.refunded
            # Keyed by the amount too: a retry of the same refund is the same key, a smaller
            # rest (a refund landed meanwhile) a new one.
            payment = steps.refund(payment, rest, payment.compensation_reason, f"cancel-{rest}", None)
    return payment


class ProviderWorker:
    """Runs `compensate` and finishes abandoned authorizations, in a thread, every `interval`."""

    def __init__(
        self,
        transactions: Transactions,
        steps: OutsideSteps,
        *,
        interval: float = 1.0,
        pending_for: dt.timedelta = dt.timedelta(seconds=30),
        batch: int = 32,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._transactions = transactions
        self._steps = steps
        self._interval = interval
        self._pending_for = pending_for
        self._batch = batch
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self, now: dt.datetime | None = None) -> int:
        """One pass; how many payments it asked the provider about."""
        now = now or self._clock()
        with self._transactions() as repo:
            work = repo.provider_work(now - self._pending_for, now, self._batch)
        for payment in work:
            if self._stop.is_set():
                break
            try:
                if payment.compensation:
                    compensate(self._steps, self._transactions, payment)
                elif payment.state == PENDING:
                    self._steps.authorization(payment)
            except (Unavailable, FailedPrecondition) as error:
                level = logging.WARNING if isinstance(error, Unavailable) else logging.ERROR
                _log.log(
                    level,
                    "provider step left for later",
                    extra={"payment": payment.name, "reason": error.reason},
                )
                with self._transactions() as repo:
                    attempts = payment.provider_attempts + 1
                    repo.postpone(payment.id, attempts, now + _backoff(attempts))
            else:
                if payment.provider_attempts:
                    with self._transactions() as repo:
                        repo.postpone(payment.id, 0, None)
        return len(work)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.run_once()
            except Exception:  # noqa: BLE001 - logged: the next pass takes its payments again
                _log.exception("provider pass failed; its payments come back next pass")

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="payments-provider", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
