"""Polyservice's own edge limits per principal: ``python -m gateway`` from the ``POLY_*``
settings (as ``poly up`` runs it) in front of a real auth service issuing real tokens.

The edge verifies bearer tokens against the auth service's key set (fetched over mTLS as
``gateway``) only to pick the rate limit's bucket: a token that verifies is limited as its
principal, whatever address it comes from; anything else as its address, and a token that
does not verify counts at once as a failed authentication of that address. Tokens come
straight from the auth service over gRPC, so getting them spends nothing at the edge.
Requests come from distinct 127.0.0.x addresses (Linux routes all of 127/8 to loopback), a
few per test, so the tests share one edge without sharing buckets.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support.http import Answer, http_call
from tests.support.identity import Deployment, start
from tests.support.processes import Process

pytestmark = pytest.mark.slow

BURST = 3
FAILURES = 3
JWKS = "/.well-known/jwks.json"
"""A public route: the auth service answers it whatever token comes along."""


@dataclass
class Edge:
    system: Deployment
    process: Process
    port: int

    def call(self, path: str, *, token: str | None = None, source: str, scheme: str = "Bearer") -> Answer:
        """``GET path`` from the address `source`, with `token` as its bearer credential."""
        headers = {"Authorization": f"{scheme} {token}"} if token is not None else {}
        return http_call(self.port, "GET", path, headers=headers, source=source)

    def user(self) -> tuple[str, str]:
        """A new user's ``(users/{id}, access token)``, from the auth service directly."""
        user, email = self.system.register()
        return user, self.system.login(email).access_token


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    system = start(
        tmp_path_factory.mktemp("principal-limits"),
        ["auth"],
        {
            "POLY_GATEWAY_RATE_PER_SECOND": "0.01",  # one token per 100 s: no refill during a test
            "POLY_GATEWAY_RATE_BURST": str(BURST),
            "POLY_GATEWAY_AUTH_FAILURES_PER_ADDRESS": str(FAILURES),
            "POLY_GATEWAY_AUTH_FAILURE_WINDOW_SECONDS": "600",
        },
    )
    process = Process.module("gateway", system.environ)
    try:
        process.wait_for_line(lambda line: '"serving"' in line, timeout=30)
        process.wait_for_line(lambda line: '"signing keys fetched"' in line, timeout=30)
        yield Edge(system, process, int(system.environ["POLY_GATEWAY_PORT"]))
    finally:
        process.stop()
        system.stop()


def _reason(answer: Answer) -> str:
    return str(next(d for d in answer.json()["details"] if d["@type"].endswith("ErrorInfo"))["reason"])


def _identity(user: str) -> str:
    return f"/v1/{user}:getIdentity"


def test_two_users_behind_one_address_each_get_their_own_bucket(edge: Edge) -> None:
    (alice, alice_token), (bob, bob_token) = edge.user(), edge.user()
    here = "127.0.0.11"
    alices = [edge.call(_identity(alice), token=alice_token, source=here) for _ in range(BURST + 1)]
    assert [a.status for a in alices] == [200] * BURST + [429], [a.body for a in alices]
    assert _reason(alices[-1]) == "RATE_LIMITED"
    assert int(alices[-1].headers["Retry-After"]) >= 1
    # Bob shares alice's address, not her bucket; the scheme's case does not matter.
    bobs = [
        edge.call(_identity(bob), token=bob_token, source=here, scheme="bearer") for _ in range(BURST + 1)
    ]
    assert [a.status for a in bobs] == [200] * BURST + [429], [a.body for a in bobs]
    # And the address's own bucket (requests without a verified token) is untouched by either.
    assert edge.call(JWKS, source=here).status == 200


def test_one_user_over_several_addresses_shares_one_bucket(edge: Edge) -> None:
    carol, token = edge.user()
    sources = [f"127.0.0.{21 + n}" for n in range(BURST + 1)]
    answers = [edge.call(_identity(carol), token=token, source=source) for source in sources]
    assert [a.status for a in answers] == [200] * BURST + [429], [a.body for a in answers]
    assert _reason(answers[-1]) == "RATE_LIMITED"
    assert edge.call(JWKS, source=sources[-1]).status == 200, "the last address itself is not limited"


def test_junk_tokens_are_keyed_by_address_and_count_as_failures_at_once(edge: Edge) -> None:
    (dave, dave_token), (_erin, erin_token) = edge.user(), edge.user()
    header, claims, _ = dave_token.split(".")
    forged = f"{header}.{claims}.{erin_token.split('.')[2]}"  # dave's claims, another token's signature
    here = "127.0.0.31"
    answers = [
        edge.call(JWKS, source=here),  # the address's bucket: 2 left
        # Public: the auth service answers 200 whatever the token, yet the edge counts it (1).
        edge.call(JWKS, token="junk-1", source=here, scheme="bearer"),
        # Refused by the edge (2) and by the backend: counted once; from the address's bucket.
        edge.call(_identity(dave), token=forged, source=here),
        # A new junk token earns no new bucket: the address's is empty (failure 3).
        edge.call(JWKS, token="junk-2", source=here),
        # Three failures: the address is locked out, whatever it sends now.
        edge.call(_identity(dave), token=dave_token, source=here),
    ]
    assert [a.status for a in answers] == [200, 200, 401, 429, 429], [a.body for a in answers]
    assert _reason(answers[2]) == "TOKEN_SIGNATURE_INVALID", "the backend still decides"
    assert _reason(answers[3]) == "RATE_LIMITED", "not locked out yet: the forged token counted once"
    assert _reason(answers[4]) == "AUTHENTICATION_THROTTLED"
    assert 1 <= int(answers[4].headers["Retry-After"]) <= 600
    # The forged token named dave, but never touched dave's bucket.
    elsewhere = [edge.call(_identity(dave), token=dave_token, source="127.0.0.32") for _ in range(BURST + 1)]
    assert [a.status for a in elsewhere] == [200] * BURST + [429], [a.body for a in elsewhere]
