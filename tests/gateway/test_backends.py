"""Backend channels and their health, as /readyz reports it."""

from __future__ import annotations

import asyncio
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gateway.backends import Backends
from gateway.config import Target, Transport
from services.kit import config
from tests.support.env import free_port, make_certs


def test_an_unreachable_backend_is_reported_not_raised(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    tls = config.load("gateway", {"POLY_HOME": str(tmp_path), "POLY_TLS_DIR": str(certs)}).tls
    transport = Transport("mtls", tls.ca_file, tls.cert_file, tls.key_file, server_name="users")
    backends = Backends({"acme.v1.Library": Target(f"localhost:{free_port()}", transport)})

    async def check() -> dict[str, str]:
        try:
            return await backends.health(["acme.v1.Library"], timeout=0.5)
        finally:
            await backends.close()

    assert asyncio.run(check()) in (
        {"acme.v1.Library": "UNAVAILABLE"},
        {"acme.v1.Library": "DEADLINE_EXCEEDED"},
    )


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _health_of(port: int, service: str) -> dict[str, str]:
    backends = Backends({service: Target(f"127.0.0.1:{port}", Transport("plaintext"))})

    async def check() -> dict[str, str]:
        try:
            return await backends.health([service], timeout=5)
        finally:
            await backends.close()

    return asyncio.run(check())


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        (None, "REACHABLE"),
        ({"acme.v1.Library": SERVING}, "SERVING"),
        ({"acme.v1.Library": NOT_SERVING}, "NOT_SERVING"),
        ({"": SERVING}, "SERVING"),
    ],
    ids=["no-health-service", "per-service", "per-service-not-serving", "server-wide-only"],
)
def test_health_of_backends_that_are_not_polyservice(statuses: dict[str, int] | None, expected: str) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    if statuses is not None:
        servicer = health.HealthServicer()
        for name, status in statuses.items():
            servicer.set(name, status)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        assert _health_of(port, "acme.v1.Library") == {"acme.v1.Library": expected}
    finally:
        server.stop(None)
