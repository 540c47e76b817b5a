"""Authorization: each method's policy is enforced before its handler, denying by default.

The server here runs the real policies of OrdersService, UsersService and PaymentsService
(read from their descriptors) in front of small handlers that keep orders in a dict, so
every access rule is exercised over real mTLS with real tokens.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, wrappers_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from poly.options.v1 import options_pb2
from poly.orders.v1 import orders_service_pb2 as orders_pb
from poly.orders.v1 import orders_service_pb2_grpc, resources_pb2
from poly.payments.v1 import payments_service_pb2 as payments_pb
from poly.payments.v1 import payments_service_pb2_grpc
from poly.payments.v1 import resources_pb2 as payments_resources
from poly.type.v1.money_pb2 import Money
from poly.users.v1 import users_service_pb2 as users_pb
from poly.users.v1 import users_service_pb2_grpc
from services.kit import authz, clients, server
from services.kit.authn import KeySet, Verifier
from services.kit.config import Settings
from services.kit.domain_errors import NotFound, Unauthenticated
from tests.kit.test_authn import Signer
from tests.support.env import settings_for

ALICE, BOB = "users/alice", "users/bob"
ORDERS = {"orders/a1": ALICE, "orders/b1": BOB}
PAYMENTS = {"payments/pb1": BOB}


def _existing(table: dict[str, str], name: str) -> str:
    """A handler's existence check, after the owner check (AIP-211)."""
    if name not in table:
        raise NotFound("NOT_THERE", "{name} does not exist", name=name)
    return table[name]


class Orders(orders_service_pb2_grpc.OrdersServiceServicer):
    def GetOrder(
        self, request: orders_pb.GetOrderRequest, context: grpc.ServicerContext
    ) -> resources_pb2.Order:
        authz.require_owner(ORDERS.get(request.name, ""), request.name)
        return resources_pb2.Order(name=request.name, owner=_existing(ORDERS, request.name))

    def CancelOrder(
        self, request: orders_pb.CancelOrderRequest, context: grpc.ServicerContext
    ) -> resources_pb2.Order:
        authz.require_owner(ORDERS.get(request.name, ""), request.name)
        _existing(ORDERS, request.name)
        return resources_pb2.Order(name=request.name, state=resources_pb2.Order.STATE_CANCELLED)

    def ListOrders(self, request: orders_pb.ListOrdersRequest, context: grpc.ServicerContext) -> Any:
        caller = authz.principal()
        mine = [name for name, owner in ORDERS.items() if owner == caller.subject or caller.is_client]
        return orders_pb.ListOrdersResponse(orders=[resources_pb2.Order(name=n) for n in mine])

    def FulfillOrder(self, request: orders_pb.FulfillOrderRequest, context: grpc.ServicerContext) -> Any:
        return resources_pb2.Order(name=request.name, state=resources_pb2.Order.STATE_FULFILLED)

    def WatchOrder(
        self, request: orders_pb.WatchOrderRequest, context: grpc.ServicerContext
    ) -> Iterator[Any]:
        authz.require_owner(ORDERS.get(request.name, ""), request.name)
        _existing(ORDERS, request.name)
        yield orders_pb.WatchOrderResponse(order=resources_pb2.Order(name=request.name))


class Users(users_service_pb2_grpc.UsersServiceServicer):
    def GetPreferences(self, request: users_pb.GetPreferencesRequest, context: grpc.ServicerContext) -> Any:
        # A bug on purpose: an OWNER method that never checks the owner.
        return users_pb.Preferences(name=request.name, locale="secret-locale")

    def LookupContact(self, request: users_pb.LookupContactRequest, context: grpc.ServicerContext) -> Any:
        return users_pb.Contact(user=request.name)


class Payments(payments_service_pb2_grpc.PaymentsServiceServicer):
    def AuthorizePayment(
        self, request: payments_pb.AuthorizePaymentRequest, context: grpc.ServicerContext
    ) -> Any:
        return payments_resources.Payment(name="payments/p1")

    def GetPayment(self, request: payments_pb.GetPaymentRequest, context: grpc.ServicerContext) -> Any:
        authz.require_owner(PAYMENTS.get(request.name, ""), request.name)
        return payments_resources.Payment(name=request.name, owner=_existing(PAYMENTS, request.name))


def _unpoliced_registration() -> server.Registration:
    """A service whose method has no policy: it must be refused, never run."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="poly/test/v1/bare.proto", package="poly.test.v1", dependency=["google/protobuf/wrappers.proto"]
    )
    proto.service.add(name="BareService").method.add(
        name="Open", input_type=".google.protobuf.StringValue", output_type=".google.protobuf.StringValue"
    )
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.AddSerializedFile(proto.SerializeToString())
    descriptor = pool.FindServiceByName("poly.test.v1.BareService")
    handler = grpc.unary_unary_rpc_method_handler(
        lambda request, context: wrappers_pb2.StringValue(value="ran"),
        request_deserializer=wrappers_pb2.StringValue.FromString,
        response_serializer=wrappers_pb2.StringValue.SerializeToString,
    )
    generic = grpc.method_handlers_generic_handler(descriptor.full_name, {"Open": handler})
    return server.Registration(
        descriptor.full_name, lambda s: s.add_generic_rpc_handlers((generic,)), descriptor
    )


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer("key-1")


@pytest.fixture(scope="module")
def environ(certs: Path) -> dict[str, str]:
    return {"POLY_TLS_DIR": str(certs), "POLY_ORDERS_PORT": "0", "POLY_AUTH_ISSUER": "https://auth.test"}


@pytest.fixture(scope="module")
def running(environ: dict[str, str], signer: Signer) -> Iterator[int]:
    settings = settings_for("orders", environ)
    verifier = Verifier(KeySet(lambda: {"keys": [signer.jwk]}), settings.auth)
    registrations = [
        server.registration(
            orders_pb.DESCRIPTOR.services_by_name["OrdersService"],
            orders_service_pb2_grpc.add_OrdersServiceServicer_to_server,
            Orders(),
        ),
        server.registration(
            users_pb.DESCRIPTOR.services_by_name["UsersService"],
            users_service_pb2_grpc.add_UsersServiceServicer_to_server,
            Users(),
        ),
        server.registration(
            payments_pb.DESCRIPTOR.services_by_name["PaymentsService"],
            payments_service_pb2_grpc.add_PaymentsServiceServicer_to_server,
            Payments(),
        ),
        _unpoliced_registration(),
    ]
    started = server.start(
        settings, registrations, middlewares=authz.service_middlewares(settings, verifier, registrations)
    )
    try:
        yield started.port
    finally:
        started.drain()


def _channel(environ: dict[str, str], port: int, component: str) -> grpc.Channel:
    settings: Settings = settings_for(component, {**environ, "POLY_ORDERS_ADDRESS": f"localhost:{port}"})
    return clients.channel(settings, "orders")


@pytest.fixture(scope="module")
def as_cli(environ: dict[str, str], running: int) -> Iterator[grpc.Channel]:
    with _channel(environ, running, "cli") as channel:
        yield channel


def _token(
    signer: Signer, subject: str, roles: list[str] | None = None, scope: str = "", **extra: Any
) -> list[tuple[str, str]]:
    token = signer.token(sub=subject, roles=roles or [], scope=scope, **extra)
    return [("authorization", f"Bearer {token}")]


def _refusal(
    call: Any, request: Any, metadata: list[tuple[str, str]] | None = None
) -> tuple[grpc.StatusCode, str, str, dict[str, str]]:
    """Code, reason, message and ErrorInfo metadata of a refused call."""
    with pytest.raises(grpc.RpcError) as failed:
        result = call(request, metadata=metadata, timeout=10)
        if hasattr(result, "__next__"):
            list(result)
    status = rpc_status.from_call(failed.value)
    reason, metadata_seen = "", {}
    if status is not None:
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                reason, metadata_seen = info.reason, dict(info.metadata)
    return failed.value.code(), reason, failed.value.details() or "", metadata_seen


def _fails(
    call: Any, request: Any, metadata: list[tuple[str, str]] | None = None
) -> tuple[grpc.StatusCode, str]:
    code, reason, _, _ = _refusal(call, request, metadata)
    return code, reason


def test_the_owner_reads_their_order(as_cli: grpc.Channel, signer: Signer) -> None:
    stub = orders_service_pb2_grpc.OrdersServiceStub(as_cli)
    assert (
        stub.GetOrder(orders_pb.GetOrderRequest(name="orders/a1"), metadata=_token(signer, ALICE)).owner
        == ALICE
    )


def _not_owner(name: str) -> tuple[grpc.StatusCode, str, str, dict[str, str]]:
    return (
        grpc.StatusCode.PERMISSION_DENIED,
        "NOT_OWNER",
        f"the caller may not access {name}",
        {"resource": name},
    )


def test_user_a_cannot_read_or_cancel_user_bs_order_or_a_missing_one(
    as_cli: grpc.Channel, signer: Signer
) -> None:
    # AIP-211: permission before existence. Another's order and a missing one get the same
    # PERMISSION_DENIED, naming only what was asked for (never the owner), so ids cannot be
    # enumerated.
    stub = orders_service_pb2_grpc.OrdersServiceStub(as_cli)
    alice = _token(signer, ALICE)
    for name in ("orders/b1", "orders/none"):
        assert _refusal(stub.GetOrder, orders_pb.GetOrderRequest(name=name), alice) == _not_owner(name)
        assert _refusal(stub.CancelOrder, orders_pb.CancelOrderRequest(name=name), alice) == _not_owner(name)
        assert _refusal(stub.WatchOrder, orders_pb.WatchOrderRequest(name=name), alice) == _not_owner(name)


def test_user_a_cannot_read_user_bs_payment_or_a_missing_one(as_cli: grpc.Channel, signer: Signer) -> None:
    stub = payments_service_pb2_grpc.PaymentsServiceStub(as_cli)
    alice, bob = _token(signer, ALICE), _token(signer, BOB)
    theirs = _refusal(stub.GetPayment, payments_pb.GetPaymentRequest(name="payments/pb1"), alice)
    missing = _refusal(stub.GetPayment, payments_pb.GetPaymentRequest(name="payments/pb2"), alice)
    assert theirs == _not_owner("payments/pb1")
    assert missing == _not_owner("payments/pb2")
    assert BOB not in str(theirs)
    assert stub.GetPayment(payments_pb.GetPaymentRequest(name="payments/pb1"), metadata=bob).owner == BOB


def test_an_admin_learns_that_a_resource_does_not_exist(as_cli: grpc.Channel, signer: Signer) -> None:
    stub = orders_service_pb2_grpc.OrdersServiceStub(as_cli)
    admin = _token(signer, ALICE, ["admin"])
    assert _fails(stub.GetOrder, orders_pb.GetOrderRequest(name="orders/none"), admin) == (
        grpc.StatusCode.NOT_FOUND,
        "NOT_THERE",
    )


def test_an_admin_passes_the_owner_check(as_cli: grpc.Channel, signer: Signer) -> None:
    stub = orders_service_pb2_grpc.OrdersServiceStub(as_cli)
    reply = stub.GetOrder(
        orders_pb.GetOrderRequest(name="orders/b1"), metadata=_token(signer, ALICE, ["admin"])
    )
    assert reply.owner == BOB


def test_a_user_calling_an_admin_method_is_refused(as_cli: grpc.Channel, signer: Signer) -> None:
    stub = orders_service_pb2_grpc.OrdersServiceStub(as_cli)
    request = orders_pb.FulfillOrderRequest(name="orders/a1")
    assert _fails(stub.FulfillOrder, request, _token(signer, ALICE)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "ROLE_MISSING",
    )
    assert stub.FulfillOrder(request, metadata=_token(signer, BOB, ["admin"])).state


def test_machine_clients_need_the_methods_scopes(as_cli: grpc.Channel, signer: Signer) -> None:
    stub = orders_service_pb2_grpc.OrdersServiceStub(as_cli)
    reader = _token(signer, "clients/reporting", scope="orders.read", client_id="reporting")
    assert len(stub.ListOrders(orders_pb.ListOrdersRequest(), metadata=reader).orders) == 2
    assert stub.GetOrder(orders_pb.GetOrderRequest(name="orders/b1"), metadata=reader).owner == BOB
    assert (
        _fails(stub.FulfillOrder, orders_pb.FulfillOrderRequest(name="orders/a1"), reader)[1]
        == "SCOPE_MISSING"
    )
    # CancelOrder names no scopes: machine clients may never call it, whatever they hold.
    everything = _token(signer, "clients/root", scope="orders.read orders.fulfill", client_id="root")
    assert (
        _fails(stub.CancelOrder, orders_pb.CancelOrderRequest(name="orders/a1"), everything)[1]
        == "SCOPE_MISSING"
    )


def test_no_token_and_bad_tokens_are_unauthenticated(as_cli: grpc.Channel, signer: Signer) -> None:
    stub = orders_service_pb2_grpc.OrdersServiceStub(as_cli)
    request = orders_pb.ListOrdersRequest()
    assert _fails(stub.ListOrders, request) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING")
    expired = _token(signer, ALICE, exp=int(time.time()) - 3600)
    assert _fails(stub.ListOrders, request, expired) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_EXPIRED")
    forged = _token(Signer("key-1"), ALICE, ["admin"])
    assert _fails(stub.ListOrders, request, forged)[1] == "TOKEN_SIGNATURE_INVALID"


def test_an_owner_method_that_forgets_the_owner_check_fails_closed(
    as_cli: grpc.Channel, signer: Signer
) -> None:
    stub = users_service_pb2_grpc.UsersServiceStub(as_cli)
    code, reason = _fails(
        stub.GetPreferences,
        users_pb.GetPreferencesRequest(name="users/bob/preferences"),
        _token(signer, ALICE),
    )
    assert (code, reason) == (grpc.StatusCode.INTERNAL, "INTERNAL"), "the data never leaves"


@pytest.mark.parametrize("component", ["cli", "gateway", "users", "notifications"])
def test_internal_methods_refuse_every_identity_not_listed(
    environ: dict[str, str], running: int, signer: Signer, component: str
) -> None:
    with _channel(environ, running, component) as channel:
        stub = payments_service_pb2_grpc.PaymentsServiceStub(channel)
        request = payments_pb.AuthorizePaymentRequest()
        assert _fails(stub.AuthorizePayment, request) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "CALLER_NOT_ALLOWED",
        )
        # A user token, even an admin's, is neither required nor sufficient.
        admin = _token(signer, ALICE, ["admin"])
        assert _fails(stub.AuthorizePayment, request, admin)[1] == "CALLER_NOT_ALLOWED"


def test_internal_methods_admit_the_listed_services(environ: dict[str, str], running: int) -> None:
    with _channel(environ, running, "orders") as channel:
        reply = payments_service_pb2_grpc.PaymentsServiceStub(channel).AuthorizePayment(
            payments_pb.AuthorizePaymentRequest(
                order="orders/a1",
                owner=ALICE,
                amount=Money(currency_code="EUR", amount_minor=100),
                request_id="0b9b7c0e-3f1a-4c2e-8a5d-1e2f3a4b5c6d",
            ),
            timeout=10,
        )
        assert reply.name == "payments/p1"
    with _channel(environ, running, "notifications") as channel:
        contact = users_service_pb2_grpc.UsersServiceStub(channel).LookupContact(
            users_pb.LookupContactRequest(name="users/alice"), timeout=10
        )
        assert contact.user == "users/alice"


def test_a_method_without_a_policy_is_refused(as_cli: grpc.Channel, signer: Signer) -> None:
    call = as_cli.unary_unary(
        "/poly.test.v1.BareService/Open",
        request_serializer=wrappers_pb2.StringValue.SerializeToString,
        response_deserializer=wrappers_pb2.StringValue.FromString,
    )
    admin = _token(signer, ALICE, ["admin"])
    assert _fails(call, wrappers_pb2.StringValue(), admin) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "METHOD_HAS_NO_POLICY",
    )


def test_policies_are_read_from_the_descriptors() -> None:
    table = authz.policies([orders_pb.DESCRIPTOR.services_by_name["OrdersService"]])
    assert table["/poly.orders.v1.OrdersService/GetOrder"].access == options_pb2.ACCESS_OWNER
    assert list(table["/poly.orders.v1.OrdersService/FulfillOrder"].roles) == ["admin"]


def test_principal_outside_a_call_is_unauthenticated() -> None:
    with pytest.raises(Unauthenticated):
        authz.principal()
    with pytest.raises(Unauthenticated):
        authz.require_owner(ALICE, "orders/a1")
