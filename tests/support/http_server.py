"""The edge's HTTP server (`gateway.httpserver.Server`) serving a test's handler on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import pytest

from gateway.httpserver import Server
from gateway.wire import Handler, Request, Response

__all__ = ["Handler", "Settable", "curl", "serve", "serving", "sleeping"]


@contextlib.asynccontextmanager
async def serving(handler: Handler, **options: Any) -> AsyncIterator[Server]:
    """A started `Server` for `handler` (a 1 KiB body limit unless `options` say otherwise)."""
    server = Server(handler, **{"max_body_bytes": 1024, **options})
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.shutdown(0.0)


def serve(handler: Handler, call: Callable[[int], Any], **options: Any) -> Any:
    """Serve `handler` and run the blocking `call(port)` against it; what it returns."""

    async def run() -> Any:
        async with serving(handler, **options) as server:
            return await asyncio.to_thread(call, server.port)

    return asyncio.run(run())


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    """curl (with nghttp2, as Debian builds it) run with `args`; skipped where it is missing."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    return subprocess.run(
        ["curl", "-sS", "--max-time", "15", *args], capture_output=True, text=True, check=False
    )


class Settable(Protocol):
    """An `asyncio.Event` or a `threading.Event`."""

    def set(self) -> None: ...


def sleeping(entered: Settable, cancelled: Settable) -> Handler:
    """A handler that sets `entered`, then waits until it is cancelled (and sets `cancelled`)."""

    async def handler(request: Request) -> Response:
        entered.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return Response(200, b"{}")

    return handler
