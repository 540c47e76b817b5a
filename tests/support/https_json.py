"""A JSON service over HTTPS on 127.0.0.1, as an outside OpenID provider serves its discovery
document, keys and token endpoint: a certificate for ``localhost`` from a CA of the test's own."""

from __future__ import annotations

import json
import ssl
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from services.kit import tls

__all__ = ["Answer", "Get", "Post", "https_json"]

Answer = tuple[int, Any]
"""A status and the JSON body to answer with."""
Get = Callable[[str], Answer]
"""Answers a GET of a path."""
Post = Callable[[str, dict[str, str], str], Answer]
"""Answers a POST of a path with its form fields and its Authorization header."""


@contextmanager
def https_json(directory: Path, get: Get, post: Post | None = None) -> Iterator[tuple[int, Path]]:
    """Serve `get` (and `post`) over HTTPS until the block ends: the port and the CA file."""
    tls.ensure_certificates(directory, ["gateway"])

    class _Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, answer: Any) -> None:
            body = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._answer(*get(self.path))

        def do_POST(self) -> None:
            if post is None:
                self._answer(405, None)
                return
            length = int(self.headers.get("Content-Length", "0"))
            form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
            self._answer(*post(self.path, form, self.headers.get("Authorization", "")))

        def log_message(self, *args: Any) -> None:
            """Quiet: the tests report what they saw."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "gateway.crt", directory / "gateway.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1], directory / "ca.crt"
    finally:
        server.shutdown()
        server.server_close()
