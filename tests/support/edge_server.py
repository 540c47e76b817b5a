"""aiohttp's test client against an `Edge`, served as `poly gateway` serves it."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import BaseTestServer
from aiohttp.web import BaseRunner
from yarl import URL

from gateway.app import Edge
from gateway.http1 import Server

__all__ = ["EdgeTestServer"]


class EdgeTestServer(BaseTestServer):
    """A test server for `edge` on 127.0.0.1 (its own HTTP/1.1 server, `Edge.server`);
    closing it closes the edge's backend channels too."""

    def __init__(self, edge: Edge, **kwargs: Any) -> None:
        self._edge = edge
        self._http: Server | None = None
        super().__init__(**kwargs)

    async def start_server(self, loop: asyncio.AbstractEventLoop | None = None, **kwargs: Any) -> None:
        if self._http is not None:
            return
        self._http = self._edge.server()
        await self._http.start(self.host, self.port or 0)
        self.port = self._http.port
        self.scheme = "http"
        self._root = URL(f"http://{self.host}:{self.port}")

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        raise NotImplementedError("the edge runs on its own server, not an aiohttp runner")

    @property
    def started(self) -> bool:
        return self._http is not None

    async def close(self) -> None:
        if self._http is None or self._closed:
            return
        self._closed = True
        self._root = None
        await self._http.shutdown(0.0)
        await self._edge.close()
