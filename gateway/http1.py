"""The edge's HTTP/1.1 server: llhttp's parser (httptools) on an `asyncio.Protocol`.

The edge routes, answers errors and observes requests itself, so what it needs of an HTTP
server is framing: parse a request, hand it to one handler, write the answer. The edge on
aiohttp's low-level server spent 1.05 times the CPU per call it spends on this one
(`bench/vs_grpc_gateway`, README "The edge against Go grpc-gateway"): this one keeps only
what the edge reads.

What it does (RFC 9112, RFC 9110):

- **Parsing** is llhttp's, strict: a bare CR or LF, a NUL, an obsolete line fold, bad chunking
  or ``Content-Length`` beside ``Transfer-Encoding`` is a 400; so is an HTTP/1.1 request with
  no ``Host`` or two (RFC 9112 §3.2), and an ``Upgrade`` request with a body; a version other
  than 1.0 and 1.1 is a 505. ``Transfer-Encoding`` in HTTP/1.0 ends the connection after the
  message. Request smuggling needs a parser that guesses, and this one refuses instead.
- **Limits**: the request line and header section together at most `max_head_bytes` and
  `max_headers` fields (else 431; measured on the wire too, since llhttp holds a field until
  it ends), a body at most `max_body_bytes` (413, as soon as its ``Content-Length`` or the
  bytes received say so; its framing and trailers at most twice that), a whole request
  within `read_timeout_seconds` of its first byte (else 408: a slow client cannot hold a
  connection open by trickling), an idle connection closed after `keepalive_seconds`.
- **Keep-alive and pipelining**: requests on a connection are answered one at a time, in
  order; while one is being answered, reading pauses once the next has arrived, and the
  next starts only once the answer before it has drained (a client that does not read is
  not answered ahead).
- A refused request is answered with a ``google.rpc.Status`` JSON body and the connection
  closes; `on_refused` hears the peer, the status and the kind of problem, never a byte of
  the request (a header line may hold a credential). A connection closing after an answer
  lingers: FIN, then what the client still sends is read and dropped for a moment, so a
  reset cannot destroy the answer (RFC 9112 §9.6).
- ``Expect: 100-continue`` is the handler's to answer (`Request.send_continue`): it knows
  whether it will read the body.
- A client that leaves cancels its request's handler (and so its backend call).
- ``Upgrade`` (h2c, WebSocket) is otherwise ignored, as RFC 9110 §7.8 allows: the request is
  answered over HTTP/1.1 and the connection then closes.
- `Server.shutdown` stops listening, closes idle connections, lets requests in flight
  finish for a grace period, then cancels them.

A handler returns a `Response` (written whole, with trailers when it has them) or a `Stream`
it has prepared and written itself; `Request.on_head` has the last word on either's headers.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, unquote

import httptools
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

__all__ = [
    "HTTP_10",
    "HTTP_11",
    "BodyTooLarge",
    "Encode",
    "Handler",
    "Refused",
    "Request",
    "Response",
    "Server",
    "Stream",
    "json_response",
]

_log = logging.getLogger("poly.gateway.http")

HttpVersion = tuple[int, int]
HTTP_10: HttpVersion = (1, 0)
HTTP_11: HttpVersion = (1, 1)
_VERSIONS = {"1.1": HTTP_11, "1.0": HTTP_10}

Refused = Callable[[str, int, str], None]
"""Told of a request refused before any handler saw it: (peer address, status, problem)."""
Encode = Callable[["Request", "Response"], None]
"""Given each whole answer before it is framed, to change its body's encoding (compression)."""

_STATUS_LINES = {int(status): f"HTTP/1.1 {int(status)} {status.phrase}\r\n".encode() for status in HTTPStatus}
_NO_BODY_STATUSES = frozenset({204, 304})
_LINGER_SECONDS = 2.0
"""How long a closing connection still reads (and drops) what its client sends."""
_FORBIDDEN_IN_HEADERS = str.maketrans("", "", "\r\n\x00")
# The bodies of refusals the server writes itself, before any handler: `google.rpc.Status`
# JSON as every edge error (gateway.errors renders the handler's; these never vary).
_REFUSALS = {
    400: (3, "malformed HTTP request"),
    408: (4, "the request did not arrive in time"),
    413: (8, "the body is too large"),
    431: (8, "the request's header section is too large"),
    505: (12, "only HTTP/1.0 and HTTP/1.1 are served here"),
    500: (13, "internal error"),
}


class BodyTooLarge(Exception):
    """The request's body is over the server's `max_body_bytes`."""


class _Refusal(Exception):
    """A request the server answers itself, with `status`, because of `problem`."""

    def __init__(self, status: int, problem: str) -> None:
        super().__init__(problem)
        self.status, self.problem = status, problem


class Request:
    """One parsed request: what the edge reads of it, and its body as it arrives.

    `exchange` is the edge's per-request record (`gateway.observe.Exchange`), set by the
    observer. Header values are decoded as aiohttp decodes them (UTF-8, undecodable bytes kept
    as surrogates) so they can be re-encoded unchanged.
    """

    __slots__ = (
        "_body",
        "_complete",
        "_connection",
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
        connection: _Connection,
        *,
        method: str,
        raw_path: str,
        version: HttpVersion,
        headers: CIMultiDictProxy[str],
        keep_alive: bool,
    ) -> None:
        self.method = method
        self.raw_path = raw_path
        """The request target as sent: path and query, not decoded."""
        self.version = version
        self.headers = headers
        self.remote = connection.peer
        """The TCP peer's address."""
        self.scheme = "http"
        self.keep_alive = keep_alive
        self.exchange: Any = None
        self._connection = connection
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
        """The ``Host`` header (always present: a request without one is refused)."""
        return self.headers.get("Host", "")

    @property
    def complete(self) -> bool:
        """Whether the whole request, body included, has arrived."""
        return self._complete

    @property
    def _leaves_connection_usable(self) -> bool:
        # A body over the limit is dropped as it arrives; rather than keep reading one, the
        # connection ends with its answer.
        return self._complete and not self._too_large

    async def read(self) -> bytes:
        """The whole body, once it has arrived; `BodyTooLarge` past the server's limit."""
        while not self._complete and not self._too_large:
            if self._connection.closed:
                raise ConnectionResetError("the client closed the connection")
            self._connection.resume_reading()
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self._too_large:
            raise BodyTooLarge(f"the body is larger than {self._connection.server.max_body_bytes} bytes")
        return bytes(self._body)

    async def send_continue(self) -> None:
        """Answer ``Expect: 100-continue`` (once, and only while the body has not arrived)."""
        if self._continue_sent or self._complete or self._too_large or self.version != HTTP_11:
            return  # nothing to wait for, or a 413 coming, or a client that cannot expect 100
        if self._connection.closed:
            return
        self._continue_sent = True
        self._connection.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    # -- fed by the connection -------------------------------------------------------------

    def _add_body(self, data: bytes, limit: int) -> None:
        if self._too_large:
            return
        if len(self._body) + len(data) > limit:
            self._too_large = True
            self._body = bytearray()
        else:
            self._body += data
        self._wake()

    def _end(self) -> None:
        self._complete = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class Response:
    """An answer written whole: status, headers, body, and `trailers` sent after a chunked
    body (only when the request is HTTP/1.1 and the answer has a body)."""

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
        if content_type is not None and status not in _NO_BODY_STATUSES:
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
    """An answer the handler writes as it goes: `prepare` sends the head, `write` one chunk
    (waiting while the client reads slower than the edge writes), `write_eof` the end."""

    __slots__ = ("_chunked", "_connection", "_ended", "_head_only", "headers", "prepared", "status")

    def __init__(self, status: int = 200, *, content_type: str) -> None:
        self.status = status
        self.headers: CIMultiDict[str] = CIMultiDict({"Content-Type": content_type})
        self.prepared = False
        self._connection: _Connection | None = None
        self._chunked = True
        self._ended = False
        self._head_only = False

    @property
    def content_length(self) -> None:
        return None

    async def prepare(self, request: Request) -> None:
        connection = request._connection
        if connection.closed:
            raise ConnectionResetError("the client closed the connection")
        if request.on_head is not None:
            request.on_head(self.headers)
        self._connection = connection
        # HTTP/1.0 has no chunks: the body ends when the connection does.
        self._chunked = request.version == HTTP_11
        if not self._chunked:
            request.keep_alive = False
        head = _head(
            self.status,
            self.headers,
            keep_alive=request.keep_alive and request._leaves_connection_usable,
            version=request.version,
            framing=b"Transfer-Encoding: chunked\r\n" if self._chunked else b"",
        )
        self.prepared = request._head_sent = True
        self._head_only = request.method == "HEAD"  # what a GET would get, without its body
        connection.write(head)

    async def write(self, data: bytes) -> None:
        connection = self._connection
        if connection is None or self._ended:
            raise RuntimeError("write before prepare or after write_eof")
        if connection.closed:
            raise ConnectionResetError("the client closed the connection")
        if data and not self._head_only:
            connection.write(b"%x\r\n%s\r\n" % (len(data), data) if self._chunked else data)
        await connection.drain()

    async def write_eof(self) -> None:
        connection = self._connection
        if connection is None or self._ended:
            return
        self._ended = True
        if self._chunked and not connection.closed and not self._head_only:
            connection.write(b"0\r\n\r\n")

    @property
    def ended(self) -> bool:
        return self._ended


Handler = Callable[[Request], Awaitable[Response | Stream]]
"""The edge's one request handler."""


class _DateHeader:
    """The ``Date`` header line, formatted once a second (RFC 9110 §6.6.1)."""

    def __init__(self) -> None:
        self._second, self._line = 0, b""

    def __call__(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._line = b"Date: " + email.utils.formatdate(now, usegmt=True).encode() + b"\r\n"
        return self._line


_date = _DateHeader()


def _breaks(text: str) -> bool:
    """Whether `text` holds a CR, LF or NUL: in a header it would split the answer."""
    return text.translate(_FORBIDDEN_IN_HEADERS) != text


def _head(
    status: int,
    headers: CIMultiDict[str],
    *,
    keep_alive: bool,
    version: HttpVersion,
    framing: bytes,
) -> bytes:
    """The status line and header section; a CR, LF or NUL in a header is an error (it would
    split the answer), never written."""
    line = _STATUS_LINES.get(status) or f"HTTP/1.1 {status} \r\n".encode()
    fields = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    # Each field adds exactly one CRLF: any other CR, LF or NUL came from a name or value.
    if fields.count("\n") != len(headers) or fields.count("\r") != len(headers) or "\x00" in fields:
        raise ValueError("a header holds a CR, LF or NUL")
    parts = [line, _date(), framing, fields.encode("utf-8", "surrogateescape")]
    if not keep_alive:
        parts.append(b"Connection: close\r\n")
    elif version == HTTP_10:
        parts.append(b"Connection: keep-alive\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def _whole(response: Response, request: Request, keep_alive: bool) -> bytes:
    """`response` framed for `request`: with its trailers after a chunked body when both
    sides can carry them, else with a ``Content-Length`` (and no body for HEAD)."""
    status, body = response.status, response.body
    if request.on_head is not None:
        request.on_head(response.headers)
    no_body = status in _NO_BODY_STATUSES or status < 200
    if response.trailers and not no_body and request.version == HTTP_11 and request.method != "HEAD":
        names = ", ".join(dict.fromkeys(name for name, _ in response.trailers))
        head = _head(
            status,
            response.headers,
            keep_alive=keep_alive,
            version=request.version,
            framing=b"Transfer-Encoding: chunked\r\nTrailer: %s\r\n" % names.encode("ascii"),
        )
        for name, value in response.trailers:
            if _breaks(name) or _breaks(value):
                raise ValueError(f"trailer {name!r} holds a CR, LF or NUL")
        fields = "".join(f"{name}: {value}\r\n" for name, value in response.trailers)
        chunk = b"%x\r\n%s\r\n" % (len(body), body) if body else b""
        return head + chunk + b"0\r\n" + fields.encode("ascii") + b"\r\n"
    framing = b"" if no_body else b"Content-Length: %d\r\n" % len(body)
    head = _head(status, response.headers, keep_alive=keep_alive, version=request.version, framing=framing)
    if no_body or request.method == "HEAD":
        return head
    return head + body


def _refusal_bytes(status: int, message: str | None = None) -> bytes:
    code, text = _REFUSALS.get(status, (2, "refused"))
    body = b'{"code":%d,"message":"%s","details":[]}' % (code, (message or text).encode("ascii"))
    headers: CIMultiDict[str] = CIMultiDict({"Content-Type": "application/json"})
    head = _head(
        status, headers, keep_alive=False, version=HTTP_11, framing=b"Content-Length: %d\r\n" % len(body)
    )
    return head + body


class _Connection(asyncio.Protocol):
    """One client connection: parse, queue, answer in order."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.peer = ""
        self.closed = False
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        # Parsing state of the request being read.
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._head_bytes = 0
        self._head_wire = 0
        """Bytes of reads that began and ended inside the head being read."""
        self._body_wire = 0
        """Bytes of reads that began and ended inside the body being read (framing included)."""
        self._in_message = False
        """Between a request's first byte and its last."""
        self._messages = 0
        """Requests begun on this connection."""
        self._reading: Request | None = None
        # Requests read, waiting for their turn; the one being answered and its task.
        self._waiting: deque[Request] = deque()
        self._serving: Request | None = None
        self._task: asyncio.Task[None] | None = None
        self._paused = False
        self._lingering = False
        self._write_paused = False
        self._drained: asyncio.Future[None] | None = None
        self._closing_after_answer = False
        # One timer per connection, re-armed only when it fires: per request, a deadline is a
        # float set and cleared, not a timer scheduled and cancelled.
        self._deadline: float | None = None
        """When the wait in progress ends: a request's arrival (`read_timeout_seconds` after
        its first byte) or an idle connection's next request (`keepalive_seconds`)."""
        self._timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else ""
        self.server._connections.add(self)
        self._idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server._connections.discard(self)
        self._stop_timer()
        if self._task is not None and not self._task.done():
            self._task.cancel()  # the client left: so does its handler
        for request in (self._reading, *self._waiting):
            if request is not None:
                request._wake()
        self._waiting.clear()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.closed or self._lingering or (self._closing_after_answer and self._reading is None):
            return  # the connection ends (after the answer in progress): nothing more is read
        # llhttp holds an unfinished header field itself and hands it over only once it ends,
        # so a head or trailer that never ends is measured here: a read that begins and ends
        # inside a head is all head, one that begins and ends inside a body all body framing.
        in_head, in_body = self._in_message and self._reading is None, self._reading is not None
        message = self._messages
        try:
            self._parser.feed_data(data)
            if message == self._messages:  # else another request began: its callbacks measure it
                self._measure(len(data), in_head=in_head, in_body=in_body)
        except httptools.HttpParserUpgrade:
            # Upgrade ignored (RFC 9110 §7.8): the request is answered, then the connection
            # ends, since what follows its head is not HTTP/1.1 any more.
            self._closing_after_answer = True
            if self._reading is not None:
                self._reading._end()
                self._reading = None
        except _Refusal as refused:
            self._refuse(refused.status, refused.problem)
        except httptools.HttpParserCallbackError as error:
            cause = error.__context__
            if isinstance(cause, _Refusal):
                self._refuse(cause.status, cause.problem)
            else:
                _log.error("HTTP parser callback failed", exc_info=cause)
                self._refuse(500, "internal error")
        except httptools.HttpParserError as error:
            # llhttp's description names the rule broken, never the bytes.
            self._refuse(400, str(error).split(":", 1)[0][:120])

    def _measure(self, size: int, *, in_head: bool, in_body: bool) -> None:
        if in_head and self._in_message and self._reading is None:
            self._head_wire += size
            if self._head_wire > self.server.max_head_bytes:
                raise _Refusal(431, "the request line and headers are too large")
        elif in_body and self._reading is not None:
            self._body_wire += size
            if self._body_wire > self.server._max_body_wire:
                raise _Refusal(413, "the body and its framing are too large")

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # -- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._head_bytes = self._head_wire = self._body_wire = 0
        self._in_message = True
        self._messages += 1
        self._wait(self.server.read_timeout_seconds)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        if len(self._headers) >= self.server.max_headers:
            raise _Refusal(431, "too many header fields")
        # llhttp keeps a value's trailing whitespace, which is not part of it (RFC 9110 §5.5).
        self._headers.append(
            (name.decode("utf-8", "surrogateescape"), value.rstrip(b" \t").decode("utf-8", "surrogateescape"))
        )

    def on_headers_complete(self) -> None:
        parser = self._parser
        version = _VERSIONS.get(parser.get_http_version())
        if version is None:
            raise _Refusal(505, "an HTTP version other than 1.0 and 1.1")
        headers = CIMultiDictProxy(CIMultiDict(self._headers))
        if version == HTTP_11 and len(headers.getall("Host", ())) != 1:
            raise _Refusal(400, "an HTTP/1.1 request needs exactly one Host header")
        length = headers.get("Content-Length")
        too_large = length is not None and length.isdigit() and int(length) > self.server.max_body_bytes
        chunked = "Transfer-Encoding" in headers
        if parser.should_upgrade() and (chunked or (length is not None and length != "0")):
            # llhttp would skip the body of a request it takes to be upgrading.
            raise _Refusal(400, "a body on an upgrade request")
        target = self._url
        if not target.startswith(b"/") and target.startswith((b"http://", b"https://")):
            # The absolute form (RFC 9112 §3.2.2): the path and query are the target.
            url = httptools.parse_url(target)
            target = (url.path or b"/") + (b"?" + url.query if url.query else b"")
        request = Request(
            self,
            method=parser.get_method().decode("ascii"),
            raw_path=target.decode("ascii", "surrogateescape"),
            version=version,
            headers=headers,
            # Transfer-Encoding in HTTP/1.0 is faulty framing: close after it (RFC 9112 §6.1).
            keep_alive=parser.should_keep_alive()
            and not self.server.closing
            and not (chunked and version == HTTP_10),
        )
        if too_large:
            request._too_large = True
        self._reading = request
        if self._serving is None:
            self._start(request)
        else:
            self._waiting.append(request)
            self.pause_reading()

    def on_body(self, body: bytes) -> None:
        if self._reading is not None:
            self._reading._add_body(body, self.server.max_body_bytes)

    def on_message_complete(self) -> None:
        request, self._reading = self._reading, None
        self._in_message = False
        self._deadline = None
        if request is not None:
            request._end()

    # -- serving -----------------------------------------------------------------------------

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self.server.max_head_bytes:
            raise _Refusal(431, "the request line and headers are too large")

    def _start(self, request: Request) -> None:
        self._serving = request
        self._task = self._loop.create_task(self._answer(request))

    async def _answer(self, request: Request) -> None:
        server = self.server
        try:
            response = await server.handler(request)
        except asyncio.CancelledError:
            self._close(linger=True)  # a refusal answered for it, or the client is gone
            raise
        except Exception:  # noqa: BLE001 - the handler answers its own errors; this is a last resort
            _log.exception("the request handler failed")
            if not request._head_sent:  # else a stream's head is out: ending it is all that is left
                self.write(_refusal_bytes(500))
            self._close(linger=True)
            return
        if self.closed:
            return
        if isinstance(response, Stream):
            if not response.ended or not request.keep_alive or not request._leaves_connection_usable:
                self._close(linger=True)
                return
        else:
            # Keep the connection only if the next request can be read after this one.
            keep_alive = (
                request.keep_alive
                and request._leaves_connection_usable
                and not (self._closing_after_answer or server.closing)
            )
            try:
                if server.encode is not None:
                    server.encode(request, response)
                data = _whole(response, request, keep_alive)
            except Exception:  # noqa: BLE001 - whatever the handler built, the client gets an answer
                _log.exception("an answer could not be framed")
                data, keep_alive = _refusal_bytes(500), False
            self.write(data)
            if not keep_alive:
                self._close(linger=True)
                return
        # A client that does not read its answers stops being answered (and read from).
        await self.drain()
        if not self.closed:
            self._next()

    def _next(self) -> None:
        self._serving = self._task = None
        if self._closing_after_answer or self.server.closing:
            self._close(linger=True)
        elif self._waiting:
            self._start(self._waiting.popleft())
            if not self._waiting:
                self.resume_reading()
        else:
            self.resume_reading()
            self._idle()

    def _refuse(self, status: int, problem: str) -> None:
        """Answer a request the parser or a limit refused, and close: nothing after it on
        this connection can be trusted to be framed as the client meant."""
        if self.closed:
            return
        self.server._refused(self.peer, status, problem)
        reading, self._reading = self._reading, None
        self._in_message = False
        self._waiting.clear()
        serving, task = self._serving, self._task
        if serving is None or serving is reading:
            # The request being answered is the broken one: its handler stops, the refusal
            # is its answer.
            if task is not None and not task.done():
                task.cancel()
            self.write(_refusal_bytes(status))
            self._close(linger=True)
        else:
            # The answer in progress goes out first; then the connection ends.
            self._closing_after_answer = True
            self.pause_reading()

    def _idle(self) -> None:
        if self.server.closing:
            self._close()
        elif not self._in_message:  # a request already arriving keeps its own deadline
            self._wait(self.server.keepalive_seconds)

    def _wait(self, seconds: float) -> None:
        now = self._loop.time()
        self._deadline = now + seconds
        if self._timer is None:
            self._timer = self._loop.call_at(now + self.server._tick, self._deadline_passed)

    def _deadline_passed(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None or self.closed:
            return
        now = self._loop.time()
        if now < deadline:
            # Never later than one tick ahead: a deadline set meanwhile is at least that far.
            self._timer = self._loop.call_at(min(deadline, now + self.server._tick), self._deadline_passed)
            return
        self._deadline = None
        if self._in_message:
            self._refuse(408, "the request did not arrive in time")
        elif self._serving is None and not self._waiting:
            self._close()  # idle for the whole keep-alive period

    def _stop_timer(self) -> None:
        self._deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- for requests, streams and the server ------------------------------------------------

    @property
    def busy(self) -> bool:
        return self._serving is not None

    def write(self, data: bytes) -> None:
        if self._transport is not None and not self.closed and not self._lingering:
            self._transport.write(data)

    async def drain(self) -> None:
        if self._write_paused and not self.closed:
            self._drained = self._loop.create_future()
            await self._drained

    def pause_reading(self) -> None:
        if not self._paused and self._transport is not None and not self.closed:
            self._paused = True
            self._transport.pause_reading()
            if self._in_message:
                self._deadline = None  # the server keeps the client waiting, not the reverse

    def resume_reading(self) -> None:
        if self._paused and self._transport is not None and not self.closed:
            self._paused = False
            self._transport.resume_reading()
            if self._in_message:
                self._wait(self.server.read_timeout_seconds)

    def cancel(self) -> None:
        """Cancel the request being answered (the server's grace period is over)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._close()

    def _close(self, *, linger: bool = False) -> None:
        """Close now, or with `linger` after an answer: send FIN, then read and drop what the
        client still sends for a moment, so a reset cannot destroy the answer on its way
        (RFC 9112 §9.6); the client's own FIN ends it sooner."""
        transport = self._transport
        if transport is None or transport.is_closing():
            self._stop_timer()
        elif linger and self._lingering:
            pass
        elif linger and transport.can_write_eof():
            self._lingering = True
            self._stop_timer()
            transport.write_eof()
            self._timer = self._loop.call_later(_LINGER_SECONDS, transport.close)
            self.resume_reading()
        else:
            transport.close()
            self._stop_timer()


class Server:
    """Serve `handler` over HTTP/1.1 on a TCP port (`start`, then `shutdown`).

    The limits are per request (`max_body_bytes`, `max_head_bytes`, `max_headers`,
    `read_timeout_seconds`) and per idle connection (`keepalive_seconds`); `on_refused` is told
    of every request refused before the handler saw it; `encode` may re-encode each whole
    answer before it is framed (`gateway.compression.compress_reads`).
    """

    def __init__(
        self,
        handler: Handler,
        *,
        max_body_bytes: int,
        max_head_bytes: int = 16 * 1024,
        max_headers: int = 100,
        read_timeout_seconds: float = 60.0,
        keepalive_seconds: float = 75.0,
        on_refused: Refused | None = None,
        encode: Encode | None = None,
    ) -> None:
        self.handler = handler
        self.encode = encode
        self.max_body_bytes = max_body_bytes
        self.max_head_bytes = max_head_bytes
        self.max_headers = max_headers
        self.read_timeout_seconds = read_timeout_seconds
        self.keepalive_seconds = keepalive_seconds
        self._tick = min(read_timeout_seconds, keepalive_seconds)
        # A body's bytes on the wire, chunk framing and trailers included: room for framing
        # of chunks down to a few bytes each, never an unbounded trailer.
        self._max_body_wire = 2 * max_body_bytes + max_head_bytes
        self.closing = False
        self._on_refused = on_refused
        self._connections: set[_Connection] = set()
        self._listener: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The port listened on (the one the system picked, for port 0)."""
        assert self._listener is not None, "not started"
        return int(self._listener.sockets[0].getsockname()[1])

    async def start(self, host: str, port: int, *, backlog: int = 128) -> None:
        """Listen on `host`:`port` (OSError when it cannot)."""
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(
            lambda: _Connection(self), host, port, backlog=backlog, reuse_address=True
        )

    async def shutdown(self, grace_seconds: float) -> None:
        """Stop listening, close idle connections, give requests in flight `grace_seconds`
        to finish, then cancel them and close every connection."""
        self.closing = True
        if self._listener is not None:
            self._listener.close()
        for connection in list(self._connections):
            if not connection.busy:
                connection._close()
        deadline = time.monotonic() + grace_seconds
        while any(c.busy for c in self._connections) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for connection in list(self._connections):
            connection.cancel()
        if self._listener is not None:
            await self._listener.wait_closed()
        await asyncio.sleep(0)  # let cancelled handlers run their ends

    def _refused(self, peer: str, status: int, problem: str) -> None:
        if self._on_refused is not None:
            self._on_refused(peer, status, problem)
