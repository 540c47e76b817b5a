"""gateway.app: the aiohttp application, in process, for answers that need no backend."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from gateway.app import Edge
from gateway.backends import Backends
from gateway.routes import compile_routes
from poly.orders.v1 import orders_service_pb2
from services.kit.config import GatewaySettings


class _NoBackends:
    """Stands in for `Backends` where no request reaches a backend."""

    async def close(self) -> None:
        return None


def _answer(raw_path: str) -> tuple[int, str, Any]:
    router = compile_routes(orders_service_pb2.DESCRIPTOR.services_by_name.values())
    settings = GatewaySettings(descriptor_set=Path("unused.binpb"), backends={})
    edge = Edge(router, cast(Backends, _NoBackends()), settings, document={})

    async def run() -> tuple[int, str, Any]:
        async with TestClient(TestServer(edge.application())) as client:
            url = URL(str(client.make_url("/")).rstrip("/") + raw_path, encoded=True)
            async with client.session.get(url) as response:
                return response.status, response.content_type, json.loads(await response.read())

    return asyncio.run(run())


@pytest.mark.parametrize(
    "raw_path",
    ["/v1/nowhere", "/v1/orders/a/b%0Ac", "/v1/%0A", "/v1/%0D%0A:watch"],
    ids=["plain", "newline-in-a-segment", "newline-alone", "crlf-before-a-verb"],
)
def test_an_unmatched_path_is_a_status_even_with_a_newline_in_it(raw_path: str) -> None:
    status, content_type, body = _answer(raw_path)
    assert (status, content_type) == (404, "application/json"), body
    assert body["code"] == 5
    assert body["details"][0]["reason"] == "ROUTE_NOT_FOUND"
