"""The edge's HTTP/1.1 connections: llhttp's parser (httptools) on an `asyncio.Protocol`
(`gateway.httpserver` listens and hands each connection here first).

The edge routes, answers errors and observes requests itself, so what it needs of an HTTP
server is framing: parse a request, hand it to one handler, write the answer. The edge on
aiohttp's low-level server spent 1.05 times the CPU per call it spends on this one
(`bench/vs_grpc_gateway`, README "The edge against Go grpc-gateway"): this one keeps only
what the edge reads.

What it does (RFC 9112, RFC 9110):

- **Parsing** is llhttp's, strict: a bare CR or LF, a NUL, an obsolete line fold, bad chunking
  or ``Content-Length`` beside ``Transfer-Encoding`` is a 400; so is an HTTP/1.1 request with
  no ``Host`` or two (RFC 9112 §3.2), and an ``Upgrade`` request with a body; a version other
  than 1.0 and 1.1 is a 505 (HTTP/2 comes by its preface, never a request line).
  ``Transfer-Encoding`` in HTTP/1.0 ends the connection after the message. Request
  smuggling needs a parser that guesses, and this one refuses instead.
- **Limits**: the request line and header section together at most `max_head_bytes` and
  `max_headers` fields (else 431; measured on the wire too, since llhttp holds a field until
  it ends), a body at most `max_body_bytes` (413, as soon as its ``Content-Length`` or the
  bytes received say so; its framing and trailers at most twice that), a whole request
  within `read_timeout_seconds` of its first byte (else 408: a slow client cannot hold a
  connection open by trickling), an answer the client reads nothing of for as long ends the
  connection, an idle connection closed after `keepalive_seconds`.
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
- **HTTP/2**: a connection that negotiated ``h2`` by ALPN, or opens with HTTP/2's preface,
  or whose request asks for ``Upgrade: h2c`` (with nothing else on the connection, and a
  body of a known length, read first) is handed to `gateway.http2`. Any other ``Upgrade``
  (WebSocket) is ignored, as RFC 9110 §7.8 allows: the request is answered over HTTP/1.1
  and the connection then closes.
- `stop_accepting` (the server's shutdown) closes an idle connection at once and a busy one
  after its answer.

A handler returns a `Response` (written whole, with trailers when it has them) or a `Stream`
it has prepared and written itself (`gateway.wire`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from http import HTTPStatus
from typing import TYPE_CHECKING

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from gateway import http2
from gateway.wire import (
    HTTP_10,
    HTTP_11,
    NO_BODY_STATUSES,
    HttpVersion,
    Request,
    Response,
    Stream,
    field_lines,
    http_date,
    refusal_body,
)

if TYPE_CHECKING:
    from gateway.httpserver import Server

__all__ = ["Http1Connection"]

_log = logging.getLogger("poly.gateway.http")

_VERSIONS = {"1.1": HTTP_11, "1.0": HTTP_10}
_STATUS_LINES = {int(status): f"HTTP/1.1 {int(status)} {status.phrase}\r\n".encode() for status in HTTPStatus}
_SWITCHING = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
_LINGER_SECONDS = 2.0
"""How long a closing connection still reads (and drops) what its client sends."""


class _Refusal(Exception):
    """A request the server answers itself, with `status`, because of `problem`."""

    def __init__(self, status: int, problem: str) -> None:
        super().__init__(problem)
        self.status, self.problem = status, problem


class _DateLine:
    """The ``Date`` header line, built once a second."""

    def __init__(self) -> None:
        self._text, self._line = "", b""

    def __call__(self) -> bytes:
        text = http_date()
        if text is not self._text:
            self._text, self._line = text, b"Date: " + text.encode() + b"\r\n"
        return self._line


_date = _DateLine()


def _tokens(values: list[str]) -> set[str]:
    """The comma-separated tokens of a header's values, lowercased."""
    return {token.strip().lower() for value in values for token in value.split(",")}


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
    parts = [line, _date(), framing, field_lines(headers.items()).encode("utf-8", "surrogateescape")]
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
    no_body = status in NO_BODY_STATUSES or status < 200
    if response.trailers and not no_body and request.version == HTTP_11 and request.method != "HEAD":
        names = ", ".join(dict.fromkeys(name for name, _ in response.trailers))
        head = _head(
            status,
            response.headers,
            keep_alive=keep_alive,
            version=request.version,
            framing=b"Transfer-Encoding: chunked\r\nTrailer: %s\r\n" % names.encode("ascii"),
        )
        fields = field_lines(response.trailers)
        chunk = b"%x\r\n%s\r\n" % (len(body), body) if body else b""
        return head + chunk + b"0\r\n" + fields.encode("ascii") + b"\r\n"
    framing = b"" if no_body else b"Content-Length: %d\r\n" % len(body)
    head = _head(status, response.headers, keep_alive=keep_alive, version=request.version, framing=framing)
    if no_body or request.method == "HEAD":
        return head
    return head + body


def _refusal_bytes(status: int) -> bytes:
    body = refusal_body(status)
    headers: CIMultiDict[str] = CIMultiDict({"Content-Type": "application/json"})
    head = _head(
        status, headers, keep_alive=False, version=HTTP_11, framing=b"Content-Length: %d\r\n" % len(body)
    )
    return head + body


class Http1Connection(asyncio.Protocol):
    """One client connection: parse, queue, answer in order; handed to `gateway.http2` when
    the client speaks HTTP/2 (`gateway.httpserver`)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.peer = ""
        self.closed = False
        self.max_body_bytes = server.max_body_bytes
        self._scheme = "https" if server.tls is not None else "http"
        self._early = b""
        """The first bytes of a connection, while they may still be HTTP/2's preface."""
        self._upgrading: Request | None = None
        """An ``Upgrade: h2c`` request, answered over HTTP/2 once its head (and body) arrived."""
        self._upgrade_body = bytearray()
        self._upgrade_left = 0
        """Bytes of the upgrade request's body still to come (llhttp leaves them to us)."""
        self._chunked = True
        """Whether the stream being answered is sent in chunks (HTTP/1.1) or until the end (1.0)."""
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
        self._stalled: asyncio.TimerHandle | None = None
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
        ssl_object = transport.get_extra_info("ssl_object")
        if self.server.http2 and ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
            http2.Http2Connection(self.server, scheme=self._scheme).take_over(transport)
            return
        self.server.connections.add(self)
        self._idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        self._stop_timer()
        if self._stalled is not None:
            self._stalled.cancel()
        if self._task is not None and not self._task.done():
            self._task.cancel()  # the client left: so does its handler
        for request in (self._reading, *self._waiting):
            if request is not None:
                request.wake()
        self._waiting.clear()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.closed or self._lingering or (self._closing_after_answer and self._reading is None):
            return  # the connection ends (after the answer in progress): nothing more is read
        if self._upgrade_left or (self._messages == 0 and not self._in_message and self.server.http2):
            parse = self._before_http1(data)
            if parse is None:
                return
            data = parse
        # llhttp holds an unfinished header field itself and hands it over only once it ends,
        # so a head or trailer that never ends is measured here: a read that begins and ends
        # inside a head is all head, one that begins and ends inside a body all body framing.
        in_head, in_body = self._in_message and self._reading is None, self._reading is not None
        message = self._messages
        try:
            self._parser.feed_data(data)
            if message == self._messages:  # else another request began: its callbacks measure it
                self._measure(len(data), in_head=in_head, in_body=in_body)
        except httptools.HttpParserUpgrade as upgrade:
            if self._upgrading is not None:
                self._collect_upgrade_body(data[upgrade.args[0] :])
                return
            # Any other upgrade is ignored (RFC 9110 §7.8): the request is answered, then the
            # connection ends, since what follows its head is not HTTP/1.1 any more.
            self._closing_after_answer = True
            if self._reading is not None:
                self._reading.end()
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
            if self._body_wire > self.server.max_body_wire:
                raise _Refusal(413, "the body and its framing are too large")

    def pause_writing(self) -> None:
        self._write_paused = True
        # A client that reads nothing of its answer for the read timeout is cut off: it would
        # hold the answer (and the connection) for ever.
        self._stalled = self._loop.call_later(self.server.read_timeout_seconds, self._write_stalled)

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _write_stalled(self) -> None:
        self._stalled = None
        if self._write_paused and self._transport is not None and not self.closed:
            self.server.refused(self.peer, 408, "the client read nothing of its answer in time")
            self._transport.abort()

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
        h2c = parser.should_upgrade() and version == HTTP_11 and self._may_upgrade(headers)
        if h2c and too_large:
            raise _Refusal(413, "the body is too large")
        if (
            parser.should_upgrade()
            and (chunked or (length is not None and length != "0"))
            and not (h2c and not chunked)
        ):
            # llhttp skips the body of a request it takes to be upgrading: only h2c's body,
            # of a known length, is read (by `_collect_upgrade_body`).
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
            request.mark_too_large()
        self._reading = request
        if h2c:
            self._upgrading = request  # answered over HTTP/2, once llhttp stops at the upgrade
            self._upgrade_left = int(length) if length and length.isdigit() else 0
            return
        if self._serving is None:
            self._start(request)
        else:
            self._waiting.append(request)
            self.pause_reading()

    def on_body(self, body: bytes) -> None:
        if self._reading is not None:
            self._reading.add_body(body)

    def on_message_complete(self) -> None:
        request, self._reading = self._reading, None
        self._in_message = False
        self._deadline = None
        if request is not None:
            request.end()

    # -- to HTTP/2 --------------------------------------------------------------------------

    def _may_upgrade(self, headers: CIMultiDictProxy[str]) -> bool:
        """Whether a request asks for ``Upgrade: h2c`` as RFC 7540 §3.2 says, and can have it:
        in the clear (h2c over TLS is forbidden), with nothing else on the connection. (An
        HTTP/1.0 request's ``Upgrade`` is ignored: RFC 9110 §7.8.)"""
        if not self.server.http2 or self._scheme != "http" or self.server.closing:
            return False
        if self._serving is not None or self._waiting or len(headers.getall("HTTP2-Settings", ())) != 1:
            return False
        upgrade = _tokens(headers.getall("Upgrade", []))
        connection = _tokens(headers.getall("Connection", []))
        return "h2c" in upgrade and {"upgrade", "http2-settings"} <= connection

    def _collect_upgrade_body(self, data: bytes) -> None:
        """Keep what of `data` is the upgrade request's body; once it is whole, upgrade."""
        body = data[: self._upgrade_left]
        self._upgrade_body += body
        self._upgrade_left -= len(body)
        if self._upgrade_left:
            if not self._in_message:  # the whole body within the read timeout, as any request's
                self._in_message = True
                self._wait(self.server.read_timeout_seconds)
                upgrading = self._upgrading
                if upgrading is not None and upgrading.headers.get("Expect", "").lower() == "100-continue":
                    self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            return
        self._in_message = False
        self._upgrade(data[len(body) :])

    def _upgrade(self, rest: bytes) -> None:
        """Answer the ``Upgrade: h2c`` request over HTTP/2, as its stream 1; `rest` is what
        followed its head and body (the client's preface, perhaps more)."""
        request, self._upgrading = self._upgrading, None
        transport = self._transport
        assert request is not None and transport is not None
        upgraded = http2.Upgraded(
            method=request.method,
            raw_path=request.raw_path,
            headers=request.headers.items(),
            settings=request.headers["HTTP2-Settings"],
            body=bytes(self._upgrade_body),
        )
        self._leave()
        try:
            http2.Http2Connection(self.server, scheme=self._scheme).take_over(
                transport, rest, upgraded=upgraded, switching=_SWITCHING
            )
        except ValueError:
            self.server.connections.add(self)
            self._refuse(400, "a malformed HTTP2-Settings header")

    def _before_http1(self, data: bytes) -> bytes | None:
        """What to parse as HTTP/1.1 of `data`; None when it is (or may yet be) HTTP/2's
        preface, handed over or kept until the rest arrives, or an h2c upgrade's body."""
        if self._upgrade_left:
            self._collect_upgrade_body(data)
            return None
        data = self._early + data
        self._early = b""
        if not http2.PREFACE.startswith(data[: len(http2.PREFACE)]):
            return data
        if len(data) < len(http2.PREFACE):
            self._early = data
        else:
            self._hand_over(data)
        return None

    def _hand_over(self, data: bytes) -> None:
        """The client speaks HTTP/2 from its first byte (prior knowledge)."""
        transport = self._transport
        assert transport is not None
        self._leave()
        http2.Http2Connection(self.server, scheme=self._scheme).take_over(transport, data)

    def _leave(self) -> None:
        self._stop_timer()
        self._reading = None
        self._in_message = False
        self.server.connections.discard(self)

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
            if not request.head_sent:  # else a stream's head is out: ending it is all that is left
                self.write(_refusal_bytes(500))
            self._close(linger=True)
            return
        if self.closed:
            return
        if isinstance(response, Stream):
            if not response.ended or not request.keep_alive or not request.leaves_connection_usable:
                self._close(linger=True)
                return
        else:
            # Keep the connection only if the next request can be read after this one.
            keep_alive = (
                request.keep_alive
                and request.leaves_connection_usable
                and not (self._closing_after_answer or server.closing)
            )
            try:
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
        self.server.refused(self.peer, status, problem)
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
            self._timer = self._loop.call_at(now + self.server.tick, self._deadline_passed)

    def _deadline_passed(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None or self.closed:
            return
        now = self._loop.time()
        if now < deadline:
            # Never later than one tick ahead: a deadline set meanwhile is at least that far.
            self._timer = self._loop.call_at(min(deadline, now + self.server.tick), self._deadline_passed)
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

    def tasks(self) -> list[asyncio.Task[None]]:
        """The handler task still running, for a shutdown to wait on once cancelled."""
        return [self._task] if self._task is not None and not self._task.done() else []

    def stop_accepting(self) -> None:
        """Close now if idle; a connection answering closes after the answer (`server.closing`)."""
        if not self.busy:
            self._close()

    def send_continue(self, request: Request) -> None:
        self.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def open_stream(self, request: Request, stream: Stream) -> None:
        # HTTP/1.0 has no chunks: the body ends when the connection does.
        self._chunked = request.version == HTTP_11
        if not self._chunked:
            request.keep_alive = False
        head = _head(
            stream.status,
            stream.headers,
            keep_alive=request.keep_alive and request.leaves_connection_usable,
            version=request.version,
            framing=b"Transfer-Encoding: chunked\r\n" if self._chunked else b"",
        )
        self.write(head)

    def stream_data(self, stream: Stream, data: bytes) -> None:
        self.write(b"%x\r\n%s\r\n" % (len(data), data) if self._chunked else data)

    def stream_end(self, stream: Stream) -> None:
        if self._chunked and not stream.head_only:
            self.write(b"0\r\n\r\n")

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
