"""gateway.reflection: descriptors from a backend's server reflection, v1 or v1alpha, with
every imported file followed, as a DescriptorSet the rest of the edge cannot tell apart."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2

from gateway.descriptors import DescriptorSet
from gateway.reflection import ReflectionError, reflect
from services.kit import reflection as kit_reflection
from tests.support.protos import compile_proto

PROTO = """
syntax = "proto3";
package acme.clock.v1;
import "google/api/annotations.proto";
import "google/protobuf/timestamp.proto";
service Clock {
  rpc Now(NowRequest) returns (google.protobuf.Timestamp) { option (google.api.http) = { get: "/v1/now" }; }
}
message NowRequest { string zone = 1; }
"""
SERVICE = "acme.clock.v1.Clock"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[descriptor_pb2.FileDescriptorProto]:
    directory = tmp_path_factory.mktemp("clock")
    descriptor_set = compile_proto(directory, "acme/clock/v1/clock.proto", PROTO)
    return list(descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes()).file)


class _OneFileAtATime:
    """A reflection service that, like some servers, answers each request with the one file
    asked for and never its imports: the client has to ask for those by name."""

    def __init__(self, files: list[descriptor_pb2.FileDescriptorProto], *, withheld: str = "") -> None:
        self.by_name = {f.name: f for f in files}
        self.asked: list[str] = []
        self.withheld = withheld
        """A file this server answers for with no file at all (and no error)."""

    def info(
        self, requests: Iterator[reflection_pb2.ServerReflectionRequest], context: grpc.ServicerContext
    ) -> Iterator[reflection_pb2.ServerReflectionResponse]:
        for request in requests:
            kind = request.WhichOneof("message_request")
            if kind == "list_services":
                services = [reflection_pb2.ServiceResponse(name=SERVICE)]
                yield reflection_pb2.ServerReflectionResponse(
                    list_services_response=reflection_pb2.ListServiceResponse(service=services)
                )
                continue
            name = request.file_by_filename or "acme/clock/v1/clock.proto"
            self.asked.append(name)
            found = [] if name == self.withheld else [self.by_name[name].SerializeToString()]
            yield reflection_pb2.ServerReflectionResponse(
                file_descriptor_response=reflection_pb2.FileDescriptorResponse(file_descriptor_proto=found)
            )


def _reflection_handler(service: str, behaviour: Any) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        service,
        {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                behaviour,
                request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
            )
        },
    )


def _serve(register: object) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    assert callable(register)
    register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def _reflect(
    port: int, wanted: list[str] | None, *, timeout: float = 10.0
) -> tuple[DescriptorSet, dict[str, list[str]]]:
    async def run() -> tuple[DescriptorSet, dict[str, list[str]]]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            return await reflect({"clock": channel}, {"clock": wanted}, timeout=timeout)

    return asyncio.run(run())


def _pool_serving(files: list[descriptor_pb2.FileDescriptorProto]) -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    for file in files:
        pool.Add(file)
    return pool


@pytest.mark.parametrize("version", ["v1alpha", "v1"])
def test_every_service_of_a_backend(files: list[descriptor_pb2.FileDescriptorProto], version: str) -> None:
    pool = _pool_serving(files)

    def register(server: grpc.Server) -> None:
        if version == "v1alpha":
            reflection.enable_server_reflection((SERVICE, reflection.SERVICE_NAME), server, pool=pool)
            return
        # A v1-only server: the same servicer under the v1 name (the messages are the same).
        servicer = reflection.ReflectionServicer((SERVICE, kit_reflection.V1_SERVICE_NAME), pool=pool)
        server.add_generic_rpc_handlers(
            (_reflection_handler(kit_reflection.V1_SERVICE_NAME, servicer.ServerReflectionInfo),)
        )

    server, port = _serve(register)
    try:
        found, served = _reflect(port, None)
    finally:
        server.stop(None)
    assert served == {"clock": [SERVICE]}  # reflection itself and health are not the API
    method = found.services([SERVICE])[0].methods_by_name["Now"]
    assert method.output_type.full_name == "google.protobuf.Timestamp"
    assert found.comment(SERVICE) == ""  # reflection carries no source info


def test_imports_are_asked_for_by_name(files: list[descriptor_pb2.FileDescriptorProto]) -> None:
    servicer = _OneFileAtATime(files)
    handler = _reflection_handler(reflection.SERVICE_NAME, servicer.info)
    server, port = _serve(lambda s: s.add_generic_rpc_handlers((handler,)))
    try:
        found, _ = _reflect(port, [SERVICE])
    finally:
        server.stop(None)
    assert "google/api/http.proto" in servicer.asked  # imported by annotations.proto, not by clock.proto
    assert {f.name for f in found.files} == {f.name for f in files}


def test_a_backend_that_never_sends_an_import_is_refused_not_asked_forever(
    files: list[descriptor_pb2.FileDescriptorProto],
) -> None:
    servicer = _OneFileAtATime(files, withheld="google/api/http.proto")
    handler = _reflection_handler(reflection.SERVICE_NAME, servicer.info)
    server, port = _serve(lambda s: s.add_generic_rpc_handlers((handler,)))
    try:
        with pytest.raises(ReflectionError, match=re.escape("clock did not send google/api/http.proto")):
            _reflect(port, [SERVICE])
    finally:
        server.stop(None)
    assert servicer.asked.count("google/api/http.proto") == 1


@pytest.mark.parametrize(
    ("wanted", "message"),
    [
        (
            ["acme.clock.v1.Calendar"],
            "clock does not serve acme.clock.v1.Calendar (it serves: acme.clock.v1.Clock)",
        ),
        (None, "clock does not serve gRPC server reflection (v1 or v1alpha)"),
    ],
    ids=["unknown-service", "no-reflection"],
)
def test_refusals(
    files: list[descriptor_pb2.FileDescriptorProto], wanted: list[str] | None, message: str
) -> None:
    pool = _pool_serving(files)

    def register(server: grpc.Server) -> None:
        if wanted is not None:
            reflection.enable_server_reflection((SERVICE,), server, pool=pool)

    server, port = _serve(register)
    try:
        with pytest.raises(ReflectionError, match=re.escape(message)):
            _reflect(port, wanted)
    finally:
        server.stop(None)


@contextlib.contextmanager
def _port_nothing_listens_on() -> Iterator[int]:
    with socket.socket() as bound:  # bound but not listening: connections are refused
        bound.bind(("127.0.0.1", 0))
        yield bound.getsockname()[1]


@pytest.mark.slow
def test_an_unreachable_backend() -> None:
    with (
        _port_nothing_listens_on() as port,
        pytest.raises(ReflectionError, match=re.escape("cannot reach clock within 0.5 s")),
    ):
        _reflect(port, None, timeout=0.5)  # waited for: a backend may still be starting
