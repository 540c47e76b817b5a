"""aiohttp's test client against an `Edge`, served as `poly gateway` serves it."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import BaseTestServer
from aiohttp.web import ServerRunner

from gateway.app import Edge

__all__ = ["EdgeTestServer"]


class EdgeTestServer(BaseTestServer):
    """A test server for `edge` on 127.0.0.1 (its low-level aiohttp server); closing it
    closes the edge's backend channels too."""

    def __init__(self, edge: Edge, **kwargs: Any) -> None:
        self._edge = edge
        super().__init__(**kwargs)

    async def _make_runner(self, **kwargs: Any) -> ServerRunner:
        return ServerRunner(self._edge.server(), **kwargs)

    async def close(self) -> None:
        await super().close()
        await self._edge.close()
