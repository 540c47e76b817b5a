"""Identity across the whole system: every service verifies auth's tokens, through rotations.

All five services run as processes started the way `poly up` starts them. Each call reads
the caller's own data; the answer OK, or NOT_FOUND for a profile the users service has not
created yet (authorization runs first), rather than UNAUTHENTICATED or PERMISSION_DENIED,
is the proof that the token was accepted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from poly.auth.v1 import auth_service_pb2 as auth_pb
from poly.notifications.v1 import notifications_service_pb2 as notifications_pb
from poly.notifications.v1 import notifications_service_pb2_grpc
from poly.orders.v1 import orders_service_pb2 as orders_pb
from poly.orders.v1 import orders_service_pb2_grpc
from poly.payments.v1 import payments_service_pb2 as payments_pb
from poly.payments.v1 import payments_service_pb2_grpc
from poly.users.v1 import users_service_pb2 as users_pb
from poly.users.v1 import users_service_pb2_grpc
from services.kit import config
from tests.support.identity import Deployment, bearer, signed_by_a_new_key, start
from tests.support.processes import run_module

pytestmark = pytest.mark.slow

Call = Callable[[Deployment, str, list[tuple[str, str]]], Any]


def _users(system: Deployment, user: str, metadata: list[tuple[str, str]]) -> Any:
    stub = users_service_pb2_grpc.UsersServiceStub(system.channel("users"))
    return stub.GetUser(users_pb.GetUserRequest(name=user), metadata=metadata, timeout=10)


def _orders(system: Deployment, user: str, metadata: list[tuple[str, str]]) -> Any:
    stub = orders_service_pb2_grpc.OrdersServiceStub(system.channel("orders"))
    return stub.ListOrders(orders_pb.ListOrdersRequest(), metadata=metadata, timeout=10)


def _payments(system: Deployment, user: str, metadata: list[tuple[str, str]]) -> Any:
    stub = payments_service_pb2_grpc.PaymentsServiceStub(system.channel("payments"))
    return stub.ListAccounts(payments_pb.ListAccountsRequest(), metadata=metadata, timeout=10)


def _notifications(system: Deployment, user: str, metadata: list[tuple[str, str]]) -> Any:
    stub = notifications_service_pb2_grpc.NotificationsServiceStub(system.channel("notifications"))
    return stub.ListDeliveries(notifications_pb.ListDeliveriesRequest(), metadata=metadata, timeout=10)


def _auth(system: Deployment, user: str, metadata: list[tuple[str, str]]) -> Any:
    return system.auth().GetIdentity(auth_pb.GetIdentityRequest(name=user), metadata=metadata, timeout=10)


SERVICES: dict[str, Call] = {
    "auth": _auth,
    "users": _users,
    "orders": _orders,
    "payments": _payments,
    "notifications": _notifications,
}


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    deployment = start(
        tmp_path_factory.mktemp("identity"),
        config.SERVICES,
        {"POLY_AUTH_JWKS_MAX_AGE_SECONDS": "1", "POLY_AUTH_JWKS_MIN_REFRESH_SECONDS": "0.2"},
    )
    try:
        yield deployment
    finally:
        deployment.stop()


def _answer(system: Deployment, service: str, user: str, metadata: list[tuple[str, str]]) -> grpc.StatusCode:
    try:
        SERVICES[service](system, user, metadata)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


ACCEPTED = {grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND}


def _accepted_everywhere(system: Deployment, user: str, metadata: list[tuple[str, str]]) -> dict[str, bool]:
    return {name: _answer(system, name, user, metadata) in ACCEPTED for name in SERVICES}


def test_every_service_refuses_a_call_without_a_token(system: Deployment) -> None:
    user, _ = system.register()
    assert {name: _answer(system, name, user, []) for name in SERVICES} == dict.fromkeys(
        SERVICES, grpc.StatusCode.UNAUTHENTICATED
    )


def test_register_login_call_refresh_logout(system: Deployment) -> None:
    user, email = system.register()
    tokens = system.login(email)
    assert _auth(system, user, bearer(tokens.access_token)).email == email
    assert all(_accepted_everywhere(system, user, bearer(tokens.access_token)).values())
    refreshed = system.auth().RefreshToken(
        auth_pb.RefreshTokenRequest(refresh_token=tokens.refresh_token), timeout=10
    )
    assert all(_accepted_everywhere(system, user, bearer(refreshed.access_token)).values())
    system.auth().Logout(auth_pb.LogoutRequest(refresh_token=refreshed.refresh_token), timeout=10)
    with pytest.raises(grpc.RpcError) as refused:
        system.auth().RefreshToken(
            auth_pb.RefreshTokenRequest(refresh_token=refreshed.refresh_token), timeout=10
        )
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_one_user_cannot_read_anothers_identity_or_profile(system: Deployment) -> None:
    _alice, alice_email = system.register()
    bob, _ = system.register()
    token = bearer(system.login(alice_email).access_token)
    # AIP-211: permission before existence, so another's identity and profile, and missing
    # ones, are all PERMISSION_DENIED.
    for name in (bob, "users/nobody"):
        assert _answer(system, "auth", name, token) == grpc.StatusCode.PERMISSION_DENIED, name
        assert _answer(system, "users", name, token) == grpc.StatusCode.PERMISSION_DENIED, name


def test_rotation_keeps_old_tokens_valid_everywhere_until_their_key_is_withdrawn(system: Deployment) -> None:
    user, email = system.register()
    old = bearer(system.login(email).access_token)
    assert all(_accepted_everywhere(system, user, old).values())
    assert run_module("services.cli", system.environ, "keys", "rotate").returncode == 0
    new = bearer(signed_by_a_new_key(system, email, old))
    assert _accepted_everywhere(system, user, new) == dict.fromkeys(SERVICES, True), (
        "new key fetched on unknown kid"
    )
    assert _accepted_everywhere(system, user, old) == dict.fromkeys(SERVICES, True), (
        "previous key still published"
    )
    assert run_module("services.cli", system.environ, "keys", "rotate").returncode == 0
    deadline = time.monotonic() + 20
    refused: dict[str, grpc.StatusCode] = {}
    while time.monotonic() < deadline and len(refused) < len(SERVICES):
        for name in SERVICES:
            if (
                name not in refused
                and (code := _answer(system, name, user, old)) == grpc.StatusCode.UNAUTHENTICATED
            ):
                refused[name] = code
        time.sleep(0.2)
    assert refused == dict.fromkeys(SERVICES, grpc.StatusCode.UNAUTHENTICATED), (
        "the withdrawn key's tokens die everywhere"
    )
    newest = bearer(system.login(email).access_token)
    assert _accepted_everywhere(system, user, newest) == dict.fromkeys(SERVICES, True)
