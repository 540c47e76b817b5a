"""The payment worker: the saga step asking payments to hold, then take, each order's total.

`PaymentWorker` is a `kit.types.Background`: a thread that works through batches of orders
whose payment step is due: those handed to it by `due` (`Orders.create` wrote the new order
taken by this worker and hands it over once committed: no query looks for it) and those it
claims (`Orders.claim_payments`: retries falling due, work a dead worker had taken, a handed
order that waited here past half its lease, an order placed while the worker stops; state
kept in the orders table, so a restart resumes where it stopped), at once after a full
claim, when a retry it scheduled falls due, and otherwise every `interval` seconds (5 s; see
`kit.leases.ClaimTimes`). A pass with a claim due keeps a quarter of its batch for the claim.
For each order, with at most `concurrency` orders in flight, it calls payments: a PENDING
order's total is taken in one call (a sale: AuthorizePayment with capture, with the order's
idempotency key): PAID. A payment only held (an outside provider's capture got no answer, or
an earlier release's hold) is captured at once (CapturePayment) and recorded with it; if that
capture gets no answer or a refusal, the hold is recorded as AWAITING_PAYMENT first, and one
for an order cancelled here meanwhile is not captured. A decline makes it PAYMENT_FAILED.
Each answer is recorded as it comes, in the trace of the CreateOrder that placed the order;
calls that got no answer are rescheduled in one transaction, with backoff. `GrpcPayments` is
the pair of calls over mTLS; gRPC codes are mapped here only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import grpc
from sqlalchemy.exc import SQLAlchemyError

from poly.payments.v1 import payments_service_pb2, payments_service_pb2_grpc, resources_pb2
from services.kit.clients import Channels
from services.kit.domain_errors import DomainError
from services.kit.errors import call_code, error_info
from services.kit.leases import ClaimTimes
from services.kit.priority import INLINE, BackgroundThreads
from services.kit.telemetry.handoff import Handoff
from services.kit.wire import money_message
from services.orders.domain import (
    PAYMENT_LEASE,
    PENDING,
    Authorization,
    CaptureOutcome,
    Order,
    Orders,
    StepOutcome,
    capture_request_id,
    sale_request_id,
)

__all__ = ["PAYMENTS_SERVICE", "GrpcPayments", "PaymentCalls", "PaymentWorker"]

_log = logging.getLogger("poly.orders.payment")

PAYMENTS_SERVICE = payments_service_pb2.DESCRIPTOR.services_by_name["PaymentsService"]

_DECLINES = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION)
"""Authorization refusals that asking again cannot change: the order's payment fails."""
_ALREADY_AUTHORIZED = "ORDER_ALREADY_AUTHORIZED"


class PaymentCalls(Protocol):
    """The two calls of the payment step."""

    def sell(self, order: Order, request_id: str) -> Authorization | None:
        """Take `order`'s total from its owner, in one call if payments can (else it is only
        held); None: payments could not answer (ask again)."""

    def capture(self, payment: str, request_id: str) -> CaptureOutcome:
        """Take the held `payment`."""


class GrpcPayments:
    """AuthorizePayment (with capture: a sale) and CapturePayment on the ``payments`` peer,
    over mTLS.

    AuthorizePayment: a payment in state FAILED is a decline with its reason, CAPTURED taken,
    any other a hold (a repeat gets the first answer); INVALID_ARGUMENT and
    FAILED_PRECONDITION are declines too (an amount payments cannot hold, an order cancelled
    for another total); ALREADY_EXISTS names the order's payment made without this key (by an
    earlier release: from the OrderCreated event, or held with the key of ``/authorize``) with
    its state: the order's hold, its capture, or its decline.
    CapturePayment: FAILED_PRECONDITION (the payment was voided or failed) is final. Every
    other error is asked again later."""

    def __init__(self, channels: Channels, *, timeout: float = 5.0) -> None:
        self._channels = channels
        self._timeout = timeout

    def _stub(self) -> payments_service_pb2_grpc.PaymentsServiceStub:
        return payments_service_pb2_grpc.PaymentsServiceStub(self._channels.get("payments"))

    def sell(self, order: Order, request_id: str) -> Authorization | None:
        request = payments_service_pb2.AuthorizePaymentRequest(
            order=order.name,
            owner=order.owner,
            amount=money_message(order.total),
            request_id=request_id,
            capture=True,
        )
        try:
            payment = self._stub().AuthorizePayment(request, timeout=self._timeout)
        except grpc.RpcError as error:
            code = call_code(error)
            info = error_info(error)
            reason = info.reason if info is not None else ""
            _log.warning(
                "authorization failed", extra={"order": order.name, "code": code.name, "reason": reason}
            )
            if code is grpc.StatusCode.ALREADY_EXISTS and reason == _ALREADY_AUTHORIZED and info is not None:
                return _existing(info.metadata)
            if code in _DECLINES:
                return Authorization("", reason or code.name)
            return None
        if payment.state == resources_pb2.Payment.STATE_FAILED:
            return Authorization(payment.name, payment.failure_reason or "UNKNOWN")
        if payment.state == resources_pb2.Payment.STATE_PENDING:
            return None  # the provider's answer is not in yet: ask again later
        return Authorization(payment.name, captured=payment.state == resources_pb2.Payment.STATE_CAPTURED)

    def capture(self, payment: str, request_id: str) -> CaptureOutcome:
        request = payments_service_pb2.CapturePaymentRequest(name=payment, request_id=request_id)
        try:
            self._stub().CapturePayment(request, timeout=self._timeout)
        except grpc.RpcError as error:
            code = call_code(error)
            _log.warning("capture failed", extra={"payment": payment, "code": code.name})
            return (
                CaptureOutcome.REFUSED
                if code is grpc.StatusCode.FAILED_PRECONDITION
                else CaptureOutcome.FAILED
            )
        return CaptureOutcome.CAPTURED


def _existing(metadata: Mapping[str, str]) -> Authorization | None:
    """The order's payment an ALREADY_EXISTS names: declined if it FAILED, unknown yet if
    PENDING at an outside provider, taken if CAPTURED, else held."""
    payment = metadata.get("payment", "")
    if not payment:
        return None  # not what payments sends: ask again later rather than guess
    if metadata.get("state") == "FAILED":
        return Authorization(f"payments/{payment}", metadata.get("failure_reason") or "UNKNOWN")
    if metadata.get("state") == "PENDING":
        return None  # its provider's answer is not in yet: ask again later
    return Authorization(f"payments/{payment}", captured=metadata.get("state") == "CAPTURED")


class PaymentWorker:
    def __init__(
        self,
        orders: Orders,
        payments: PaymentCalls,
        *,
        interval: float = 5.0,
        batch_size: int = 50,
        concurrency: int = 8,
        background: BackgroundThreads | None = None,
    ) -> None:
        self._orders = orders
        # Below the calls, but not inside a transaction: see `kit.priority.BackgroundThreads`.
        self._background = background or INLINE
        self._payments = payments
        self._batch_size = batch_size
        # A batch's orders overlap, so one slow call does not hold up the orders behind it.
        self._calls = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="orders-payment-call")
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._traces = Handoff("orders.payment")
        self._taken: deque[tuple[Order, float]] = deque()
        """Handed over by `due`, with the `time.monotonic()` after which a pass leaves one to a
        claim (its lease is about to run out: another worker may claim it)."""
        self._claims = ClaimTimes(interval)
        self._claim_again = True
        self._held: dict[str, bool] = {}
        """The orders handed over or claimed whose try has not ended, by id: whether a caller
        here cancelled it meanwhile (`cancelled`)."""
        self._holding = threading.Lock()

    def wake(self) -> None:
        self._wake.set()

    def due(self, order: Order) -> None:
        """`order` was placed here, taken by this worker: ask for its payment now, in the
        trace of the call that placed it (`Orders.create` calls this after its commit; safe
        from any thread)."""
        if self._stop.is_set():
            return  # stopping: its lease runs out and a worker claims it
        self._traces.remember(order.name)
        with self._holding:
            self._held[order.id] = False
        self._taken.append((order, time.monotonic() + PAYMENT_LEASE.total_seconds() / 2))
        self.wake()

    def cancelled(self, order: Order) -> None:
        """A caller here cancelled `order`: if this worker holds it, a hold it gets is not
        captured (payments voids it on OrderCancelled; safe from any thread). A cancel on
        another replica is not seen here: its capture is refunded on OrderCancelled."""
        with self._holding:
            if order.id in self._held:
                self._held[order.id] = True

    def _ended(self, order: Order) -> None:
        with self._holding:
            self._held.pop(order.id, None)

    def _was_cancelled(self, order: Order) -> bool:
        with self._holding:
            return self._held.get(order.id, False)

    def accepting(self) -> bool:
        """Whether an order may be written taken by this worker (not once stopping)."""
        return not self._stop.is_set()

    def _attempt(self, order: Order, start_by: float) -> tuple[Order, StepOutcome] | None:
        """One try of `order`'s payment step: the order as last seen and how the try ended;
        None when it was not made or its outcome could not be recorded (its lease brings it
        back). A try not started by `start_by` (`time.monotonic()`: half its lease left, for
        the calls and their answers) is not made: the lease may run out while it runs, and
        another worker's claim take the order."""
        try:
            if self._stop.is_set() or time.monotonic() > start_by:
                return None
            attributes = {"poly.resource.name": order.name}
            with self._traces.resumed(order.name, "take payment", attributes=attributes, forget=True):
                try:
                    return self._step(order)
                except (SQLAlchemyError, DomainError):
                    # Payments answers the same again to the same keys: asked again after the lease.
                    _log.exception("recording a payment answer failed; it is asked again after its lease")
                    return None
        finally:
            self._ended(order)

    def _step(self, order: Order) -> tuple[Order, StepOutcome]:
        held = ""
        if order.state == PENDING:
            answer = self._payments.sell(order, sale_request_id(order))
            if answer is None or answer.decline_reason or answer.captured:
                return order, self._sold(order, answer)
            held = answer.payment  # held only: captured next
            if self._was_cancelled(order):
                # Cancelled here while the hold was asked for: not captured (payments voids it
                # on OrderCancelled); recording it finds the order moved on.
                recorded = self._record_hold(order, held)
                if recorded is None:
                    return order, StepOutcome.DONE
                order, held = recorded, ""
        outcome = self._payments.capture(held or order.payment, capture_request_id(order))
        if outcome is CaptureOutcome.CAPTURED:
            # PAID at once, in this trace (OrderPaid carries it); a hold captured at once is
            # recorded with it, in one transaction. If that cannot be written, the lease brings
            # the step back, and payments answers both calls again as it did.
            self._background.transaction(self._orders.captured, order, held)
            return order, StepOutcome.DONE
        if held:
            # The capture has to wait: the hold is recorded, so the next try only captures.
            recorded = self._record_hold(order, held)
            if recorded is None:
                return order, StepOutcome.DONE
            order = recorded
        return order, StepOutcome.REFUSED if outcome is CaptureOutcome.REFUSED else StepOutcome.FAILED

    def _sold(self, order: Order, answer: Authorization | None) -> StepOutcome:
        """The answer to a sale that ends the try: none (asked again), a decline, or taken."""
        if answer is None:
            return StepOutcome.FAILED
        if answer.decline_reason:
            self._background.transaction(self._orders.declined, order, answer)
        else:
            # Taken in one call: PAID in this trace. A cancellation here meanwhile finds the
            # order CANCELLED, and payments refunds the sale on OrderCancelled.
            self._background.transaction(self._orders.captured, order, answer.payment)
        return StepOutcome.DONE

    def _record_hold(self, order: Order, payment: str) -> Order | None:
        """The PENDING `order` held as `payment`: AWAITING_PAYMENT (None: it moved on, e.g.
        cancelled, and payments voids the hold on OrderCancelled)."""
        return self._background.transaction(self._orders.authorized, order, payment)

    def run_once(self) -> int:
        """One pass: one batch (handed over first, then claimed if a claim is due); how many
        orders it held."""
        now = time.monotonic()
        claiming = self._claim_again or self._claims.due()
        # A claim due keeps a quarter of the batch, so handed work never starves retries.
        handed_limit = self._batch_size - (max(1, self._batch_size // 4) if claiming else 0)
        handed = [self._taken.popleft() for _ in range(min(len(self._taken), handed_limit))]
        batch: list[tuple[Order, float]] = []
        for order, usable_until in handed:
            if usable_until > now:
                batch.append((order, usable_until))
            else:
                self._ended(order)  # left to a claim
        room = self._batch_size - len(batch)
        if room > 0 and claiming:
            self._claims.claiming()
            try:
                claimed = self._background.transaction(self._orders.claim_payments, room)
            except SQLAlchemyError:  # what was handed over still goes; the claim runs again
                _log.exception("claiming payments failed (database); retrying")
                self._claims.failed()
                claimed = []
            self._claim_again = len(claimed) >= room  # a full claim may have left more
            start_by = now + PAYMENT_LEASE.total_seconds() / 2
            with self._holding:
                self._held.update((order.id, False) for order in claimed)
            batch += [(order, start_by) for order in claimed]
        if not batch:
            return 0
        tries = self._calls.map(self._attempt, *zip(*batch, strict=True))
        unfinished = [done for done in tries if done is not None and done[1] is not StepOutcome.DONE]
        # The usual pass ends every try: no hand-over to a transaction thread (27-48 µs each).
        retries = (
            self._background.transaction(self._orders.payments_attempted, unfinished) if unfinished else []
        )
        for retry in retries:
            self._claims.retry_at(time.monotonic() + retry.total_seconds())
        return len(batch)

    def _loop(self) -> None:
        self._background.enter()  # and the call threads it starts
        while not self._stop.is_set():
            try:
                self.run_once()
            except SQLAlchemyError:
                _log.exception("payment pass failed (database); retrying")
                self._claim_again = False  # the next claim waits a moment (`ClaimTimes.failed`)
                self._claims.failed()
            except Exception:  # noqa: BLE001 - a bug must not stop every order's payment
                _log.exception("payment pass failed; its orders come back after their lease")
                self._claim_again = False
            if not (self._taken or self._claim_again):
                self._wake.wait(self._claims.seconds_left())
                self._wake.clear()

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="orders-payment", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._calls.shutdown(wait=False, cancel_futures=True)
