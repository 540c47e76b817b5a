"""The live edge: ``python -m gateway`` in front of all five services, for the end-to-end tests.

Every service runs as a process with real certificates; the edge reaches them over mTLS as
``gateway``. `edge` is module-scoped: each module using it gets its own system.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.kit import config
from tests.support.http import Answer, http_call
from tests.support.identity import PASSWORD, Deployment, start
from tests.support.processes import Process

__all__ = ["STANDALONE", "Answer", "Edge", "edge", "pem"]

STANDALONE = {"OTEL_TRACES_EXPORTER": "none"}
"""The environment of a standalone ``python -m gateway`` in tests not about its spans: by
default it keeps them under ``./.poly/traces`` (the checkout's own home)."""


@dataclass
class Edge:
    system: Deployment
    process: Process
    port: int

    def call(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> Answer:
        return http_call(self.port, method, path, body, headers=headers, raw=raw)

    def token(self) -> tuple[str, str]:
        """A new user's ``(users/{id}, access token)``, through the edge."""
        email = f"edge-{uuid.uuid4().hex[:10]}@example.com"
        registered = self.call("POST", "/v1/auth:register", {"email": email, "password": PASSWORD})
        assert registered.status == 201, registered.body
        login = self.call("POST", "/v1/auth:login", {"email": email, "password": PASSWORD})
        assert login.status == 200, login.body
        return registered.json()["user"], login.json()["access_token"]  # OAuth names, set by json_name


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    system = start(
        tmp_path_factory.mktemp("edge"),
        config.SERVICES,
        {"POLY_GATEWAY_MAX_BODY_BYTES": "4096", "POLY_GATEWAY_IGNORED_QUERY_PARAMETERS": "_,cb"},
    )
    process = Process.module("gateway", system.environ)
    try:
        process.wait_for_line(lambda line: '"serving"' in line, timeout=30)
        yield Edge(system, process, int(system.environ["POLY_GATEWAY_PORT"]))
    finally:
        process.stop()
        system.stop()


@pytest.fixture
def pem(tmp_path: Path) -> dict[str, Path]:
    """Three readable files standing for a CA, a certificate and a key, for configuration
    tests (their contents are read by grpc only when a channel is built)."""
    files = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key")}
    for path in files.values():
        path.write_text("not checked here: grpc reads it when the channel is built\n")
    return files
