"""HTTP trailers on a unary answer, for a client that says it accepts them (grpc-gateway's rule).

A request carrying ``TE: trailers`` (RFC 9110 §10.1.4) over HTTP/1.1 gets the call's trailing
metadata as real trailer fields: their names announced in ``Trailer``, the body sent chunked,
and ``Grpc-Trailer-<key>`` fields after its last chunk (RFC 9112 §7.1.2), on success and on
error alike. Without ``TE: trailers`` they stay ``Grpc-Trailer-<key>`` headers, as a client
that never asked may not read trailers at all. Streams end with their metadata unsent, as in
grpc-gateway (their error line carries the status).

aiohttp writes no trailers, so `TrailedResponse` frames its chunks itself, with aiohttp's own
framing turned off the way its WebSocket response turns it off.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web
from aiohttp.http import HttpVersion11

__all__ = ["TrailedResponse", "accepts_trailers"]


def accepts_trailers(request: web.BaseRequest) -> bool:
    """Whether `request` can be answered with trailers: HTTP/1.1 (chunked framing exists) with
    ``trailers`` among its ``TE`` values, and a method whose answer has a body."""
    if request.version != HttpVersion11 or request.method == "HEAD":
        return False
    for value in request.headers.getall("TE", ()):
        for item in value.split(","):
            if item.split(";", 1)[0].strip().lower() == "trailers":
                return True
    return False


class TrailedResponse(web.StreamResponse):
    """A whole body in one chunk, then `trailers` after the last chunk.

    Left unprepared by the handler like a `web.Response` (middlewares still add headers);
    aiohttp's ``write_eof`` at the end of the request writes the framed body and trailers.
    `trailers` are (name, value) pairs already fit for a header (`headers.response_headers`).
    """

    _length_check = False  # aiohttp neither counts nor frames the body: `write_eof` frames it

    def __init__(
        self, *, status: int, body: bytes, content_type: str, trailers: Sequence[tuple[str, str]]
    ) -> None:
        if status in (204, 304) or status < 200:
            raise ValueError(f"a {status} answer has no body to carry trailers")
        super().__init__(status=status)
        self.content_type = content_type
        self.headers["Transfer-Encoding"] = "chunked"
        self.headers["Trailer"] = ", ".join(dict.fromkeys(name for name, _ in trailers))
        self._framed: bytes | None = _framed(body, trailers)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        raise RuntimeError("a TrailedResponse is written whole, by write_eof")

    async def write_eof(self, data: bytes = b"") -> None:
        if data:
            raise RuntimeError("a TrailedResponse is written whole, by write_eof")
        framed, self._framed = self._framed, None
        await super().write_eof(framed or b"")


def _framed(body: bytes, trailers: Sequence[tuple[str, str]]) -> bytes:
    chunk = b"%x\r\n%s\r\n" % (len(body), body) if body else b""
    fields = "".join(f"{name}: {value}\r\n" for name, value in trailers)
    return chunk + b"0\r\n" + fields.encode("ascii") + b"\r\n"
