"""The payment worker over a real migrated database (SQLite file and PostgreSQL): a new order
is handed to the worker, sold (held and captured in one call) with no claim query and made
PAID on the answer (OrderPaid published with it); a payment only held is captured next; a
decline fails it; an answer that finds the order cancelled changes nothing; a capture payments
cannot answer is retried after a backoff without asking for the hold again, claimed when that
backoff ends; an order a dead worker had taken is claimed by another once its lease runs out.
(The calls over mTLS to a payments server, retries and restarts are tested with the service,
test_service.py.)"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, event, text

from services.kit import bus, config, db
from services.kit.money import Money
from services.orders import payment as payment_module
from services.orders import store
from services.orders.__main__ import SERVICE
from services.orders.domain import (
    AWAITING_PAYMENT,
    CANCELLED,
    PAID,
    PAYMENT_FAILED,
    PAYMENT_LEASE,
    PENDING,
    Authorization,
    CaptureOutcome,
    NewLine,
    Order,
    Orders,
    capture_request_id,
    sale_request_id,
)
from services.orders.payment import PaymentWorker
from tests.support.background import RecordingBackground
from tests.support.clock import Clock
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow


class _Orders:
    def __init__(self, engine: Engine, clock: Clock) -> None:
        self.engine = engine
        self.outbox = bus.Outbox(store.BUS, source="orders", routing=lambda _connection, _type: [])
        self.orders = Orders(store.OrdersStore(engine, self.outbox).transaction, clock=clock)
        self.claims: list[str] = []
        """Claim queries seen (their free condition is the only SQL comparing next_payment_at)."""
        event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, _conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        if "next_payment_at <=" in statement:
            self.claims.append(statement)

    def placed(self) -> Order:
        return self.orders.create("users/u1", [NewLine("sku-1", 1, Money("EUR", 250))], "", "", _allow)

    def published(self, order: Order) -> list[str]:
        with self.engine.connect() as connection:
            query = "SELECT event_type FROM bus_outbox WHERE aggregate_id = :name ORDER BY position"
            return [
                str(found).removeprefix("poly.events.v1.")
                for found in connection.execute(text(query), {"name": order.name}).scalars()
            ]

    def states(self, placed: list[Order]) -> set[str]:
        """The states `placed` are in now."""
        return {self.payment_state(order)[0] for order in placed}

    def payment_state(self, order: Order) -> tuple[Any, ...]:
        with self.engine.connect() as connection:
            query = "SELECT state, next_payment_at IS NOT NULL, payment_attempts FROM orders WHERE id = :id"
            return tuple(connection.execute(text(query), {"id": order.id}).one())


def _allow(owner: str, resource: str) -> None:
    """An ownership check that admits everyone (the servicer's is tested with the service)."""


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    made = db.connect(config.DatabaseSettings(url=database_url), migrations=SERVICE.migrations)
    try:
        yield made
    finally:
        made.dispose()


def _sold(order: Order) -> Authorization:
    """Payments' answer to a sale it could make: ``payments/p-{order id}``, taken."""
    return Authorization(f"payments/p-{order.id}", captured=True)


def _held(order: Order) -> Authorization:
    """Its answer when it could only hold the total (an outside provider's capture got none)."""
    return Authorization(f"payments/p-{order.id}")


class _Payments:
    """The calls the worker makes (what payments would be asked): each order sold as
    ``payments/p-{order id}``, and captured when asked, unless a test sets other answers."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sales: list[tuple[str, str]] = []
        self.captures: list[tuple[str, str]] = []
        self.answer: Callable[[Order], Authorization | None] = _sold
        self.capture_outcome = CaptureOutcome.CAPTURED

    def sell(self, order: Order, request_id: str) -> Authorization | None:
        with self.lock:
            self.sales.append((order.name, request_id))
        return self.answer(order)

    def capture(self, payment: str, request_id: str) -> CaptureOutcome:
        with self.lock:
            self.captures.append((payment, request_id))
        return self.capture_outcome


class _HandedOver:
    """A worker that takes what it is handed and never runs (a worker that died)."""

    def __init__(self) -> None:
        self.handed: list[Order] = []

    def accepting(self) -> bool:
        return True

    def due(self, order: Order) -> None:
        self.handed.append(order)

    def cancelled(self, order: Order) -> None:
        """A dead worker hears nothing."""


def test_a_new_order_is_paid_with_no_claim_query(engine: Engine) -> None:
    orders = _Orders(engine, Clock(dt.datetime.now(dt.UTC)))
    payments = _Payments()
    worker = PaymentWorker(orders.orders, payments, interval=3600)  # one claim, at start
    orders.orders.hand_over = worker
    worker.start()
    try:
        eventually(lambda: orders.claims, timeout=10, what="the first pass's claim")
        assert len(orders.claims) == 1, "the first pass claims once"
        placed = [orders.placed() for _ in range(5)]
        eventually(lambda: orders.states(placed) == {PAID}, timeout=10, what="every order PAID")
    finally:
        worker.stop()
    assert sorted(payments.sales) == sorted((o.name, sale_request_id(o)) for o in placed)
    assert payments.captures == [], "a sale leaves nothing to capture"
    assert len(orders.claims) == 1, "handed-over orders need no claim"
    # Sold: PAID on the answer, nothing left to ask, OrderPaid published with it: one write
    # after the order's.
    assert {orders.payment_state(order) for order in placed} == {(PAID, False, 0)}
    paid = [orders.orders.get(order.id) for order in placed]
    assert {(o.version, o.payment) for o in paid} == {(o.version + 1, f"payments/p-{o.id}") for o in placed}
    assert {order.name: orders.published(order) for order in placed} == {
        order.name: ["OrderCreated", "OrderPaid"] for order in placed
    }


def test_the_worker_runs_below_the_calls_and_its_transactions_do_not(engine: Engine) -> None:
    # Its thread and its call threads give way to the calls; recording an answer, which
    # holds the write lock, must not run on them (kit.priority.BackgroundThreads).
    orders = _Orders(engine, Clock(dt.datetime.now(dt.UTC)))
    payments = _Payments()
    background = RecordingBackground(engine, ("orders-payment-call",))
    worker = PaymentWorker(orders.orders, payments, interval=0.05, background=background)
    placed = [orders.placed() for _ in range(3)]  # not handed over: the worker claims them
    worker.start()
    try:
        eventually(
            lambda: orders.states(placed) == {PAID},
            timeout=10,
            what="every order PAID",
        )
    finally:
        worker.stop()
    assert orders.states(placed) == {PAID}
    assert background.entered == ["orders-payment"]
    assert background.stray == [], "a lowered thread ran a statement outside a transaction call"
    assert {"claim_payments", "captured"} <= set(background.transactions)
    assert "payments_attempted" not in background.transactions, "every try ended: nothing to reschedule"


def _one_pass(orders: _Orders, payments: _Payments) -> Order:
    """An order placed and handed to a worker that runs one pass by hand; the order as placed."""
    worker = PaymentWorker(orders.orders, payments, interval=3600)
    orders.orders.hand_over = worker
    order = orders.placed()
    assert worker.run_once() == 1
    return order


def test_an_answer_is_written_from_the_workers_copy_without_reading_the_order(engine: Engine) -> None:
    orders = _Orders(engine, Clock(dt.datetime.now(dt.UTC)))
    order = orders.placed()
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        statements.append(" ".join(statement.split()))

    event.listen(engine, "before_cursor_execute", seen)
    try:
        paid = orders.orders.captured(order, f"payments/p-{order.id}")
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert paid is not None and paid.lines == order.lines
    assert orders.orders.get(order.id) == paid, "what was written is what a read gives back"
    reads = [s for s in statements if s.startswith("SELECT") and "FROM orders" in s]
    assert reads == [], "the write is conditional on the copy's version: no read needed"


def test_an_answer_to_a_stale_copy_reads_the_order_and_changes_nothing(engine: Engine) -> None:
    # Another worker's try recorded the hold meanwhile (the copy's lease ran out): the copy's
    # version no longer matches, so the order is read, found moved on, and left as it is.
    orders = _Orders(engine, Clock(dt.datetime.now(dt.UTC)))
    order = orders.placed()
    held = orders.orders.authorized(order, f"payments/p-{order.id}")
    assert held is not None
    assert orders.orders.captured(order, f"payments/p-{order.id}") is None
    assert orders.orders.get(order.id) == held
    assert orders.published(order) == ["OrderCreated"]


def test_a_declined_order_fails_with_the_reason(engine: Engine) -> None:
    orders, payments = _Orders(engine, Clock(dt.datetime.now(dt.UTC))), _Payments()
    payments.answer = lambda order: Authorization("payments/declined", "INSUFFICIENT_FUNDS")
    order = _one_pass(orders, payments)
    failed = orders.orders.get(order.id)
    assert (failed.state, failed.payment, failed.failure_reason) == (
        PAYMENT_FAILED,
        "payments/declined",
        "INSUFFICIENT_FUNDS",
    )
    assert orders.payment_state(order) == (PAYMENT_FAILED, False, 0)
    assert orders.published(order) == ["OrderCreated", "OrderPaymentFailed"]
    assert payments.captures == []


def test_a_held_payment_is_captured_next_and_recorded_with_its_capture(engine: Engine) -> None:
    orders, payments = _Orders(engine, Clock(dt.datetime.now(dt.UTC))), _Payments()
    payments.answer = _held
    order = _one_pass(orders, payments)
    assert payments.captures == [(f"payments/p-{order.id}", capture_request_id(order))]
    paid = orders.orders.get(order.id)
    assert (paid.state, paid.version, paid.payment) == (PAID, order.version + 1, f"payments/p-{order.id}")
    assert orders.published(order) == ["OrderCreated", "OrderPaid"]


@pytest.mark.parametrize("answer", [_sold, _held], ids=["sold", "held"])
def test_an_answer_after_the_order_was_cancelled_changes_nothing(
    engine: Engine, answer: Callable[[Order], Authorization]
) -> None:
    orders, payments = _Orders(engine, Clock(dt.datetime.now(dt.UTC))), _Payments()

    def cancelled_meanwhile(order: Order) -> Authorization:
        orders.orders.cancel(order.id, "", "changed my mind")  # while the call is in flight
        return answer(order)

    payments.answer = cancelled_meanwhile
    order = _one_pass(orders, payments)
    assert orders.orders.get(order.id).state == CANCELLED
    assert orders.payment_state(order) == (CANCELLED, False, 0)
    # Payments voids a hold on OrderCancelled, and refunds a sale: nothing is captured here.
    assert payments.captures == []
    assert orders.published(order) == ["OrderCreated", "OrderCancelled"]


def test_a_capture_without_answer_is_retried_after_a_backoff_without_a_second_hold(engine: Engine) -> None:
    clock = Clock(dt.datetime.now(dt.UTC))
    orders, payments = _Orders(engine, clock), _Payments()
    payments.answer, payments.capture_outcome = _held, CaptureOutcome.FAILED
    order = _one_pass(orders, payments)
    held = orders.orders.get(order.id)
    assert (held.state, held.payment, held.payment_attempts) == (
        AWAITING_PAYMENT,
        f"payments/p-{order.id}",
        1,
    )
    assert held.next_payment_at is not None and held.next_payment_at > clock()
    worker = PaymentWorker(orders.orders, payments, interval=0)
    assert worker.run_once() == 0, "not due before its backoff ends"
    clock.advance(120)
    payments.capture_outcome = CaptureOutcome.CAPTURED
    assert worker.run_once() == 1
    assert orders.orders.get(order.id).state == PAID
    assert len(payments.sales) == 1, "the hold is asked for once"
    assert [name for name, _ in payments.captures] == [f"payments/p-{order.id}"] * 2


def test_retries_the_worker_scheduled_are_claimed_when_they_fall_due_not_at_the_next_poll(
    engine: Engine,
) -> None:
    """Payments gives no answer to each order's first capture (an outage): the retries the
    worker scheduled, their backoffs jittered apart, are claimed when they fall due, a few
    claims for the batch, though the worker's periodic claim comes once an hour."""
    orders = _Orders(engine, lambda: dt.datetime.now(dt.UTC))  # type: ignore[arg-type]  # real time
    payments = _Payments()
    payments.answer = _held
    asked: set[str] = set()
    payments_capture = payments.capture

    def first_capture_unanswered(payment: str, request_id: str) -> CaptureOutcome:
        payments_capture(payment, request_id)
        with payments.lock:
            first = payment not in asked
            asked.add(payment)
        return CaptureOutcome.FAILED if first else CaptureOutcome.CAPTURED

    payments.capture = first_capture_unanswered  # type: ignore[method-assign]
    worker = PaymentWorker(orders.orders, payments, interval=3600)
    orders.orders.hand_over = worker
    worker.start()
    try:
        eventually(lambda: orders.claims, timeout=10, what="the first pass's claim")
        placed = [orders.placed() for _ in range(5)]
        eventually(
            lambda: orders.states(placed) == {PAID},
            timeout=10,
            what="every order PAID after a retry",
        )
    finally:
        worker.stop()
    assert sorted(name for name, _ in payments.captures) == sorted(
        [f"payments/p-{order.id}" for order in placed] * 2
    )
    assert len(payments.sales) == len(placed)
    # A claim starts with its SELECT (one that finds orders then updates them).
    claims = [statement for statement in orders.claims if statement.lstrip().startswith("SELECT")]
    assert 2 <= len(claims) <= 1 + len(placed), "the first pass's claim and the retries', no poll between"


def test_an_order_a_dead_worker_had_taken_is_claimed_once_its_lease_runs_out(engine: Engine) -> None:
    clock = Clock(dt.datetime.now(dt.UTC))
    orders = _Orders(engine, clock)
    dead = _HandedOver()
    orders.orders.hand_over = dead
    order = orders.placed()  # taken by a worker that dies before asking payments
    assert [o.id for o in dead.handed] == [order.id]
    assert orders.orders.claim_payments(10) == [], "the lease holds"
    clock.advance(PAYMENT_LEASE.total_seconds() + 1)
    [claimed] = orders.orders.claim_payments(10)
    assert (claimed.id, claimed.state) == (order.id, PENDING)
    assert orders.orders.claim_payments(10) == [], "claimed once"


def test_a_handed_order_that_waited_until_its_lease_nearly_ran_out_is_left_to_the_claim(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock(dt.datetime.now(dt.UTC))
    orders = _Orders(engine, clock)
    payments = _Payments()
    worker = PaymentWorker(orders.orders, payments, interval=3600)  # never started: passes by hand
    orders.orders.hand_over = worker
    order = orders.placed()
    # The handed copy waited past half its lease (a slow batch ahead of it); by now the lease
    # itself ran out, so a claim (this worker's or another's) takes the order.
    later = time.monotonic() + PAYMENT_LEASE.total_seconds()
    monkeypatch.setattr(payment_module.time, "monotonic", lambda: later)
    clock.advance(PAYMENT_LEASE.total_seconds() + 1)
    assert worker.run_once() == 1
    assert [name for name, _ in payments.sales] == [order.name], "asked once, by the claim's copy only"


def test_a_stopping_worker_takes_no_order(engine: Engine) -> None:
    clock = Clock(dt.datetime.now(dt.UTC))
    orders = _Orders(engine, clock)
    worker = PaymentWorker(orders.orders, _Payments())
    worker.stop()
    orders.orders.hand_over = worker
    order = orders.placed()
    assert orders.payment_state(order) == (PENDING, True, 0)
    assert [claimed.id for claimed in orders.orders.claim_payments(10)] == [order.id], "free for a claim now"


def test_a_try_that_would_start_past_half_its_lease_is_left_to_the_lease(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One call at a time, and the first takes longer than half a lease: by the time the
    # second order's turn comes, another worker may claim it soon, so this one leaves it.
    clock = Clock(dt.datetime.now(dt.UTC))
    orders, payments = _Orders(engine, clock), _Payments()
    worker = PaymentWorker(orders.orders, payments, interval=3600, concurrency=1)
    orders.orders.hand_over = worker
    first, second = orders.placed(), orders.placed()
    late = time.monotonic() + PAYMENT_LEASE.total_seconds()

    def slow(order: Order) -> Authorization:
        monkeypatch.setattr(payment_module.time, "monotonic", lambda: late)
        return _sold(order)

    payments.answer = slow
    assert worker.run_once() == 2
    assert [name for name, _ in payments.sales] == [first.name]
    assert orders.orders.get(first.id).state == PAID
    assert orders.payment_state(second) == (PENDING, True, 0), "untouched: still leased"
    assert orders.orders.claim_payments(10) == []
    clock.advance(PAYMENT_LEASE.total_seconds() + 1)
    assert [claimed.id for claimed in orders.orders.claim_payments(10)] == [second.id]
