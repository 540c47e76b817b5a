"""gateway.trailers: HTTP/1.1 trailers on a unary answer, read back by an independent parser (h11)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.http import HttpVersion
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from gateway.trailers import TrailedResponse, accepts_trailers
from tests.support.http import TrailedAnswer, http_calls_with_trailers

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


@pytest.mark.parametrize(
    ("te", "method", "version", "expected"),
    ACCEPTS,
    ids=["plain", "case", "listed", "weighted", "other", "empty", "lookalike", "http10", "head"],
)
def test_accepts_trailers(te: str, method: str, version: str, expected: bool) -> None:
    major, minor = (int(part) for part in version.split("."))
    headers = CIMultiDict({"TE": te} if te else {})
    request = make_mocked_request(method, "/", headers=headers, version=HttpVersion(major, minor))
    assert accepts_trailers(request) is expected


@pytest.mark.parametrize("status", [204, 304, 101])
def test_an_answer_without_a_body_cannot_carry_trailers(status: int) -> None:
    with pytest.raises(ValueError, match="no body"):
        TrailedResponse(status=status, body=b"", content_type="application/json", trailers=[])


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _exchange(handler: Handler, paths: list[str]) -> list[TrailedAnswer]:
    """Serve `handler` (behind a middleware that adds a header after it returns, as the edge's
    do) and GET `paths` with ``TE: trailers``, one after another on one connection."""

    @web.middleware
    async def stamped(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        response.headers["X-Request-Id"] = "r-1"
        return response

    app = web.Application(middlewares=[stamped])
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        requests = [("GET", path, b"") for path in paths]
        return await asyncio.to_thread(http_calls_with_trailers, port, requests, headers={"TE": "trailers"})
    finally:
        await runner.cleanup()


def test_the_body_is_chunked_and_the_trailers_follow_its_last_chunk() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return TrailedResponse(
            status=200,
            body=b'{"text":"hi"}',
            content_type="application/json",
            trailers=[("Grpc-Trailer-x-cost", "3"), ("Grpc-Trailer-x-cost", "4"), ("Grpc-Trailer-x-id", "a")],
        )

    [answer] = asyncio.run(_exchange(handler, ["/"]))
    assert answer.status == 200
    assert answer.header("Transfer-Encoding") == "chunked" and answer.header("Content-Length") is None
    assert answer.header("Trailer") == "Grpc-Trailer-x-cost, Grpc-Trailer-x-id", "each name announced once"
    assert answer.header("Content-Type") == "application/json"
    assert answer.header("X-Request-Id") == "r-1", "middlewares still add headers after the handler"
    assert answer.body == b'{"text":"hi"}'
    assert answer.trailers == [
        ("grpc-trailer-x-cost", "3"),
        ("grpc-trailer-x-cost", "4"),
        ("grpc-trailer-x-id", "a"),
    ]


def test_the_connection_stays_usable_after_a_trailed_answer() -> None:
    seen: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request.path)
        if request.path == "/plain":
            return web.json_response({"plain": True})
        body = b"" if request.path == "/empty" else b'{"n":1}'
        return TrailedResponse(
            status=404, body=body, content_type="application/json", trailers=[("Grpc-Trailer-k", "v")]
        )

    answers = asyncio.run(_exchange(handler, ["/first", "/empty", "/plain"]))
    assert seen == ["/first", "/empty", "/plain"]
    assert [(a.status, a.body, a.trailers) for a in answers] == [
        (404, b'{"n":1}', [("grpc-trailer-k", "v")]),
        (404, b"", [("grpc-trailer-k", "v")]),
        (200, b'{"plain": true}', []),
    ]
