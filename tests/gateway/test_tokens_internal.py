"""gateway.tokens internals: what the verifier remembers of the tokens it verified."""

from __future__ import annotations

import asyncio
import time

from gateway.tokens import JwksVerifier
from tests.gateway.test_tokens import SETTINGS, _Key, _Published


def test_a_verified_token_is_remembered_until_it_expires() -> None:
    key = _Key()
    now = [time.time()]
    verifier = JwksVerifier(_Published(key), SETTINGS, wall_clock=lambda: now[0])
    asyncio.run(verifier.refresh())
    token = key.token("users/ada", exp=int(now[0]) + 60)
    assert verifier(token) == "users/ada"
    assert verifier._verified == {token: ("users/ada", int(now[0]) + 60)}
    now[0] += 61  # past its expiry (leeway 0) by the edge's clock: forgotten, then checked again
    assert verifier(token) == "users/ada", "PyJWT's clock, the real one, still accepts it"
    assert verifier._verified[token] == ("users/ada", int(now[0]) - 1)


def test_the_memory_is_bounded() -> None:
    key = _Key()
    verifier = JwksVerifier(_Published(key), SETTINGS, cache_size=3)
    asyncio.run(verifier.refresh())
    for n in range(10):
        assert verifier(key.token(f"users/u{n}")) == f"users/u{n}"
        assert len(verifier._verified) <= 3
