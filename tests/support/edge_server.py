"""aiohttp's test client against an `Edge`, served as `poly gateway` serves it."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import BaseTestServer
from aiohttp.web import BaseRunner
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.app import Edge
from gateway.httpserver import Server
from gateway.wire import HTTP_11, Request

__all__ = ["EdgeTestServer", "parsed_request"]


class _Unconnected:
    """Where a request made by `parsed_request` came from: nowhere it could write to."""

    peer = "127.0.0.1"


def parsed_request(method: str, headers: dict[str, str], path: str = "/") -> Request:
    """A request as the edge's server hands one over, for unit tests of what reads it (its
    body and 100-continue need a connection: only headers and the request line are here)."""
    return Request(
        _Unconnected(),  # type: ignore[arg-type]
        method=method,
        raw_path=path,
        version=HTTP_11,
        headers=CIMultiDictProxy(CIMultiDict({"Host": "edge", **headers})),
        keep_alive=True,
    )


class EdgeTestServer(BaseTestServer):
    """A test server for `edge` on 127.0.0.1 (its own HTTP server, `Edge.server`);
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
