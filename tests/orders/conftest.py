"""auth + orders as real processes, and a recording PaymentsService.

The saga's payments side is played by the tests, so each of orders' reactions can be driven
and checked alone (tests/system/test_saga.py runs the real payments service): orders'
payment worker calls AuthorizePayment (a sale) and CapturePayment on a small real gRPC server
holding the payments certificate, which answers each order as the test planned.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from sqlalchemy import create_engine, text

from poly.orders.v1 import orders_service_pb2 as pb
from poly.orders.v1 import orders_service_pb2_grpc, resources_pb2
from poly.payments.v1 import payments_service_pb2, payments_service_pb2_grpc
from poly.payments.v1 import resources_pb2 as pay_pb
from poly.type.v1 import money_pb2
from services.kit import config, server, tls
from services.kit.domain_errors import DomainError, FailedPrecondition, Unavailable
from tests.support.env import settings_for
from tests.support.identity import Deployment, bearer, start
from tests.support.waiting import eventually


@dataclass(frozen=True)
class Answer:
    """How the recording payments answers one order's AuthorizePayment."""

    payment: str = ""
    """The hold's name (a capture rule below may apply to it); empty with `error`."""
    sold: bool = False
    """A sale (AuthorizePayment with capture) is answered CAPTURED: else only held (as by an
    outside provider whose capture got no answer), for CapturePayment to take."""
    decline: str = ""
    """A decline's reason: a FAILED payment instead of a hold."""
    error: DomainError | None = None
    """Refuse the call with this error's status instead."""
    gate: threading.Event | None = None
    """Answer only once this is set (an authorization in flight)."""


class RecordingPayments(payments_service_pb2_grpc.PaymentsServiceServicer):
    """AuthorizePayment and CapturePayment, recorded, as a test plans them.

    AuthorizePayment answers an order as `plan`ned; an order without a plan is UNAVAILABLE
    (payments down), so an order nobody plans stays PENDING, its version unchanged.
    CapturePayment captures at the first call, except that payments named
    ``payments/voided-*`` are FAILED_PRECONDITION (voided) and those named
    ``payments/down-*`` are UNAVAILABLE until listed in `healed`."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.answers: dict[str, Answer] = {}
        self.authorizations: list[payments_service_pb2.AuthorizePaymentRequest] = []
        self.answered: set[str] = set()
        self.calls: list[tuple[str, str]] = []
        self.healed: set[str] = set()
        self.captured: set[str] = set()

    def plan(self, order: str, answer: Answer) -> None:
        with self.lock:
            self.answers[order] = answer

    def AuthorizePayment(  # noqa: N802 - generated gRPC method name
        self, request: payments_service_pb2.AuthorizePaymentRequest, context: grpc.ServicerContext
    ) -> pay_pb.Payment:
        with self.lock:
            self.authorizations.append(request)
            answer = self.answers.get(request.order)
        if answer is None:
            raise Unavailable("PROVIDER_UNAVAILABLE", "try again")
        if answer.gate is not None:
            answer.gate.wait(30)
        with self.lock:
            self.answered.add(request.order)
        if answer.error is not None:
            raise answer.error
        state = pay_pb.Payment.STATE_FAILED if answer.decline else pay_pb.Payment.STATE_AUTHORIZED
        if answer.sold and request.capture and not answer.decline:
            state = pay_pb.Payment.STATE_CAPTURED
        return pay_pb.Payment(
            name=answer.payment, order=request.order, state=state, failure_reason=answer.decline
        )

    def authorizations_of(self, order: str) -> list[payments_service_pb2.AuthorizePaymentRequest]:
        with self.lock:
            return [request for request in self.authorizations if request.order == order]

    def CapturePayment(  # noqa: N802 - generated gRPC method name
        self, request: payments_service_pb2.CapturePaymentRequest, context: grpc.ServicerContext
    ) -> pay_pb.Payment:
        with self.lock:
            self.calls.append((request.name, request.request_id))
        if request.name.startswith("payments/voided-"):
            raise FailedPrecondition("PAYMENT_NOT_CAPTURABLE", "the payment was voided")
        if request.name.startswith("payments/down-") and request.name not in self.healed:
            raise Unavailable("PROVIDER_UNAVAILABLE", "try again")
        with self.lock:
            self.captured.add(request.name)
        return pay_pb.Payment(name=request.name, state=pay_pb.Payment.STATE_CAPTURED)

    def calls_for(self, payment: str) -> list[str]:
        with self.lock:
            return [request_id for name, request_id in self.calls if name == payment]


@dataclass
class System:
    deployment: Deployment
    payments: RecordingPayments
    backend: str
    tokens: dict[str, str] = field(default_factory=dict)

    def stub(self) -> orders_service_pb2_grpc.OrdersServiceStub:
        return orders_service_pb2_grpc.OrdersServiceStub(self.deployment.channel("orders"))

    def user(self) -> tuple[str, list[tuple[str, str]]]:
        """A new user: ``(users/{id}, bearer metadata)``."""
        user, email = self.deployment.register()
        return user, bearer(self.deployment.login(email).access_token)

    def admin(self) -> list[tuple[str, str]]:
        if "admin" not in self.tokens:
            self.tokens["admin"] = self.deployment.create_admin()
        return bearer(self.tokens["admin"])

    def placed(
        self, who: list[tuple[str, str]], answer: Answer | None = None, *lines: resources_pb2.OrderLine
    ) -> resources_pb2.Order:
        """An order placed by `who`, its authorization answered as `answer` plans (none:
        payments is down for it)."""
        order_id = f"o-{uuid.uuid4().hex[:16]}"
        if answer is not None:
            self.payments.plan(f"orders/{order_id}", answer)
        return create(self, who, *lines, order_id=order_id)

    def order(self, order: resources_pb2.Order, who: list[tuple[str, str]]) -> resources_pb2.Order:
        found: resources_pb2.Order = self.stub().GetOrder(
            pb.GetOrderRequest(name=order.name), metadata=who, timeout=10
        )
        return found

    def reaches(
        self, order: resources_pb2.Order, who: list[tuple[str, str]], state: int
    ) -> resources_pb2.Order:
        """The order once it is in `state` (waiting for the payment worker)."""

        def found() -> resources_pb2.Order | None:
            current = self.order(order, who)
            return current if current.state == state else None

        return eventually(found, timeout=30, what=f"{order.name} in state {state}")

    def sql(self, query: str, **params: object) -> list[tuple[object, ...]]:
        engine = create_engine(self.deployment.settings("orders").db.url)
        try:
            with engine.connect() as connection:
                return [tuple(row) for row in connection.execute(text(query), params)]
        finally:
            engine.dispose()

    def published(self, order: str) -> list[str]:
        """Event types in the orders outbox for `order`, in publishing order."""
        rows = self.sql(
            "SELECT event_type FROM bus_outbox WHERE aggregate_id = :order ORDER BY position", order=order
        )
        return [str(row[0]).removeprefix("poly.events.v1.") for row in rows]


def money(amount: int, currency: str = "EUR") -> money_pb2.Money:
    return money_pb2.Money(currency_code=currency, amount_minor=amount)


def line(
    sku: str = "SKU-1", quantity: int = 2, amount: int = 1250, currency: str = "EUR"
) -> resources_pb2.OrderLine:
    return resources_pb2.OrderLine(sku=sku, quantity=quantity, unit_price=money(amount, currency))


def create(
    system: System, who: list[tuple[str, str]], *lines: resources_pb2.OrderLine, **fields: str
) -> resources_pb2.Order:
    order = resources_pb2.Order(lines=list(lines) or [line()])
    request = pb.CreateOrderRequest(order=order, **fields)
    created: resources_pb2.Order = system.stub().CreateOrder(request, metadata=who, timeout=10)
    return created


def _payments_server(home: Path) -> tuple[server.RunningServer, RecordingPayments]:
    tls.ensure_certificates(home / "certs", config.COMPONENTS)
    settings = settings_for(
        "payments", {"POLY_HOME": str(home), "POLY_PAYMENTS_PORT": "0", "POLY_GRACE_SECONDS": "1"}
    )
    servicer = RecordingPayments()  # type: ignore[abstract]  # serves the saga's two calls only
    descriptor = payments_service_pb2.DESCRIPTOR.services_by_name["PaymentsService"]
    registration = server.registration(
        descriptor, payments_service_pb2_grpc.add_PaymentsServiceServicer_to_server, servicer
    )
    return server.start(settings, [registration]), servicer


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def system(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    home = tmp_path_factory.mktemp("orders")
    database = {}
    if request.param == "postgresql":
        make: Callable[[], str] = request.getfixturevalue("postgres_databases")
        database = {"POLY_ORDERS_DATABASE_URL": make()}
    payments, recorder = _payments_server(home)
    extra = {
        **database,
        "POLY_PAYMENTS_ADDRESS": f"localhost:{payments.port}",
    }
    try:
        deployment = start(home, ["auth", "orders"], extra)
        try:
            yield System(deployment, recorder, request.param)
        finally:
            deployment.stop()
    finally:
        payments.drain()
