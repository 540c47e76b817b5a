"""gateway.trailers: HTTP/1.1 trailers on a unary answer, read back by an independent parser (h11)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import pytest

from gateway.httpserver import Server
from gateway.trailers import accepts_trailers
from gateway.wire import Request, Response, Stream
from tests.support.http import TrailedAnswer, http_calls_with_trailers, raw_exchange

ACCEPTS = [
    ("trailers", "GET", "1.1", True),
    ("Trailers", "POST", "1.1", True),
    ("gzip, trailers", "GET", "1.1", True),
    ("trailers;q=0.5", "GET", "1.1", True),
    ("gzip", "GET", "1.1", False),
    ("", "GET", "1.1", False),
    ("trailersx", "GET", "1.1", False),
    ("trailers", "GET", "1.0", False),  # no chunked framing in HTTP/1.0
    ("trailers", "HEAD", "1.1", False),  # no body to end with trailers
]

Handler = Callable[[Request], Awaitable[Response | Stream]]


async def _served(handler: Handler, call: Callable[[int], object]) -> object:
    """Serve `handler` (behind a wrapper that adds a header after it returns, as the edge's
    observer does) and run the blocking `call` against its port."""

    async def stamped(request: Request) -> Response | Stream:
        response = await handler(request)
        response.headers["X-Request-Id"] = "r-1"
        return response

    server = Server(stamped, max_body_bytes=1024)
    await server.start("127.0.0.1", 0)
    try:
        return await asyncio.to_thread(call, server.port)
    finally:
        await server.shutdown(0.0)


@pytest.mark.parametrize(
    ("te", "method", "version", "expected"),
    ACCEPTS,
    ids=["plain", "case", "listed", "weighted", "other", "empty", "lookalike", "http10", "head"],
)
def test_accepts_trailers(te: str, method: str, version: str, expected: bool) -> None:
    seen: list[bool] = []

    async def handler(request: Request) -> Response:
        seen.append(accepts_trailers(request))
        return Response(200, b"{}")

    te_line = f"TE: {te}\r\n" if te else ""
    data = f"{method} / HTTP/{version}\r\nHost: edge\r\n{te_line}Connection: close\r\n\r\n".encode()
    asyncio.run(_served(handler, lambda port: raw_exchange(port, data)))
    assert seen == [expected]


async def _exchange(handler: Handler, paths: list[str]) -> list[TrailedAnswer]:
    """GET `paths` with ``TE: trailers``, one after another on one connection."""
    requests = [("GET", path, b"") for path in paths]
    answers = await _served(
        handler, lambda port: http_calls_with_trailers(port, requests, headers={"TE": "trailers"})
    )
    assert isinstance(answers, list)
    return answers


def test_the_body_is_chunked_and_the_trailers_follow_its_last_chunk() -> None:
    async def handler(request: Request) -> Response:
        trailers = [("Grpc-Trailer-x-cost", "3"), ("Grpc-Trailer-x-cost", "4"), ("Grpc-Trailer-x-id", "a")]
        return Response(200, b'{"text":"hi"}', trailers=trailers)

    [answer] = asyncio.run(_exchange(handler, ["/"]))
    assert answer.status == 200
    assert answer.header("Transfer-Encoding") == "chunked" and answer.header("Content-Length") is None
    assert answer.header("Trailer") == "Grpc-Trailer-x-cost, Grpc-Trailer-x-id", "each name announced once"
    assert answer.header("Content-Type") == "application/json"
    assert answer.header("X-Request-Id") == "r-1", "wrappers still add headers after the handler"
    assert answer.body == b'{"text":"hi"}'
    assert answer.trailers == [
        ("grpc-trailer-x-cost", "3"),
        ("grpc-trailer-x-cost", "4"),
        ("grpc-trailer-x-id", "a"),
    ]


def test_the_connection_stays_usable_after_a_trailed_answer() -> None:
    seen: list[str] = []

    async def handler(request: Request) -> Response:
        seen.append(request.path)
        if request.path == "/plain":
            return Response(200, json.dumps({"plain": True}).encode())
        body = b"" if request.path == "/empty" else b'{"n":1}'
        return Response(404, body, trailers=[("Grpc-Trailer-k", "v")])

    answers = asyncio.run(_exchange(handler, ["/first", "/empty", "/plain"]))
    assert seen == ["/first", "/empty", "/plain"]
    assert [(a.status, a.body, a.trailers) for a in answers] == [
        (404, b'{"n":1}', [("grpc-trailer-k", "v")]),
        (404, b"", [("grpc-trailer-k", "v")]),
        (200, b'{"plain": true}', []),
    ]


@pytest.mark.parametrize("status", [204, 304])
def test_an_answer_without_a_body_carries_no_trailers(status: int) -> None:
    async def handler(request: Request) -> Response:
        return Response(status, b"", trailers=[("Grpc-Trailer-k", "v")])

    data = b"GET / HTTP/1.1\r\nHost: edge\r\nTE: trailers\r\nConnection: close\r\n\r\n"
    answer = asyncio.run(_served(handler, lambda port: raw_exchange(port, data)))
    assert isinstance(answer, bytes)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status)
    assert b"Trailer" not in head and b"chunked" not in head and b"Content-Length" not in head
    assert body == b""
