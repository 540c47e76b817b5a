"""The services accept access tokens of an outside OpenID Connect provider (issue 24, federation
mode b), against a real provider on 127.0.0.1: a second instance of our own auth service, its
edge serving discovery and keys over HTTPS, configured here as ``POLY_FEDERATION_ISSUERS=idp``.

Its people call our services with its tokens, as ``users/<id derived from issuer and subject>``
holding only the roles mapped from its own; it rotates its signing key and its new tokens are
taken at once; it goes down and tokens of keys already fetched keep working, while a token of a
key never fetched is refused promptly, without holding the call.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from poly.auth.v1 import auth_service_pb2 as auth_pb
from poly.orders.v1 import orders_service_pb2 as orders_pb
from poly.orders.v1 import orders_service_pb2_grpc
from services.kit.federation import external_user_id
from tests.support.env import free_port
from tests.support.identity import Deployment, bearer, start
from tests.support.processes import Process, run_module
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow


@dataclass
class Provider:
    deployment: Deployment
    edge: Process
    issuer: str
    ca_file: Path

    def token(self, email: str) -> str:
        return str(self.deployment.login(email).access_token)

    def answers(self) -> bool:
        try:
            found = requests.get(
                f"{self.issuer}/.well-known/openid-configuration", verify=str(self.ca_file), timeout=2
            )
        except requests.RequestException:
            return False
        return found.status_code == 200


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    home = tmp_path_factory.mktemp("provider")
    port = free_port()
    issuer = f"https://localhost:{port}"
    environ = {
        "POLY_GATEWAY_PORT": str(port),
        "POLY_AUTH_ISSUER": issuer,
        "POLY_GATEWAY_TLS_CERT": str(home / "certs" / "gateway.crt"),
        "POLY_GATEWAY_TLS_KEY": str(home / "certs" / "gateway.key"),
        "POLY_AUTH_JWKS_MIN_REFRESH_SECONDS": "1",  # a rotated-in key signs after 1 s
    }
    deployment = start(home, ["auth"], environ)
    edge = Process.module("gateway", deployment.environ)
    found = Provider(deployment, edge, issuer, home / "certs" / "ca.crt")
    try:
        eventually(found.answers, timeout=30, what="the provider's discovery over HTTPS")
        yield found
    finally:
        found.edge.stop()
        deployment.stop()


@pytest.fixture(scope="module")
def ours(provider: Provider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    environ = {
        "POLY_FEDERATION_ISSUERS": "idp",
        "POLY_FEDERATION_IDP_ISSUER": provider.issuer,
        "POLY_FEDERATION_IDP_AUDIENCE": "poly",
        "POLY_FEDERATION_IDP_ROLES": "operations=admin",
        "POLY_FEDERATION_IDP_CA_FILE": str(provider.ca_file),
        "POLY_AUTH_JWKS_MIN_REFRESH_SECONDS": "0.2",
    }
    deployment = start(tmp_path_factory.mktemp("ours"), ["auth", "orders"], environ)
    try:
        yield deployment
    finally:
        deployment.stop()


def _orders(deployment: Deployment) -> orders_service_pb2_grpc.OrdersServiceStub:
    return orders_service_pb2_grpc.OrdersServiceStub(deployment.channel("orders"))


def _introspect(deployment: Deployment, token: str) -> auth_pb.TokenInfo:
    # As the edge would: IntrospectToken admits the gateway's certificate.
    info: auth_pb.TokenInfo = deployment.auth(as_="gateway").IntrospectToken(
        auth_pb.IntrospectTokenRequest(token=token), timeout=10
    )
    return info


def test_the_provider_s_people_call_our_services_with_its_tokens(
    provider: Provider, ours: Deployment
) -> None:
    user, email = provider.deployment.register()
    token = provider.token(email)
    listed = _orders(ours).ListOrders(orders_pb.ListOrdersRequest(), metadata=bearer(token), timeout=10)
    assert list(listed.orders) == []

    info = _introspect(ours, token)
    assert info.active and info.subject == f"users/{external_user_id(provider.issuer, user)}"
    assert list(info.roles) == []
    assert _introspect(provider.deployment, token).subject == user  # the provider's own view


def test_only_mapped_roles_are_granted(provider: Provider, ours: Deployment) -> None:
    admin_token = provider.deployment.create_admin(f"root-{uuid.uuid4().hex[:6]}@example.com")
    assert list(_introspect(ours, admin_token).roles) == []  # the provider's "admin" is not ours
    with pytest.raises(grpc.RpcError) as refused:
        ours.auth().ListIdentities(auth_pb.ListIdentitiesRequest(), metadata=bearer(admin_token), timeout=10)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED

    user, email = provider.deployment.register()
    provider.deployment.auth().GrantRole(
        auth_pb.GrantRoleRequest(name=user, role="operations"), metadata=bearer(admin_token), timeout=10
    )
    operator = provider.token(email)
    assert list(_introspect(ours, operator).roles) == ["admin"]
    ours.auth().ListIdentities(auth_pb.ListIdentitiesRequest(), metadata=bearer(operator), timeout=10)


def test_a_key_rotated_in_at_the_provider_is_taken_and_its_outage_keeps_the_keys_we_have(
    provider: Provider, ours: Deployment
) -> None:
    _, email = provider.deployment.register()
    before = provider.token(email)
    assert _introspect(ours, before).active
    rotated = run_module("services.cli", provider.deployment.environ, "keys", "rotate")
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    old_kid = jwt.get_unverified_header(before)["kid"]
    after = eventually(
        lambda: (
            (token := provider.token(email)) and jwt.get_unverified_header(token)["kid"] != old_kid and token
        ),
        timeout=20,
        what="the provider signing with its new key",
    )
    assert _introspect(ours, after).active  # an unknown kid: our services fetch its keys again

    provider.edge.stop()  # the provider is down
    assert not provider.answers()
    assert _introspect(ours, before).active and _introspect(ours, after).active  # keys kept

    now = int(time.time())
    unknown = jwt.encode(
        {"iss": provider.issuer, "aud": "poly", "sub": "users/x", "iat": now, "exp": now + 60, "jti": "j"},
        Ed25519PrivateKey.generate(),
        algorithm="EdDSA",
        headers={"kid": "never-published"},
    )
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as refused:
        _orders(ours).ListOrders(orders_pb.ListOrdersRequest(), metadata=bearer(unknown), timeout=20)
    assert refused.value.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNAVAILABLE)
    assert time.monotonic() - started < 20, "answered, not held until the deadline"
    assert not _introspect(ours, unknown).active
