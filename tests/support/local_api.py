"""What the local provider APIs (`stripe_api`, `paypal_api`, `twilio_api`) share: a threaded
HTTP server on 127.0.0.1 whose handler reaches the test's state (`serving`), and a JSON answer
that a client gone away (a stalled answer it stopped waiting for) does not turn into an error
(`send_json`)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

__all__ = ["StateServer", "send_json", "serving"]

_S = TypeVar("_S")


class StateServer(ThreadingHTTPServer):
    """A server whose handlers find the test's state at ``self.server.state``."""

    daemon_threads = True
    state: Any


def send_json(
    handler: BaseHTTPRequestHandler, status: int, payload: Any, headers: Iterable[tuple[str, str]] = ()
) -> None:
    """`payload` as JSON (None: an empty body), with `headers`."""
    data = b"" if payload is None else json.dumps(payload).encode()
    try:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the client gave up (a stalled answer): the provider did the work all the same


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler], state: Callable[[int], _S], name: str) -> Iterator[_S]:
    """A running server of `handler` on a free port of 127.0.0.1; `state(port)` its state."""
    server = StateServer(("127.0.0.1", 0), handler)
    server.state = state(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()
    try:
        yield server.state
    finally:
        server.shutdown()
        server.server_close()
