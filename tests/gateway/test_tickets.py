"""gateway.tickets: stream tickets, so a browser's ``EventSource`` (which cannot send
``Authorization``) opens a watch without an access token in its URL.

The store on its own runs on a clock the tests move (never a sleep). End to end, the edge runs
in front of all five services with real certificates, twice over one system: as ``python -m
gateway`` (as ``poly up`` runs it, the `edge` fixture), and built in this process from the same
``POLY_*`` settings with a store on a test clock and an observer whose access lines and spans
the tests read. Every call is a plain HTTP/1.1 client's (``http.client``), without a token
beside the ticket, as an ``EventSource`` makes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import jwt
import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.app import Edge as AppEdge
from gateway.backends import Backends
from gateway.catalog import load_routing
from gateway.config import Limits, from_environment
from gateway.errors import BadRequest
from gateway.observe import Observer
from gateway.plans import Routing
from gateway.routes import compile_routes
from gateway.tickets import (
    ENDPOINT,
    PARAMETER,
    InvalidTicket,
    MisplacedTicket,
    StreamTickets,
    TokenExpired,
    TooManyTickets,
    requested_path,
)
from gateway.tokens import CannotVerify, OutsideToken, verifying
from poly.orders.v1 import orders_service_pb2
from services.kit import config
from tests.gateway.conftest import Edge
from tests.support.clock import MonotonicClock
from tests.support.edge_server import EdgeTestServer
from tests.support.http import Answer, http_call

WATCH = "/v1/orders/o-1:watch"
TERMINAL = {"STATE_CANCELLED", "STATE_PAYMENT_FAILED"}
ORDER = {"lines": [{"sku": "A", "quantity": 1, "unitPrice": {"currencyCode": "EUR", "amountMinor": "100"}}]}


def _jwt(exp: float | None) -> str:
    """A JWT whose payload has `exp` (the store reads it unverified: only to shorten a ticket)."""
    claims: dict[str, Any] = {"sub": "users/u-1"}
    if exp is not None:
        claims["exp"] = exp
    return jwt.encode(claims, "not-checked-by-the-store-" + "k" * 16, algorithm="HS256")


# -- the store ---------------------------------------------------------------------------------


def test_a_ticket_carries_its_token_to_its_path_once() -> None:
    store = StreamTickets(clock=MonotonicClock())
    issued = store.issue("token-a", WATCH)
    assert issued.expires_in == 30 and len(issued.ticket) >= 43, "256 random bits, URL-safe"
    assert store.redeem(issued.ticket, WATCH) == "token-a"
    with pytest.raises(InvalidTicket):
        store.redeem(issued.ticket, WATCH)
    assert store.outstanding == 0


def _spent_on_another_path(store: StreamTickets, clock: MonotonicClock, ticket: str) -> None:
    with pytest.raises(InvalidTicket):
        store.redeem(ticket, "/v1/orders/o-2:watch")


def _expired(store: StreamTickets, clock: MonotonicClock, ticket: str) -> None:
    clock.advance(30)


def _used(store: StreamTickets, clock: MonotonicClock, ticket: str) -> None:
    store.redeem(ticket, WATCH)


@pytest.mark.parametrize(
    ("before", "presented"),
    [
        (_used, None),
        (_expired, None),
        (_spent_on_another_path, None),
        (None, "/v1/orders/o-1:watch/"),
        (None, "/v1/orders/o-1:watch?x=1"),
        (None, "/V1/orders/o-1:watch"),
    ],
    ids=["reused", "expired", "spent-on-a-wrong-path", "trailing-slash", "with-a-query", "other-case"],
)
def test_a_ticket_opens_nothing_but_its_own_path_while_it_lives(before: Any, presented: str | None) -> None:
    clock = MonotonicClock()
    store = StreamTickets(clock=clock)
    ticket = store.issue("token-a", WATCH).ticket
    if before is not None:
        before(store, clock, ticket)
    with pytest.raises(InvalidTicket) as refused:
        store.redeem(ticket, presented or WATCH)
    assert str(refused.value) == "the stream ticket is not valid: get a new one", "one answer for every cause"


def test_unknown_and_forged_tickets_get_the_same_answer_as_spent_ones() -> None:
    store = StreamTickets(clock=MonotonicClock())
    genuine = store.issue("token-a", WATCH).ticket
    answers = set()
    for forged in ("", "x", secrets.token_urlsafe(32), genuine[:-1] + ("A" if genuine[-1] != "A" else "B")):
        with pytest.raises(InvalidTicket) as refused:
            store.redeem(forged, WATCH)
        answers.add(str(refused.value))
    assert len(answers) == 1
    assert store.redeem(genuine, WATCH) == "token-a", "guesses do not spend another's ticket"


def test_a_ticket_lives_until_its_lifetime_ends_and_not_a_moment_longer() -> None:
    clock = MonotonicClock()
    store = StreamTickets(lifetime=30, clock=clock)
    early, late = store.issue("t", WATCH).ticket, store.issue("t", WATCH).ticket
    clock.advance(29.999)
    assert store.redeem(early, WATCH) == "t"
    clock.advance(0.001)
    with pytest.raises(InvalidTicket):
        store.redeem(late, WATCH)


@pytest.mark.parametrize(
    ("seconds_left", "expires_in"),
    [(3600.0, 30), (10.5, 10), (1.0, 1)],
    ids=["long-lived-token", "token-expiring-sooner", "one-second-left"],
)
def test_a_ticket_never_outlives_its_token(seconds_left: float, expires_in: int) -> None:
    clock, wall = MonotonicClock(), MonotonicClock(1_800_000_000.0)
    store = StreamTickets(clock=clock, wall_clock=wall)
    issued = store.issue(_jwt(wall.now + seconds_left), WATCH)
    assert issued.expires_in == expires_in
    clock.advance(min(seconds_left, 30.0))
    with pytest.raises(InvalidTicket):
        store.redeem(issued.ticket, WATCH)


@pytest.mark.parametrize(
    "token",
    [_jwt(1_800_000_000.0 + 0.5), _jwt(1_800_000_000.0 - 60)],
    ids=["half-a-second-left", "expired-a-minute-ago"],
)
def test_a_token_about_to_expire_gets_no_ticket(token: str) -> None:
    store = StreamTickets(clock=MonotonicClock(), wall_clock=MonotonicClock(1_800_000_000.0))
    with pytest.raises(TokenExpired):
        store.issue(token, WATCH)


@pytest.mark.parametrize(
    "token",
    ["opaque-token", "a.b.c", "e30.e30.e30", _jwt(None), "x." + "W" * 400 + ".y"],
    ids=["opaque", "three-junk-segments", "empty-claims", "no-exp", "undecodable-payload"],
)
def test_a_token_without_a_readable_exp_gets_the_full_lifetime(token: str) -> None:
    assert StreamTickets(clock=MonotonicClock()).issue(token, WATCH).expires_in == 30


def test_each_token_holds_at_most_per_token_tickets() -> None:
    clock = MonotonicClock()
    store = StreamTickets(per_token=3, clock=clock)
    held = [store.issue("alice", WATCH).ticket]
    clock.advance(10)
    held += [store.issue("alice", WATCH).ticket for _ in range(2)]
    with pytest.raises(TooManyTickets) as full:
        store.issue("alice", WATCH)
    assert full.value.retry_after == pytest.approx(20), "until alice's oldest ticket expires"
    assert store.issue("bob", WATCH).ticket, "another token has its own allowance"
    store.redeem(held[1], WATCH)
    assert store.issue("alice", WATCH).ticket, "a redeemed ticket frees its place"
    clock.advance(20)
    assert store.issue("alice", WATCH).ticket, "an expired one too"


def test_each_client_address_holds_at_most_per_address_tickets_whatever_its_tokens() -> None:
    """Fresh tokens (one account each) do not buy a client more of the store."""
    clock = MonotonicClock()
    store = StreamTickets(per_address=3, clock=clock)
    held = [store.issue(f"token-{n}", WATCH, address="198.51.100.7").ticket for n in range(3)]
    with pytest.raises(TooManyTickets) as full:
        store.issue("token-4", WATCH, address="198.51.100.7")
    assert full.value.retry_after == pytest.approx(30)
    assert store.issue("token-4", WATCH, address="203.0.113.9").ticket, "another address has its own"
    store.redeem(held[0], WATCH)
    assert store.issue("token-5", WATCH, address="198.51.100.7").ticket, "a redeemed ticket frees its place"
    clock.advance(30)
    assert store.issue("token-6", WATCH, address="198.51.100.7").ticket, "an expired one too"


def test_an_ipv6_client_counts_by_its_64_network() -> None:
    store = StreamTickets(per_address=2, clock=MonotonicClock())
    store.issue("a", WATCH, address="2001:db8:1:2::1")
    store.issue("b", WATCH, address="2001:db8:1:2:ffff::9")
    with pytest.raises(TooManyTickets):
        store.issue("c", WATCH, address="2001:db8:1:2:abcd::7")
    assert store.issue("d", WATCH, address="2001:db8:1:3::1").ticket, "another /64 has its own"


def test_the_edge_holds_at_most_total_tickets_and_purges_expired_ones_as_it_issues() -> None:
    clock = MonotonicClock()
    store = StreamTickets(total=4, clock=clock)
    for n in range(4):
        store.issue(f"token-{n}", WATCH)
        clock.advance(1)
    with pytest.raises(TooManyTickets) as full:
        store.issue("token-9", WATCH)
    assert full.value.retry_after == pytest.approx(26), "until the oldest expires"
    clock.advance(26)
    store.issue("token-9", WATCH)
    assert store.outstanding == 4, "the expired one was purged, the new one took its place"
    clock.advance(60)
    store.issue("token-10", WATCH)
    assert store.outstanding == 1


@pytest.mark.parametrize(
    ("query", "takes_ticket", "authorized", "refusal"),
    [
        ([(PARAMETER, "{t}"), (PARAMETER, "{t}")], True, False, MisplacedTicket),
        ([(PARAMETER, "{t}")], False, False, MisplacedTicket),
        ([(PARAMETER, "{t}")], True, True, MisplacedTicket),
        ([(PARAMETER, "forged")], True, False, InvalidTicket),
    ],
    ids=["twice", "not-a-stream", "beside-a-bearer-token", "forged"],
)
def test_a_ticket_presented_anywhere_is_spent_even_when_refused(
    query: list[tuple[str, str]], takes_ticket: bool, authorized: bool, refusal: type[Exception]
) -> None:
    store = StreamTickets(clock=MonotonicClock())
    ticket = store.issue("token-a", WATCH).ticket
    presented = [(name, value.format(t=ticket)) for name, value in query]
    claim = store.take(presented)
    with pytest.raises(refusal):
        store.open(claim, path=WATCH, takes_ticket=takes_ticket, authorized=authorized)
    if refusal is MisplacedTicket:
        with pytest.raises(InvalidTicket):
            store.redeem(ticket, WATCH)
    else:
        assert store.redeem(ticket, WATCH) == "token-a"


def test_taking_a_ticket_leaves_the_rest_of_the_query_in_order() -> None:
    store = StreamTickets(clock=MonotonicClock())
    ticket = store.issue("token-a", WATCH).ticket
    claim = store.take(
        [("untilStates", "STATE_PAID"), (PARAMETER, ticket), ("untilStates", "STATE_CANCELLED")]
    )
    assert claim.query == [("untilStates", "STATE_PAID"), ("untilStates", "STATE_CANCELLED")]
    assert store.open(claim, path=WATCH, takes_ticket=True, authorized=False) == "token-a"
    plain = store.take([("a", "1")])
    assert (
        plain.query == [("a", "1")]
        and store.open(plain, path=WATCH, takes_ticket=False, authorized=True) is None
    )


def test_neither_ticket_nor_token_shows_in_a_repr() -> None:
    store = StreamTickets(clock=MonotonicClock())
    issued = store.issue("secret-token", WATCH)
    claim = store.take([(PARAMETER, issued.ticket)])
    for shown in (repr(issued), repr(claim), repr(store)):
        assert issued.ticket not in shown and "secret-token" not in shown, shown


@pytest.mark.parametrize(
    "options",
    [{"lifetime": 0}, {"lifetime": -1}, {"per_token": 0}, {"per_address": 0}, {"total": 0}],
    ids=[
        "no-lifetime",
        "negative-lifetime",
        "no-ticket-per-token",
        "no-ticket-per-address",
        "no-ticket-at-all",
    ],
)
def test_a_store_that_could_hold_no_ticket_is_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        StreamTickets(**options)


# -- the request's body --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{not json",
        b"[]",
        b'"/v1/x"',
        b"{}",
        b'{"path": "/v1/x", "other": 1}',
        b'{"path": 5}',
        b'{"path": "v1/orders/o-1:watch"}',
        b'{"path": "/v1/orders/o-1:watch?access_ticket=x"}',
        b'{"path": "/v1/orders/o-1:watch#top"}',
        b'{"path": "/v1/orders/o-1 :watch"}',
        b'{"path": "/v1/\\u00e9"}',
        b'{"path": "/v1/x\\r\\nSet-Cookie: a=b"}',
        json.dumps({"path": "/" + "a" * 2048}).encode(),
        b"[" * 100_000,
    ],
    ids=[
        "empty",
        "not-json",
        "array",
        "string",
        "no-path",
        "extra-key",
        "not-a-string",
        "relative",
        "with-a-query",
        "with-a-fragment",
        "with-a-space",
        "not-ascii",
        "header-injection",
        "too-long",
        "deeply-nested",
    ],
)
def test_a_body_that_names_no_plain_path_is_a_bad_request(body: bytes) -> None:
    with pytest.raises(BadRequest):
        requested_path(body)


def test_a_body_naming_a_path_gives_that_path() -> None:
    assert requested_path(b'{"path": "/v1/orders/o-1%2F2:watch"}') == "/v1/orders/o-1%2F2:watch"


@given(
    st.one_of(st.binary(max_size=300), st.text(max_size=300).map(lambda t: json.dumps({"path": t}).encode()))
)
def test_any_body_gives_a_plain_path_or_a_bad_request(body: bytes) -> None:
    try:
        path = requested_path(body)
    except BadRequest:
        return
    assert path.startswith("/") and "?" not in path and "#" not in path and path.isascii()


# -- the edge, in process, without backends ---------------------------------------------------------


class _NoBackends:
    """Stands in for `Backends` where no request reaches a backend."""

    async def close(self) -> None:
        return None


def _verifier(token: str) -> str | None:
    if token.startswith("later-"):
        raise CannotVerify(token)
    if token.startswith("outside-"):
        raise OutsideToken(token)
    return "users/alice" if token == "alice-token" else None


def _unbacked(*requests: tuple[str, str, dict[str, str], bytes | None], **limits: Any) -> list[Answer]:
    """Each (method, path, headers, body) against an edge of the orders routes with no backend."""
    router = compile_routes(orders_service_pb2.DESCRIPTOR.services_by_name.values())
    edge = AppEdge(
        Routing(router, {}), cast(Backends, _NoBackends()), Limits(**limits), verify_token=_verifier
    )
    return _against(edge, *requests)


def _against(edge: AppEdge, *requests: tuple[str, str, dict[str, str], bytes | None]) -> list[Answer]:
    """Each (method, path, headers, body) against `edge`, in turn."""

    async def run() -> list[Answer]:
        answers = []
        client: TestClient[Any, Any]
        async with TestClient(EdgeTestServer(edge)) as client:
            for method, path, headers, body in requests:
                async with client.request(method, path, headers=headers, data=body) as response:
                    answers.append(
                        Answer(response.status, cast(Any, response.headers), await response.read())
                    )
        return answers

    return asyncio.run(run())


def _reason(answer: Answer) -> str:
    body = answer.json()
    return str(next(d for d in body["details"] if d["@type"].endswith("ErrorInfo"))["reason"])


JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("headers", "body", "status", "reason"),
    [
        ({}, b'{"path": "/v1/orders/o-1:watch"}', 401, "TOKEN_MISSING"),
        ({"Authorization": "Basic YTpi"}, b'{"path": "/v1/orders/o-1:watch"}', 401, "TOKEN_MISSING"),
        ({"Authorization": "Bearer junk"}, b'{"path": "/v1/orders/o-1:watch"}', 401, "TOKEN_INVALID"),
        ({"Authorization": "Bearer alice-token"}, b'{"path": "/v1/orders/o-1"}', 400, "STREAM_TICKET_PATH"),
        ({"Authorization": "Bearer alice-token"}, b'{"path": "/v1/orders:batch"}', 404, "STREAM_TICKET_PATH"),
        ({"Authorization": "Bearer alice-token"}, b'{"path": "/v1/nowhere"}', 404, "STREAM_TICKET_PATH"),
        (
            {"Authorization": "Bearer alice-token"},
            b'{"path": "/v1/orders/o-1:cancel"}',
            400,
            "STREAM_TICKET_PATH",
        ),
        ({"Authorization": "Bearer alice-token"}, b'{"path": "/v1/x?y"}', 400, "INVALID_REQUEST"),
        (
            {"Authorization": "Bearer alice-token", "Content-Type": "text/plain"},
            b"{}",
            415,
            "UNSUPPORTED_MEDIA_TYPE",
        ),
    ],
    ids=[
        "no-token",
        "another-scheme",
        "token-the-edge-refuses",
        "unary-path",
        "unrouted-path",
        "unknown-path",
        "post-only-path",
        "path-with-a-query",
        "not-json",
    ],
)
def test_a_ticket_is_refused_without_a_good_token_or_for_anything_but_a_stream(
    headers: dict[str, str], body: bytes, status: int, reason: str
) -> None:
    [answer] = _unbacked(("POST", ENDPOINT, {**JSON, **headers}, body))
    assert answer.status == status, answer.body
    assert _reason(answer) == reason
    assert set(answer.json()) >= {"code", "message", "details"}, "the one error shape"
    if status == 401:
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    if status == 415:
        assert answer.headers["Accept-Post"] == "application/json"


def test_a_ticket_is_issued_only_for_a_token_the_edge_has_checked() -> None:
    asked = [
        (
            "POST",
            ENDPOINT,
            {**JSON, "Authorization": f"Bearer {token}"},
            b'{"path": "' + WATCH.encode() + b'"}',
        )
        for token in ("alice-token", "later-1", "x" * 9000, "outside-1")
    ]
    verified, unverifiable, oversized, outside = _unbacked(*asked)
    assert verified.status == 201, verified.body
    assert verified.headers["Cache-Control"] == "no-store"
    body = verified.json()
    assert set(body) == {"ticket", "expiresIn"} and body["expiresIn"] == 30
    # A token the edge cannot check now (keys not fetched, an unknown kid) is not trusted with
    # a ticket: junk tokens would fill the store (an attack found this).
    assert unverifiable.status == 503 and _reason(unverifiable) == "TOKEN_UNVERIFIABLE"
    assert unverifiable.headers["Retry-After"] == "1"
    assert oversized.status == 401 and _reason(oversized) == "TOKEN_INVALID"
    # An outside issuer's token is the services' to check, never the edge's: no ticket, and no
    # promise that retrying helps (the page opens its stream with the Authorization header).
    assert outside.status == 400 and _reason(outside) == "STREAM_TICKET_OUTSIDE_TOKEN"


def test_an_edge_without_a_verifier_issues_no_tickets() -> None:
    router = compile_routes(orders_service_pb2.DESCRIPTOR.services_by_name.values())
    edge = AppEdge(Routing(router, {}), cast(Backends, _NoBackends()), Limits())
    sent = {**JSON, "Authorization": "Bearer alice-token"}
    [answer] = _against(edge, ("POST", ENDPOINT, sent, b'{"path": "' + WATCH.encode() + b'"}'))
    assert answer.status == 404 and _reason(answer) == "ROUTE_NOT_FOUND"


def test_with_no_lifetime_there_is_no_ticket_endpoint() -> None:
    sent = {**JSON, "Authorization": "Bearer alice-token"}
    [answer] = _unbacked(
        ("POST", ENDPOINT, sent, b'{"path": "' + WATCH.encode() + b'"}'), stream_ticket_seconds=0
    )
    assert answer.status == 404 and _reason(answer) == "ROUTE_NOT_FOUND"


def test_with_no_lifetime_a_ticket_in_a_query_is_an_unknown_parameter() -> None:
    [answer] = _unbacked(("GET", f"{WATCH}?{PARAMETER}=x", {}, None), stream_ticket_seconds=0)
    assert answer.status == 400 and _reason(answer) == "INVALID_REQUEST"


def test_the_ticket_endpoint_answers_a_browsers_preflight() -> None:
    origin = {"Origin": "https://shop.example"}
    preflight = {
        **origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    sent = {**JSON, **origin, "Authorization": "Bearer alice-token"}
    asked, issued = _unbacked(
        ("OPTIONS", ENDPOINT, preflight, None),
        ("POST", ENDPOINT, sent, b'{"path": "' + WATCH.encode() + b'"}'),
        cors_origins=("https://shop.example",),
    )
    assert asked.status == 204
    assert asked.headers["Access-Control-Allow-Origin"] == "https://shop.example"
    assert "POST" in asked.headers["Access-Control-Allow-Methods"]
    assert asked.headers["Access-Control-Allow-Headers"] == "authorization, content-type"
    assert issued.status == 201 and issued.headers["Access-Control-Allow-Origin"] == "https://shop.example"


def test_asking_for_tickets_with_refused_tokens_counts_as_failed_authentications() -> None:
    bad = {**JSON, "Authorization": "Bearer junk"}
    good = {**JSON, "Authorization": "Bearer alice-token"}
    body = b'{"path": "' + WATCH.encode() + b'"}'
    answers = _unbacked(
        *[("POST", ENDPOINT, bad, body)] * 2, ("POST", ENDPOINT, good, body), auth_failures_per_address=2
    )
    assert [a.status for a in answers] == [401, 401, 429]
    assert _reason(answers[2]) == "AUTHENTICATION_THROTTLED" and int(answers[2].headers["Retry-After"]) >= 1


def test_forged_tickets_count_as_failed_authentications() -> None:
    forged: list[tuple[str, str, dict[str, str], bytes | None]] = [
        ("GET", f"{WATCH}?{PARAMETER}={secrets.token_urlsafe(32)}", {}, None) for _ in range(3)
    ]
    answers = _unbacked(*forged, auth_failures_per_address=2)
    assert [a.status for a in answers] == [401, 401, 429]
    assert _reason(answers[0]) == "STREAM_TICKET_INVALID"


# -- end to end: the edge in front of the five services ---------------------------------------------


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _ticket(port: int, token: str, path: str) -> str:
    """A ticket, asked for as a client does: again after a 503 (the edge's keys not fetched yet)."""
    deadline = time.monotonic() + 15
    answer = http_call(port, "POST", ENDPOINT, {"path": path}, headers=_bearer(token))
    while answer.status == 503 and time.monotonic() < deadline:
        assert _reason(answer) == "TOKEN_UNVERIFIABLE" and answer.headers["Retry-After"] == "1"
        answer = http_call(port, "POST", ENDPOINT, {"path": path}, headers=_bearer(token))
    assert answer.status == 201, answer.body
    assert answer.headers["Cache-Control"] == "no-store"
    return str(answer.json()["ticket"])


def _order(port: int, token: str) -> str:
    """A new order of `token`'s user, cancelled (or failed for want of funds): its watch ends."""
    created = http_call(port, "POST", "/v1/orders", ORDER, headers=_bearer(token))
    assert created.status == 201, created.body
    name = str(created.json()["name"])
    cancelled = http_call(port, "POST", f"/v1/{name}:cancel", {}, headers=_bearer(token))
    assert cancelled.status in (200, 400), cancelled.body  # 400: its payment failed first
    return name


def _events(answer: Answer) -> list[dict[str, Any]]:
    assert answer.status == 200, answer.body
    assert answer.headers["Content-Type"].startswith("text/event-stream")
    return [
        json.loads(line[len("data:") :])
        for line in answer.body.decode().splitlines()
        if line.startswith("data:")
    ]


def _watch(port: int, path: str, ticket: str, **headers: str) -> Answer:
    """What an ``EventSource`` of ``path?access_ticket=`` sends: no credential but the ticket."""
    return http_call(
        port, "GET", f"{path}?{PARAMETER}={ticket}", headers={"Accept": "text/event-stream", **headers}
    )


@pytest.fixture(scope="module")
def signed_keys(edge: Edge) -> Edge:
    """The `edge` once it has the auth service's keys (before that it cannot refuse a token)."""
    edge.process.wait_for_line(lambda line: '"signing keys fetched"' in line, timeout=30)
    return edge


@pytest.mark.slow
def test_an_event_source_watches_an_order_with_a_ticket_and_no_token(signed_keys: Edge) -> None:
    edge = signed_keys
    _user, token = edge.token()  # registered and signed in through the edge
    name = _order(edge.port, token)
    path = f"/v1/{name}:watch"
    issued = http_call(edge.port, "POST", ENDPOINT, {"path": path}, headers=_bearer(token))
    assert issued.status == 201, issued.body
    assert issued.headers["Cache-Control"] == "no-store"
    ticket, expires_in = issued.json()["ticket"], issued.json()["expiresIn"]
    assert 0 < expires_in <= 30
    # The ticket is the only credential; the rest of the query still reaches the request.
    watched = http_call(
        edge.port,
        "GET",
        f"{path}?untilStates=STATE_CANCELLED&{PARAMETER}={ticket}&untilStates=STATE_PAYMENT_FAILED",
        headers={"Accept": "text/event-stream"},
    )
    events = _events(watched)
    assert events and {e["order"]["name"] for e in events} == {name}
    assert events[-1]["order"]["state"] in TERMINAL
    again = _watch(edge.port, path, ticket)
    assert again.status == 401 and _reason(again) == "STREAM_TICKET_INVALID", "single-use"
    assert again.headers["WWW-Authenticate"].startswith("Bearer")
    # Neither the ticket nor the token reached a log line of the edge or of any service.
    outputs = [edge.process.lines, *(p.lines for p in edge.system.processes.values())]
    for line in (line for lines in outputs for line in lines):
        assert ticket not in line and token not in line, line
    assert any('"http request"' in line and '"status": 200' in line for line in edge.process.lines), (
        "the watch's access line was there to be read"
    )


def _other_path(name: str, other: str, ticket: str, token: str) -> tuple[str, str, dict[str, str]]:
    return f"/v1/{other}:watch", ticket, {}


def _forged(name: str, other: str, ticket: str, token: str) -> tuple[str, str, dict[str, str]]:
    return f"/v1/{name}:watch", secrets.token_urlsafe(32), {}


def _beside_a_token(name: str, other: str, ticket: str, token: str) -> tuple[str, str, dict[str, str]]:
    return f"/v1/{name}:watch", ticket, _bearer(token)


def _on_a_unary_get(name: str, other: str, ticket: str, token: str) -> tuple[str, str, dict[str, str]]:
    return f"/v1/{name}", ticket, {}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("attempt", "status", "reason", "spent"),
    [
        (_other_path, 401, "STREAM_TICKET_INVALID", True),
        (_forged, 401, "STREAM_TICKET_INVALID", False),
        (_beside_a_token, 400, "STREAM_TICKET_MISPLACED", True),
        (_on_a_unary_get, 400, "STREAM_TICKET_MISPLACED", True),
    ],
    ids=["another-orders-watch", "forged", "beside-an-authorization-header", "on-a-unary-get"],
)
def test_a_ticket_opens_only_its_own_stream_and_is_spent_by_trying(
    signed_keys: Edge, attempt: Any, status: int, reason: str, spent: bool
) -> None:
    edge = signed_keys
    _user, token = edge.token()
    name, other = _order(edge.port, token), _order(edge.port, token)
    ticket = _ticket(edge.port, token, f"/v1/{name}:watch")
    path, presented, headers = attempt(name, other, ticket, token)
    answer = _watch(edge.port, path, presented, **headers)
    assert answer.status == status, answer.body
    assert _reason(answer) == reason
    assert b"data:" not in answer.body, "nothing streamed"
    genuine = _watch(edge.port, f"/v1/{name}:watch", ticket)
    if spent:
        assert genuine.status == 401 and _reason(genuine) == "STREAM_TICKET_INVALID"
    else:
        assert _events(genuine)[-1]["order"]["state"] in TERMINAL


@pytest.mark.slow
def test_a_ticket_carries_no_more_than_its_token(signed_keys: Edge) -> None:
    edge = signed_keys
    _alice, alice = edge.token()
    _bob, bob = edge.token()
    alices = _order(edge.port, alice)
    # Bob gets a ticket for Alice's watch (the path is no secret): the watch still asks as Bob.
    refused = _watch(edge.port, f"/v1/{alices}:watch", _ticket(edge.port, bob, f"/v1/{alices}:watch"))
    assert refused.status == 403 and _reason(refused) == "NOT_OWNER", refused.body
    # A token signed by a key nobody published, naming a kid: the edge cannot check it, so it
    # issues no ticket for it.
    key = Ed25519PrivateKey.generate()
    claims = {"sub": _alice, "exp": int(time.time()) + 600, "iat": int(time.time()), "aud": "x", "iss": "y"}
    forged = jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": f"forged-{uuid.uuid4().hex}"})
    answer = http_call(edge.port, "POST", ENDPOINT, {"path": f"/v1/{alices}:watch"}, headers=_bearer(forged))
    assert answer.status in (401, 503), answer.body
    assert "ticket" not in answer.json()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("headers", "body", "status", "reason"),
    [
        ({}, {"path": "/v1/orders/o-1:watch"}, 401, "TOKEN_MISSING"),
        ({"Authorization": "Bearer not-a-token"}, {"path": "/v1/orders/o-1:watch"}, 401, "TOKEN_INVALID"),
        (None, {"path": "/v1/orders/o-1"}, 400, "STREAM_TICKET_PATH"),
        (None, {"path": "/v1/orders"}, 400, "STREAM_TICKET_PATH"),
        (None, {"path": "/v1/nowhere:watch"}, 404, "STREAM_TICKET_PATH"),
    ],
    ids=["no-token", "token-the-edge-refuses", "unary-get", "list", "no-such-path"],
)
def test_the_running_edge_refuses_tickets_without_a_good_token_or_for_a_non_stream(
    signed_keys: Edge, headers: dict[str, str] | None, body: dict[str, str], status: int, reason: str
) -> None:
    if headers is None:
        headers = _bearer(signed_keys.token()[1])
    answer = http_call(signed_keys.port, "POST", ENDPOINT, body, headers=headers)
    assert answer.status == status, answer.body
    assert _reason(answer) == reason
    if status == 401:
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.slow
def test_one_token_holds_at_most_sixteen_tickets_at_a_time(signed_keys: Edge) -> None:
    edge = signed_keys
    _user, token = edge.token()
    name = _order(edge.port, token)
    path = f"/v1/{name}:watch"
    held = [_ticket(edge.port, token, path) for _ in range(16)]
    full = http_call(edge.port, "POST", ENDPOINT, {"path": path}, headers=_bearer(token))
    assert full.status == 429, full.body
    assert _reason(full) == "STREAM_TICKETS_EXHAUSTED"
    assert 1 <= int(full.headers["Retry-After"]) <= 30
    _other, someone = edge.token()
    assert _ticket(edge.port, someone, path), "another token is not held back"
    assert _events(_watch(edge.port, path, held[0]))[-1]["order"]["state"] in TERMINAL
    assert _ticket(edge.port, token, path), "a redeemed ticket frees its place"


# -- end to end, the edge built in this process: its clock, its logs and spans ----------------------


@dataclass
class _Live:
    port: int
    clock: MonotonicClock
    spans: InMemorySpanExporter
    tickets: StreamTickets = field(repr=False)


@contextlib.contextmanager
def _in_process(environ: dict[str, str], **store: Any) -> Iterator[_Live]:
    """An edge built from the system's ``POLY_*`` settings as ``python -m gateway`` builds it,
    with a store of tickets on a test clock and a tracer of the test's, serving on an event
    loop of its own in a thread, so the test calls it with a plain blocking client."""
    clock = MonotonicClock()
    tickets = StreamTickets(clock=clock, **store)
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    stack = contextlib.AsyncExitStack()

    async def start() -> int:
        _, config = from_environment(environ)
        backends = Backends(config.backends, config.default_backend)
        routing = await load_routing(config, backends)
        verify = await stack.enter_async_context(verifying(config.tokens))
        observer = Observer(tracer=provider.get_tracer("test"))  # access lines: poly.access
        edge = AppEdge(
            routing, backends, config.limits, verify_token=verify, observer=observer, stream_tickets=tickets
        )
        server = EdgeTestServer(edge)
        await server.start_server()
        stack.push_async_callback(server.close)
        assert server.port is not None
        return server.port

    try:
        port = asyncio.run_coroutine_threadsafe(start(), loop).result(60)
        yield _Live(port, clock, spans, tickets)
    finally:
        asyncio.run_coroutine_threadsafe(stack.aclose(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.mark.slow
def test_an_expired_ticket_opens_nothing(edge: Edge) -> None:
    _user, token = edge.token()
    name = _order(edge.port, token)
    path = f"/v1/{name}:watch"
    with _in_process(edge.system.environ) as live:
        fresh, stale = _ticket(live.port, token, path), _ticket(live.port, token, path)
        live.clock.advance(29.5)
        assert _events(_watch(live.port, path, fresh))[-1]["order"]["state"] in TERMINAL
        live.clock.advance(0.5)
        expired = _watch(live.port, path, stale)
        assert expired.status == 401 and _reason(expired) == "STREAM_TICKET_INVALID", expired.body
        assert live.tickets.outstanding == 0


@pytest.mark.slow
def test_past_the_edges_cap_a_ticket_waits_for_one_to_expire(edge: Edge) -> None:
    tokens = [edge.token()[1] for _ in range(3)]
    path = f"/v1/{_order(edge.port, tokens[0])}:watch"
    with _in_process(edge.system.environ, total=2) as live:
        _ticket(live.port, tokens[0], path)
        live.clock.advance(10)
        _ticket(live.port, tokens[1], path)
        full = http_call(live.port, "POST", ENDPOINT, {"path": path}, headers=_bearer(tokens[2]))
        assert full.status == 429 and _reason(full) == "STREAM_TICKETS_EXHAUSTED", full.body
        assert 20 <= int(full.headers["Retry-After"]) <= 21, "the oldest expires in 20 s"
        live.clock.advance(20)
        assert _ticket(live.port, tokens[2], path)


@pytest.mark.slow
def test_neither_ticket_nor_token_reaches_an_access_line_or_a_span(
    edge: Edge, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _user, token = edge.token()
    name = _order(edge.port, token)
    path = f"/v1/{name}:watch"
    with _in_process(edge.system.environ) as live:
        ticket = _ticket(live.port, token, path)
        assert _events(_watch(live.port, path, ticket, **{"X-Request-Id": "watch-1"}))
        reused = _watch(live.port, path, ticket, **{"X-Request-Id": "watch-2"})
        assert reused.status == 401
        lost = _ticket(live.port, token, path)
        unrouted = _watch(live.port, "/v1/nowhere", lost, **{"X-Request-Id": "watch-3"})
        assert unrouted.status == 404, "a routing miss"
        assert _watch(live.port, path, lost).status == 401, "spent by the request that presented it"
        spans = list(live.spans.get_finished_spans())
    access = [r for r in caplog.records if r.name == "poly.access"]
    assert {getattr(r, "request_id", "") for r in access} >= {"watch-1", "watch-2", "watch-3"}
    assert {getattr(r, "status", 0) for r in access} >= {201, 200, 401, 404}
    for record in caplog.records:
        shown = repr(vars(record)) + record.getMessage()
        assert ticket not in shown and lost not in shown and token not in shown, shown
    watched = [s for s in spans if (s.attributes or {}).get("poly.request_id") == "watch-1"]
    assert len(watched) == 1 and watched[0].attributes is not None
    assert (
        watched[0].attributes["url.path"] == path
        and watched[0].attributes["http.response.status_code"] == 200
    )
    for span in spans:
        shown = " ".join(
            [
                span.name,
                repr(dict(span.attributes or {})),
                *(repr(dict(e.attributes or {})) for e in span.events),
            ]
        )
        assert ticket not in shown and lost not in shown and token not in shown, shown
        assert PARAMETER not in shown, "the query is never recorded"


def test_the_lifetime_comes_from_the_environment(tmp_path: Path) -> None:
    _, found = from_environment({"POLY_HOME": str(tmp_path), "POLY_GATEWAY_STREAM_TICKET_SECONDS": "12.5"})
    assert found.limits.stream_ticket_seconds == 12.5
    _, default = from_environment({"POLY_HOME": str(tmp_path)})
    assert default.limits.stream_ticket_seconds == 30.0


@pytest.mark.parametrize("value", ["-1", "301", "soon"], ids=["negative", "too-long", "not-a-number"])
def test_a_lifetime_out_of_range_fails_start_up(tmp_path: Path, value: str) -> None:
    with pytest.raises(config.ConfigError) as raised:
        from_environment({"POLY_HOME": str(tmp_path), "POLY_GATEWAY_STREAM_TICKET_SECONDS": value})
    assert any("POLY_GATEWAY_STREAM_TICKET_SECONDS" in p for p in raised.value.problems), (
        raised.value.problems
    )
