"""Driving a running payments service: customers, funding, the saga's calls and events,
ledger checks.

The orders service is not part of these tests: its INTERNAL calls (AuthorizePayment as its
payment worker makes it, CapturePayment, VoidPayment) are made with the orders certificate,
and its events (`OrderCancelled`) are pushed into the payments EventSink over mTLS with that
certificate too, exactly as its relay would.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field

import grpc
from google.protobuf.message import Message
from sqlalchemy import create_engine, text

from poly.events.v1 import event_sink_pb2, event_sink_pb2_grpc, events_pb2
from poly.events.v1.events_pb2 import EventEnvelope
from poly.payments.v1 import payments_service_pb2 as pb
from poly.payments.v1 import payments_service_pb2_grpc, resources_pb2
from poly.type.v1.money_pb2 import Money
from tests.support.identity import Deployment, bearer
from tests.support.waiting import eventually

__all__ = ["Customer", "System", "eur", "new_key"]


def eur(amount: int, currency: str = "EUR") -> Money:
    return Money(currency_code=currency, amount_minor=amount)


def new_key() -> str:
    return str(uuid.uuid4())


def _query(url: str, sql: str, **params: object) -> list[tuple[object, ...]]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(sql), params)]
    finally:
        engine.dispose()


@dataclass(frozen=True)
class Customer:
    user: str
    token: str
    account: str

    @property
    def metadata(self) -> list[tuple[str, str]]:
        return bearer(self.token)


@dataclass
class System:
    deployment: Deployment
    admin_token: str
    _stubs: dict[str, payments_service_pb2_grpc.PaymentsServiceStub] = field(default_factory=dict)
    _sinks: dict[str, event_sink_pb2_grpc.EventSinkServiceStub] = field(default_factory=dict)

    @property
    def admin(self) -> list[tuple[str, str]]:
        return bearer(self.admin_token)

    def payments(self, as_: str = "cli") -> payments_service_pb2_grpc.PaymentsServiceStub:
        if as_ not in self._stubs:
            channel = self.deployment.channel("payments", as_=as_)
            self._stubs[as_] = payments_service_pb2_grpc.PaymentsServiceStub(channel)
        return self._stubs[as_]

    @property
    def orders(self) -> payments_service_pb2_grpc.PaymentsServiceStub:
        """Calls made with the orders service's certificate (INTERNAL methods)."""
        return self.payments("orders")

    def customer(self, funds: int = 0) -> Customer:
        """A registered, logged-in user whose account payments opened; funded if asked."""
        user, email = self.deployment.register()
        token = self.deployment.login(email).access_token

        def opened() -> list[resources_pb2.Account]:
            reply = self.payments().ListAccounts(pb.ListAccountsRequest(), metadata=bearer(token), timeout=10)
            return list(reply.accounts)

        [account] = eventually(opened, what=f"the account of {user}")
        if funds:
            self.fund(account.name, funds)
        return Customer(user, token, account.name)

    def fund(self, account: str, amount: int, currency: str = "EUR") -> resources_pb2.Account:
        request = pb.FundAccountRequest(name=account, amount=eur(amount, currency), request_id=new_key())
        reply: resources_pb2.Account = self.payments().FundAccount(request, metadata=self.admin, timeout=10)
        return reply

    def account(self, name: str) -> resources_pb2.Account:
        reply: resources_pb2.Account = self.payments().GetAccount(
            pb.GetAccountRequest(name=name), metadata=self.admin, timeout=10
        )
        return reply

    # -- the saga, as the orders service drives it ---------------------------------------

    def push(self, event: Message, aggregate_id: str, *, source: str = "orders") -> int:
        envelope = EventEnvelope(
            id=new_key(),
            type=event.DESCRIPTOR.full_name,
            aggregate_id=aggregate_id,
            sequence=1,
            source=source,
            schema_version=1,
        )
        envelope.occur_time.GetCurrentTime()
        envelope.payload.Pack(event)
        if source not in self._sinks:
            channel = self.deployment.channel("payments", as_=source)
            self._sinks[source] = event_sink_pb2_grpc.EventSinkServiceStub(channel)
        stub = self._sinks[source]
        reply = stub.PushEvent(event_sink_pb2.PushEventRequest(event=envelope), timeout=10)
        outcome: int = reply.outcome
        return outcome

    def authorized(self, customer: Customer, total: int, currency: str = "EUR", order: str = "") -> str:
        """AuthorizePayment of an order's `total`, as orders' payment worker asks it (the
        order's own key); the order's name."""
        order = order or f"orders/{uuid.uuid4()}"
        request = pb.AuthorizePaymentRequest(
            order=order,
            owner=customer.user,
            amount=eur(total, currency),
            request_id=str(uuid.uuid5(uuid.NAMESPACE_URL, order + "/authorize")),
        )
        self.orders.AuthorizePayment(request, timeout=10)
        return order

    def order_cancelled(self, customer: Customer, order: str, *, total: int | None = None) -> None:
        """OrderCancelled; without `total`, as orders published it before the event had one."""
        event = events_pb2.OrderCancelled(order=order, owner=customer.user, reason="changed my mind")
        if total is not None:
            event.total.CopyFrom(eur(total))
        self.push(event, order)

    def payment(self, name: str) -> resources_pb2.Payment:
        reply: resources_pb2.Payment = self.payments().GetPayment(
            pb.GetPaymentRequest(name=name), metadata=self.admin, timeout=10
        )
        return reply

    def payment_of(self, order: str) -> resources_pb2.Payment:
        """The order's only payment (the event was applied when its push returned)."""
        request = pb.ListPaymentsRequest(filter=f'order = "{order}"')
        reply = self.payments().ListPayments(request, metadata=self.admin, timeout=10)
        [payment] = reply.payments
        found: resources_pb2.Payment = payment
        return found

    def outbox(self, aggregate_id: str) -> list[str]:
        """Types of the events payments published for `aggregate_id`, in publishing order."""
        url = self.deployment.settings("payments").db.url
        sql = "SELECT event_type FROM bus_outbox WHERE aggregate_id = :aggregate ORDER BY position"
        return [str(row[0]).rsplit(".", 1)[-1] for row in _query(url, sql, aggregate=aggregate_id)]

    # -- the ledger as a whole ----------------------------------------------------------

    def _all(self, call: object, request: Message, items: str) -> list[Message]:
        found: list[Message] = []
        while True:
            reply = call(request, metadata=self.admin, timeout=10)  # type: ignore[operator]
            found.extend(getattr(reply, items))
            if not reply.next_page_token:
                return found
            request.page_token = reply.next_page_token  # type: ignore[attr-defined]

    def ledger_total(self) -> int:
        """The sum of every ledger entry of every account, read as an admin; also checks
        each transaction sums to zero, each balance is the sum of its entries and each
        account's held amount the sum of its AUTHORIZED payments (a customer account keeps
        both as running totals: this proves they never drift from the ledger)."""
        stub = self.payments()
        accounts = self._all(stub.ListAccounts, pb.ListAccountsRequest(page_size=1000), "accounts")
        payments = self._all(stub.ListPayments, pb.ListPaymentsRequest(page_size=1000), "payments")
        held = defaultdict[str, int](int)
        for payment in payments:
            assert isinstance(payment, resources_pb2.Payment)
            if payment.state == resources_pb2.Payment.State.STATE_AUTHORIZED:
                held[payment.account] += payment.amount.amount_minor
        total, transactions = 0, defaultdict[str, int](int)
        for account in accounts:
            assert isinstance(account, resources_pb2.Account)
            request = pb.ListLedgerEntriesRequest(parent=account.name, page_size=1000)
            entries = self._all(stub.ListLedgerEntries, request, "ledger_entries")
            balance = sum(e.amount.amount_minor for e in entries)  # type: ignore[attr-defined]
            assert account.balance.amount_minor == balance, account.name
            assert account.held.amount_minor == held[account.name], account.name
            assert account.available.amount_minor == balance - account.held.amount_minor
            for entry in entries:
                transactions[entry.transaction] += entry.amount.amount_minor  # type: ignore[attr-defined]
            total += balance
        assert all(value == 0 for value in transactions.values()), "a transaction does not balance"
        return total


def refused(call: object, request: Message, **kwargs: object) -> grpc.RpcError:
    try:
        call(request, timeout=10, **kwargs)  # type: ignore[operator]
    except grpc.RpcError as error:
        return error
    raise AssertionError(f"{type(request).__name__} was not refused")
