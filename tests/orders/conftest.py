"""auth + orders as real processes, a recording PaymentsService, and payments' side of the bus.

The saga's payments steps are played by the tests, so each of orders' reactions can be driven
and checked alone (tests/system/test_saga.py runs the real payments service): events are
pushed into the orders EventSink over mTLS with the payments certificate, and CapturePayment
is answered by a small real gRPC server holding the payments certificate.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message
from sqlalchemy import create_engine, text

from poly.events.v1 import event_sink_pb2, event_sink_pb2_grpc, events_pb2
from poly.orders.v1 import orders_service_pb2 as pb
from poly.orders.v1 import orders_service_pb2_grpc, resources_pb2
from poly.payments.v1 import payments_service_pb2, payments_service_pb2_grpc
from poly.payments.v1 import resources_pb2 as pay_pb
from poly.type.v1 import money_pb2
from services.kit import config, server, tls
from services.kit.domain_errors import FailedPrecondition, Unavailable
from tests.support.env import settings_for
from tests.support.identity import Deployment, bearer, start


class RecordingPayments(payments_service_pb2_grpc.PaymentsServiceServicer):
    """CapturePayment only: captured at the first call, except that payments named
    ``payments/voided-*`` are FAILED_PRECONDITION (voided) and those named
    ``payments/down-*`` are UNAVAILABLE until listed in `healed`."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[str, str]] = []
        self.healed: set[str] = set()
        self.captured: set[str] = set()

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

    def push(self, event: Message, aggregate_id: str) -> event_sink_pb2.PushEventResponse:
        """Deliver `event` to orders as payments' relay would (payments certificate, mTLS)."""
        envelope = events_pb2.EventEnvelope(
            id=str(uuid.uuid4()),
            type=event.DESCRIPTOR.full_name,
            aggregate_id=aggregate_id,
            sequence=1,
            source="payments",
            schema_version=1,
        )
        envelope.occur_time.GetCurrentTime()
        envelope.payload.Pack(event)
        stub = event_sink_pb2_grpc.EventSinkServiceStub(self.deployment.channel("orders", as_="payments"))
        reply: event_sink_pb2.PushEventResponse = stub.PushEvent(
            event_sink_pb2.PushEventRequest(event=envelope), timeout=10
        )
        return reply

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


def payment_event(kind: type[Message], order: resources_pb2.Order, payment: str, **extra: object) -> Message:
    return kind(payment=payment, order=order.name, owner=order.owner, amount=order.total, **extra)


def _payments_server(home: Path) -> tuple[server.RunningServer, RecordingPayments]:
    tls.ensure_certificates(home / "certs", config.COMPONENTS)
    settings = settings_for(
        "payments", {"POLY_HOME": str(home), "POLY_PAYMENTS_PORT": "0", "POLY_GRACE_SECONDS": "1"}
    )
    servicer = RecordingPayments()  # type: ignore[abstract]  # serves CapturePayment only
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
