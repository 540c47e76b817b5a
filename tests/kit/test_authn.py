"""Access-token verification: every forged, stale or misdirected token is refused."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import generate_private_key

from services.kit.authn import KeySet, Principal, Verifier, bearer_token
from services.kit.config import AuthSettings
from services.kit.domain_errors import Unauthenticated, Unavailable

SETTINGS = AuthSettings(issuer="https://auth.test", audience="poly", leeway_seconds=5)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Signer:
    def __init__(self, kid: str) -> None:
        self.kid = kid
        self.key = Ed25519PrivateKey.generate()
        raw = self.key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.jwk = {"kty": "OKP", "crv": "Ed25519", "x": _b64(raw), "kid": kid, "use": "sig", "alg": "EdDSA"}
        self.public_pem = self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def token(self, **overrides: Any) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": "https://auth.test",
            "aud": "poly",
            "sub": "users/alice",
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "jti": "t-1",
            "roles": ["admin"],
            "scope": "",
            "sid": "family-1",
        }
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode(claims, self.key, algorithm="EdDSA", headers={"kid": self.kid})


class Source:
    """A JWK Set that tests change, counting fetches."""

    def __init__(self, *signers: Signer) -> None:
        self.keys = [s.jwk for s in signers]
        self.fetches = 0
        self.fail = False

    def __call__(self) -> Mapping[str, Any]:
        self.fetches += 1
        if self.fail:
            raise OSError("auth is down")
        return {"keys": list(self.keys)}


@pytest.fixture
def signer() -> Signer:
    return Signer("key-1")


@pytest.fixture
def verifier(signer: Signer) -> Verifier:
    return Verifier(KeySet(Source(signer), min_refresh=0), SETTINGS)


def _segments(token: str) -> list[str]:
    return token.split(".")


def _unsigned(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    return ".".join([_b64(json.dumps(header).encode()), _b64(json.dumps(claims).encode()), _b64(signature)])


def test_a_valid_token_gives_its_principal(signer: Signer, verifier: Verifier) -> None:
    principal = verifier.verify(signer.token())
    assert principal == Principal(
        subject="users/alice",
        roles=frozenset({"admin"}),
        scopes=frozenset(),
        token_id="t-1",
        issued_at=principal.issued_at,
        expires_at=principal.expires_at,
        session="family-1",
    )
    assert principal.is_admin and not principal.is_client
    assert principal.expires_at > dt.datetime.now(dt.UTC)


def _refusal(verifier: Verifier, token: str) -> str:
    with pytest.raises(Unauthenticated) as refused:
        verifier.verify(token)
    return refused.value.reason


def _claims(signer: Signer) -> dict[str, Any]:
    payload = _segments(signer.token())[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        # Times relative to when the test runs (as callables), not to when it was collected.
        ({"exp": lambda: int(time.time()) - 60}, "TOKEN_EXPIRED"),
        ({"nbf": lambda: int(time.time()) + 600}, "TOKEN_NOT_YET_VALID"),
        ({"aud": "someone-else"}, "TOKEN_AUDIENCE_INVALID"),
        ({"iss": "https://evil.test"}, "TOKEN_ISSUER_INVALID"),
        ({"exp": None}, "TOKEN_CLAIMS_INVALID"),
        ({"jti": None}, "TOKEN_CLAIMS_INVALID"),
        ({"sub": "admins/root"}, "TOKEN_CLAIMS_INVALID"),
        ({"roles": "admin"}, "TOKEN_CLAIMS_INVALID"),
    ],
    ids=[
        "expired",
        "not-yet-valid",
        "wrong-audience",
        "wrong-issuer",
        "no-exp",
        "no-jti",
        "odd-subject",
        "roles-string",
    ],
)
def test_bad_claims_are_refused(
    signer: Signer, verifier: Verifier, overrides: dict[str, Any], reason: str
) -> None:
    claims = {name: value() if callable(value) else value for name, value in overrides.items()}
    assert _refusal(verifier, signer.token(**claims)) == reason


def test_expiry_within_the_leeway_still_verifies(signer: Signer, verifier: Verifier) -> None:
    assert verifier.verify(signer.token(exp=int(time.time()) - 2)).subject == "users/alice"


def test_alg_none_is_refused(signer: Signer, verifier: Verifier) -> None:
    token = _unsigned({"alg": "none", "kid": signer.kid, "typ": "JWT"}, _claims(signer))
    assert _refusal(verifier, token) == "TOKEN_ALGORITHM_REFUSED"


def test_hs256_signed_with_the_public_key_is_refused(signer: Signer, verifier: Verifier) -> None:
    # The classic confusion attack: the public key (which anyone has) used as an HMAC secret.
    header = _b64(json.dumps({"alg": "HS256", "kid": signer.kid}).encode())
    payload = _b64(json.dumps(_claims(signer)).encode())
    mac = hmac.new(signer.public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    assert _refusal(verifier, f"{header}.{payload}.{_b64(mac)}") == "TOKEN_ALGORITHM_REFUSED"


def test_rs256_header_on_an_eddsa_key_is_refused(signer: Signer, verifier: Verifier) -> None:
    other = generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(_claims(signer), other, algorithm="RS256", headers={"kid": signer.kid})
    assert _refusal(verifier, token) == "TOKEN_ALGORITHM_REFUSED"


def test_a_token_signed_by_an_unknown_key_is_refused(verifier: Verifier) -> None:
    stranger = Signer("key-1")  # same kid, different key: the signature cannot verify
    assert _refusal(verifier, stranger.token()) == "TOKEN_SIGNATURE_INVALID"
    assert _refusal(verifier, Signer("key-9").token()) == "TOKEN_KEY_UNKNOWN"


def test_a_tampered_payload_is_refused(signer: Signer, verifier: Verifier) -> None:
    header, _payload, signature = _segments(signer.token(roles=[]))
    forged = _b64(json.dumps({**_claims(signer), "roles": ["admin"]}).encode())
    assert _refusal(verifier, f"{header}.{forged}.{signature}") == "TOKEN_SIGNATURE_INVALID"


@pytest.mark.parametrize(
    "token", ["", "abc", "a.b", "a.b.c", "x" * 10_000], ids=["empty", "word", "two", "junk", "huge"]
)
def test_garbage_is_refused_as_malformed(verifier: Verifier, token: str) -> None:
    assert _refusal(verifier, token) == "TOKEN_MALFORMED"


def test_an_unknown_kid_refetches_at_most_once_per_interval(signer: Signer) -> None:
    now = [100.0]
    source = Source(signer)
    verifier = Verifier(KeySet(source, max_age=300, min_refresh=10, clock=lambda: now[0]), SETTINGS)
    verifier.verify(signer.token())
    assert source.fetches == 1
    for _ in range(5):
        assert _refusal(verifier, Signer("random").token()) == "TOKEN_KEY_UNKNOWN"
    assert source.fetches == 1, "inside the interval, unknown kids never reach the auth service"
    rotated = Signer("key-2")
    source.keys.append(rotated.jwk)
    now[0] += 10
    assert verifier.verify(rotated.token()).subject == "users/alice"
    assert source.fetches == 2


def test_a_withdrawn_key_stops_verifying_after_the_cache_ages(signer: Signer) -> None:
    now = [0.0]
    source = Source(signer)
    verifier = Verifier(KeySet(source, max_age=60, min_refresh=1, clock=lambda: now[0]), SETTINGS)
    token = signer.token()
    verifier.verify(token)
    source.keys = [Signer("key-2").jwk]
    now[0] += 61
    assert _refusal(verifier, token) == "TOKEN_KEY_UNKNOWN"


def test_an_unreachable_auth_service_is_unavailable_not_unauthenticated(signer: Signer) -> None:
    source = Source(signer)
    source.fail = True
    with pytest.raises(Unavailable):
        Verifier(KeySet(source, min_refresh=0), SETTINGS).verify(signer.token())


def test_cached_keys_survive_an_auth_outage(signer: Signer) -> None:
    now = [0.0]
    source = Source(signer)
    verifier = Verifier(KeySet(source, max_age=1, min_refresh=0, clock=lambda: now[0]), SETTINGS)
    verifier.verify(signer.token())
    source.fail = True
    now[0] += 5
    assert verifier.verify(signer.token()).subject == "users/alice"


def test_keys_with_foreign_algorithms_are_never_loaded(signer: Signer) -> None:
    hmac_key = {
        "kty": "oct",
        "k": _b64(b"a-shared-secret-of-at-least-32-bytes!"),
        "kid": "hs",
        "alg": "HS256",
    }
    verifier = Verifier(KeySet(lambda: {"keys": [hmac_key]}, min_refresh=0), SETTINGS)
    token = jwt.encode(
        _claims(signer), b"a-shared-secret-of-at-least-32-bytes!", algorithm="HS256", headers={"kid": "hs"}
    )
    assert _refusal(verifier, token) == "TOKEN_ALGORITHM_REFUSED"


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ([], None),
        ([("x-other", "1")], None),
        ([("authorization", "Bearer abc.def.ghi")], "abc.def.ghi"),
        ([("authorization", "bearer   abc")], "abc"),
    ],
    ids=["none", "other-header", "bearer", "lower-case-scheme"],
)
def test_bearer_token_is_read_from_metadata(metadata: list[tuple[str, str]], expected: str | None) -> None:
    assert bearer_token(metadata) == expected


@pytest.mark.parametrize(
    "metadata",
    [
        [("authorization", "Basic dXNlcjpwYXNz")],
        [("authorization", "Bearer")],
        [("authorization", "Bearer a"), ("authorization", "Bearer b")],
    ],
    ids=["basic", "empty-bearer", "two-headers"],
)
def test_a_malformed_authorization_header_is_refused(metadata: list[tuple[str, str]]) -> None:
    with pytest.raises(Unauthenticated) as refused:
        bearer_token(metadata)
    assert refused.value.reason == "TOKEN_MALFORMED"


def test_a_token_that_verified_is_not_checked_again(signer: Signer, monkeypatch: pytest.MonkeyPatch) -> None:
    verifier = Verifier(KeySet(Source(signer), min_refresh=0), SETTINGS)
    token = signer.token()
    decoded: list[str] = []
    real_decode = jwt.decode
    monkeypatch.setattr(jwt, "decode", lambda *a, **k: decoded.append("decode") or real_decode(*a, **k))
    assert [verifier.verify(token).subject for _ in range(5)] == ["users/alice"] * 5
    assert decoded == ["decode"]
    # The signature's last character carries 2 bits of padding, which must stay zero ("A", "Q"):
    # "BB" would be refused as malformed base64 before the signature is ever checked.
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "QA")
    assert _refusal(verifier, tampered) == "TOKEN_SIGNATURE_INVALID", "another text is checked in full"


def test_a_remembered_token_is_refused_once_it_expires(signer: Signer) -> None:
    strict = dataclasses.replace(SETTINGS, leeway_seconds=0)
    verifier = Verifier(KeySet(Source(signer), min_refresh=0), strict)
    expiry = int(time.time()) + 1
    token = signer.token(exp=expiry)
    assert verifier.verify(token).subject == "users/alice"
    while time.time() <= expiry + 0.05:  # bounded: about a second
        time.sleep(0.05)
    assert _refusal(verifier, token) == "TOKEN_EXPIRED"


def test_a_remembered_token_fails_once_its_kid_names_another_key(signer: Signer) -> None:
    now = [0.0]
    source = Source(signer)
    verifier = Verifier(KeySet(source, max_age=60, min_refresh=1, clock=lambda: now[0]), SETTINGS)
    token = signer.token()
    verifier.verify(token)
    source.keys = [Signer(signer.kid).jwk]  # the same kid, now another key
    now[0] += 61
    assert _refusal(verifier, token) == "TOKEN_SIGNATURE_INVALID"


def test_remembered_tokens_are_bounded(signer: Signer, monkeypatch: pytest.MonkeyPatch) -> None:
    verifier = Verifier(KeySet(Source(signer), min_refresh=0), SETTINGS, remember=2)
    tokens = [signer.token(jti=f"t-{n}") for n in range(3)]
    for token in tokens:
        verifier.verify(token)
    decoded: list[str] = []
    real_decode = jwt.decode
    monkeypatch.setattr(jwt, "decode", lambda *a, **k: decoded.append("decode") or real_decode(*a, **k))
    verifier.verify(tokens[2])
    verifier.verify(tokens[0])  # the least recently used was dropped: checked in full again
    assert decoded == ["decode"]
