"""gateway.cors: preflights, and CORS headers on whole answers and streams alike."""

from __future__ import annotations

import asyncio

import pytest
from multidict import CIMultiDict

from gateway.cors import allowing, cors_headers
from gateway.wire import Request, Response, Stream
from tests.support.edge_server import parsed_request

SHOP = "https://shop.example"


async def _ok(request: Request) -> Response | Stream:
    answer = Response(200, b"{}")
    answer.headers["X-Request-Id"] = "r-1"
    answer.headers["Grpc-Metadata-x-cost"] = "3"
    return answer


def _through(origins: tuple[str, ...], method: str, headers: dict[str, str]) -> tuple[Response, Request]:
    request = parsed_request(method, headers)
    answer = asyncio.run(allowing(origins, _ok)(request))
    assert isinstance(answer, Response)
    if request.on_head is not None:  # as the server does, just before writing the head
        request.on_head(answer.headers)
    return answer, request


def test_expose_headers_names_each_header_the_answer_has() -> None:
    headers: CIMultiDict[str] = CIMultiDict(
        {"Content-Type": "application/json", "X-Request-Id": "r", "Grpc-Metadata-a": "1", "Retry-After": "2"}
    )
    headers.add("Grpc-Metadata-a", "2")
    cors_headers(SHOP, headers)
    assert headers["Access-Control-Allow-Origin"] == SHOP
    assert headers.getall("Vary") == ["Origin"]
    assert headers["Access-Control-Expose-Headers"] == "X-Request-Id, Grpc-Metadata-a, Retry-After"


@pytest.mark.parametrize(
    ("origins", "origin", "allowed"),
    [((SHOP,), SHOP, True), (("*",), "https://any.example", True), ((SHOP,), "https://evil.example", False)],
    ids=["listed", "any", "stranger"],
)
def test_a_preflight_is_answered_for_allowed_origins_only(
    origins: tuple[str, ...], origin: str, allowed: bool
) -> None:
    preflight = {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-a",
    }
    answer, _ = _through(origins, "OPTIONS", preflight)
    if allowed:
        assert answer.status == 204
        assert answer.headers["Access-Control-Allow-Origin"] == origin
        assert answer.headers["Access-Control-Allow-Headers"] == "x-a"
        assert "POST" in answer.headers["Access-Control-Allow-Methods"]
    else:
        assert answer.status == 200, "a stranger's preflight goes on to the handler (and routing)"
        assert "Access-Control-Allow-Origin" not in answer.headers


def test_an_allowed_origin_gets_its_headers_when_the_head_is_written() -> None:
    answer, request = _through((SHOP,), "GET", {"Origin": SHOP})
    assert request.on_head is not None, "a stream would get them at prepare, through the same hook"
    assert answer.headers["Access-Control-Allow-Origin"] == SHOP
    assert answer.headers["Access-Control-Expose-Headers"] == "X-Request-Id, Grpc-Metadata-x-cost"


def test_no_origin_no_cors() -> None:
    answer, request = _through((SHOP,), "GET", {})
    assert request.on_head is None
    assert "Access-Control-Allow-Origin" not in answer.headers
