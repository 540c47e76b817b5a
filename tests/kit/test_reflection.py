from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.kit import server, tls
from tests.support import probe_service
from tests.support.env import settings_for


@pytest.fixture
def channel(certs: Path) -> Iterator[grpc.Channel]:
    settings = settings_for("orders", {"POLY_TLS_DIR": str(certs), "POLY_ORDERS_PORT": "0"})
    running = server.start(settings, [probe_service.registration()])
    cli = settings_for("cli", {"POLY_TLS_DIR": str(certs)})
    try:
        with grpc.secure_channel(f"localhost:{running.port}", tls.channel_credentials(cli.tls)) as ch:
            yield ch
    finally:
        running.drain()


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_lists_services_in_both_versions(channel: grpc.Channel, version: str) -> None:
    method = f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo"
    call = channel.stream_stream(
        method,
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    [response] = list(call(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5))
    names = {s.name for s in response.list_services_response.service}
    assert {
        probe_service.SERVICE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names


def test_reflection_describes_the_health_service(channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="grpc.health.v1.Health")
    [response] = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
    assert response.file_descriptor_response.file_descriptor_proto


def test_v1_reflection_can_describe_itself(channel: grpc.Channel) -> None:
    call = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    request = reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="grpc.reflection.v1.ServerReflection"
    )
    [response] = list(call(iter([request]), timeout=5))
    assert not response.HasField("error_response")
    assert response.file_descriptor_response.file_descriptor_proto
