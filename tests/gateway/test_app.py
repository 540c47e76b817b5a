"""gateway.app: the aiohttp application, in process, for answers that need no backend."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp.test_utils import TestClient
from yarl import URL

from gateway.app import Edge
from gateway.backends import Backends
from gateway.config import Limits, Target, Transport
from gateway.plans import Routing
from gateway.routes import compile_routes
from gateway.tokens import CannotVerify, TokenVerifier
from poly.orders.v1 import orders_service_pb2
from services.kit import config
from tests.support.edge_server import EdgeTestServer
from tests.support.env import free_port, make_certs


class _NoBackends:
    """Stands in for `Backends` where no request reaches a backend."""

    async def close(self) -> None:
        return None


def _answer(raw_path: str) -> tuple[int, str, Any]:
    router = compile_routes(orders_service_pb2.DESCRIPTOR.services_by_name.values())
    edge = Edge(Routing(router, {}), cast(Backends, _NoBackends()), Limits())

    async def run() -> tuple[int, str, Any]:
        async with TestClient(EdgeTestServer(edge)) as client:
            url = URL(str(client.make_url("/")).rstrip("/") + raw_path, encoded=True)
            async with client.session.get(url) as response:
                return response.status, response.content_type, json.loads(await response.read())

    return asyncio.run(run())


@pytest.mark.parametrize(
    "raw_path",
    ["/v1/nowhere", "/v1/orders/a/b%0Ac", "/v1/%0A", "/v1/%0D%0A:watch"],
    ids=["plain", "newline-in-a-segment", "newline-alone", "crlf-before-a-verb"],
)
def test_an_unmatched_path_is_a_status_even_with_a_newline_in_it(raw_path: str) -> None:
    status, content_type, body = _answer(raw_path)
    assert (status, content_type) == (404, "application/json"), body
    assert body["code"] == 5
    assert body["details"][0]["reason"] == "ROUTE_NOT_FOUND"


def _edge(tmp_path: Path, verify_token: TokenVerifier | None = None, **limits: Any) -> Edge:
    """An edge whose one backend (orders) is down: a request that passes the edge's own
    checks gets UNAVAILABLE from the real channel."""
    certs = make_certs(tmp_path / "certs")
    tls = config.load("gateway", {"POLY_TLS_DIR": str(certs)}).tls
    service = "poly.orders.v1.OrdersService"
    transport = Transport("mtls", tls.ca_file, tls.cert_file, tls.key_file, server_name="orders")
    backends = Backends({service: Target(f"localhost:{free_port()}", transport)})
    router = compile_routes(orders_service_pb2.DESCRIPTOR.services_by_name.values())
    return Edge(Routing(router, {}), backends, Limits(**limits), verify_token=verify_token)


def _exchange(edge: Edge, requests: list[tuple[str, dict[str, str]]]) -> list[tuple[int, dict[str, str]]]:
    async def run() -> list[tuple[int, dict[str, str]]]:
        answers = []
        async with TestClient(EdgeTestServer(edge)) as client:
            for method, headers in requests:
                async with client.request(method, "/v1/orders", headers=headers) as response:
                    await response.read()
                    answers.append((response.status, dict(response.headers)))
        return answers

    return asyncio.run(run())


def test_past_the_burst_a_client_gets_429_with_retry_after(tmp_path: Path) -> None:
    edge = _edge(tmp_path, rate_per_second=0.5, rate_burst=2)
    alice = {"Authorization": "Bearer alice"}
    answers = _exchange(edge, [("GET", alice)] * 3 + [("GET", {"Authorization": "Bearer bob"})])
    # The edge cannot vouch for a token: the client is its address, whatever it sends.
    assert [status for status, _ in answers] == [503, 503, 429, 429], "another token earns no bucket"
    assert int(answers[2][1]["Retry-After"]) >= 1


def test_cors_answers_allowed_origins_only(tmp_path: Path) -> None:
    edge = _edge(tmp_path, cors_origins=("https://shop.example",))
    preflight = {"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"}
    stranger = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    answers = _exchange(
        edge,
        [("OPTIONS", preflight), ("GET", {"Origin": "https://shop.example"}), ("OPTIONS", stranger)],
    )
    (allowed, allowed_headers), (call, call_headers), (refused, refused_headers) = answers
    assert allowed == 204
    assert allowed_headers["Access-Control-Allow-Origin"] == "https://shop.example"
    assert "POST" in allowed_headers["Access-Control-Allow-Methods"]
    assert call == 503 and call_headers["Access-Control-Allow-Origin"] == "https://shop.example"
    assert "Access-Control-Allow-Origin" not in refused_headers
    assert refused != 204


class _Verifier:
    """A `TokenVerifier` knowing two good tokens; ``later-*`` cannot be told yet. Its calls
    are recorded."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, token: str) -> str | None:
        self.calls.append(token)
        if token.startswith("later-"):
            raise CannotVerify(token)
        return {"alice-token": "users/alice", "bob-token": "users/bob"}.get(token)


def test_a_verified_token_has_its_principals_bucket_and_anything_else_the_address(tmp_path: Path) -> None:
    verifier = _Verifier()
    edge = _edge(tmp_path, verifier, rate_per_second=0.01, rate_burst=2, auth_failures_per_address=0)
    alice, bob = {"Authorization": "Bearer alice-token"}, {"Authorization": "bearer bob-token"}
    answers = _exchange(
        edge,
        [("GET", alice)] * 3
        + [("GET", bob)] * 2
        + [
            ("GET", {}),
            ("GET", {"Authorization": "Bearer later-1"}),
            ("GET", {"Authorization": "Bearer junk-1"}),
            ("GET", {"Authorization": "Bearer later-2"}),
        ],
    )
    statuses = [status for status, _ in answers]
    # alice: 2 then 429; bob: his own 2; the address: no token, later-1, then 429 for the rest.
    assert statuses == [503, 503, 429, 503, 503, 503, 503, 429, 429], statuses
    assert verifier.calls.count("alice-token") == 3, "the scheme's case does not matter"
    assert verifier.calls.count("bob-token") == 2


def test_a_refused_token_counts_as_a_failed_authentication_at_once(tmp_path: Path) -> None:
    edge = _edge(tmp_path, _Verifier(), auth_failures_per_address=2)
    answers = _exchange(
        edge,
        [
            ("GET", {"Authorization": "Bearer junk-1"}),
            ("GET", {"Authorization": "Bearer later-1"}),  # cannot be told: not a failure
            ("GET", {"Authorization": "Bearer junk-2"}),
            ("GET", {"Authorization": "Bearer alice-token"}),
        ],
    )
    statuses = [status for status, _ in answers]
    # The backend is down (503): the failures were counted by the edge, not by an answer.
    assert statuses == [503, 503, 503, 429], statuses
    assert int(answers[3][1]["Retry-After"]) >= 1


def test_without_a_limit_no_token_is_verified(tmp_path: Path) -> None:
    verifier = _Verifier()
    edge = _edge(tmp_path, verifier, rate_per_second=0.0, auth_failures_per_address=0)
    answers = _exchange(edge, [("GET", {"Authorization": "Bearer junk-1"})] * 3)
    assert [status for status, _ in answers] == [503, 503, 503]
    assert verifier.calls == []


async def _read_answer(reader: asyncio.StreamReader) -> bytes:
    """One HTTP/1.1 answer: its head, and its body by Content-Length (none for a 1xx)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = await asyncio.wait_for(reader.readexactly(length), timeout=10) if length else b""
    return head + body


async def _raw_exchange(edge: Edge, steps: list[bytes | None]) -> list[bytes]:
    """Send each step's bytes on one connection; for a None step, read the next answer."""
    got: list[bytes] = []
    async with EdgeTestServer(edge) as server:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        try:
            for step in steps:
                if step is None:
                    got.append(await _read_answer(reader))
                else:
                    writer.write(step)
                    await writer.drain()
        finally:
            writer.close()
    return got


_BODY = b'{"lines": [{"sku": "sku-1", "quantity": 1}]}'


def test_expect_100_continue_is_answered_before_the_body_is_sent(tmp_path: Path) -> None:
    edge = _edge(tmp_path)
    head = (
        b"POST /v1/orders HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\n"
        b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(_BODY)
    )
    interim, final = asyncio.run(_raw_exchange(edge, [head, None, _BODY, None]))
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n", "curl waits a second for this on bodies over 1 KB"
    assert final.startswith(b"HTTP/1.1 503 "), final[:80]  # the body was read and the call made


def test_an_expectation_other_than_100_continue_gets_417_and_the_body_is_never_awaited(
    tmp_path: Path,
) -> None:
    edge = _edge(tmp_path)
    head = (
        b"POST /v1/orders HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\n"
        b"Expect: 200-ok\r\nContent-Length: %d\r\n\r\n" % len(_BODY)
    )
    [answer] = asyncio.run(_raw_exchange(edge, [head, None]))
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 417 Expectation Failed"
    body = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert body["details"][0]["reason"] == "EXPECTATION_FAILED"


def test_the_fixed_endpoints_answer_get_and_head_only(tmp_path: Path) -> None:
    edge = _edge(tmp_path)

    async def run() -> list[tuple[int, str, bytes]]:
        answers = []
        async with TestClient(EdgeTestServer(edge)) as client:
            for method, path in [
                ("GET", "/healthz"),
                ("HEAD", "/healthz"),
                ("GET", "/healthz?probe=1"),
                ("POST", "/healthz"),
                ("GET", "/openapi.json"),
            ]:
                async with client.request(method, path) as response:
                    answers.append((response.status, response.content_type, await response.read()))
        return answers

    healthz, head, with_query, post, openapi = asyncio.run(run())
    assert healthz == (200, "application/json", b'{"status": "SERVING"}')
    assert head == (200, "application/json", b""), "HEAD: the headers of a GET, no body"
    assert with_query[0] == 200, "the query string is not part of the path"
    assert post[0] == 404 and json.loads(post[2])["details"][0]["reason"] == "ROUTE_NOT_FOUND"
    assert openapi[:2] == (200, "application/json") and json.loads(openapi[2]) == {}
