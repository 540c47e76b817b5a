"""What the edge's HTTP servers hand its handler and take back, whatever the HTTP version.

A `Request` is one parsed request and its body as it arrives; the handler answers with a
`Response` (written whole by the server, with trailers when it has them) or a `Stream` it
prepares and writes itself; `Request.on_head` has the last word on either's headers. Each
request is carried on a `Channel`: its HTTP/1.1 connection (`gateway.http1`) or its HTTP/2
stream (`gateway.http2`), which frames what the request and its answer say.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote

from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

__all__ = [
    "HTTP_10",
    "HTTP_11",
    "HTTP_2",
    "NO_BODY_STATUSES",
    "BodyTooLarge",
    "Channel",
    "Handler",
    "HttpVersion",
    "Refused",
    "Request",
    "Response",
    "Stream",
    "field_lines",
    "http_date",
    "json_response",
    "refusal_body",
]

HttpVersion = tuple[int, int]
HTTP_10: HttpVersion = (1, 0)
HTTP_11: HttpVersion = (1, 1)
HTTP_2: HttpVersion = (2, 0)

NO_BODY_STATUSES = frozenset({204, 304})

Refused = Callable[[str, int, str], None]
"""Told of a request refused before any handler saw it: (peer address, status, problem)."""

# The bodies of refusals the servers write themselves, before any handler: `google.rpc.Status`
# JSON as every edge error (gateway.errors renders the handler's; these never vary).
_REFUSALS = {
    400: (3, "malformed HTTP request"),
    408: (4, "the request did not arrive in time"),
    413: (8, "the body is too large"),
    431: (8, "the request's header section is too large"),
    505: (12, "only HTTP/1.0, HTTP/1.1 and HTTP/2 are served here"),
    500: (13, "internal error"),
}


def refusal_body(status: int) -> bytes:
    """The ``google.rpc.Status`` JSON body of a refusal the server answers itself."""
    code, text = _REFUSALS.get(status, (2, "refused"))
    return b'{"code":%d,"message":"%s","details":[]}' % (code, text.encode("ascii"))


class _Date:
    """The ``Date`` value (RFC 9110 §6.6.1), formatted once a second."""

    def __init__(self) -> None:
        self._second, self._text = 0, ""

    def __call__(self) -> str:
        now = int(time.time())
        if now != self._second:
            self._second, self._text = now, email.utils.formatdate(now, usegmt=True)
        return self._text


http_date = _Date()
"""The current ``Date`` header value."""


def field_lines(fields: Collection[tuple[str, str]]) -> str:
    """``name: value\r\n`` for each field; ValueError when a name or value holds a CR, LF or
    NUL, which would split the answer (HTTP/1.1) or is forbidden outright (HTTP/2)."""
    lines = "".join([f"{name}: {value}\r\n" for name, value in fields])
    # Each field adds exactly one CRLF: any other CR, LF or NUL came from a name or value.
    count = len(fields)
    if lines.count("\n") != count or lines.count("\r") != count or "\x00" in lines:
        raise ValueError("a header or trailer holds a CR, LF or NUL")
    return lines


class BodyTooLarge(Exception):
    """The request's body is over the server's `max_body_bytes`."""


class Channel(Protocol):
    """What carries one request and its answer: an HTTP/1.1 connection or an HTTP/2 stream."""

    peer: str
    """The TCP peer's address."""
    max_body_bytes: int

    @property
    def closed(self) -> bool:
        """Whether the client has gone (or reset the stream)."""
        ...

    def resume_reading(self) -> None:
        """Let more of the body arrive."""

    def send_continue(self, request: Request) -> None:
        """Send ``100 Continue`` (HTTP/1.1 only; HTTP/2 clients do not wait for it)."""

    def open_stream(self, request: Request, stream: Stream) -> None:
        """Send `stream`'s head."""

    def stream_data(self, stream: Stream, data: bytes) -> None:
        """Send one piece of `stream`'s body."""

    def stream_end(self, stream: Stream) -> None:
        """End `stream`'s body."""

    async def drain(self) -> None:
        """Wait while the client reads slower than the edge writes."""


class Request:
    """One parsed request: what the edge reads of it, and its body as it arrives.

    `exchange` is the edge's per-request record (`gateway.observe.Exchange`), set by the
    observer. Header values are decoded as UTF-8, undecodable bytes kept as surrogates, so
    they can be re-encoded unchanged.
    """

    __slots__ = (
        "_body",
        "_channel",
        "_complete",
        "_continue_sent",
        "_head_sent",
        "_query",
        "_too_large",
        "_waiter",
        "exchange",
        "headers",
        "keep_alive",
        "method",
        "on_head",
        "raw_path",
        "remote",
        "scheme",
        "version",
    )

    def __init__(
        self,
        channel: Channel,
        *,
        method: str,
        raw_path: str,
        version: HttpVersion,
        headers: CIMultiDictProxy[str],
        keep_alive: bool,
        scheme: str = "http",
    ) -> None:
        self.method = method
        self.raw_path = raw_path
        """The request target as sent: path and query, not decoded."""
        self.version = version
        self.headers = headers
        self.remote = channel.peer
        """The TCP peer's address."""
        self.scheme = scheme
        self.keep_alive = keep_alive
        self.exchange: Any = None
        self._channel = channel
        self._body = bytearray()
        self._complete = False
        self._too_large = False
        self._waiter: asyncio.Future[None] | None = None
        self._query: MultiDictProxy[str] | None = None
        self._continue_sent = False
        self._head_sent = False
        self.on_head: Callable[[CIMultiDict[str]], None] | None = None
        """Given the answer's headers just before they are written, whatever the answer (a
        stream's when it is prepared): the last word on them (CORS uses it)."""

    @property
    def path(self) -> str:
        """The path, percent-decoded (for logs; routing reads `raw_path`)."""
        return unquote(self.raw_path.partition("?")[0])

    @property
    def query(self) -> MultiDictProxy[str]:
        """The query string's parameters in order, ``+`` and percent escapes decoded."""
        if self._query is None:
            text = self.raw_path.partition("?")[2]
            pairs = parse_qsl(text, keep_blank_values=True) if text else []
            self._query = MultiDictProxy(MultiDict(pairs))
        return self._query

    @property
    def host(self) -> str:
        """The ``Host`` header (HTTP/2's ``:authority``)."""
        return self.headers.get("Host", "")

    @property
    def complete(self) -> bool:
        """Whether the whole request, body included, has arrived."""
        return self._complete

    @property
    def leaves_connection_usable(self) -> bool:
        """Whether the connection can carry another request after this one: a body over the
        limit is dropped as it arrives, and rather than keep reading one, the connection ends."""
        return self._complete and not self._too_large

    @property
    def head_sent(self) -> bool:
        """Whether the answer's head has gone out (a stream's, once prepared)."""
        return self._head_sent

    def mark_head_sent(self) -> None:
        """The answer's head has gone out (told by the channel that sent it)."""
        self._head_sent = True

    async def read(self) -> bytes:
        """The whole body, once it has arrived; `BodyTooLarge` past the server's limit."""
        while not self._complete and not self._too_large:
            if self._channel.closed:
                raise ConnectionResetError("the client closed the connection")
            self._channel.resume_reading()
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self._too_large:
            raise BodyTooLarge(f"the body is larger than {self._channel.max_body_bytes} bytes")
        return bytes(self._body)

    async def send_continue(self) -> None:
        """Answer ``Expect: 100-continue`` (once, and only while the body has not arrived)."""
        if self._continue_sent or self._complete or self._too_large or self.version != HTTP_11:
            return  # nothing to wait for, or a 413 coming, or a client that cannot expect 100
        if self._channel.closed:
            return
        self._continue_sent = True
        self._channel.send_continue(self)

    # -- fed by the channel ----------------------------------------------------------------

    def add_body(self, data: bytes) -> None:
        """Body bytes arrived (dropped once the body is over the limit)."""
        if self._too_large:
            return
        if len(self._body) + len(data) > self._channel.max_body_bytes:
            self.mark_too_large()
        else:
            self._body += data
        self.wake()

    def mark_too_large(self) -> None:
        """The body is over the limit (said so by its length, or by its bytes)."""
        self._too_large = True
        self._body = bytearray()

    def end(self) -> None:
        """The whole request has arrived."""
        self._complete = True
        self.wake()

    def wake(self) -> None:
        """Wake a `read` waiting for the body (more arrived, or the client left)."""
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class Response:
    """An answer written whole: status, headers, body, and `trailers` sent after the body
    (when the request's HTTP version can carry them and the answer has a body)."""

    __slots__ = ("body", "headers", "status", "trailers")
    prepared = False
    """Never: a `Response` is written by the server after the handler returns."""

    def __init__(
        self,
        status: int = 200,
        body: bytes = b"",
        *,
        content_type: str | None = "application/json",
        trailers: Iterable[tuple[str, str]] = (),
    ) -> None:
        self.status = status
        self.headers: CIMultiDict[str] = CIMultiDict()
        if content_type is not None and status not in NO_BODY_STATUSES:
            self.headers["Content-Type"] = content_type
        self.body = body
        self.trailers = list(trailers)

    @property
    def content_length(self) -> int:
        return len(self.body)


def json_response(document: Any, status: int = 200) -> Response:
    """`document` as a JSON answer."""
    return Response(status, json.dumps(document).encode())


class Stream:
    """An answer the handler writes as it goes: `prepare` sends the head, `write` one piece
    (waiting while the client reads slower than the edge writes), `write_eof` the end."""

    __slots__ = ("_channel", "_ended", "head_only", "headers", "prepared", "status")

    def __init__(self, status: int = 200, *, content_type: str) -> None:
        self.status = status
        self.headers: CIMultiDict[str] = CIMultiDict({"Content-Type": content_type})
        self.prepared = False
        self.head_only = False
        """Answering HEAD: what a GET would get, without its body."""
        self._channel: Channel | None = None
        self._ended = False

    @property
    def content_length(self) -> None:
        return None

    async def prepare(self, request: Request) -> None:
        channel = request._channel
        if channel.closed:
            raise ConnectionResetError("the client closed the connection")
        if request.on_head is not None:
            request.on_head(self.headers)
        self._channel = channel
        self.head_only = request.method == "HEAD"
        channel.open_stream(request, self)
        self.prepared = request._head_sent = True

    async def write(self, data: bytes) -> None:
        channel = self._channel
        if channel is None or self._ended:
            raise RuntimeError("write before prepare or after write_eof")
        if channel.closed:
            raise ConnectionResetError("the client closed the connection")
        if data and not self.head_only:
            channel.stream_data(self, data)
        await channel.drain()

    async def write_eof(self) -> None:
        channel = self._channel
        if channel is None or self._ended:
            return
        self._ended = True
        if not channel.closed:
            channel.stream_end(self)

    @property
    def ended(self) -> bool:
        return self._ended


Handler = Callable[[Request], Awaitable[Response | Stream]]
"""The edge's one request handler."""
