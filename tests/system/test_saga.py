"""The order saga end to end: all five services as processes, public gRPC APIs only.

A customer registers, an admin funds their account, they place an order and watch it reach
PAID; the payment is captured once with balanced ledger entries, and one email about it
lands in a real SMTP server on 127.0.0.1. The same for insufficient funds and for a
cancellation; then 200 concurrent orders, and 200 more while each of users, orders,
payments and notifications is killed with SIGKILL in turn and restarted. Afterwards the
books must balance to the cent and every notification must have gone out exactly once.
"""

from __future__ import annotations

import re
import signal
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import pytest

from poly.orders.v1 import orders_service_pb2 as orders_pb
from poly.orders.v1 import orders_service_pb2_grpc, resources_pb2
from poly.payments.v1 import payments_service_pb2 as payments_pb
from poly.payments.v1 import payments_service_pb2_grpc
from poly.payments.v1 import resources_pb2 as payments_resources
from poly.type.v1.money_pb2 import Money
from services.kit import config
from tests.support.broker import delete_namespace
from tests.support.env import production_shape
from tests.support.identity import Deployment, bearer, start
from tests.support.mailbox import Mailbox, mailbox
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

_T = TypeVar("_T")
Order = resources_pb2.Order
Payment = payments_resources.Payment
SETTLED = {Order.STATE_PAID, Order.STATE_FULFILLED, Order.STATE_CANCELLED, Order.STATE_PAYMENT_FAILED}
PAID_TYPE = "poly.events.v1.OrderPaid"
FAILED_TYPE = "poly.events.v1.OrderPaymentFailed"
CANCELLED_TYPE = "poly.events.v1.OrderCancelled"
FAST = {
    "POLY_NOTIFICATIONS_RETRY_BASE_SECONDS": "0.2",
    "POLY_NOTIFICATIONS_RETRY_MAX_SECONDS": "1",
    "POLY_BUS_SUBSCRIBE_WAIT_SECONDS": "20",
    "POLY_WEBHOOK_ALLOW_PRIVATE": "true",
    "POLY_BUS_LEASE_SECONDS": "5",  # a killed relay's claims free up sooner
}


def _retrying(call: Callable[[], _T], *, attempts: int = 60) -> _T:
    """`call` again while the service it reaches is down (it is being restarted); every call
    retried here is idempotent (a read, or a create with its request_id)."""
    for attempt in range(attempts):
        try:
            return call()
        except grpc.RpcError as error:
            if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            if attempt == attempts - 1:
                raise
            threading.Event().wait(0.25)  # the service is restarting: nothing to block on
    raise AssertionError("unreachable")


@dataclass
class Customer:
    user: str
    email: str
    token: str
    account: str

    @property
    def metadata(self) -> list[tuple[str, str]]:
        return bearer(self.token)


@dataclass
class Shop:
    """The running system, seen through its public APIs by customers and one admin."""

    system: Deployment
    mail: Mailbox
    admin_token: str
    orders_placed: list[tuple[Customer, str, int]] = field(default_factory=list)

    def orders(self) -> orders_service_pb2_grpc.OrdersServiceStub:
        return orders_service_pb2_grpc.OrdersServiceStub(self.system.channel("orders"))

    def payments(self) -> payments_service_pb2_grpc.PaymentsServiceStub:
        return payments_service_pb2_grpc.PaymentsServiceStub(self.system.channel("payments"))

    @property
    def admin(self) -> list[tuple[str, str]]:
        return bearer(self.admin_token)

    def customer(self, funds: int) -> Customer:
        """A newly registered customer whose account an admin funded with `funds` cents."""
        user, email = self.system.register()
        token = self.system.login(email).access_token
        account = self.system.own_account(token)
        if funds:
            self.system.fund(account, self.admin, funds)
        return Customer(user, email, token, account)

    def place(self, customer: Customer, amount: int, *, stub: Any = None) -> Order:
        line = resources_pb2.OrderLine(
            sku="SKU-1", quantity=2, unit_price=Money(currency_code="EUR", amount_minor=amount // 2)
        )
        request = orders_pb.CreateOrderRequest(order=Order(lines=[line]), request_id=str(uuid.uuid4()))
        stub = stub or self.orders()
        placed: Order = _retrying(lambda: stub.CreateOrder(request, metadata=customer.metadata, timeout=10))
        self.orders_placed.append((customer, placed.name, amount))
        return placed

    def order(self, name: str) -> Order:
        stub = self.orders()
        found: Order = _retrying(
            lambda: stub.GetOrder(orders_pb.GetOrderRequest(name=name), metadata=self.admin, timeout=10)
        )
        return found

    def settle(self, names: list[str], *, timeout: float = 90.0) -> dict[str, Order]:
        """Every order in `names`, once each is PAID or terminal."""
        settled: dict[str, Order] = {}

        def all_settled() -> bool:
            for name in names:
                if name not in settled:
                    found = self.order(name)
                    if found.state in SETTLED:
                        settled[name] = found
            return len(settled) == len(names)

        eventually(all_settled, timeout=timeout, what=f"{len(names)} orders to settle")
        return settled

    def all_pages(self, method: Callable[..., Any], request: Any, items: str) -> list[Any]:
        found: list[Any] = []
        while True:
            page = _retrying(lambda: method(request, metadata=self.admin, timeout=10))
            found.extend(getattr(page, items))
            if not page.next_page_token:
                return found
            request.page_token = page.next_page_token

    def payment_of(self, order: str) -> Payment | None:
        payments = self.all_pages(
            self.payments().ListPayments,
            payments_pb.ListPaymentsRequest(filter=f'order = "{order}"'),
            "payments",
        )
        assert len(payments) <= 1, f"{order} has {len(payments)} payments"
        return payments[0] if payments else None

    def ledger_total(self) -> tuple[int, int]:
        """(sum of every ledger entry of every account, number of entries)."""
        payments = self.payments()
        accounts = self.all_pages(payments.ListAccounts, payments_pb.ListAccountsRequest(), "accounts")
        total = count = 0
        for account in accounts:
            entries = self.all_pages(
                payments.ListLedgerEntries,
                payments_pb.ListLedgerEntriesRequest(parent=account.name),
                "ledger_entries",
            )
            total += sum(entry.amount.amount_minor for entry in entries)
            count += len(entries)
        return total, count

    def emails_about(self, order: str, event_type: str) -> list[str]:
        """Message-IDs of the emails about `order` for `event_type` (duplicates kept)."""
        return [
            str(message["Message-ID"])
            for message in self.mail.messages
            if message.get("X-Poly-Event-Type") == event_type and _names_order(message, order)
        ]


def _names_order(message: Any, order: str) -> bool:
    """The email's subject names `order` (``orders/{id}``) by its id, as the templates do."""
    return (
        re.search(rf"\b{re.escape(order.removeprefix('orders/'))}\b", str(message.get("Subject", "")))
        is not None
    )


def _text(message: Any) -> str:
    body = message.get_body(preferencelist=("plain",))
    return f"{message.get('Subject', '')}\n{body.get_content() if body else ''}"


@pytest.fixture(scope="module", params=["sqlite-embedded", "postgresql-rabbitmq"])
def shop(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    """The development shape (SQLite files, events pushed service to service) and the
    production shape (a PostgreSQL database per service, events through RabbitMQ)."""
    production: dict[str, str] = {}
    if request.param == "postgresql-rabbitmq":
        production = production_shape(request)
    with mailbox() as mail:
        system = start(
            tmp_path_factory.mktemp("saga"),
            config.SERVICES,
            {**FAST, **production, "POLY_SMTP_HOST": "127.0.0.1", "POLY_SMTP_PORT": str(mail.port)},
        )
        try:
            yield Shop(system, mail, system.create_admin())
        finally:
            system.stop()
            if "POLY_BUS_URL" in production:
                delete_namespace(production["POLY_BUS_URL"], production["POLY_BUS_PREFIX"])


def _watch(shop: Shop, customer: Customer, name: str) -> list[int]:
    """The states WatchOrder streams for `name` until the server ends the stream at PAID."""
    request = orders_pb.WatchOrderRequest(name=name, until_states=[Order.STATE_PAID])
    stream = shop.orders().WatchOrder(request, metadata=customer.metadata, timeout=60)
    return [change.order.state for change in stream]


def test_an_order_is_paid_captured_once_and_emailed_once(shop: Shop) -> None:
    customer = shop.customer(funds=10_000)
    placed = shop.place(customer, 2_500)
    assert placed.state == Order.STATE_PENDING
    assert placed.total == Money(currency_code="EUR", amount_minor=2_500)

    states = _watch(shop, customer, placed.name)
    assert states[-1] == Order.STATE_PAID
    assert states == sorted(states), "states only move forward"

    payment = shop.payment_of(placed.name)
    assert payment is not None
    assert payment.state == Payment.STATE_CAPTURED
    assert payment.captured_amount.amount_minor == 2_500
    account = shop.payments().GetAccount(
        payments_pb.GetAccountRequest(name=customer.account), metadata=customer.metadata, timeout=10
    )
    assert (account.balance.amount_minor, account.held.amount_minor, account.available.amount_minor) == (
        7_500,
        0,
        7_500,
    )
    entries = shop.payments().ListLedgerEntries(
        payments_pb.ListLedgerEntriesRequest(parent=customer.account), metadata=customer.metadata, timeout=10
    )
    assert sorted(e.amount.amount_minor for e in entries.ledger_entries) == [-2_500, 10_000]
    assert shop.ledger_total()[0] == 0
    eventually(lambda: shop.emails_about(placed.name, PAID_TYPE), what="the payment email")
    paid_emails = [m for m in shop.mail.to(customer.email) if m.get("X-Poly-Event-Type") == PAID_TYPE]
    assert len(paid_emails) == 1


def test_insufficient_funds_fail_the_order_and_hold_nothing(shop: Shop) -> None:
    customer = shop.customer(funds=1_000)
    placed = shop.place(customer, 5_000)
    failed = shop.settle([placed.name])[placed.name]
    assert failed.state == Order.STATE_PAYMENT_FAILED
    assert failed.failure_reason == "INSUFFICIENT_FUNDS"
    payment = shop.payment_of(placed.name)
    assert payment is not None and payment.state == Payment.STATE_FAILED
    account = shop.payments().GetAccount(
        payments_pb.GetAccountRequest(name=customer.account), metadata=customer.metadata, timeout=10
    )
    assert (account.balance.amount_minor, account.available.amount_minor) == (1_000, 1_000)
    eventually(lambda: shop.emails_about(placed.name, FAILED_TYPE), what="the payment-failed email")
    assert len(shop.emails_about(placed.name, FAILED_TYPE)) == 1
    assert shop.emails_about(placed.name, PAID_TYPE) == []


def test_a_cancelled_order_gives_the_money_back(shop: Shop) -> None:
    customer = shop.customer(funds=10_000)
    placed = shop.place(customer, 4_000)
    cancelled = shop.orders().CancelOrder(
        orders_pb.CancelOrderRequest(name=placed.name, reason="changed my mind"),
        metadata=customer.metadata,
        timeout=10,
    )
    assert cancelled.state == Order.STATE_CANCELLED

    def released() -> Payment | None:
        payment = shop.payment_of(placed.name)
        done = (Payment.STATE_VOIDED, Payment.STATE_REFUNDED)
        return payment if payment is not None and payment.state in done else None

    eventually(released, what="the payment to be voided or refunded")
    account = shop.payments().GetAccount(
        payments_pb.GetAccountRequest(name=customer.account), metadata=customer.metadata, timeout=10
    )
    assert (account.balance.amount_minor, account.available.amount_minor, account.held.amount_minor) == (
        10_000,
        10_000,
        0,
    )
    eventually(lambda: shop.emails_about(placed.name, CANCELLED_TYPE), what="the cancellation email")
    assert len(shop.emails_about(placed.name, CANCELLED_TYPE)) == 1
    assert shop.order(placed.name).state == Order.STATE_CANCELLED


def _rush(shop: Shop, customers: list[Customer], count: int, *, during: Callable[[int], None]) -> list[str]:
    """`count` orders from 16 threads, every fifth cancelled at once; `during(n)` runs after
    the n-th order is placed (to kill services mid-run)."""
    names: list[str] = []
    lock = threading.Lock()

    def one(index: int) -> None:
        customer = customers[index % len(customers)]
        stub = shop.orders()
        placed = shop.place(customer, 1_000 + 100 * (index % 7), stub=stub)
        if index % 5 == 0:
            request = orders_pb.CancelOrderRequest(name=placed.name, reason="rush")
            try:
                _retrying(lambda: stub.CancelOrder(request, metadata=customer.metadata, timeout=10))
            except grpc.RpcError as refused:  # its payment failed first: PAYMENT_FAILED is terminal
                assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION, refused
        with lock:
            names.append(placed.name)
            placed_so_far = len(names)
        during(placed_so_far)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(count)))
    return names


def _check_the_books(shop: Shop, names: list[str], *, killed: bool) -> None:
    settled = shop.settle(names, timeout=180)
    states = Counter(Order.State.Name(o.state) for o in settled.values())
    assert set(states) <= {"STATE_PAID", "STATE_CANCELLED", "STATE_PAYMENT_FAILED"}, states
    assert states["STATE_PAID"] and states["STATE_CANCELLED"] and states["STATE_PAYMENT_FAILED"], states

    total, entries = shop.ledger_total()
    assert total == 0 and entries > 0

    captured = refunded = 0
    for name, order in settled.items():
        payment = shop.payment_of(name)
        assert payment is not None, f"{name} never reached payments"
        if order.state == Order.STATE_PAID:
            assert payment.state == Payment.STATE_CAPTURED
            assert payment.captured_amount == order.total
        elif order.state == Order.STATE_PAYMENT_FAILED:
            assert payment.state == Payment.STATE_FAILED
        else:
            eventually(
                lambda name=name: (
                    shop.payment_of(name).state  # type: ignore[union-attr]
                    in (Payment.STATE_VOIDED, Payment.STATE_REFUNDED, Payment.STATE_FAILED)
                ),
                what=f"the payment of cancelled {name} to be released",
            )
            payment = shop.payment_of(name)
            assert payment is not None
        captured += payment.captured_amount.amount_minor
        refunded += payment.refunded_amount.amount_minor
    paid = sum(o.total.amount_minor for o in settled.values() if o.state == Order.STATE_PAID)
    assert captured - refunded == paid

    for customer in {c.user: c for c, _, _ in shop.orders_placed}.values():
        account = shop.payments().GetAccount(
            payments_pb.GetAccountRequest(name=customer.account), metadata=shop.admin, timeout=10
        )
        assert account.held.amount_minor == 0, f"{customer.account} still holds money"
        assert account.available.amount_minor >= 0

    expected = {
        Order.STATE_PAID: [PAID_TYPE],
        Order.STATE_PAYMENT_FAILED: [FAILED_TYPE],
        Order.STATE_CANCELLED: [CANCELLED_TYPE],
    }

    def every_email_arrived() -> bool:
        return all(
            shop.emails_about(name, kind) for name, order in settled.items() for kind in expected[order.state]
        )

    eventually(every_email_arrived, timeout=120, what="one email per settled order")
    for name, order in settled.items():
        for kind in (PAID_TYPE, FAILED_TYPE, CANCELLED_TYPE):
            ids = shop.emails_about(name, kind)
            wanted = 1 if kind in expected[order.state] else 0
            if kind == PAID_TYPE and order.state == Order.STATE_CANCELLED:
                wanted = len(set(ids))  # paid, then cancelled: one of each, or only the cancellation
                assert wanted <= 1
            assert len(set(ids)) == wanted, f"{name} ({Order.State.Name(order.state)}): {kind} x{len(ids)}"
            if not killed:
                assert len(ids) == len(set(ids)), f"{name}: {kind} sent twice"


def test_two_hundred_concurrent_orders_balance_to_the_cent(shop: Shop) -> None:
    # 20 customers; a third of them can afford only part of their ten orders.
    customers = [shop.customer(funds=4_000 if i % 3 == 0 else 100_000) for i in range(20)]
    names = _rush(shop, customers, 200, during=lambda placed: None)
    _check_the_books(shop, names, killed=False)


def _kill_and_restart(system: Deployment, name: str) -> None:
    process = system.processes[name]
    process.signal(signal.SIGKILL)
    process.wait(10)
    system.processes.pop(name)
    system.start([name])


def test_two_hundred_orders_survive_each_service_killed_in_turn(shop: Shop) -> None:
    customers = [shop.customer(funds=4_000 if i % 3 == 0 else 100_000) for i in range(20)]
    victims = {30: "users", 70: "orders", 110: "payments", 150: "notifications"}
    lock = threading.Lock()
    killed: list[str] = []

    def during(placed: int) -> None:
        victim = victims.get(placed)
        if victim is not None:
            with lock:
                _kill_and_restart(shop.system, victim)
                killed.append(victim)

    names = _rush(shop, customers, 200, during=during)
    assert sorted(killed) == sorted(victims.values())
    _check_the_books(shop, names, killed=True)


def test_emails_name_their_order(shop: Shop) -> None:
    # The attribution the checks above rely on: every order email names exactly one order.
    for message in shop.mail.messages:
        if message.get("X-Poly-Event-Type") in (PAID_TYPE, FAILED_TYPE, CANCELLED_TYPE):
            assert re.fullmatch(r"[A-Za-z ]+ o[0-9a-f]{32}( cancelled)?", str(message["Subject"])), message[
                "Subject"
            ]
