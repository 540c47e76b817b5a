"""gateway.tokens: the edge's token verifier, over real Ed25519 keys and real signed JWTs.

The key set comes from `_Published`, a `KeySource` standing for the auth service's
``GetJwks`` (the end-to-end tests in `test_principal_limits` use the real auth service).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import json
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import tokens
from gateway.tokens import CannotVerify, JwksVerifier, bearer_token
from services.kit.config import AuthSettings, ExternalIssuer

ISSUER, AUDIENCE = "https://auth.example", "poly"
SETTINGS = AuthSettings(
    issuer=ISSUER,
    audience=AUDIENCE,
    leeway_seconds=0.0,
    jwks_max_age_seconds=300.0,
    jwks_min_refresh_seconds=0.0,
)


class _Key:
    def __init__(self) -> None:
        self.kid = uuid.uuid4().hex
        self.private = Ed25519PrivateKey.generate()

    def jwk(self) -> dict[str, Any]:
        public = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(self.private.public_key()))
        return {**public, "kid": self.kid, "alg": "EdDSA", "use": "sig"}

    def token(self, subject: str = "users/ada", **claims: Any) -> str:
        now = int(time.time())
        body = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": subject,
            "jti": uuid.uuid4().hex,
            "iat": now,
            "exp": now + 900,
            **claims,
        }
        return jwt.encode(body, self.private, algorithm="EdDSA", headers={"kid": self.kid})


class _Published:
    """The auth service's JWK Set as a `KeySource`: the keys published now, fetches counted."""

    def __init__(self, *keys: _Key) -> None:
        self.keys = list(keys)
        self.fetches = 0

    def __call__(self) -> dict[str, Any]:
        self.fetches += 1
        return {"keys": [key.jwk() for key in self.keys]}


@pytest.fixture
def loaded() -> Iterator[asyncio.Queue[str]]:
    """One entry per "signing keys fetched" log line: the moment a new key set is in use."""
    queue: asyncio.Queue[str] = asyncio.Queue()

    class _Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage() == "signing keys fetched":
                queue.put_nowait(record.getMessage())

    handler = _Handler()
    logger = logging.getLogger("poly.gateway")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield queue
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_exports() -> None:
    assert set(tokens.__all__) == {
        "CannotVerify",
        "JwksVerifier",
        "OutsideToken",
        "TokenVerifier",
        "bearer_token",
        "verifying",
    }


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["Bearer abc"], "abc"),
        (["bearer abc"], "abc"),
        (["BEARER  abc "], "abc"),
        ([" bEaReR abc"], "abc"),
        ([], None),
        (["Bearer"], None),
        (["Bearer "], None),
        (["Basic YWRhOnB3"], None),
        (["Bearer abc", "Bearer def"], None),
        (["Bearerabc"], None),
        (["Bearer\tabc"], "abc"),
    ],
    ids=[
        "bearer",
        "lower-case",
        "upper-case-extra-spaces",
        "mixed-case-leading-space",
        "none",
        "scheme-alone",
        "empty-token",
        "another-scheme",
        "two-headers",
        "no-space",
        "tab",
    ],
)
def test_bearer_token(values: list[str], expected: str | None) -> None:
    assert bearer_token(values) == expected


def _refused_tokens(key: _Key) -> dict[str, str]:
    other = _Key()
    good = key.token()
    header, body, _signature = good.split(".")
    forged_signature = other.token().split(".")[2]
    return {
        "not-a-jwt": "junk-" + uuid.uuid4().hex,
        "bad-signature": f"{header}.{body}.{forged_signature}",
        "expired": key.token(exp=int(time.time()) - 60, iat=int(time.time()) - 960),
        "another-audience": key.token(aud="elsewhere"),
        "another-issuer": key.token(iss="https://evil.example"),
        "no-kid": jwt.encode({"sub": "users/ada"}, key.private, algorithm="EdDSA"),
        "hs256": jwt.encode({"sub": "users/ada"}, "s" * 32, algorithm="HS256", headers={"kid": key.kid}),
        "alg-none": jwt.encode({"sub": "users/ada"}, None, algorithm="none", headers={"kid": key.kid}),
        "not-a-subject": key.token(subject="root"),
    }


def test_a_good_token_names_its_principal_and_a_bad_one_none() -> None:
    key = _Key()
    published = _Published(key)
    verifier = JwksVerifier(published, SETTINGS)
    asyncio.run(verifier.refresh())
    assert verifier(key.token("users/ada")) == "users/ada"
    assert verifier(key.token("clients/robot", client_id="robot")) == "clients/robot", "a machine client"
    refused = {name: verifier(token) for name, token in _refused_tokens(key).items()}
    assert refused == dict.fromkeys(refused), refused
    assert published.fetches == 1, "verifying never fetches: the key set is fetched by refresh/run"


def test_an_outside_issuer_s_token_is_left_to_the_services_and_never_counted_as_a_failure() -> None:
    outside = ExternalIssuer(alias="idp", issuer="https://sso.example.com", audience="poly")
    settings = dataclasses.replace(SETTINGS, external=(outside,))
    key = _Key()
    verifier = JwksVerifier(_Published(key), settings)
    asyncio.run(verifier.refresh())
    now = int(time.time())
    theirs = jwt.encode(
        {"iss": outside.issuer, "aud": "poly", "sub": "them", "iat": now, "exp": now + 60},
        Ed25519PrivateKey.generate(),
        algorithm="EdDSA",
        headers={"kid": "theirs"},
    )
    with pytest.raises(tokens.OutsideToken):
        verifier(theirs)  # limited by address: not a principal, and not a failure either
    assert verifier(key.token("users/ada")) == "users/ada"
    without_audience = dataclasses.replace(SETTINGS, external=(dataclasses.replace(outside, audience=""),))
    untrusted = JwksVerifier(_Published(key), without_audience)
    asyncio.run(untrusted.refresh())
    assert untrusted(theirs) is None  # not accepted anywhere: a failed authentication


def test_without_keys_it_cannot_tell() -> None:
    verifier = JwksVerifier(_Published(_Key()), SETTINGS)
    with pytest.raises(CannotVerify):
        verifier(_Key().token())


def test_a_failed_fetch_keeps_the_keys_there_were() -> None:
    key = _Key()
    answers: list[dict[str, Any] | Exception] = [{"keys": [key.jwk()]}, OSError("auth is down")]

    def source() -> dict[str, Any]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    verifier = JwksVerifier(source, SETTINGS)
    assert asyncio.run(verifier.refresh()) is True
    assert asyncio.run(verifier.refresh()) is False
    assert verifier(key.token("users/ada")) == "users/ada"


@pytest.mark.slow
def test_an_unknown_key_cannot_be_told_and_fetches_the_keys_again(loaded: asyncio.Queue[str]) -> None:
    first, rotated_in = _Key(), _Key()
    published = _Published(first)
    verifier = JwksVerifier(published, SETTINGS)

    async def scenario() -> None:
        running = asyncio.create_task(verifier.run())
        try:
            await asyncio.wait_for(loaded.get(), timeout=10)
            assert verifier(first.token("users/ada")) == "users/ada"
            published.keys.append(rotated_in)  # the auth service publishes a new key
            token = rotated_in.token("users/bob")
            with pytest.raises(CannotVerify):
                verifier(token)
            await asyncio.wait_for(loaded.get(), timeout=10)  # the refetch it asked for
            assert verifier(token) == "users/bob"
            # The first key is withdrawn: what it signed no longer names anyone, even if seen before.
            published.keys.remove(first)
            withdrawn = first.token("users/carol")
            assert verifier(withdrawn) == "users/carol"
            with pytest.raises(CannotVerify):
                verifier(_Key().token())  # an unknown kid asks for a fetch, which drops `first`
            await asyncio.wait_for(loaded.get(), timeout=10)
            with pytest.raises(CannotVerify):
                verifier(withdrawn)
        finally:
            running.cancel()

    asyncio.run(scenario())


@pytest.mark.slow
def test_a_first_key_set_is_awaited_quietly_while_auth_starts(
    loaded: asyncio.Queue[str], caplog: pytest.LogCaptureFixture
) -> None:
    key = _Key()
    attempts: list[float] = []

    def source() -> dict[str, Any]:
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise OSError("connection refused: auth is starting")
        return {"keys": [key.jwk()]}

    verifier = JwksVerifier(source, dataclasses.replace(SETTINGS, jwks_min_refresh_seconds=60.0))

    async def scenario() -> None:
        running = asyncio.create_task(verifier.run())
        try:
            await asyncio.wait_for(loaded.get(), timeout=20)
        finally:
            running.cancel()

    caplog.set_level(logging.DEBUG, logger="poly.gateway")
    asyncio.run(scenario())
    assert len(attempts) == 3
    assert attempts[2] - attempts[0] < 10, "retried every second, not every jwks_min_refresh_seconds"
    assert verifier(key.token("users/ada")) == "users/ada"
    failed = [r for r in caplog.records if r.getMessage() == "cannot fetch the signing keys"]
    assert [r.levelno for r in failed] == [logging.DEBUG] * 2, "no warning while auth starts"


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
_CLAIMS = ("iss", "aud", "sub", "exp", "iat", "nbf", "jti", "roles", "scope", "client_id", "sid")
_KEY = _Key()


@functools.cache
def _verifier() -> JwksVerifier:
    verifier = JwksVerifier(_Published(_KEY), SETTINGS)
    asyncio.run(verifier.refresh())
    return verifier


def _b64(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


def _signed(header: dict[str, Any], claims: dict[str, Any]) -> str:
    """A JWT with exactly these fields, correctly signed by `_KEY` (PyJWT's encoder would
    refuse some of them)."""
    signing_input = f"{_b64(header)}.{_b64(claims)}"
    signature = base64.urlsafe_b64encode(_KEY.private.sign(signing_input.encode())).rstrip(b"=").decode()
    return f"{signing_input}.{signature}"


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    header=st.fixed_dictionaries(
        {"alg": st.sampled_from(["EdDSA", "RS256", "HS256", "none"]) | _JSON},
        optional={"kid": st.just(_KEY.kid) | _JSON, "typ": _JSON, "crit": _JSON},
    ),
    claims=st.fixed_dictionaries(
        {},
        optional={name: _JSON for name in _CLAIMS}
        | {
            "iss": st.just(ISSUER) | _JSON,
            "aud": st.just(AUDIENCE) | _JSON,
            "exp": st.integers(0, 2**40) | _JSON,
            "iat": st.integers(0, 2**40) | _JSON,
            "jti": st.text(max_size=8) | _JSON,
            "sub": st.sampled_from(["users/a", "clients/b", "root"]) | _JSON,
        },
    ),
    text=st.text(max_size=40),
)
def test_any_token_is_a_principal_none_or_cannot_be_told(
    header: dict[str, Any], claims: dict[str, Any], text: str
) -> None:
    """Whatever a client sends, the check answers: it never fails the request."""
    for token in (_signed(header, claims), text, f"{_b64(header)}.{text}.{text}"):
        try:
            found = _verifier()(token)
        except CannotVerify:
            continue
        assert found is None or found.startswith(("users/", "clients/")), (token, found)


def test_a_token_nested_thousands_deep_is_no_principal_and_no_crash() -> None:
    key = _Key()
    verifier = JwksVerifier(_Published(key), SETTINGS)
    asyncio.run(verifier.refresh())

    def segment(text: str) -> str:
        return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()

    deep = f"{segment(json.dumps({'alg': 'EdDSA', 'kid': key.kid}))}.{segment('[' * 5000)}.c2ln"
    assert verifier(deep) is None
