"""A blocking HTTP/2 client for tests, on `h2` (an implementation independent of the edge's
use of it: the client side of the state machine), over a plain or TLS socket."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.settings

__all__ = ["PREFACE", "Frame", "H2Answer", "H2Client", "frames", "goaways", "h2_call"]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@dataclass
class H2Answer:
    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    trailers: list[tuple[str, str]] = field(default_factory=list)
    reset: int | None = None
    """The RST_STREAM error code, when the server reset the stream."""
    ended: bool = False

    def header(self, name: str) -> str | None:
        found = [value for key, value in self.headers if key == name.lower()]
        return ", ".join(found) if found else None


class H2Client:
    """One HTTP/2 connection to 127.0.0.1:`port` (TLS with `tls`, ALPN ``h2``), prior knowledge
    in the clear; `window` sets the client's initial stream window."""

    def __init__(
        self,
        port: int,
        *,
        tls: ssl.SSLContext | None = None,
        timeout: float = 15.0,
        window: int | None = None,
        preface: bool = True,
    ) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.socket: socket.socket = tls.wrap_socket(raw, server_hostname="localhost") if tls else raw
        self.timeout = timeout
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.answers: dict[int, H2Answer] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.closed = False
        if preface:
            self.h2.initiate_connection()
            if window is not None:
                self.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
            self.flush()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.socket.sendall(data)

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes | None = None,
        end: bool = True,
        authority: str = "edge",
    ) -> int:
        """Send a request (its body too, unless `end` is False); its stream id."""
        stream_id = self.h2.get_next_available_stream_id()
        fields = [(":method", method), (":path", path), (":scheme", "http"), (":authority", authority)]
        fields += [(name.lower(), value) for name, value in headers]
        self.h2.send_headers(stream_id, fields, end_stream=end and not body)
        if body:
            self.h2.send_data(stream_id, body, end_stream=end)
        self.answers[stream_id] = H2Answer()
        self.flush()
        return stream_id

    def read(self, *, until: Sequence[int] | None = None, deadline: float | None = None) -> None:
        """Read frames until the streams `until` have ended (until the server closes when
        None), or `deadline` seconds pass (TimeoutError)."""
        end = time.monotonic() + (deadline if deadline is not None else self.timeout)
        while until is None or not all(self.answers[s].ended for s in until):
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the server did not answer in time")
            self.socket.settimeout(remaining)
            try:
                data = self.socket.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                self.closed = True
                return
            for event in self.h2.receive_data(data):
                self._on(event)
            self.flush()

    def _on(self, event: h2.events.Event) -> None:
        stream_id = getattr(event, "stream_id", None)
        answer = self.answers.get(stream_id) if stream_id else None
        if isinstance(event, h2.events.ResponseReceived) and answer is not None:
            headers = [(str(k), str(v)) for k, v in event.headers or ()]
            answer.status = int(dict(headers)[":status"])
            answer.headers = [(k, v) for k, v in headers if not k.startswith(":")]
        elif isinstance(event, h2.events.DataReceived) and answer is not None:
            answer.body += event.data or b""
            self.h2.acknowledge_received_data(event.flow_controlled_length or 0, event.stream_id or 0)
        elif isinstance(event, h2.events.TrailersReceived) and answer is not None:
            answer.trailers = [(str(k), str(v)) for k, v in event.headers or ()]
        elif isinstance(event, h2.events.StreamEnded) and answer is not None:
            answer.ended = True
        elif isinstance(event, h2.events.StreamReset) and answer is not None:
            answer.reset, answer.ended = int(event.error_code or 0), True
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event

    def close(self) -> None:
        self.socket.close()

    def __enter__(self) -> H2Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def h2_call(
    port: int,
    method: str,
    path: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes | None = None,
    tls: ssl.SSLContext | None = None,
    authority: str = "edge",
) -> H2Answer:
    """One request on a new HTTP/2 connection, and its whole answer."""
    with H2Client(port, tls=tls) as client:
        stream = client.request(method, path, headers=headers, body=body, authority=authority)
        client.read(until=[stream])
        return client.answers[stream]


@dataclass(frozen=True)
class Frame:
    kind: int
    """The frame type (1 HEADERS, 0 DATA, 3 RST_STREAM, 7 GOAWAY, ...)."""
    flags: int
    stream: int
    payload: bytes


def frames(received: bytes) -> list[Frame]:
    """The whole frames in `received`, a server's bytes after its preface (RFC 9113 §4.1)."""
    found, at = [], 0
    while at + 9 <= len(received):
        length = int.from_bytes(received[at : at + 3], "big")
        kind, flags = received[at + 3], received[at + 4]
        stream = int.from_bytes(received[at + 5 : at + 9], "big") & 0x7FFFFFFF
        found.append(Frame(kind, flags, stream, received[at + 9 : at + 9 + length]))
        at += 9 + length
    return found


def goaways(received: bytes) -> list[tuple[int, int]]:
    """(last stream id, error code) of each GOAWAY frame in `received`."""
    return [
        (int.from_bytes(f.payload[:4], "big") & 0x7FFFFFFF, int.from_bytes(f.payload[4:8], "big"))
        for f in frames(received)
        if f.kind == 7
    ]
