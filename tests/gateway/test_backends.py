"""Backend channels and their health, as /readyz reports it."""

from __future__ import annotations

import asyncio
from pathlib import Path

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
            return await backends.health(timeout=0.5)
        finally:
            await backends.close()

    assert asyncio.run(check()) in (
        {"acme.v1.Library": "UNAVAILABLE"},
        {"acme.v1.Library": "DEADLINE_EXCEEDED"},
    )
    assert backends.services == ["acme.v1.Library"]
