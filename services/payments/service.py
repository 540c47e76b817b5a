"""gRPC servicer of poly.payments.v1.PaymentsService: parse, call the domain, map the result."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import empty_pb2

from poly.payments.v1 import payments_service_pb2 as pb
from poly.payments.v1 import payments_service_pb2_grpc, resources_pb2
from poly.type.v1 import money_pb2
from services.kit import authz, tls
from services.kit.money import Money
from services.kit.names import resource_id
from services.kit.wire import money_message, money_value, timestamp
from services.payments.accounts import Accounts
from services.payments.domain import Payments
from services.payments.records import Account, LedgerEntry, Payment, Viewer

__all__ = ["PaymentsServicer"]

_ListRequest = pb.ListAccountsRequest | pb.ListLedgerEntriesRequest | pb.ListPaymentsRequest


def _money(currency: str, amount: int) -> money_pb2.Money:
    return money_message(Money(currency, amount))


def _account(account: Account) -> resources_pb2.Account:
    return resources_pb2.Account(
        name=account.name,
        owner=account.owner,
        currency_code=account.currency,
        balance=_money(account.currency, account.balance),
        available=_money(account.currency, account.available),
        held=_money(account.currency, account.held),
        create_time=timestamp(account.create_time),
        update_time=timestamp(account.update_time),
        payment_method=account.payment_method,
    )


def _entry(entry: LedgerEntry) -> resources_pb2.LedgerEntry:
    return resources_pb2.LedgerEntry(
        name=entry.name,
        transaction=entry.transaction,
        amount=_money(entry.currency, entry.amount),
        kind=resources_pb2.LedgerEntry.Kind.Value(f"KIND_{entry.kind}"),
        payment=f"payments/{entry.payment_id}" if entry.payment_id else "",
        create_time=timestamp(entry.create_time),
    )


def _payment(payment: Payment) -> resources_pb2.Payment:
    return resources_pb2.Payment(
        name=payment.name,
        order=payment.order,
        account=f"accounts/{payment.account_id}" if payment.account_id else "",
        owner=payment.owner,
        amount=_money(payment.currency, payment.amount),
        captured_amount=_money(payment.currency, payment.captured),
        refunded_amount=_money(payment.currency, payment.refunded),
        state=resources_pb2.Payment.State.Value(f"STATE_{payment.state}"),
        failure_reason=payment.failure_reason,
        create_time=timestamp(payment.create_time),
        update_time=timestamp(payment.update_time),
        provider=payment.provider,
        provider_reference=payment.provider_reference,
    )


def _entry_name(name: str) -> tuple[str, str]:
    """``accounts/{account}/ledgerEntries/{entry}`` -> (account id, entry id)."""
    account, _, entry = name.partition("/ledgerEntries/")
    return resource_id(account, "accounts"), resource_id(f"ledgerEntries/{entry}", "ledgerEntries")


def _paging(request: _ListRequest) -> dict[str, Any]:
    return {
        "size": request.page_size,
        "token": request.page_token,
        "filter_text": request.filter,
        "order_by": request.order_by,
    }


def _authorization(request: pb.AuthorizePaymentRequest) -> dict[str, Any]:
    """AuthorizePayment's fields as `Payments.authorize` takes them."""
    return {
        "order": f"orders/{resource_id(request.order, 'orders', field='order')}",
        "owner": f"users/{resource_id(request.owner, 'users', field='owner')}",
        "account_id": resource_id(request.account, "accounts", field="account") if request.account else "",
        "amount": money_value(request.amount),
        "capture": request.capture,
    }


def _viewer() -> Viewer:
    caller = authz.principal()
    return Viewer(caller.subject, sees_all=caller.is_admin or caller.is_client)


def _service_caller(context: grpc.ServicerContext) -> str:
    """Idempotency keys of INTERNAL calls belong to the calling service's SPIFFE ID."""
    return tls.peer_identity(context) or ""


class PaymentsServicer(payments_service_pb2_grpc.PaymentsServiceServicer):
    """Accounts, a double-entry ledger and payments (authorize, capture, void, refund)."""

    def __init__(self, payments: Payments, accounts: Accounts) -> None:
        self._payments = payments
        self._accounts = accounts

    def GetAccount(
        self, request: pb.GetAccountRequest, context: grpc.ServicerContext
    ) -> resources_pb2.Account:
        account_id = resource_id(request.name, "accounts")
        return _account(self._accounts.account(account_id, authz.require_owner))

    def ListAccounts(
        self, request: pb.ListAccountsRequest, context: grpc.ServicerContext
    ) -> pb.ListAccountsResponse:
        page = self._accounts.list_accounts(_viewer(), **_paging(request))
        return pb.ListAccountsResponse(
            accounts=[_account(a) for a in page.accounts], next_page_token=page.next_page_token
        )

    def FundAccount(
        self, request: pb.FundAccountRequest, context: grpc.ServicerContext
    ) -> resources_pb2.Account:
        account_id = resource_id(request.name, "accounts")
        caller = authz.principal().subject
        return _account(
            self._accounts.fund(caller, request.request_id, account_id, money_value(request.amount))
        )

    def SetPaymentMethod(
        self, request: pb.SetPaymentMethodRequest, context: grpc.ServicerContext
    ) -> resources_pb2.Account:
        account_id = resource_id(request.name, "accounts")
        account = self._accounts.set_payment_method(account_id, request.payment_method, authz.require_owner)
        return _account(account)

    def ReceiveProviderEvent(
        self, request: pb.ReceiveProviderEventRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        headers = {key: value for key, value in context.invocation_metadata() if isinstance(value, str)}
        self._payments.receive_event(request.provider, headers, request.body.data)
        return empty_pb2.Empty()

    def GetLedgerEntry(
        self, request: pb.GetLedgerEntryRequest, context: grpc.ServicerContext
    ) -> resources_pb2.LedgerEntry:
        account_id, entry_id = _entry_name(request.name)
        return _entry(self._accounts.entry(account_id, entry_id, authz.require_owner))

    def ListLedgerEntries(
        self, request: pb.ListLedgerEntriesRequest, context: grpc.ServicerContext
    ) -> pb.ListLedgerEntriesResponse:
        account_id = resource_id(request.parent, "accounts", field="parent")
        page = self._accounts.list_entries(account_id, authz.require_owner, **_paging(request))
        return pb.ListLedgerEntriesResponse(
            ledger_entries=[_entry(e) for e in page.entries], next_page_token=page.next_page_token
        )

    def GetPayment(
        self, request: pb.GetPaymentRequest, context: grpc.ServicerContext
    ) -> resources_pb2.Payment:
        payment_id = resource_id(request.name, "payments")
        return _payment(self._payments.payment(payment_id, authz.require_owner))

    def ListPayments(
        self, request: pb.ListPaymentsRequest, context: grpc.ServicerContext
    ) -> pb.ListPaymentsResponse:
        page = self._payments.list_payments(_viewer(), **_paging(request))
        return pb.ListPaymentsResponse(
            payments=[_payment(p) for p in page.payments], next_page_token=page.next_page_token
        )

    def RefundPayment(
        self, request: pb.RefundPaymentRequest, context: grpc.ServicerContext
    ) -> resources_pb2.Payment:
        payment_id = resource_id(request.name, "payments")
        amount = money_value(request.amount) if request.HasField("amount") else None
        caller = authz.principal().subject
        refunded = self._payments.refund(caller, request.request_id, payment_id, amount, request.reason)
        return _payment(refunded)

    def AuthorizePayment(
        self, request: pb.AuthorizePaymentRequest, context: grpc.ServicerContext
    ) -> resources_pb2.Payment:
        asked = _authorization(request)
        return _payment(self._payments.authorize(_service_caller(context), request.request_id, **asked))

    def CapturePayment(
        self, request: pb.CapturePaymentRequest, context: grpc.ServicerContext
    ) -> resources_pb2.Payment:
        payment_id = resource_id(request.name, "payments")
        return _payment(self._payments.capture(_service_caller(context), request.request_id, payment_id))

    def VoidPayment(
        self, request: pb.VoidPaymentRequest, context: grpc.ServicerContext
    ) -> resources_pb2.Payment:
        payment_id = resource_id(request.name, "payments")
        return _payment(self._payments.void(_service_caller(context), request.request_id, payment_id))
