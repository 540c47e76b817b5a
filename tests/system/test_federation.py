"""Federation with an outside OpenID Connect provider (issue 24), against a real provider on
127.0.0.1: a second instance of our own auth service, its edge serving discovery, its sign-in
page, its token endpoint and its keys over HTTPS, configured here as
``POLY_FEDERATION_ISSUERS=idp`` (with a confidential client registered there for us).

Mode a: a person signs in to an app of ours through the provider, from our sign-in page's
"Sign in with idp" to the provider's page and back; their first sign-in makes their account
here, the next finds it; the return is refused from another browser, a second time, and when
an account here already has the email the provider did not verify.

Mode b: the provider's people call our services with its tokens, as ``users/<id derived from
issuer and subject>`` (the same account mode a makes) holding only the roles mapped from its
own; it rotates its signing key and its new tokens are taken at once; it goes down and tokens
of keys already fetched keep working, while a token of a key never fetched is refused
promptly, without holding the call.
"""

from __future__ import annotations

import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from poly.auth.v1 import auth_service_pb2 as auth_pb
from poly.auth.v1 import resources_pb2
from poly.orders.v1 import orders_service_pb2 as orders_pb
from poly.orders.v1 import orders_service_pb2_grpc
from services.kit.federation import external_user_id
from tests.support.edge import edge_answers
from tests.support.env import free_port
from tests.support.http import Answer, http_call
from tests.support.identity import PASSWORD, Deployment, bearer, start
from tests.support.pkce import pkce
from tests.support.processes import Process, run_module
from tests.support.sign_in_page import form_of
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

APP = "https://photos.example.com/callback"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@dataclass
class Provider:
    deployment: Deployment
    edge: Process
    issuer: str
    ca_file: Path
    client_secret: str = ""
    """Ours, as its client."""

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
        admin = deployment.create_admin()
        created = deployment.auth().CreateClient(
            auth_pb.CreateClientRequest(
                client_id="poly-rp",
                client=resources_pb2.Client(
                    display_name="Our Deployment",
                    client_type=resources_pb2.Client.CLIENT_TYPE_CONFIDENTIAL,
                    grant_types=["authorization_code"],
                    redirect_uris=["http://127.0.0.1/oauth2/federation/callback"],  # any port
                ),
            ),
            metadata=bearer(admin),
            timeout=10,
        )
        found.client_secret = created.client_secret
        yield found
    finally:
        found.edge.stop()
        deployment.stop()


@dataclass
class Ours:
    deployment: Deployment
    port: int
    edge: Process

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def ours(provider: Provider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ours]:
    port = free_port()
    environ = {
        "POLY_GATEWAY_PORT": str(port),
        "POLY_AUTH_ISSUER": f"http://127.0.0.1:{port}",  # the provider takes loopback redirects
        "POLY_FEDERATION_IDP_CLIENT_ID": "poly-rp",
        "POLY_FEDERATION_IDP_CLIENT_SECRET": provider.client_secret,
        "POLY_FEDERATION_ISSUERS": "idp",
        "POLY_FEDERATION_IDP_ISSUER": provider.issuer,
        "POLY_FEDERATION_IDP_AUDIENCE": "poly",
        "POLY_FEDERATION_IDP_ROLES": "operations=admin",
        "POLY_FEDERATION_IDP_CA_FILE": str(provider.ca_file),
        "POLY_AUTH_JWKS_MIN_REFRESH_SECONDS": "0.2",
    }
    deployment = start(tmp_path_factory.mktemp("ours"), ["auth", "orders"], environ)
    edge = Process.module("gateway", deployment.environ)
    try:
        eventually(lambda: edge_answers(f"http://127.0.0.1:{port}"), timeout=30, what="our edge")
        admin = deployment.create_admin()
        deployment.auth().CreateClient(
            auth_pb.CreateClientRequest(
                client_id="photo-app",
                client=resources_pb2.Client(
                    display_name="Photo App",
                    client_type=resources_pb2.Client.CLIENT_TYPE_PUBLIC,
                    redirect_uris=[APP],
                ),
            ),
            metadata=bearer(admin),
            timeout=10,
        )
        yield Ours(deployment, port, edge)
    finally:
        edge.stop()
        deployment.stop()


def _orders(deployment: Deployment) -> orders_service_pb2_grpc.OrdersServiceStub:
    return orders_service_pb2_grpc.OrdersServiceStub(deployment.channel("orders"))


def _introspect(deployment: Deployment, token: str) -> auth_pb.TokenInfo:
    # As the edge would: IntrospectToken admits the gateway's certificate.
    info: auth_pb.TokenInfo = deployment.auth(as_="gateway").IntrospectToken(
        auth_pb.IntrospectTokenRequest(token=token), timeout=10
    )
    return info


def _cookie(headers: Any) -> str:
    return str(headers["Set-Cookie"]).split(";", 1)[0]


def _to_provider(ours: Ours, verifier_challenge: str) -> tuple[str, str]:
    """Our sign-in page, and its "Sign in with idp": where the browser is sent, and our cookie."""
    query = {
        "response_type": "code",
        "client_id": "photo-app",
        "redirect_uri": APP,
        "scope": "openid email",
        "state": "app-state",
        "code_challenge": verifier_challenge,
        "code_challenge_method": "S256",
    }
    page = http_call(ours.port, "GET", "/oauth2/authorize?" + urllib.parse.urlencode(query))
    assert page.status == 200 and 'value="idp"' in page.body.decode(), page.body
    cookie = _cookie(page.headers)
    action, token = form_of(page.body.decode())
    # The choice's redirect goes to the provider: the page's CSP lets the form go there.
    assert (
        "form-action 'self' https://photos.example.com https://localhost:"
        in page.headers["Content-Security-Policy"]
    )
    chosen = http_call(
        ours.port,
        "POST",
        action,
        raw=urllib.parse.urlencode({"csrf_token": token, "provider": "idp"}).encode(),
        headers={**FORM, "Cookie": cookie, "Origin": ours.origin, "Sec-Fetch-Site": "same-origin"},
    )
    assert chosen.status == 303, chosen.body
    return chosen.headers["Location"], cookie


def _at_provider(provider: Provider, location: str, email: str) -> str:
    """The provider's sign-in page, filled in: where it sends the browser back."""
    assert location.startswith(provider.issuer + "/oauth2/authorize?")
    page = requests.get(location, verify=str(provider.ca_file), allow_redirects=False, timeout=10)
    assert page.status_code == 200, page.text
    action, token = form_of(page.text)
    signed_in = requests.post(
        provider.issuer + action,
        data={"csrf_token": token, "email": email, "password": PASSWORD, "decision": "allow"},
        headers={
            "Cookie": page.headers["Set-Cookie"].split(";", 1)[0],
            "Origin": provider.issuer,
            "Sec-Fetch-Site": "same-origin",
        },
        verify=str(provider.ca_file),
        allow_redirects=False,
        timeout=10,
    )
    assert signed_in.status_code == 303, signed_in.text
    return str(signed_in.headers["Location"])


def _back(ours: Ours, location: str, cookie: str) -> Answer:
    assert location.startswith(ours.origin + "/oauth2/federation/callback?"), location
    return http_call(ours.port, "GET", location.removeprefix(ours.origin), headers={"Cookie": cookie})


def _signed_in(ours: Ours, provider: Provider, email: str) -> dict[str, Any]:
    """The app's tokens after a sign-in through the provider."""
    verifier, challenge = pkce()
    location, cookie = _to_provider(ours, challenge)
    back = _back(ours, _at_provider(provider, location, email), cookie)
    assert back.status == 303, back.body
    answer = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(back.headers["Location"]).query))
    assert back.headers["Location"].startswith(APP) and answer["state"] == "app-state"
    form = {
        "grant_type": "authorization_code",
        "code": answer["code"],
        "redirect_uri": APP,
        "client_id": "photo-app",
        "code_verifier": verifier,
    }
    exchanged = http_call(
        ours.port, "POST", "/oauth2/token", raw=urllib.parse.urlencode(form).encode(), headers=FORM
    )
    assert exchanged.status == 200, exchanged.body
    tokens: dict[str, Any] = exchanged.json()
    return tokens


def test_a_person_signs_in_to_an_app_here_through_the_provider(provider: Provider, ours: Ours) -> None:
    user, email = provider.deployment.register()
    tokens = _signed_in(ours, provider, email)
    info = http_call(
        ours.port, "GET", "/oauth2/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    here = f"users/{external_user_id(provider.issuer, user)}"
    assert (info.status, info.json()["sub"], info.json()["email"]) == (200, here, email)
    # The provider's own access token names the same person here (mode b).
    assert _introspect(ours.deployment, provider.token(email)).subject == here
    again = _signed_in(ours, provider, email)  # the second time the link finds the account
    assert _introspect(ours.deployment, again["access_token"]).subject == here
    # It has no password here: signing in with one fails, as for a wrong one.
    with pytest.raises(grpc.RpcError) as refused:
        ours.deployment.login(email)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_the_return_is_taken_once_and_only_by_the_browser_that_left(provider: Provider, ours: Ours) -> None:
    _, email = provider.deployment.register()
    location, cookie = _to_provider(ours, pkce()[1])
    back = _at_provider(provider, location, email)
    elsewhere = _back(ours, back, "poly-signin=" + "A" * 43)
    assert elsewhere.status == 403 and "another browser" in elsewhere.body.decode()
    assert _back(ours, back, cookie).status == 403  # the state was taken by that attempt
    location, cookie = _to_provider(ours, pkce()[1])
    back = _at_provider(provider, location, email)
    assert _back(ours, back, cookie).status == 303
    replayed = _back(ours, back, cookie)
    assert replayed.status == 403 and "already used" in replayed.body.decode()


def test_an_account_here_is_not_taken_over_by_an_unverified_email(provider: Provider, ours: Ours) -> None:
    email = f"taken-{uuid.uuid4().hex[:8]}@example.com"
    ours.deployment.register(email)  # someone here has this address
    provider.deployment.register(email)  # the provider's person says so too, unverified
    location, cookie = _to_provider(ours, pkce()[1])
    refused = _back(ours, _at_provider(provider, location, email), cookie)
    assert refused.status == 403 and "exists here" in refused.body.decode()
    assert "Location" not in refused.headers


def test_the_provider_s_people_call_our_services_with_its_tokens(provider: Provider, ours: Ours) -> None:
    user, email = provider.deployment.register()
    token = provider.token(email)
    listed = _orders(ours.deployment).ListOrders(
        orders_pb.ListOrdersRequest(), metadata=bearer(token), timeout=10
    )
    assert list(listed.orders) == []

    info = _introspect(ours.deployment, token)
    assert info.active and info.subject == f"users/{external_user_id(provider.issuer, user)}"
    assert list(info.roles) == []
    assert _introspect(provider.deployment, token).subject == user  # the provider's own view


def test_only_mapped_roles_are_granted(provider: Provider, ours: Ours) -> None:
    admin_token = provider.deployment.create_admin(f"root-{uuid.uuid4().hex[:6]}@example.com")
    assert list(_introspect(ours.deployment, admin_token).roles) == []  # the provider's "admin" is not ours
    with pytest.raises(grpc.RpcError) as refused:
        ours.deployment.auth().ListIdentities(
            auth_pb.ListIdentitiesRequest(), metadata=bearer(admin_token), timeout=10
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED

    user, email = provider.deployment.register()
    provider.deployment.auth().GrantRole(
        auth_pb.GrantRoleRequest(name=user, role="operations"), metadata=bearer(admin_token), timeout=10
    )
    operator = provider.token(email)
    assert list(_introspect(ours.deployment, operator).roles) == ["admin"]
    ours.deployment.auth().ListIdentities(
        auth_pb.ListIdentitiesRequest(), metadata=bearer(operator), timeout=10
    )


def test_a_key_rotated_in_at_the_provider_is_taken_and_its_outage_keeps_the_keys_we_have(
    provider: Provider, ours: Ours
) -> None:
    _, email = provider.deployment.register()
    before = provider.token(email)
    assert _introspect(ours.deployment, before).active
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
    assert _introspect(ours.deployment, after).active  # an unknown kid: our services fetch its keys again

    provider.edge.stop()  # the provider is down
    assert not provider.answers()
    assert (
        _introspect(ours.deployment, before).active and _introspect(ours.deployment, after).active
    )  # keys kept

    now = int(time.time())
    unknown = jwt.encode(
        {"iss": provider.issuer, "aud": "poly", "sub": "users/x", "iat": now, "exp": now + 60, "jti": "j"},
        Ed25519PrivateKey.generate(),
        algorithm="EdDSA",
        headers={"kid": "never-published"},
    )
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as refused:
        _orders(ours.deployment).ListOrders(
            orders_pb.ListOrdersRequest(), metadata=bearer(unknown), timeout=20
        )
    assert refused.value.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNAVAILABLE)
    assert time.monotonic() - started < 20, "answered, not held until the deadline"
    assert not _introspect(ours.deployment, unknown).active
