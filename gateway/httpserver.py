"""The edge's HTTP server: listens on a TCP port, in the clear or over TLS, and serves each
connection as HTTP/1.1 (`gateway.http1`) or HTTP/2 (`gateway.http2`).

A connection starts as HTTP/1.1 and becomes HTTP/2 when TLS negotiated ``h2`` by ALPN, when
the client opens with HTTP/2's preface (h2c with prior knowledge), or when an HTTP/1.1
request asks for ``Upgrade: h2c``. `http2=False` serves HTTP/1.1 only.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Protocol

from gateway.http1 import Http1Connection
from gateway.wire import Handler, Refused

__all__ = ["Connection", "Server"]

_CANCELLED_WAIT_SECONDS = 5.0
"""How long a shutdown waits for cancelled handlers to end."""


class Connection(Protocol):
    """What the server asks of each of its connections, HTTP/1.1 or HTTP/2."""

    @property
    def busy(self) -> bool:
        """Whether a request on it is being answered."""
        ...

    def stop_accepting(self) -> None:
        """Take no new request; close at once if idle, else once the requests in flight end."""

    def cancel(self) -> None:
        """Cancel the requests being answered and close."""

    def tasks(self) -> list[asyncio.Task[None]]:
        """The handler tasks still running."""
        ...


class Server:
    """Serve `handler` over HTTP/1.1 and HTTP/2 on a TCP port (`start`, then `shutdown`).

    The limits are per request (`max_body_bytes`, `max_head_bytes`, `max_headers`,
    `read_timeout_seconds`), per idle connection (`keepalive_seconds`) and per HTTP/2
    connection (`max_streams` at once); `on_refused` is told of every request refused before
    the handler saw it; `tls` (a context, e.g. `gateway.tls`'s) serves HTTPS, with HTTP/2
    where ALPN picks it.
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
        max_streams: int = 100,
        http2: bool = True,
        tls: ssl.SSLContext | None = None,
        on_refused: Refused | None = None,
    ) -> None:
        self.handler = handler
        self.max_body_bytes = max_body_bytes
        self.max_head_bytes = max_head_bytes
        self.max_headers = max_headers
        self.read_timeout_seconds = read_timeout_seconds
        self.keepalive_seconds = keepalive_seconds
        self.max_streams = max_streams
        self.http2 = http2
        self.tls = tls
        self.tick = min(read_timeout_seconds, keepalive_seconds)
        """How often a connection looks at its deadlines, at most."""
        # A body's bytes on the wire, chunk framing and trailers included: room for framing
        # of chunks down to a few bytes each, never an unbounded trailer.
        self.max_body_wire = 2 * max_body_bytes + max_head_bytes
        self.closing = False
        self.connections: set[Connection] = set()
        self._on_refused = on_refused
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
            lambda: Http1Connection(self),
            host,
            port,
            backlog=backlog,
            reuse_address=True,
            ssl=self.tls,
            ssl_handshake_timeout=10.0 if self.tls is not None else None,
        )

    async def shutdown(self, grace_seconds: float) -> None:
        """Stop listening, close idle connections, give requests in flight `grace_seconds`
        to finish, then cancel them and close every connection."""
        self.closing = True
        if self._listener is not None:
            self._listener.close()
        for connection in list(self.connections):
            connection.stop_accepting()
        deadline = time.monotonic() + grace_seconds
        while any(c.busy for c in self.connections) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        running = [task for connection in self.connections for task in connection.tasks()]
        for connection in list(self.connections):
            connection.cancel()
        if running:
            # Cancelled handlers cancel their backend calls: they are waited for (briefly), so
            # the edge closes its channels only after them.
            await asyncio.wait(running, timeout=_CANCELLED_WAIT_SECONDS)
        if self._listener is not None:
            await self._listener.wait_closed()

    def refused(self, peer: str, status: int, problem: str) -> None:
        """Tell `on_refused` of a request refused before the handler saw it."""
        if self._on_refused is not None:
            self._on_refused(peer, status, problem)
