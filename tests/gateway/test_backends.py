"""Backend channels and their health, as /readyz reports it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.backends import Backends
from services.kit import config
from services.kit.config import Backend
from tests.support.env import free_port, make_certs


def test_an_unreachable_backend_is_reported_not_raised(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    tls = config.load("gateway", {"POLY_HOME": str(tmp_path), "POLY_TLS_DIR": str(certs)}).tls
    backends = Backends({"acme.v1.Library": Backend(f"localhost:{free_port()}", "users")}, tls)

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
