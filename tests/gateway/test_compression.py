"""gateway.compression: gzip for answers to reads, as negotiated by Accept-Encoding."""

from __future__ import annotations

import asyncio
import gzip

import brotli
import pytest

from gateway import compression
from gateway.compression import compress_reads, preferred_coding
from gateway.httpserver import Server
from gateway.wire import Request, Response
from tests.support.edge_server import parsed_request
from tests.support.http import raw_exchange


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("gzip", "gzip"),
        ("gzip, deflate, br", "br"),
        ("gzip, deflate, br, zstd", "br"),
        ("GZIP;q=0.5", "gzip"),
        ("x-gzip", "gzip"),
        ("br;q=0.5, gzip", "gzip"),
        ("br", "br"),
        ("*", "br"),
        ("br;q=0, *;q=0.1", "gzip"),
        ("", None),
        ("identity", None),
        ("deflate", None),
        ("gzip;q=0", None),
        ("*;q=1, gzip;q=0, br;q=0", None),
        ("gzip;q=zero", None),
        ("gzipped", None),
    ],
    ids=lambda v: str(v) or "empty",
)
def test_preferred_coding(value: str, expected: str | None) -> None:
    assert preferred_coding(value) == expected


def _request(method: str, accept_encoding: str | None) -> Request:
    return parsed_request(method, {} if accept_encoding is None else {"Accept-Encoding": accept_encoding})


BIG = b'{"items":[' + b",".join(b'{"n":%d}' % n for n in range(400)) + b"]}"


@pytest.mark.parametrize(
    ("method", "accept", "status", "body", "coding", "vary"),
    [
        ("GET", "gzip", 200, BIG, "gzip", True),
        ("GET", "gzip, br", 200, BIG, "br", True),
        ("HEAD", "gzip", 200, BIG, "gzip", True),
        ("HEAD", "br", 200, BIG, "br", True),
        ("GET", None, 200, BIG, None, True),
        ("GET", "gzip", 200, b'{"small":true}', None, False),
        ("POST", "gzip, br", 200, BIG, None, False),
        ("GET", "gzip", 204, b"", None, False),
    ],
    ids=["get", "get-br", "head", "head-br", "not-accepted", "small", "write", "no-content"],
)
def test_compress_reads(
    method: str, accept: str | None, status: int, body: bytes, coding: str | None, vary: bool
) -> None:
    response = Response(status, body)
    compress_reads(_request(method, accept), response)
    assert response.headers.get("Content-Encoding") == coding
    assert ("Accept-Encoding" in response.headers.getall("Vary", [])) is vary
    decompress = {"gzip": gzip.decompress, "br": brotli.decompress, None: bytes}[coding]
    assert decompress(response.body) == body
    if coding:
        assert len(response.body) < len(body) / 4


def test_an_answer_already_encoded_is_left_alone() -> None:
    response = Response(200, BIG)
    response.headers["Content-Encoding"] = "br"
    compress_reads(_request("GET", "gzip"), response)
    assert response.body == BIG and response.headers["Content-Encoding"] == "br"


@pytest.mark.parametrize(
    ("content_type", "cookie"),
    [
        ("text/html; charset=utf-8", False),
        ("image/png", False),
        ("application/gzip", False),
        ("application/json", True),
    ],
    ids=["page", "image", "archive", "json-setting-a-cookie"],
)
def test_a_methods_own_bytes_and_an_answer_setting_a_cookie_are_never_compressed(
    content_type: str, cookie: bool
) -> None:
    """A page holding a CSRF token beside reflected text, compressed, is what BREACH reads;
    an image or an archive is compressed already."""
    response = Response(200, BIG, content_type=content_type)
    if cookie:
        response.headers["Set-Cookie"] = "sid=secret; HttpOnly"
    compress_reads(_request("GET", "gzip, br"), response)
    assert response.body == BIG and "Content-Encoding" not in response.headers


def test_a_json_type_with_a_suffix_is_compressed() -> None:
    response = Response(200, BIG, content_type="application/problem+json")
    compress_reads(_request("GET", "gzip"), response)
    assert response.headers["Content-Encoding"] == "gzip"


def test_the_server_frames_the_compressed_length() -> None:
    async def handler(request: Request) -> Response:
        return Response(200, BIG)

    async def run() -> bytes:
        server = Server(compression.compressing(handler), max_body_bytes=1024)
        await server.start("127.0.0.1", 0)
        try:
            data = b"GET / HTTP/1.1\r\nHost: e\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n"
            return await asyncio.to_thread(raw_exchange, server.port, data)
        finally:
            await server.shutdown(0.0)

    head, _, body = asyncio.run(run()).partition(b"\r\n\r\n")
    assert b"Content-Encoding: gzip" in head
    assert b"Content-Length: %d" % len(body) in head
    assert gzip.decompress(body) == BIG
