"""The plaintext health port (POLY_<NAME>_HEALTH_PORT): what a Kubernetes grpc probe reads,
and nothing more."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import wrappers_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.kit import server, tls
from tests.support import probe_service
from tests.support.env import free_port, settings_for

_S = wrappers_pb2.StringValue
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def probed(certs: Path) -> Iterator[tuple[server.RunningServer, int]]:
    health_port = free_port()
    settings = settings_for(
        "orders",
        {
            "POLY_TLS_DIR": str(certs),
            "POLY_ORDERS_PORT": "0",
            "POLY_ORDERS_HEALTH_PORT": str(health_port),
            "POLY_GRACE_SECONDS": "5",
        },
    )
    started = server.start(settings, [probe_service.registration()])
    try:
        yield started, health_port
    finally:
        started.drain()


def _check(port: int, service: str = "") -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
        return int(reply.status)


def test_a_probe_without_a_certificate_reads_the_servers_health(
    probed: tuple[server.RunningServer, int],
) -> None:
    _, port = probed
    assert _check(port) == _SERVING
    assert _check(port, probe_service.SERVICE) == _SERVING
    with pytest.raises(grpc.RpcError) as caught:
        _check(port, "no.such.Service")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("method", ["application", "reflection", "watch"])
def test_the_plaintext_port_answers_nothing_but_check(
    probed: tuple[server.RunningServer, int], method: str
) -> None:
    _, port = probed
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel, pytest.raises(grpc.RpcError) as caught:
        if method == "application":
            probe_service.stub(channel, "Echo")(_S(value="hi"), timeout=5)
        elif method == "reflection":
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            next(
                reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                    iter([request]), timeout=5
                )
            )
        else:  # a stream would hold one of the port's few threads
            next(health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=5))
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.slow
def test_the_probe_reads_not_serving_throughout_the_drain_then_the_port_closes(
    probed: tuple[server.RunningServer, int], certs: Path
) -> None:
    running, port = probed
    settings = settings_for("cli", {"POLY_TLS_DIR": str(certs)})
    with grpc.secure_channel(f"localhost:{running.port}", tls.channel_credentials(settings.tls)) as channel:
        probe_service.SLEEPING.clear()
        slow = probe_service.stub(channel, "Sleep").future(_S(value="1.0"), timeout=10)
        assert probe_service.SLEEPING.wait(5), "the slow call never reached its handler"
        drained = threading.Thread(target=running.drain)
        drained.start()
        try:
            assert _check(port) == _NOT_SERVING  # out of the load balancer while calls finish
            assert slow.result().value == "slept"
        finally:
            drained.join(10)
    with pytest.raises(grpc.RpcError) as caught:
        _check(port)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_taken_health_port_is_a_clear_startup_error(
    probed: tuple[server.RunningServer, int], certs: Path
) -> None:
    _, taken = probed
    settings = settings_for(
        "users", {"POLY_TLS_DIR": str(certs), "POLY_USERS_PORT": "0", "POLY_USERS_HEALTH_PORT": str(taken)}
    )
    with pytest.raises(server.StartupError, match=f"cannot listen on 127.0.0.1:{taken} for health probes"):
        server.start(settings, [probe_service.registration()])


def test_without_a_health_port_there_is_no_plaintext_listener(certs: Path) -> None:
    settings = settings_for("orders", {"POLY_TLS_DIR": str(certs), "POLY_ORDERS_PORT": "0"})
    assert settings.server.health_port == 0
    started = server.start(settings, [probe_service.registration()])
    try:
        assert started.probe is None
    finally:
        started.drain()
