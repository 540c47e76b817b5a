"""Server reflection under both ``grpc.reflection.v1`` and ``grpc.reflection.v1alpha``.

grpcio-reflection serves only v1alpha, while newer tools (``buf curl``, recent grpcurl)
ask for v1 first. The v1 protocol is the v1alpha schema with the package renamed, so the
v1 file is derived from the installed v1alpha descriptor (nothing is copied into the repo)
and the same servicer answers both; the messages are identical on the wire.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2

__all__ = ["V1_SERVICE_NAME", "V1ALPHA_SERVICE_NAME", "enable"]

V1ALPHA_SERVICE_NAME: str = reflection.SERVICE_NAME
V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
_V1_FILE = "grpc/reflection/v1/reflection.proto"


def _register_v1_descriptor(pool: descriptor_pool.DescriptorPool) -> None:
    """Add the v1 reflection file to `pool` so reflection can describe itself under v1."""
    try:
        pool.FindFileByName(_V1_FILE)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    old, new = ".grpc.reflection.v1alpha.", ".grpc.reflection.v1."
    proto.name, proto.package = _V1_FILE, "grpc.reflection.v1"
    for message in proto.message_type:
        for field in message.field:
            if field.HasField("type_name"):
                field.type_name = field.type_name.replace(old, new)
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old, new)
            method.output_type = method.output_type.replace(old, new)
    pool.AddSerializedFile(proto.SerializeToString())


def _v1_is_packaged() -> bool:
    try:
        importlib.import_module("grpc_reflection.v1.reflection_pb2")
    except ImportError:
        return False
    return True


def enable(server: grpc.Server, service_names: Sequence[str]) -> None:
    """Serve reflection for `service_names` (plus both reflection services) on `server`."""
    pool = descriptor_pool.Default()
    names = [*service_names, V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME]
    reflection.enable_server_reflection(names, server, pool=pool)
    if _v1_is_packaged():
        return  # a grpcio-reflection that ships v1 serves it itself
    _register_v1_descriptor(pool)
    servicer = reflection.ReflectionServicer(names, pool=pool)
    v1 = grpc.method_handlers_generic_handler(
        V1_SERVICE_NAME,
        {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                servicer.ServerReflectionInfo,
                request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((v1,))
