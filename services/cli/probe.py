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

__all__ = ["NOTHING_LISTENS", "UNTRUSTED", "edge_status", "health_status", "port_in_use"]

NOTHING_LISTENS = "DOWN (nothing listens there)"
UNTRUSTED = "UNTRUSTED (its certificate is not from this CA: another system's?)"


def health_status(settings: Settings, component: str, *, timeout: float = 2.0) -> str:
    """``SERVING``, ``NOT_SERVING``, ... or ``UNREACHABLE (<code>)`` when the call fails."""
    credentials = tls.channel_credentials(settings.tls)
    options = [("grpc.ssl_target_name_override", component)]  # the server must prove it is `component`
    with grpc.secure_channel(settings.peers[component], credentials, options=options) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError as error:
            if not isinstance(error, grpc.Call):
                return "UNREACHABLE (error)"
            return _failed_call(error.code(), error.details() or "", timeout)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


def _failed_call(code: grpc.StatusCode, details: str, timeout: float) -> str:
    """What a failed health check means, in words an operator can act on."""
    if "CERTIFICATE_VERIFY_FAILED" in details or "certificate verify failed" in details:
        return UNTRUSTED
    if "Connection refused" in details:
        return NOTHING_LISTENS
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"UNREACHABLE (no answer within {timeout:g} s)"
    return f"UNREACHABLE ({code.name})"


def edge_status(settings: Settings, *, timeout: float = 2.0) -> str:
    """The HTTP/JSON edge's ``/readyz``: ``SERVING`` once it and every backend are."""
    url = f"http://{settings.peers['gateway']}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return str(json.loads(answer.read()).get("status", "UNKNOWN"))
    except urllib.error.HTTPError as refused:
        return "NOT_SERVING" if refused.code == 503 else f"UNREACHABLE (HTTP {refused.code})"
    except (OSError, ValueError) as error:
        reason = error.reason if isinstance(error, urllib.error.URLError) else error
        if isinstance(reason, ConnectionRefusedError):
            return NOTHING_LISTENS
        if isinstance(reason, TimeoutError):
            return f"UNREACHABLE (no answer within {timeout:g} s)"
        return f"UNREACHABLE ({reason})"


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
