"""Access tokens of an outside OpenID Connect provider (`services.kit.federation`, and the
`authn.Verifier` taking them), against a provider of the test's own on 127.0.0.1 serving its
discovery document and keys over HTTPS (a certificate of a CA the test makes)."""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, generate_private_key

from services.kit import authn, config, federation, tls
from services.kit.config import AuthSettings, ExternalIssuer
from services.kit.domain_errors import Unauthenticated, Unavailable
from tests.support.https_json import https_json

AUDIENCE = "poly-api"


@dataclass
class Provider:
    """An OpenID provider's discovery document and JWK Set, over HTTPS on 127.0.0.1."""

    ca_file: Path
    port: int = 0
    keys: dict[str, RSAPrivateKey] = field(default_factory=dict)
    document_issuer: str = ""
    """What the discovery document claims as its issuer ("" for the true one)."""
    jwks_uri: str = ""
    fetches: int = 0

    @property
    def issuer(self) -> str:
        return f"https://localhost:{self.port}"

    def rotate(self) -> str:
        kid = uuid.uuid4().hex[:8]
        self.keys[kid] = generate_private_key(public_exponent=65537, key_size=2048)
        return kid

    def token(self, kid: str, **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": self.issuer, "aud": AUDIENCE, "sub": "f:123", "iat": now, "exp": now + 300, **claims}
        return jwt.encode(body, self.keys[kid], algorithm="RS256", headers={"kid": kid})

    def answer(self, path: str) -> Any:
        if path == "/.well-known/openid-configuration":
            return {
                "issuer": self.document_issuer or self.issuer,
                "jwks_uri": self.jwks_uri or f"{self.issuer}/jwks",
            }
        if path == "/jwks":
            self.fetches += 1
            keys = []
            for kid, key in self.keys.items():
                public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
                keys.append({**public, "kid": kid, "alg": "RS256", "use": "sig"})
            return {"keys": keys}
        return None


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[Provider]:
    found = Provider(tmp_path / "ca.crt")

    def get(path: str) -> tuple[int, Any]:
        answer = found.answer(path)
        return (200 if answer is not None else 404), answer

    with https_json(tmp_path, get) as (port, _):
        found.port = port
        yield found


def _external(provider: Provider, **changes: Any) -> ExternalIssuer:
    fields: dict[str, Any] = {
        "alias": "idp",
        "issuer": provider.issuer,
        "audience": AUDIENCE,
        "roles_claim": "realm_access.roles",
        "roles": (("ops", "admin"), ("support", "support")),
        "ca_file": provider.ca_file,
    }
    return ExternalIssuer(**{**fields, **changes})


def _verifier(*externals: ExternalIssuer, min_refresh: float = 0.0) -> authn.Verifier:
    settings = AuthSettings(external=externals, jwks_min_refresh_seconds=min_refresh)
    ours = authn.KeySet(lambda: {"keys": []})
    return authn.Verifier(ours, settings, external=federation.trusted_issuers(settings, timeout=2.0))


def test_a_provider_s_token_names_a_person_of_ours_with_only_the_mapped_roles(provider: Provider) -> None:
    kid = provider.rotate()
    verifier = _verifier(_external(provider))
    token = provider.token(kid, realm_access={"roles": ["ops", "admin", "viewer"]}, azp="spa", jti="j1")
    caller = verifier.verify(token)
    assert caller.subject == f"users/{federation.external_user_id(provider.issuer, 'f:123')}"
    assert caller.roles == {"admin"}  # "ops" is mapped to admin; the provider's "admin" grants nothing
    assert not caller.is_client and caller.client_id == "spa" and caller.token_id == "j1"
    other = verifier.verify(provider.token(kid, sub="f:456"))
    assert other.subject != caller.subject and other.roles == set()
    assert federation.external_user_id(provider.issuer, "f:123") != federation.external_user_id(
        "https://elsewhere.example", "f:123"
    )


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"aud": "someone-else"}, "TOKEN_AUDIENCE_INVALID"),
        ({"exp": 1}, "TOKEN_EXPIRED"),
        ({"sub": ""}, "TOKEN_CLAIMS_INVALID"),
        ({"sub": 42}, "TOKEN_CLAIMS_INVALID"),
        ({"iss": "https://localhost:1"}, "TOKEN_ISSUER_INVALID"),
    ],
    ids=["audience", "expired", "empty-subject", "numeric-subject", "unknown-issuer"],
)
def test_a_provider_s_token_that_does_not_hold_is_refused(
    provider: Provider, claims: dict[str, Any], reason: str
) -> None:
    kid = provider.rotate()
    with pytest.raises(Unauthenticated) as refused:
        _verifier(_external(provider)).verify(provider.token(kid, **claims))
    assert refused.value.reason == reason


def test_a_token_forged_under_the_provider_s_key_id_is_refused(provider: Provider) -> None:
    kid = provider.rotate()
    verifier = _verifier(_external(provider))
    now = int(time.time())
    claims = {"iss": provider.issuer, "aud": AUDIENCE, "sub": "f:1", "iat": now, "exp": now + 60}
    forger = generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(claims, forger, algorithm="RS256", headers={"kid": kid})
    with pytest.raises(Unauthenticated) as refused:
        verifier.verify(forged)
    assert refused.value.reason == "TOKEN_SIGNATURE_INVALID"
    hmac = jwt.encode(
        claims, "the provider's public key, as a secret", algorithm="HS256", headers={"kid": kid}
    )
    with pytest.raises(Unauthenticated) as refused:
        verifier.verify(hmac)
    assert refused.value.reason == "TOKEN_ALGORITHM_REFUSED"


def test_without_an_audience_the_provider_s_tokens_are_not_taken(provider: Provider) -> None:
    kid = provider.rotate()
    with pytest.raises(Unauthenticated) as refused:
        _verifier(_external(provider, audience="")).verify(provider.token(kid))
    assert refused.value.reason == "TOKEN_ISSUER_INVALID"


def test_a_rotated_key_is_fetched_and_a_provider_that_is_down_keeps_its_cached_keys(
    provider: Provider,
) -> None:
    first = provider.rotate()
    verifier = _verifier(_external(provider))
    assert verifier.verify(provider.token(first, sub="a")).roles == set()
    second = provider.rotate()
    assert verifier.verify(provider.token(second, sub="b")), "the new kid makes it refetch"
    fetched = provider.fetches
    provider.jwks_uri = "https://127.0.0.1:1/jwks"  # the provider's keys unreachable from now on
    assert verifier.verify(provider.token(first, sub="c")).subject  # cached
    with pytest.raises((Unauthenticated, Unavailable)):
        verifier.verify(provider.token(provider.rotate(), sub="d"))  # a key it cannot fetch now
    assert provider.fetches == fetched


@pytest.mark.parametrize(
    "change",
    [
        {"document_issuer": "https://localhost:1"},
        {"jwks_uri": "http://127.0.0.1:1/jwks"},
    ],
    ids=["document-names-another-issuer", "keys-over-plain-http"],
)
def test_discovery_that_does_not_hold_gives_no_keys(provider: Provider, change: dict[str, str]) -> None:
    kid = provider.rotate()
    for name, value in change.items():
        setattr(provider, name, value)
    with pytest.raises(Unavailable):
        _verifier(_external(provider)).verify(provider.token(kid))


def test_a_provider_that_accepts_and_never_answers_does_not_hold_a_call(tmp_path: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    try:
        external = ExternalIssuer(alias="idp", issuer=f"https://localhost:{port}", audience=AUDIENCE)
        settings = AuthSettings(external=(external,))
        (trusted,) = federation.trusted_issuers(settings, timeout=0.5)
        started = time.monotonic()
        with pytest.raises(Unavailable):
            trusted.keys.key("any")
        assert time.monotonic() - started < 30, "bounded by the fetch timeout, not by the provider"
    finally:
        listener.close()


def test_an_untrusted_certificate_gives_no_keys(provider: Provider) -> None:
    kid = provider.rotate()
    with pytest.raises(Unavailable):
        _verifier(_external(provider, ca_file=None)).verify(provider.token(kid))


# -- settings --------------------------------------------------------------------------------


def _load(environ: dict[str, str]) -> AuthSettings:
    return config.load("orders", environ).auth


def test_outside_issuers_are_read_from_their_settings(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    found = _load(
        {
            "POLY_FEDERATION_ISSUERS": "keycloak, google",
            "POLY_FEDERATION_KEYCLOAK_ISSUER": "https://sso.example.com/realms/main/",
            "POLY_FEDERATION_KEYCLOAK_AUDIENCE": "poly",
            "POLY_FEDERATION_KEYCLOAK_ROLES_CLAIM": "realm_access.roles",
            "POLY_FEDERATION_KEYCLOAK_ROLES": "ops=admin, support=support",
            "POLY_FEDERATION_KEYCLOAK_CLIENT_SECRET_FILE": str(secret),
            "POLY_FEDERATION_GOOGLE_ISSUER": "https://accounts.google.com",
            "POLY_FEDERATION_GOOGLE_CLIENT_ID": "abc.apps.googleusercontent.com",
        }
    )
    keycloak, google = found.external
    assert keycloak.issuer == "https://sso.example.com/realms/main/"  # exactly: iss must match it
    assert keycloak.audience == "poly"
    assert keycloak.roles == (("ops", "admin"), ("support", "support"))
    assert keycloak.client_secret == "s3cret" and "s3cret" not in repr(keycloak)
    assert google.audience == "" and google.roles_claim == "roles" and google.client_id.startswith("abc")


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        ({"POLY_FEDERATION_ISSUERS": "Key Cloak"}, "POLY_FEDERATION_ISSUERS"),
        ({"POLY_FEDERATION_ISSUERS": "idp"}, "POLY_FEDERATION_IDP_ISSUER"),
        (
            {"POLY_FEDERATION_ISSUERS": "idp", "POLY_FEDERATION_IDP_ISSUER": "http://sso.example.com"},
            "POLY_FEDERATION_IDP_ISSUER",
        ),
        (
            {
                "POLY_FEDERATION_ISSUERS": "idp",
                "POLY_FEDERATION_IDP_ISSUER": "https://sso.example.com",
                "POLY_FEDERATION_IDP_ROLES": "ops",
            },
            "POLY_FEDERATION_IDP_ROLES",
        ),
        (
            {
                "POLY_FEDERATION_ISSUERS": "idp",
                "POLY_FEDERATION_IDP_ISSUER": "https://sso.example.com",
                "POLY_AUTH_ISSUER": "https://sso.example.com",
            },
            "POLY_FEDERATION_ISSUERS",
        ),
    ],
    ids=["bad-alias", "no-issuer", "http-issuer", "unpaired-role", "our-own-issuer"],
)
def test_bad_outside_issuer_settings_are_reported(environ: dict[str, str], problem: str) -> None:
    with pytest.raises(config.ConfigError) as caught:
        _load(environ)
    assert any(found.startswith(problem) for found in caught.value.problems), caught.value.problems


def test_a_key_set_without_alg_or_with_junk_entries_still_gives_its_good_keys(provider: Provider) -> None:
    kid = provider.rotate()
    served = provider.answer

    def answer(path: str) -> Any:
        found = served(path)
        if path == "/jwks":
            entries = [{k: v for k, v in entry.items() if k != "alg"} for entry in found["keys"]]
            return {"keys": [1, "x", {"kid": ["x"], "kty": "RSA"}, {"kty": "oct", "k": "c2VjcmV0"}, *entries]}
        return found

    provider.answer = answer  # type: ignore[method-assign]
    caller = _verifier(_external(provider)).verify(provider.token(kid))
    assert caller.subject.startswith("users/")


def test_an_issuer_with_a_trailing_slash_is_taken_as_it_is(provider: Provider) -> None:
    kid = provider.rotate()
    slashed = provider.issuer + "/"
    provider.document_issuer = slashed
    verifier = _verifier(_external(provider, issuer=slashed))
    assert verifier.verify(provider.token(kid, iss=slashed)).subject
    with pytest.raises(Unauthenticated):
        verifier.verify(provider.token(kid))  # without the slash: another issuer


def test_a_token_nested_thousands_deep_is_refused_not_a_crash(provider: Provider) -> None:
    def segment(text: str) -> str:
        return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()

    deep = f"{segment(json.dumps({'alg': 'RS256', 'kid': 'k'}))}.{segment('[' * 5000)}.c2ln"
    with pytest.raises(Unauthenticated):
        _verifier(_external(provider)).verify(deep)


def test_a_provider_dripping_its_answer_holds_no_caller_beyond_the_timeout(tmp_path: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    tls.ensure_certificates(tmp_path, ["gateway"])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "gateway.crt", tmp_path / "gateway.key")
    stop = threading.Event()

    def drip() -> None:
        with contextlib.suppress(OSError):
            connection, _ = listener.accept()
            with context.wrap_socket(connection, server_side=True) as wrapped:
                wrapped.recv(65536)
                wrapped.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
                )
                while not stop.wait(0.2):
                    wrapped.sendall(b" ")

    threading.Thread(target=drip, daemon=True).start()
    try:
        external = ExternalIssuer(
            alias="idp", issuer=f"https://localhost:{port}", ca_file=tmp_path / "ca.crt"
        )
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            federation.discovery(external, timeout=1.0)
        assert time.monotonic() - started < 20, "bounded by the timeout, not by the provider"
    finally:
        stop.set()
        listener.close()
