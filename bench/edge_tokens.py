"""What the edge's token check costs per request: CPU time of `gateway.tokens.JwksVerifier`
(plus reading the ``Authorization`` header), by measurement, in one process.

What is measured
----------------
Real tokens: an Ed25519 signing key made and sealed by `services.auth.keys`, its JWK as the
auth service publishes it, access tokens minted by `services.auth.tokens.JwtMinter` (the
auth service's own claims). For each case, ``N`` calls of ``bearer_token([header])`` then
the verifier, timed with ``time.process_time`` (CPU of this process), after a warm-up:

    remembered    a token seen before (every request of a client after its first)
    first sight   a token never seen: a full check (Ed25519 signature, iss/aud/exp/...)
    junk          not a JWT at all (refused: counted as a failed authentication)
    forged        a well-formed JWT naming a published key, wrong signature (refused)
    unknown kid   a JWT naming a key not in the set (cannot tell: limited by address)

No network: the key set is in memory, as it is between the edge's background fetches.

Recorded run (2026-12-03, this project's 2-core machine, shared and busy; N=20000, best of
3 rounds; two runs)
-----------------------------------------------------------------------------------------
    case          CPU us/request
    remembered        1.3   1.3
    first sight     281     245
    junk              6.8     5.4
    forged          236     224
    unknown kid      50      44

The full check is an Ed25519 verification (~135 us alone here, `cryptography`) plus PyJWT's
parsing, which since 2.10 checks every base64url character in Python and parses the token
twice (`get_unverified_header`, then `decode`): every service of the kit pays the same per
request. A client reusing its access token (valid 15 min by default) pays it once per edge
process, then ~1.3 us per request; the gateway's own work is ~400 us per request
(bench/edge.py). Forged tokens pay the full check but each is a failed authentication, so an
address gets at most ``POLY_GATEWAY_AUTH_FAILURES_PER_ADDRESS`` of them per window before its
requests are refused without any check.

Run: ``.venv/bin/python -m bench.edge_tokens [N]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import secrets
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, cast

from gateway.tokens import CannotVerify, JwksVerifier, bearer_token
from services.auth import keys
from services.auth.tokens import JwtMinter, KeyRing
from services.kit.config import AuthSettings

SETTINGS = AuthSettings(issuer="http://localhost:8080", audience="poly")


class _Ring:
    """The one thing `JwtMinter` asks of its key ring: the current signing key."""

    def __init__(self, key: keys.SigningKey) -> None:
        self._key = key

    def current(self) -> keys.SigningKey:
        return self._key


def _cpu_us(label: str, verify: Callable[[str], Any], rounds: Sequence[Sequence[str]]) -> None:
    """The least CPU per request over `rounds`, each a list of Authorization values."""

    def once(headers: Sequence[str]) -> float:
        started = time.process_time()
        for header in headers:
            token = bearer_token([header])
            assert token is not None
            with contextlib.suppress(CannotVerify):
                verify(token)
        return (time.process_time() - started) / len(headers) * 1e6

    best = min(once(headers) for headers in rounds)
    sys.stdout.write(f"{label:<14}{best:>10.1f}\n")


def main(argv: Sequence[str]) -> int:
    n = int(argv[0]) if argv else 20_000
    encryption_key = secrets.token_bytes(32)
    sealed = keys.new_key(encryption_key, dt.datetime.now(dt.UTC))
    minter = JwtMinter(cast(KeyRing, _Ring(keys.unseal(sealed, encryption_key))), SETTINGS)
    verifier = JwksVerifier(lambda: {"keys": [keys.jwk(sealed)]}, SETTINGS, cache_size=10 * n)
    asyncio.run(verifier.refresh())

    def mint() -> str:
        user = f"users/{uuid.uuid4().hex}"
        return minter.access_token(subject=user, roles=["user"], scopes=[], now=dt.datetime.now(dt.UTC))

    one, other = mint(), mint()
    header, claims, _ = one.split(".")
    stranger = keys.new_key(encryption_key, dt.datetime.now(dt.UTC))
    unknown = JwtMinter(cast(KeyRing, _Ring(keys.unseal(stranger, encryption_key))), SETTINGS)
    strange = unknown.access_token(subject="users/x", roles=[], scopes=[], now=dt.datetime.now(dt.UTC))
    never_seen = [[f"Bearer {mint()}" for _ in range(n)] for _ in range(3)]

    for _ in range(100):  # warm-up
        verifier(mint())
    sys.stdout.write(f"{'case':<14}{'CPU us/request':>10}\n")
    _cpu_us("remembered", verifier, [[f"Bearer {one}"] * n] * 3)
    _cpu_us("first sight", verifier, never_seen)
    _cpu_us("junk", verifier, [[f"Bearer junk-{uuid.uuid4().hex}" for _ in range(n)]] * 3)
    _cpu_us("forged", verifier, [[f"Bearer {header}.{claims}.{other.split('.')[2]}"] * n] * 3)
    _cpu_us("unknown kid", verifier, [[f"Bearer {strange}"] * n] * 3)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
