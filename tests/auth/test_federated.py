"""Signing in through an outside OpenID provider (`services.auth.federated`, `relying`) over the
real store, with the real relying party against a provider of the test's own on 127.0.0.1:
discovery, keys and a token endpoint over HTTPS that checks what a provider checks (client
authentication, the code, its redirect URI and PKCE verifier) and answers RS256 ID tokens with
the claims each test gives the person."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.rsa import generate_private_key

from services.auth import relying
from services.auth.federated import LOGIN_SECONDS, FederatedSignIn, FederationRefused
from services.kit import tls
from services.kit.config import ExternalIssuer
from services.kit.federation import external_user_id
from tests.auth.local import LocalAuth

CLIENT_ID, CLIENT_SECRET = "poly-rp", "rp-secret-" + "x" * 24
CALLBACK = "https://poly.example.com/oauth2/federation/callback"
BINDING = "b" * 43


@dataclass
class Provider:
    """An OpenID provider's endpoints: the person's sign-in there is `sign_in`."""

    ca_file: Path
    port: int = 0
    key: Any = field(default_factory=lambda: generate_private_key(public_exponent=65537, key_size=2048))
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    """code -> the authorization request's parameters and the ID token's claims."""
    token_endpoint: str = ""
    exchanges: int = 0

    @property
    def issuer(self) -> str:
        return f"https://localhost:{self.port}"

    def sign_in(self, authorization_url: str, **claims: Any) -> str:
        """The person signs in at the provider: the code it sends them back with."""
        asked = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(authorization_url).query))
        assert asked["client_id"] == CLIENT_ID and asked["code_challenge_method"] == "S256"
        assert asked["redirect_uri"] == CALLBACK and "openid" in asked["scope"].split()
        code = secrets.token_urlsafe(16)
        self.codes[code] = {"asked": asked, "claims": {"sub": "p-1", "nonce": asked["nonce"], **claims}}
        return code

    def token(self, form: dict[str, str], authorization: str) -> tuple[int, dict[str, Any]]:
        self.exchanges += 1
        expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        if authorization != expected:
            return 401, {"error": "invalid_client"}
        issued = self.codes.pop(form.get("code", ""), None)
        verifier = form.get("code_verifier", "")
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if (
            issued is None
            or form.get("redirect_uri") != CALLBACK
            or challenge != issued["asked"]["code_challenge"]
        ):
            return 400, {"error": "invalid_grant"}
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": CLIENT_ID, "iat": now, "exp": now + 300, **issued["claims"]}
        id_token = jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": "k1"})
        return 200, {"access_token": "opaque", "token_type": "Bearer", "id_token": id_token}

    def answer(self, path: str) -> Any:
        if path == "/.well-known/openid-configuration":
            return {
                "issuer": self.issuer,
                "authorization_endpoint": f"{self.issuer}/authorize",
                "token_endpoint": self.token_endpoint or f"{self.issuer}/token",
                "jwks_uri": f"{self.issuer}/jwks",
            }
        if path == "/jwks":
            public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
            return {"keys": [{**public, "kid": "k1", "alg": "RS256", "use": "sig"}]}
        return None


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[Provider]:
    tls.ensure_certificates(tmp_path, ["gateway"])
    found = Provider(tmp_path / "ca.crt")

    class _Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, answer: Any) -> None:
            body = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            answer = found.answer(self.path)
            self._send(200 if answer is not None else 404, answer)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
            self._send(*found.token(form, self.headers.get("Authorization", "")))

        def log_message(self, *args: Any) -> None:
            """Quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "gateway.crt", tmp_path / "gateway.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    found.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield found
    finally:
        server.shutdown()
        server.server_close()


def _federated(local: LocalAuth, provider: Provider, **changes: Any) -> FederatedSignIn:
    fields: dict[str, Any] = {
        "alias": "idp",
        "issuer": provider.issuer,
        "ca_file": provider.ca_file,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }
    external = ExternalIssuer(**{**fields, **changes})
    upstream = relying.Upstream(external, CALLBACK, timeout=2.0)
    return FederatedSignIn(local.auth_store.transaction, {"idp": upstream}, local.clock)


def _round_trip(federated: FederatedSignIn, provider: Provider, **claims: Any) -> Any:
    location = federated.start("idp", "client_id=app&state=s", BINDING)
    state = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))["state"]
    code = provider.sign_in(location, **claims)
    return federated.complete(state=state, code=code, issuer=provider.issuer, error="", binding=BINDING)


def test_a_first_sign_in_makes_an_account_with_the_provider_s_id_and_the_next_finds_it(
    local: LocalAuth, provider: Provider
) -> None:
    federated = _federated(local, provider)
    request, identity = _round_trip(federated, provider, email="Ada@Example.com", name="Ada L")
    assert request == "client_id=app&state=s"
    assert identity.id == external_user_id(provider.issuer, "p-1") and identity.email == "ada@example.com"
    assert identity.roles == () and local.published() == ["UserRegistered"]
    _, again = _round_trip(federated, provider, email="someone-else@example.com")
    assert again.id == identity.id  # found by the link, whatever the email says now
    assert local.published() == ["UserRegistered"]


def test_a_verified_email_links_the_account_here_and_an_unverified_one_never_does(
    local: LocalAuth, provider: Provider
) -> None:
    existing = local.register()
    federated = _federated(local, provider)
    with pytest.raises(FederationRefused, match="exists here"):
        _round_trip(federated, provider, email=existing.email, email_verified="true")  # a string is not true
    _, identity = _round_trip(federated, provider, email=existing.email, email_verified=True)
    assert identity.id == existing.id


@pytest.mark.parametrize(
    ("claims", "why"),
    [
        ({"nonce": "another"}, "did not confirm"),
        ({"aud": "someone-else"}, "did not confirm"),
        ({"iss": "https://elsewhere.example"}, "did not confirm"),
        ({"exp": 1}, "did not confirm"),
        ({"email": ""}, "email address"),
    ],
    ids=["nonce", "audience", "issuer", "expired", "no-email"],
)
def test_an_id_token_that_does_not_hold_signs_no_one_in(
    local: LocalAuth, provider: Provider, claims: dict[str, Any], why: str
) -> None:
    with pytest.raises(FederationRefused, match=why):
        _round_trip(_federated(local, provider), provider, **{"email": "p@example.com", **claims})


def test_the_return_must_come_once_to_the_same_browser_from_the_same_provider(
    local: LocalAuth, provider: Provider
) -> None:
    federated = _federated(local, provider)

    def started() -> tuple[str, str]:
        location = federated.start("idp", "q", BINDING)
        state = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))["state"]
        return state, provider.sign_in(location, email="p@example.com")

    state, code = started()
    with pytest.raises(FederationRefused, match="another browser"):
        federated.complete(state=state, code=code, issuer=provider.issuer, error="", binding="c" * 43)
    with pytest.raises(FederationRefused, match="already used"):
        federated.complete(state=state, code=code, issuer=provider.issuer, error="", binding=BINDING)
    state, code = started()
    with pytest.raises(FederationRefused, match="did not come from"):
        federated.complete(state=state, code=code, issuer="https://mix-up.example", error="", binding=BINDING)
    state, code = started()
    local.clock.advance(LOGIN_SECONDS + 1)
    with pytest.raises(FederationRefused, match="expired"):
        federated.complete(state=state, code=code, issuer=provider.issuer, error="", binding=BINDING)
    state, _ = started()
    assert federated.complete(state=state, code="", issuer="", error="access_denied", binding=BINDING) == (
        "q",
        None,
    )


def test_a_disabled_account_cannot_sign_in_through_the_provider(local: LocalAuth, provider: Provider) -> None:
    federated = _federated(local, provider)
    _, identity = _round_trip(federated, provider, email="p@example.com")
    with local.auth_store.transaction() as repo:
        repo.set_state(identity.id, "DISABLED", local.clock())
    with pytest.raises(FederationRefused, match="disabled"):
        _round_trip(federated, provider, email="p@example.com")


def test_a_provider_that_cannot_be_reached_or_refuses_is_said_so(
    local: LocalAuth, provider: Provider
) -> None:
    with pytest.raises(FederationRefused, match="did not confirm"):
        _round_trip(_federated(local, provider, client_secret="wrong"), provider, email="p@example.com")
    provider.token_endpoint = "https://127.0.0.1:1/token"
    with pytest.raises(FederationRefused, match="did not confirm"):
        _round_trip(_federated(local, provider), provider, email="p@example.com")
    down = ExternalIssuer(alias="idp", issuer="https://127.0.0.1:1", client_id=CLIENT_ID)
    nowhere = FederatedSignIn(
        local.auth_store.transaction, {"idp": relying.Upstream(down, CALLBACK, timeout=1.0)}
    )
    with pytest.raises(FederationRefused, match="cannot be reached"):
        nowhere.start("idp", "q", BINDING)
    with pytest.raises(FederationRefused, match="no such way"):
        nowhere.start("elsewhere", "q", BINDING)
