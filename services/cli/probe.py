"""Ask a component's standard gRPC health service how it is, over mTLS as the `cli` identity,
or whether its port is already taken."""

from __future__ import annotations

import errno
import json
import socket
import urllib.error
import urllib.request
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.kit import tls
from services.kit.config import Settings

__all__ = ["edge_status", "health_status", "port_in_use"]


def health_status(settings: Settings, component: str, *, timeout: float = 2.0) -> str:
    """``SERVING``, ``NOT_SERVING``, ... or ``UNREACHABLE (<code>)`` when the call fails."""
    credentials = tls.channel_credentials(settings.tls)
    options = [("grpc.ssl_target_name_override", component)]  # the server must prove it is `component`
    with grpc.secure_channel(settings.peers[component], credentials, options=options) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else None
            return f"UNREACHABLE ({code.name if code else 'error'})"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


def edge_status(settings: Settings, *, timeout: float = 2.0) -> str:
    """The HTTP/JSON edge's ``/readyz``: ``SERVING`` once it and every backend are."""
    url = f"http://{settings.peers['gateway']}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return str(json.loads(answer.read()).get("status", "UNKNOWN"))
    except urllib.error.HTTPError as refused:
        return "NOT_SERVING" if refused.code == 503 else f"UNREACHABLE (HTTP {refused.code})"
    except (OSError, ValueError) as error:
        return f"UNREACHABLE ({type(error).__name__})"


def port_in_use(host: str, port: int) -> bool:
    """True when something already listens on `host`:`port` (any address `host` names), so a
    component could not."""
    if port == 0:
        return False
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return False  # the component itself will say what is wrong with the address
    return any(_taken(family, address) for family, _, _, _, address in addresses)


def _taken(family: socket.AddressFamily, address: tuple[Any, ...]) -> bool:
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            return error.errno == errno.EADDRINUSE
    return False
