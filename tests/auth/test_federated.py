"""Signing in through an outside OpenID provider (`services.auth.federated`, `relying`) over the
real store, with the real relying party against a provider of the test's own on 127.0.0.1:
discovery, keys and a token endpoint over HTTPS that checks what a provider checks (client
authentication, the code, its redirect URI and PKCE verifier) and answers RS256 ID tokens with
the claims each test gives the person."""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.rsa import generate_private_key

from services.auth import relying
from services.auth.federated import LOGIN_SECONDS, FederatedSignIn, FederationRefused
from services.kit.config import ExternalIssuer
from services.kit.domain_errors import Unauthenticated
from services.kit.federation import external_user_id
from tests.auth.local import PASSWORD, LocalAuth
from tests.support.https_json import https_json
from tests.support.pkce import s256

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
    names_itself: bool = False
    """Says in discovery that every answer carries iss (RFC 9207)."""

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
        if (
            issued is None
            or form.get("redirect_uri") != CALLBACK
            or s256(verifier) != issued["asked"]["code_challenge"]
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
                "authorization_response_iss_parameter_supported": self.names_itself,
            }
        if path == "/jwks":
            public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
            return {"keys": [{**public, "kid": "k1", "alg": "RS256", "use": "sig"}]}
        return None


@contextlib.contextmanager
def _serving(directory: Path) -> Iterator[Provider]:
    found = Provider(directory / "ca.crt")

    def get(path: str) -> tuple[int, Any]:
        answer = found.answer(path)
        return (200 if answer is not None else 404), answer

    def post(path: str, form: dict[str, str], authorization: str) -> tuple[int, Any]:
        return found.token(form, authorization)

    with https_json(directory, get, post) as (port, _):
        found.port = port
        yield found


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[Provider]:
    with _serving(tmp_path) as found:
        yield found


def _federated(local: LocalAuth, provider: Provider, alias: str = "idp", **changes: Any) -> FederatedSignIn:
    fields: dict[str, Any] = {
        "alias": alias,
        "issuer": provider.issuer,
        "ca_file": provider.ca_file,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }
    external = ExternalIssuer(**{**fields, **changes})
    upstream = relying.Upstream(external, CALLBACK, timeout=2.0)
    return FederatedSignIn(local.auth_store.transaction, {alias: upstream}, local.clock)


def _round_trip(federated: FederatedSignIn, provider: Provider, **claims: Any) -> Any:
    (alias,) = federated.upstreams
    location = federated.start(alias, "client_id=app&state=s", BINDING)
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


def test_an_account_made_here_to_lie_in_wait_is_handed_over_to_whoever_proves_the_address(
    local: LocalAuth, provider: Provider
) -> None:
    lying_in_wait = local.register()  # someone registers the owner's address first (pre-hijacking)
    tokens = local.login(lying_in_wait)
    _, identity = _round_trip(
        _federated(local, provider), provider, email=lying_in_wait.email, email_verified=True
    )
    assert identity.id == lying_in_wait.id and identity.email_verified
    with pytest.raises(Unauthenticated):
        local.login(lying_in_wait)  # the password is gone
    with pytest.raises(Unauthenticated):
        local.sessions.refresh(tokens.refresh_token)  # and so are the sessions


def test_an_address_one_provider_did_not_verify_is_handed_over_to_one_that_does(
    local: LocalAuth, provider: Provider, tmp_path: Path
) -> None:
    address = "owner@example.com"
    careless = _federated(local, provider, alias="careless")
    _, squatted = _round_trip(careless, provider, sub="squatter", email=address, email_verified=False)
    assert not squatted.email_verified
    with _serving(tmp_path / "careful") as careful_provider:
        careful = _federated(local, careful_provider, alias="careful")
        _, owner = _round_trip(careful, careful_provider, sub="owner", email=address, email_verified=True)
    assert owner.id == squatted.id and owner.email_verified
    # The squatter's link went with the hand-over: signing in again finds an owned address.
    with pytest.raises(FederationRefused, match="exists here"):
        _round_trip(careless, provider, sub="squatter", email=address, email_verified=False)


@pytest.mark.parametrize(
    "email", ["\u212aevin@example.com", "v\u0456ctim@example.com", "\uff56ictim@example.com", "no-at-sign"]
)
def test_an_address_sign_up_would_refuse_makes_no_account(
    local: LocalAuth, provider: Provider, email: str
) -> None:
    kevin = local.accounts.register("kevin@example.com", PASSWORD, address=None)
    with pytest.raises(FederationRefused, match="email address"):
        _round_trip(_federated(local, provider), provider, email=email, email_verified=True)
    assert local.login(kevin).access_token  # the Kelvin sign did not take Kevin's account


def test_a_disabled_account_is_not_linked(local: LocalAuth, provider: Provider) -> None:
    existing = local.register()
    with local.auth_store.transaction() as repo:
        repo.set_state(existing.id, "DISABLED", local.clock())
    federated = _federated(local, provider)
    with pytest.raises(FederationRefused, match="disabled"):
        _round_trip(federated, provider, email=existing.email, email_verified=True)
    with local.auth_store.transaction() as repo:
        assert repo.linked_identity(provider.issuer, "p-1") is None


def test_an_answer_without_iss_from_a_provider_that_always_sends_it_is_refused(
    local: LocalAuth, provider: Provider
) -> None:
    provider.names_itself = True
    federated = _federated(local, provider)
    location = federated.start("idp", "q", BINDING)
    state = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))["state"]
    code = provider.sign_in(location, email="p@example.com")
    with pytest.raises(FederationRefused, match="did not come from"):
        federated.complete(state=state, code=code, issuer="", error="", binding=BINDING)


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
