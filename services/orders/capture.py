"""The capture worker: the saga step capturing the held payment of AWAITING_PAYMENT orders.

`CaptureWorker` is a `kit.types.Background`: a thread that captures batches of orders: those
handed to it by `due` (an order became AWAITING_PAYMENT here, its capture written taken by
this worker: no query looks for it) and, at most every `interval` seconds or at once after a
full claim, those it claims (`Orders.claim_captures`: retries falling due, work a dead
worker had taken, a handed order that waited here past half its lease, an order authorized
while the worker stops; state kept in the orders table, so a restart resumes where it
stopped). A pass with a claim due keeps a quarter of its batch for the claim.
It calls payments `CapturePayment` for a batch with at most `concurrency` calls in flight,
each with a per-order idempotency key; an order whose capture is answered is made PAID at
once (`Orders.captured`, publishing OrderPaid in the capture's trace), the others' outcomes
are reported in one transaction for the domain to reschedule, and it stops promptly on
`stop`. `grpc_capturer` is the call over mTLS; gRPC codes are mapped here only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
from sqlalchemy.exc import SQLAlchemyError

from poly.payments.v1 import payments_service_pb2, payments_service_pb2_grpc
from services.kit.clients import Channels
from services.kit.domain_errors import DomainError
from services.kit.telemetry.handoff import Handoff
from services.orders.domain import CAPTURE_LEASE, CaptureOutcome, Order, Orders, capture_request_id

__all__ = ["PAYMENTS_SERVICE", "CaptureWorker", "Capturer", "grpc_capturer"]

_log = logging.getLogger("poly.orders.capture")

PAYMENTS_SERVICE = payments_service_pb2.DESCRIPTOR.services_by_name["PaymentsService"]

Capturer = Callable[[str, str], CaptureOutcome]
"""``(payment name, request_id) -> outcome`` of one CapturePayment call."""

_REFUSED = (grpc.StatusCode.FAILED_PRECONDITION,)


def grpc_capturer(channels: Channels, *, timeout: float = 5.0) -> Capturer:
    """CapturePayment on the ``payments`` peer; FAILED_PRECONDITION (the payment was voided
    or failed) is final, every other error is retried later."""

    def capture(payment: str, request_id: str) -> CaptureOutcome:
        stub = payments_service_pb2_grpc.PaymentsServiceStub(channels.get("payments"))
        request = payments_service_pb2.CapturePaymentRequest(name=payment, request_id=request_id)
        try:
            stub.CapturePayment(request, timeout=timeout)
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
            _log.warning("capture failed", extra={"payment": payment, "code": code.name})
            return CaptureOutcome.REFUSED if code in _REFUSED else CaptureOutcome.FAILED
        return CaptureOutcome.CAPTURED

    return capture


class CaptureWorker:
    def __init__(
        self,
        orders: Orders,
        capture: Capturer,
        *,
        interval: float = 1.0,
        batch_size: int = 50,
        concurrency: int = 8,
    ) -> None:
        self._orders = orders
        self._capture = capture
        self._interval = interval
        self._batch_size = batch_size
        # A batch's calls overlap, so one slow capture does not hold up the orders behind it.
        self._calls = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="orders-capture-call")
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._traces = Handoff("orders.capture")
        self._taken: deque[tuple[Order, float]] = deque()
        """Handed over by `due`, with the `time.monotonic()` after which a pass leaves one to a
        claim (its lease is about to run out: another worker may claim it)."""
        self._next_claim = 0.0
        self._claim_again = True

    def wake(self) -> None:
        self._wake.set()

    def due(self, order: Order) -> None:
        """`order` became AWAITING_PAYMENT here, its capture written taken by this worker:
        capture it now, in the trace of the change that asked for it (`events.handlers` calls
        this after that change commits; safe from any thread)."""
        if self._stop.is_set():
            return  # stopping: its lease runs out and a worker claims it
        self._traces.remember(order.name)
        self._taken.append((order, time.monotonic() + CAPTURE_LEASE.total_seconds() / 2))
        self.wake()

    def accepting(self) -> bool:
        """Whether an order's capture may be written taken by this worker (not once stopping)."""
        return not self._stop.is_set()

    def _attempt(self, order: Order) -> CaptureOutcome | None:
        if self._stop.is_set():
            return None  # the claim's lease makes it due again later
        attributes = {"poly.resource.name": order.name}
        with self._traces.resumed(order.name, "capture payment", attributes=attributes, forget=True):
            outcome = self._capture(order.payment, capture_request_id(order))
            if outcome is CaptureOutcome.CAPTURED:
                # PAID at once, in this trace (OrderPaid carries it). If that cannot be written,
                # the lease brings the capture back and payments answers it again as captured.
                try:
                    self._orders.captured(order)
                except (SQLAlchemyError, DomainError):
                    _log.exception("recording a capture failed; it is asked again after its lease")
                    return None
            return outcome

    def run_once(self) -> int:
        """One pass: capture one batch (handed over first, then claimed if a claim is due);
        how many orders it held."""
        now = time.monotonic()
        claiming = self._claim_again or now >= self._next_claim
        # A claim due keeps a quarter of the batch, so handed work never starves retries.
        handed_limit = self._batch_size - (max(1, self._batch_size // 4) if claiming else 0)
        handed = [self._taken.popleft() for _ in range(min(len(self._taken), handed_limit))]
        batch = [order for order, usable_until in handed if usable_until > now]
        room = self._batch_size - len(batch)
        if room > 0 and claiming:
            self._next_claim = now + self._interval
            try:
                claimed = self._orders.claim_captures(room)
            except SQLAlchemyError:  # what was handed over still goes; the claim runs again
                _log.exception("claiming captures failed (database); retrying")
                claimed = []
            self._claim_again = len(claimed) >= room  # a full claim may have left more
            batch += claimed
        if not batch:
            return 0
        outcomes = zip(batch, self._calls.map(self._attempt, batch), strict=True)
        self._orders.captures_attempted([(order, done) for order, done in outcomes if done is not None])
        return len(batch)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except SQLAlchemyError:
                _log.exception("capture pass failed (database); retrying")
                self._claim_again = False  # the next claim waits for its time
            if not (self._taken or self._claim_again):
                self._wake.wait(max(0.0, self._next_claim - time.monotonic()))
                self._wake.clear()

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="orders-capture", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._calls.shutdown(wait=False, cancel_futures=True)
