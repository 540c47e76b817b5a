"""The edge's HTTP/2 server side: the `h2` state machine on an `asyncio.Protocol` (RFC 9113).

A connection becomes HTTP/2 one of three ways (`gateway.http1` hands it over): TLS that
negotiated ``h2`` by ALPN, the client's preface sent in the clear (h2c with prior knowledge),
or an HTTP/1.1 ``Upgrade: h2c`` request (RFC 7540 §3.2), answered as stream 1. Each stream
is one request on its own `Channel`, answered by the same handler as HTTP/1.1 requests,
concurrently with the connection's other streams.

What it holds clients to, beside `h2`'s own checks of frames and headers (a violation ends
the connection with GOAWAY):

- at most `max_streams` streams open at once (SETTINGS_MAX_CONCURRENT_STREAMS); a header
  list over `max_head_bytes` (SETTINGS_MAX_HEADER_LIST_SIZE) ends the connection (h2 refuses
  to decode it), more than `max_headers` fields is a 431; a body of at most `max_body_bytes`
  (413, then RST_STREAM NO_ERROR so the client stops sending: RFC 9113 §8.1);
- a request whole within `read_timeout_seconds` of its HEADERS (else 408), an idle
  connection closed after `keepalive_seconds`;
- streams the client opens and resets at once (the "rapid reset" attack, CVE-2023-44487)
  cost a handler task each: past `_RESET_ALLOWANCE` more resets than answers, GOAWAY
  ENHANCE_YOUR_CALM.

Answers respect both flow-control windows (the stream's and the connection's) and the
socket's backpressure: a `Stream`'s `write` waits while its client reads slowly, without
holding up the connection's other streams. `stop_accepting` sends GOAWAY and lets the
streams already open finish (the server's grace period). A client's own GOAWAY ends the
connection with the streams it has open: h2 takes no frame after one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.wire import (
    HTTP_2,
    NO_BODY_STATUSES,
    Request,
    Response,
    Stream,
    field_lines,
    http_date,
    refusal_body,
)

if TYPE_CHECKING:
    from gateway.httpserver import Server

__all__ = ["PREFACE", "Http2Connection", "Upgraded"]

_log = logging.getLogger("poly.gateway.http")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
"""What an HTTP/2 client sends first (RFC 9113 §3.4)."""
_LINGER_SECONDS = 2.0
"""How long a closing connection still reads (and drops) what its client sends."""
_RESET_ALLOWANCE = 100
"""Streams a client may reset beyond those answered before the connection ends."""
_CONNECTION_HEADERS = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"}
)
"""Connection-specific fields, which HTTP/2 forbids (RFC 9113 §8.2.2)."""


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
"""A method is a token (RFC 9110 §5.6.2)."""
_TARGET = re.compile(r"/[\x21-\x7e]*")
"""An origin-form target: no space, control character or DEL (RFC 9113 §8.3.1)."""
_TOKEN68 = re.compile(r"[A-Za-z0-9\-_]*={0,2}")
"""``HTTP2-Settings`` is base64url (RFC 7540 §3.2.1)."""
_CHATTER_ALLOWANCE = 1000
"""PINGs, SETTINGS and empty DATA frames a client may send beyond ten per answered stream."""


def _malformed(method: str, path: str, pseudo: dict[str, str]) -> str | None:
    """Why a request's pseudo-header fields are not one the edge serves, or None."""
    if ":protocol" in pseudo:
        return "extended CONNECT is not offered"  # no SETTINGS_ENABLE_CONNECT_PROTOCOL sent
    if not _TOKEN.fullmatch(method):
        return "a method that is not a token"
    if not _TARGET.fullmatch(path):
        # CONNECT (no :path), the asterisk form, or a target with a space or control character.
        return "a request target the edge does not route"
    if "@" in pseudo.get(":authority", ""):
        return "userinfo in :authority"  # RFC 9113 §8.3.1
    return None


class Upgraded:
    """The HTTP/1.1 request that asked for ``Upgrade: h2c``: it becomes stream 1."""

    __slots__ = ("body", "headers", "method", "raw_path", "settings")

    def __init__(
        self,
        *,
        method: str,
        raw_path: str,
        headers: Iterable[tuple[str, str]],
        settings: str,
        body: bytes = b"",
    ) -> None:
        self.method, self.raw_path, self.settings, self.body = method, raw_path, settings, body
        self.headers = list(headers)


class _Stream:
    """One HTTP/2 stream: the `Channel` its request and answer are carried on."""

    __slots__ = (
        "_connection",
        "closed",
        "deadline",
        "drained",
        "finish",
        "finished",
        "id",
        "max_body_bytes",
        "peer",
        "pending",
        "progress",
        "request",
        "request_ended",
        "task",
    )

    def __init__(self, connection: Http2Connection, stream_id: int) -> None:
        self._connection = connection
        self.id = stream_id
        self.peer = connection.peer
        self.max_body_bytes = connection.server.max_body_bytes
        self.closed = False
        """The client reset the stream, or the connection ended."""
        self.request: Request | None = None
        self.task: asyncio.Task[None] | None = None
        self.pending: deque[memoryview] = deque()
        """Body pieces waiting for flow-control window (views: an answer is not copied)."""
        self.progress = 0.0
        """When the client last took some of the answer (or it began to wait)."""
        self.request_ended = False
        """The client has sent the whole request (END_STREAM)."""
        self.finish: list[tuple[bytes, bytes]] | None = None
        """Set once the answer is whole: its trailers (empty for none), sent after `pending`."""
        self.finished = False
        self.drained: asyncio.Future[None] | None = None
        self.deadline: float | None = None
        """When the request must have arrived whole (None once it has)."""

    # -- Channel ---------------------------------------------------------------------------

    def resume_reading(self) -> None:
        """Flow control paces the body; data is acknowledged as it arrives."""

    def send_continue(self, request: Request) -> None:
        """HTTP/2 clients do not wait for ``100 Continue``."""

    def open_stream(self, request: Request, stream: Stream) -> None:
        self._connection.send_head(self, stream.status, stream.headers, end=stream.head_only)

    def stream_data(self, stream: Stream, data: bytes) -> None:
        self._connection.queue(self, data)

    def stream_end(self, stream: Stream) -> None:
        if not stream.head_only:
            self.finish = []
            self._connection.flush(self)

    async def drain(self) -> None:
        while (self.pending or not self._connection.writable) and not self.closed:
            self.drained = asyncio.get_running_loop().create_future()
            try:
                await self.drained
            finally:
                self.drained = None

    def wake(self) -> None:
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)


class Http2Connection(asyncio.Protocol):
    """One HTTP/2 connection of `server`'s, taken over from `gateway.http1` (module docstring)."""

    def __init__(self, server: Server, *, scheme: str) -> None:
        self.server = server
        self.peer = ""
        self.scheme = scheme
        self.writable = True
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._h2 = h2.connection.H2Connection(
            # Outbound headers are the edge's own, checked by `send_head` (no CR, LF or NUL,
            # lower case, no connection-specific fields): h2 need not check them again.
            h2.config.H2Configuration(
                client_side=False,
                header_encoding=None,
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
        )
        self._streams: dict[int, _Stream] = {}
        self._closed = False
        self._going_away = False
        self._last_stream = 0
        self._answered = 0
        self._resets = 0
        self._chatter = 0
        self._idle_since = self._loop.time()
        self._unread_since = 0.0
        """Since when writes are paused: the client reads nothing of what it is sent."""
        self._timer: asyncio.TimerHandle | None = None
        self._write_scheduled = False

    # -- taking over a connection ----------------------------------------------------------

    def take_over(
        self,
        transport: asyncio.Transport,
        data: bytes = b"",
        *,
        upgraded: Upgraded | None = None,
        switching: bytes = b"",
    ) -> None:
        """Serve `transport` from now on: `data` is what the client sent after its HTTP/1.1
        part (the preface and the frames after it); `upgraded` the request asking for h2c,
        answered `switching` first (ValueError, before anything is sent, if its settings are
        malformed)."""
        h2c = self._h2
        h2c.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.server.max_streams,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: self.server.max_head_bytes,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            },
        )
        h2c.decoder.max_header_list_size = self.server.max_head_bytes
        if upgraded is None:
            h2c.initiate_connection()
        else:
            if not _TOKEN68.fullmatch(upgraded.settings):
                raise ValueError("HTTP2-Settings is not base64url")
            try:
                h2c.initiate_upgrade_connection(upgraded.settings.encode("ascii", "surrogateescape"))
            except (ValueError, h2.exceptions.ProtocolError) as error:
                raise ValueError("malformed HTTP2-Settings") from error
        transport.set_protocol(self)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else ""
        self.server.connections.add(self)
        if switching:
            transport.write(switching)
        if upgraded is not None:
            self._upgraded_request(upgraded)
        self._send()
        if self.server.closing:
            self.stop_accepting()  # arrived (a TLS handshake finishing) as the server stops
        self._arm()
        if data:
            self.data_received(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Never called: `take_over` starts the connection."""

    def _upgraded_request(self, upgraded: Upgraded) -> None:
        stream = _Stream(self, 1)
        self._streams[1] = stream
        self._last_stream = 1
        headers = CIMultiDict(upgraded.headers)
        for name in ("Connection", "Upgrade", "HTTP2-Settings"):
            headers.popall(name, None)
        self._start(stream, upgraded.method, upgraded.raw_path, headers, ended=True, body=upgraded.body)

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.writable = True
        self.server.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        for stream in self._streams.values():
            self._forget(stream)
        self._streams.clear()

    def pause_writing(self) -> None:
        # A client that does not read what it is sent is not read from either: whatever it
        # sends (PINGs, SETTINGS, frames on closed streams) would queue answers without end.
        self.writable = False
        self._unread_since = self._loop.time()
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self.writable = True
        if self._transport is not None and not self._closed:
            self._transport.resume_reading()
        for stream in self._streams.values():
            stream.wake()

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as error:
            # h2 names the rule broken, never the bytes.
            self.server.refused(self.peer, 400, f"HTTP/2 protocol error: {type(error).__name__}")
            flood = isinstance(error, h2.exceptions.DenialOfServiceError)
            code = ErrorCodes.ENHANCE_YOUR_CALM if flood else ErrorCodes.PROTOCOL_ERROR
            # h2 has framed its GOAWAY already, as a rule: send that one, not a second.
            framed = self._h2.data_to_send()
            if framed and self._transport is not None:
                self._transport.write(framed)
            self._end(None if framed else code)
            return
        for event in events:
            if self._closed:
                break  # ended by an event before (a flood, a client's GOAWAY): start nothing more
            self._on(event)
        self._send()

    # -- events ----------------------------------------------------------------------------

    def _on(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.PingReceived | h2.events.RemoteSettingsChanged) or (
            isinstance(event, h2.events.DataReceived) and not event.flow_controlled_length
        ):
            # Each costs a frame or an acknowledgement and answers nothing (CVE-2019-9512, -9515,
            # -9518): past a budget that grows with the streams answered, the connection ends.
            self._chatter += 1
            if self._chatter > _CHATTER_ALLOWANCE + 10 * self._answered:
                self.server.refused(self.peer, 400, "too many control or empty frames")
                self._end(ErrorCodes.ENHANCE_YOUR_CALM)
                return
        if isinstance(event, h2.events.RequestReceived):
            self._on_request(event)
        elif isinstance(event, h2.events.DataReceived):
            self._on_data(event)
        elif isinstance(event, h2.events.StreamEnded):
            stream = self._streams.get(event.stream_id or 0)
            if stream is not None:
                stream.request_ended = True
                stream.deadline = None
                if stream.request is not None:
                    stream.request.end()
        elif isinstance(event, h2.events.StreamReset):
            self._on_reset(event)
        elif isinstance(event, h2.events.WindowUpdated):
            targets = self._streams.values() if not event.stream_id else [self._streams.get(event.stream_id)]
            for stream in list(targets):
                if stream is not None:
                    self.flush(stream)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._end(None)

    def _on_data(self, event: h2.events.DataReceived) -> None:
        assert event.stream_id is not None and event.data is not None
        if event.flow_controlled_length:
            # Acknowledged as it arrives: the body limit, not the window, bounds what is kept.
            self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        stream = self._streams.get(event.stream_id)
        if stream is not None and stream.request is not None:
            stream.request.add_body(event.data)

    def _on_reset(self, event: h2.events.StreamReset) -> None:
        stream = self._streams.pop(event.stream_id or 0, None)
        if stream is not None:
            if not stream.finished:
                self._resets += 1
            self._forget(stream)
        if self._resets > self._answered + _RESET_ALLOWANCE:
            self.server.refused(self.peer, 400, "too many streams reset by the client")
            self._end(ErrorCodes.ENHANCE_YOUR_CALM)
            return
        self._touch()

    def _on_request(self, event: h2.events.RequestReceived) -> None:
        stream_id = event.stream_id
        assert stream_id is not None
        if self._going_away:
            self._h2.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        # Only accepted streams count: a GOAWAY's last stream never rises (RFC 9113 §6.8).
        self._last_stream = max(self._last_stream, stream_id)
        stream = _Stream(self, stream_id)
        stream.request_ended = event.stream_ended is not None
        self._streams[stream_id] = stream
        pseudo: dict[str, str] = {}
        fields: CIMultiDict[str] = CIMultiDict()
        for raw_name, raw_value in event.headers or ():
            name = raw_name.decode("ascii") if isinstance(raw_name, bytes) else raw_name
            value = (
                raw_value.decode("utf-8", "surrogateescape") if isinstance(raw_value, bytes) else raw_value
            )
            if name.startswith(":"):
                pseudo[name] = value
            else:
                fields.add(name, value)
        if len(fields) > self.server.max_headers:
            self._refuse(stream, 431, "too many header fields")
            return
        method, path = pseudo.get(":method", ""), pseudo.get(":path", "")
        problem = _malformed(method, path, pseudo)
        if problem:
            self._refuse(stream, 400, problem)
            return
        if "Host" not in fields and ":authority" in pseudo:
            fields["Host"] = pseudo[":authority"]
        self._start(stream, method, path, fields, ended=event.stream_ended is not None)

    def _start(
        self,
        stream: _Stream,
        method: str,
        path: str,
        fields: CIMultiDict[str],
        *,
        ended: bool,
        body: bytes = b"",
    ) -> None:
        request = Request(
            stream,
            method=method,
            raw_path=path,
            version=HTTP_2,
            headers=CIMultiDictProxy(fields),
            keep_alive=True,
            scheme=self.scheme,
        )
        length = fields.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > self.server.max_body_bytes:
            request.mark_too_large()
        stream.request = request
        if body:
            request.add_body(body)
        if ended:
            request.end()
        else:
            stream.deadline = self._loop.time() + self.server.read_timeout_seconds
        stream.task = self._loop.create_task(self._answer(stream, request))

    # -- answering -------------------------------------------------------------------------

    async def _answer(self, stream: _Stream, request: Request) -> None:
        server = self.server
        try:
            response = await server.handler(request)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the handler answers its own errors; this is a last resort
            _log.exception("the request handler failed")
            if not request.head_sent:
                self._refuse(stream, 500, "internal error", quiet=True)
            else:
                self._reset(stream, ErrorCodes.INTERNAL_ERROR)
            return
        if stream.closed:
            return
        if isinstance(response, Stream):
            if not response.ended:
                self._reset(stream, ErrorCodes.INTERNAL_ERROR)
                return
        else:
            try:
                self._send_whole(stream, request, response)
            except Exception:  # noqa: BLE001 - whatever the handler built, the client gets an answer
                _log.exception("an answer could not be framed")
                self._refuse(stream, 500, "internal error", quiet=True)
                return
        await stream.drain()
        self._done(stream)

    def _send_whole(self, stream: _Stream, request: Request, response: Response) -> None:
        if request.on_head is not None:
            request.on_head(response.headers)
        status, body = response.status, response.body
        no_body = status in NO_BODY_STATUSES or status < 200
        extra = () if no_body else (("content-length", str(len(body))),)
        ends_now = no_body or request.method == "HEAD" or (not body and not response.trailers)
        # Trailers are checked and encoded before anything is sent: a bad one is a 500, not a
        # stream cut short after its body.
        field_lines(response.trailers)
        trailers = [
            (name.lower().encode("ascii"), value.encode("ascii")) for name, value in response.trailers
        ]
        self.send_head(stream, status, response.headers, end=ends_now, extra=extra)
        if ends_now:
            return
        stream.finish = trailers
        self.queue(stream, body)

    def send_head(
        self,
        stream: _Stream,
        status: int,
        headers: CIMultiDict[str],
        *,
        end: bool,
        extra: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Send an answer's HEADERS (ending the stream with them when `end`)."""
        field_lines(headers.items())  # a CR, LF or NUL is refused before anything is sent
        fields = [(":status", str(status)), ("date", http_date())]
        fields += [
            (name.lower(), value)
            for name, value in headers.items()
            if name.lower() not in _CONNECTION_HEADERS
        ]
        fields += extra
        encoded = [(name.encode("ascii"), value.encode("utf-8", "surrogateescape")) for name, value in fields]
        if stream.request is not None:
            stream.request.mark_head_sent()
        self._h2.send_headers(stream.id, encoded, end_stream=end)
        if end:
            stream.finished = True
        self._send()

    def queue(self, stream: _Stream, data: bytes) -> None:
        """Add `data` to `stream`'s answer and send what the windows allow."""
        if data:
            if not stream.pending:
                stream.progress = self._loop.time()  # the client's clock to take it starts now
            stream.pending.append(memoryview(data))
        self.flush(stream)

    def flush(self, stream: _Stream) -> None:
        """Send what of `stream`'s answer the flow-control windows allow; its end once all is sent."""
        if stream.closed or stream.finished:
            stream.wake()
            return
        h2c = self._h2
        try:
            while stream.pending:
                size = min(h2c.local_flow_control_window(stream.id), h2c.max_outbound_frame_size)
                if size <= 0:
                    break
                view = stream.pending[0]
                piece, rest = view[:size], view[size:]
                if rest:
                    stream.pending[0] = rest
                else:
                    stream.pending.popleft()
                # The last piece of an answer without trailers ends the stream itself.
                last = not stream.pending and stream.finish == []
                h2c.send_data(stream.id, piece.tobytes(), end_stream=last)
                stream.finished = last
                stream.progress = self._loop.time()
            if not stream.pending and stream.finish is not None and not stream.finished:
                if stream.finish:
                    h2c.send_headers(stream.id, stream.finish, end_stream=True)
                else:
                    h2c.end_stream(stream.id)
                stream.finished = True
        except h2.exceptions.StreamClosedError:
            stream.closed = True
        self._send()
        if not stream.pending:
            stream.wake()

    def _done(self, stream: _Stream, *, answered: bool = True) -> None:
        """`stream` is answered (by the handler, or `answered` False: refused by the server):
        forget it; a request still arriving is told to stop (RFC 9113 §8.1)."""
        if answered:
            self._answered += 1  # the budgets for resets and chatter grow with real answers only
        if self._streams.pop(stream.id, None) is None:
            return
        if not stream.request_ended and not self._closed:
            self._reset(stream, ErrorCodes.NO_ERROR)
        self._touch()

    def _refuse(self, stream: _Stream, status: int, problem: str, *, quiet: bool = False) -> None:
        """Answer `stream` with a refusal the server writes itself."""
        if not quiet:
            self.server.refused(self.peer, status, problem)
        if stream.closed or stream.finished:
            return
        if stream.request is not None and stream.request.head_sent:
            self._reset(stream, ErrorCodes.CANCEL)  # a stream's head is out: ending it is all that is left
            return
        body = refusal_body(status)
        headers: CIMultiDict[str] = CIMultiDict({"Content-Type": "application/json"})
        self.send_head(stream, status, headers, end=False, extra=(("content-length", str(len(body))),))
        stream.finish = []
        self.queue(stream, body)
        if stream.finished:
            self._done(stream, answered=False)
        else:
            stream.task = self._loop.create_task(self._finish_refusal(stream))

    async def _finish_refusal(self, stream: _Stream) -> None:
        await stream.drain()
        self._done(stream, answered=False)

    def _reset(self, stream: _Stream, code: ErrorCodes) -> None:
        if not stream.closed and not self._closed:
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                self._h2.reset_stream(stream.id, code)
            self._send()
        self._streams.pop(stream.id, None)
        self._forget(stream)
        if not self._closed:
            self._touch()

    def _forget(self, stream: _Stream) -> None:
        stream.closed = True
        if stream.task is not None and not stream.task.done():
            stream.task.cancel()  # the client reset it, or left: so does its handler
        if stream.request is not None:
            stream.request.wake()
        stream.wake()

    # -- the connection --------------------------------------------------------------------

    def _send(self) -> None:
        """Write what h2 has framed, once per turn of the event loop: the frames of every
        stream answered in one turn leave in one write (a system call each, otherwise)."""
        if not self._write_scheduled:
            self._write_scheduled = True
            self._loop.call_soon(self._write)

    def _write(self) -> None:
        self._write_scheduled = False
        data = self._h2.data_to_send()
        if data and self._transport is not None and not self._closed:
            self._transport.write(data)

    def _end(self, code: ErrorCodes | None, *, abort: bool = False) -> None:
        """End the connection (with GOAWAY `code`, unless the client ended it); `abort` drops
        what is still unsent (a client that reads nothing would hold it forever)."""
        if self._closed:
            return
        self._write()  # what is framed already goes first
        if code is not None:
            frame = GoAwayFrame(0)
            frame.last_stream_id, frame.error_code = self._last_stream, code
            if self._transport is not None:
                self._transport.write(frame.serialize())
        self._closed = True
        for stream in list(self._streams.values()):
            self._forget(stream)
        self._streams.clear()
        transport = self._transport
        if transport is not None and abort:
            transport.abort()
        elif transport is not None and not transport.is_closing():
            # Linger as HTTP/1.1 does: FIN after the GOAWAY, and what the client still sends
            # is dropped for a moment, so a reset cannot destroy the GOAWAY on its way; then
            # whatever is still unsent is dropped with the connection.
            try:
                transport.write_eof()
            except (OSError, NotImplementedError):  # gone already, or TLS (no half-close)
                transport.close()
                self._loop.call_later(_LINGER_SECONDS, transport.abort)
            else:
                self._loop.call_later(_LINGER_SECONDS, transport.abort)

    @property
    def busy(self) -> bool:
        return bool(self._streams)

    def tasks(self) -> list[asyncio.Task[None]]:
        """The handler tasks still running, for a shutdown to wait on once cancelled."""
        return [s.task for s in self._streams.values() if s.task is not None and not s.task.done()]

    def stop_accepting(self) -> None:
        """Refuse new streams (GOAWAY NO_ERROR); those open finish. An idle connection closes."""
        if self._closed or self._going_away:
            return
        self._going_away = True
        self._write()
        # Written by hand: h2 would refuse to send anything more once it has sent a GOAWAY.
        frame = GoAwayFrame(0)
        frame.last_stream_id, frame.error_code = self._last_stream, ErrorCodes.NO_ERROR
        if self._transport is not None:
            self._transport.write(frame.serialize())
        if not self._streams:
            self._end(None)

    def cancel(self) -> None:
        """Cancel every stream being answered and close (the grace period is over)."""
        self._end(ErrorCodes.NO_ERROR)

    def _touch(self) -> None:
        if not self._streams:
            self._idle_since = self._loop.time()
            if self._going_away:
                self._end(None)

    def _arm(self) -> None:
        """Look at the deadlines again when the nearest passes (at most one tick away)."""
        now = self._loop.time()
        wake = now + self.server.tick
        for stream in self._streams.values():
            if stream.deadline is not None:
                wake = min(wake, stream.deadline)
        if not self._streams:
            wake = min(wake, self._idle_since + self.server.keepalive_seconds)
        self._timer = self._loop.call_at(max(wake, now + 0.01), self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self._closed:
            return
        now = self._loop.time()
        patience = self.server.read_timeout_seconds
        if not self.writable and now - self._unread_since >= patience:
            # The client has read nothing for that long: it holds every answer it was sent.
            self.server.refused(self.peer, 408, "the client read nothing of its answers in time")
            self._end(ErrorCodes.CANCEL, abort=True)
            return
        for stream in list(self._streams.values()):
            if stream.deadline is not None and now >= stream.deadline:
                stream.deadline = None
                if stream.task is not None and not stream.task.done():
                    stream.task.cancel()
                self._refuse(stream, 408, "the request did not arrive in time")
            elif stream.pending and now - stream.progress >= patience:
                # Its window stayed shut: the answer it holds is dropped and its handler stopped.
                self.server.refused(self.peer, 408, "the client did not take its answer in time")
                self._reset(stream, ErrorCodes.CANCEL)
        if not self._streams and now - self._idle_since >= self.server.keepalive_seconds:
            self._end(ErrorCodes.NO_ERROR)
            return
        self._arm()
