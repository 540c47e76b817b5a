"""A small service built on the kit, for tests of the kit itself.

``poly.test.v1.ProbeService`` has methods that echo, sleep, stream, raise a domain error
and crash. Run it as a process with ``python -m tests.support.probe_service`` (settings
from POLY_* variables, identity ``orders``) or in-process through `registration()`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, wrappers_pb2
from google.protobuf.descriptor import ServiceDescriptor

from services.kit import config, server, telemetry, tls
from services.kit.domain_errors import FieldViolation, InvalidArgument, NotFound

SERVICE = "poly.test.v1.ProbeService"
_S = wrappers_pb2.StringValue
SLEEPING = threading.Event()
"""Set when a Sleep call has entered its handler (in-process tests wait on it)."""


def echo(request: _S, context: grpc.ServicerContext) -> _S:
    return _S(value=request.value)


def sleep(request: _S, context: grpc.ServicerContext) -> _S:
    SLEEPING.set()
    logging.getLogger("probe").info("sleep started", extra={"method": f"/{SERVICE}/Sleep"})
    time.sleep(float(request.value))
    return _S(value="slept")


def missing(request: _S, context: grpc.ServicerContext) -> _S:
    raise NotFound("ORDER_NOT_FOUND", "order {order} does not exist", order=request.value)


def invalid(request: _S, context: grpc.ServicerContext) -> _S:
    raise InvalidArgument(
        "INVALID_ORDER",
        "order is invalid",
        violations=[
            FieldViolation("order.lines[0].quantity", "must be positive"),
        ],
    )


def crash(request: _S, context: grpc.ServicerContext) -> _S:
    raise RuntimeError("secret-table-name in a stack trace")


def count(request: _S, context: grpc.ServicerContext) -> Iterator[_S]:
    for i in range(int(request.value)):
        yield _S(value=str(i))
    raise NotFound("STREAM_ENDED", "ran out after {n}", n=request.value)


def hold(request: _S, context: grpc.ServicerContext) -> Iterator[_S]:
    """Send one message, then keep the stream open until the client leaves (at most 60 s)."""
    gone = threading.Event()
    context.add_callback(gone.set)
    yield _S(value="open")
    gone.wait(60)


def unimplemented(request: _S, context: grpc.ServicerContext) -> _S:
    # Exactly what generated servicer base classes do for a method nobody implemented.
    context.set_code(grpc.StatusCode.UNIMPLEMENTED)
    context.set_details("Method not implemented!")
    raise NotImplementedError("Method not implemented!")


def _relay(credentials: grpc.ChannelCredentials | None) -> Callable[[_S, grpc.ServicerContext], _S]:
    def relay(request: _S, context: grpc.ServicerContext) -> _S:
        """Call `Missing` on the server at ``request.value`` (an address) and return its answer."""
        with (
            grpc.secure_channel(request.value, credentials)
            if credentials
            else grpc.insecure_channel(request.value)
        ) as channel:
            result: _S = stub(channel, "Missing")(_S(value="orders/downstream"), timeout=5)
            return result

    return relay


def who_am_i(request: _S, context: grpc.ServicerContext) -> _S:
    return _S(value=tls.peer_identity(context) or "")


def registration(*, relay_credentials: grpc.ChannelCredentials | None = None) -> server.Registration:
    unary = {
        "Echo": echo,
        "Sleep": sleep,
        "Missing": missing,
        "Invalid": invalid,
        "Crash": crash,
        "Unimplemented": unimplemented,
        "WhoAmI": who_am_i,
        "Relay": _relay(relay_credentials),
    }
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=_S.FromString, response_serializer=_S.SerializeToString
        )
        for name, fn in unary.items()
    }
    for name, fn in {"Count": count, "Hold": hold}.items():
        handlers[name] = grpc.unary_stream_rpc_method_handler(
            fn, request_deserializer=_S.FromString, response_serializer=_S.SerializeToString
        )
    generic = grpc.method_handlers_generic_handler(SERVICE, handlers)
    return server.Registration(SERVICE, lambda s: s.add_generic_rpc_handlers((generic,)))


def descriptor() -> ServiceDescriptor:
    """A descriptor of the probe service, in a private pool, for clients that derive config."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="poly/test/v1/probe.proto",
        package="poly.test.v1",
        dependency=["google/protobuf/wrappers.proto"],
    )
    service = proto.service.add(name="ProbeService")
    for name in (
        "Echo",
        "Sleep",
        "Missing",
        "Invalid",
        "Crash",
        "Unimplemented",
        "WhoAmI",
        "Relay",
        "Count",
        "Hold",
    ):
        service.method.add(
            name=name,
            input_type=".google.protobuf.StringValue",
            output_type=".google.protobuf.StringValue",
            server_streaming=name in {"Count", "Hold"},
        )
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.AddSerializedFile(proto.SerializeToString())
    return pool.FindServiceByName(SERVICE)


def stub(channel: grpc.Channel, method: str, *, streaming: bool = False) -> grpc.UnaryUnaryMultiCallable:
    path = f"/{SERVICE}/{method}"
    if streaming:
        return channel.unary_stream(
            path, request_serializer=_S.SerializeToString, response_deserializer=_S.FromString
        )
    return channel.unary_unary(
        path, request_serializer=_S.SerializeToString, response_deserializer=_S.FromString
    )


if __name__ == "__main__":
    settings = config.load_or_exit("orders")
    telemetry.setup_or_exit(settings)
    server.serve(settings, [registration()])
