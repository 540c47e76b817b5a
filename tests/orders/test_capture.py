"""The capture worker over a real migrated database (SQLite file and PostgreSQL): an order
whose payment was authorized is handed to the worker, captured with no claim query and made
PAID on the capture's answer (OrderPaid published with it); one a dead worker had taken is
claimed by another once its lease runs out. (The capture call over
mTLS to a payments server, retries and restarts are tested with the service, test_service.py.)"""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, event, text

from poly.events.v1 import events_pb2
from poly.events.v1.events_pb2 import EventEnvelope
from services.kit import bus, config, db
from services.kit.money import Money
from services.orders import capture as capture_module
from services.orders import events, store
from services.orders.__main__ import SERVICE
from services.orders.capture import CaptureWorker
from services.orders.domain import (
    AWAITING_PAYMENT,
    CAPTURE_LEASE,
    PAID,
    CaptureOutcome,
    NewLine,
    Order,
    Orders,
)
from tests.support.clock import Clock

pytestmark = pytest.mark.slow


class _Orders:
    def __init__(self, engine: Engine, clock: Clock) -> None:
        self.engine = engine
        self.factory = db.session_factory(engine)
        self.outbox = bus.Outbox(store.BUS, source="orders", routing=lambda _session, _type: [])
        self.orders = Orders(store.OrdersStore(self.factory, self.outbox).transaction, clock=clock)
        self.claims: list[str] = []
        """Claim queries seen (their free condition is the only SQL comparing next_capture_at)."""
        event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, _conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        if "next_capture_at <=" in statement:
            self.claims.append(statement)

    def placed(self) -> Order:
        return self.orders.create("users/u1", [NewLine("sku-1", 1, Money("EUR", 250))], "", "", _allow)

    def authorized(self, handlers: Any, order: Order) -> str:
        """Apply PaymentAuthorized for `order` as the bus consumer would; the payment's name."""
        payment = f"payments/{uuid.uuid4()}"
        envelope = EventEnvelope(id=str(uuid.uuid4()), type="poly.events.v1.PaymentAuthorized")
        authorized = events_pb2.PaymentAuthorized(order=order.name, payment=payment)
        with db.transaction(self.factory) as session:
            handlers[events_pb2.PaymentAuthorized](session, authorized, envelope)
        return payment

    def published(self, order: Order) -> list[str]:
        with self.engine.connect() as connection:
            query = "SELECT event_type FROM bus_outbox WHERE aggregate_id = :name ORDER BY position"
            return list(connection.execute(text(query), {"name": order.name}).scalars())

    def capture_state(self, order: Order) -> tuple[Any, ...]:
        with self.engine.connect() as connection:
            query = "SELECT state, next_capture_at IS NOT NULL, capture_attempts FROM orders WHERE id = :id"
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


class _Payments:
    """The capture calls the worker makes (what payments would be asked), each a success."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[str, str]] = []

    def capture(self, payment: str, request_id: str) -> CaptureOutcome:
        with self.lock:
            self.calls.append((payment, request_id))
        return CaptureOutcome.CAPTURED


def test_an_authorized_order_is_captured_with_no_claim_query(engine: Engine) -> None:
    orders = _Orders(engine, Clock(dt.datetime.now(dt.UTC)))
    payments = _Payments()
    worker = CaptureWorker(orders.orders, payments.capture, interval=3600)  # one claim, at start
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while not orders.claims and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(orders.claims) == 1, "the first pass claims once"
        handlers = events.handlers(
            lambda session: store.SqlRepository(session, orders.outbox), capture_due=worker.due
        )
        placed = [orders.placed() for _ in range(5)]
        paid = [orders.authorized(handlers, order) for order in placed]
        while len(payments.calls) < len(paid) and time.monotonic() < deadline + 10:
            time.sleep(0.01)
    finally:
        worker.stop()
    assert sorted(name for name, _ in payments.calls) == sorted(paid)
    assert len(orders.claims) == 1, "handed-over captures need no claim"
    # Captured: PAID on the answer, nothing left to capture, OrderPaid published with it.
    assert {orders.capture_state(order) for order in placed} == {(PAID, False, 0)}
    assert {order.name: orders.published(order) for order in placed} == {
        order.name: ["poly.events.v1.OrderCreated", "poly.events.v1.OrderPaid"] for order in placed
    }


def test_a_capture_a_dead_worker_had_taken_is_claimed_once_its_lease_runs_out(engine: Engine) -> None:
    clock = Clock(dt.datetime.now(dt.UTC))
    orders = _Orders(engine, clock)
    handed: list[Order] = []
    handlers = events.handlers(
        lambda session: store.SqlRepository(session, orders.outbox), capture_due=handed.append, clock=clock
    )
    order = orders.placed()
    orders.authorized(handlers, order)  # taken by a worker that dies before capturing it
    assert [o.id for o in handed] == [order.id]
    assert orders.orders.claim_captures(10) == [], "the lease holds"
    clock.advance(CAPTURE_LEASE.total_seconds() + 1)
    [claimed] = orders.orders.claim_captures(10)
    assert (claimed.id, claimed.state) == (order.id, AWAITING_PAYMENT)
    assert orders.orders.claim_captures(10) == [], "claimed once"


def test_a_handed_capture_that_waited_until_its_lease_nearly_ran_out_is_left_to_the_claim(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock(dt.datetime.now(dt.UTC))
    orders = _Orders(engine, clock)
    payments = _Payments()
    worker = CaptureWorker(orders.orders, payments.capture, interval=3600)  # never started: passes by hand
    handlers = events.handlers(
        lambda session: store.SqlRepository(session, orders.outbox), capture_due=worker.due, clock=clock
    )
    order = orders.placed()
    payment = orders.authorized(handlers, order)
    # The handed copy waited past half its lease (a slow batch ahead of it); by now the lease
    # itself ran out, so a claim (this worker's or another's) takes the order.
    later = time.monotonic() + CAPTURE_LEASE.total_seconds()
    monkeypatch.setattr(capture_module.time, "monotonic", lambda: later)
    clock.advance(CAPTURE_LEASE.total_seconds() + 1)
    assert worker.run_once() == 1
    assert [name for name, _ in payments.calls] == [payment], "captured once, by the claim's copy only"


def test_a_stopping_worker_takes_no_capture(engine: Engine) -> None:
    clock = Clock(dt.datetime.now(dt.UTC))
    orders = _Orders(engine, clock)
    worker = CaptureWorker(orders.orders, _Payments().capture)
    worker.stop()
    handed: list[Order] = []
    handlers = events.handlers(
        lambda session: store.SqlRepository(session, orders.outbox),
        capture_due=handed.append,
        capture_accepting=worker.accepting,
        clock=clock,
    )
    order = orders.placed()
    orders.authorized(handlers, order)
    assert handed == [], "not handed to a worker that stops"
    assert [claimed.id for claimed in orders.orders.claim_captures(10)] == [order.id], "free for a claim now"
