"""Helpers shared by tests: free ports, certificates, settings and process environments."""

from __future__ import annotations

import os
import random
import socket
import sys
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from services.kit import config, tls

ROOT = Path(__file__).resolve().parents[2]


_LISTEN_PORTS = range(20_000, 32_000)
"""Below Linux's ephemeral range (32768-60999), from which outgoing connections take their
local ports: a port found free here stays free until a test's server binds it, where a port
the kernel hands out for binding may meanwhile become some connection's local end."""


_RECENTLY_HANDED_OUT: dict[int, None] = {}
"""Ports handed out lately, oldest first: a fixture takes several ports before its servers
bind any, so a probe alone could hand the same port out twice."""
_REMEMBERED = 4_000


def free_port() -> int:
    """A port nothing listens on now, outside the ephemeral range, and not among the last
    few thousand handed out in this session."""
    for _ in range(1_000):
        candidate = random.choice(_LISTEN_PORTS)
        if candidate in _RECENTLY_HANDED_OUT:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", candidate))
            except OSError:
                continue
        _RECENTLY_HANDED_OUT[candidate] = None
        if len(_RECENTLY_HANDED_OUT) > _REMEMBERED:
            del _RECENTLY_HANDED_OUT[next(iter(_RECENTLY_HANDED_OUT))]
        return candidate
    with socket.socket() as probe:  # the range is full: any port the kernel gives
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def make_certs(directory: Path) -> Path:
    tls.ensure_certificates(directory, config.COMPONENTS)
    return directory


def poly_environ(home: Path, ports: Mapping[str, int] | None = None, **extra: str) -> dict[str, str]:
    """A POLY_* environment rooted at `home`, with every component on a free port."""
    chosen = dict(ports) if ports else {name: free_port() for name in config.DEFAULT_PORTS}
    environ = {
        "POLY_HOME": str(home),
        "POLY_GRACE_SECONDS": "5",
        "POLY_SMTP_PORT": str(free_port()),  # each system its own (development) mailbox
        # Tests register many accounts from 127.0.0.1; the registration limit's tests set their own.
        "POLY_AUTH_REGISTRATIONS_PER_ADDRESS": "100000",
        **{f"POLY_{name.upper()}_PORT": str(port) for name, port in chosen.items()},
        # Each system its own /metrics ports (the defaults are fixed, like the gRPC ports').
        **{f"POLY_{name.upper()}_METRICS_PORT": str(free_port()) for name in config.DEFAULT_METRICS_PORTS},
    }
    environ.update(extra)
    return environ


def process_environ(poly: Mapping[str, str]) -> dict[str, str]:
    """The test runner's environment without its own POLY_* variables, plus `poly`."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("POLY_")}
    return {**inherited, **poly, "PYTHONUNBUFFERED": "1"}


def settings_for(component: str, environ: Mapping[str, str]) -> config.Settings:
    return config.load(component, environ)


PYTHON = sys.executable


def production_shape(request: pytest.FixtureRequest) -> dict[str, str]:
    """The production shape's settings: a PostgreSQL database per service (fixture
    ``postgres_databases``) and events through RabbitMQ (fixture ``amqp_url``) under a prefix
    of this test's own."""
    make: Callable[[], str] = request.getfixturevalue("postgres_databases")
    production = {f"POLY_{name.upper()}_DATABASE_URL": make() for name in config.SERVICES}
    production["POLY_BUS_URL"] = request.getfixturevalue("amqp_url")
    production["POLY_BUS_PREFIX"] = f"polytest-{uuid.uuid4().hex[:10]}"
    return production
