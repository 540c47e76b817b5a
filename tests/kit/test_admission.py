"""kit.server admission: at most POLY_GRPC_WORKERS application calls at once; the next ones
are refused at once with RESOURCE_EXHAUSTED (SERVER_BUSY) and counted, health still answers,
and drain still waits for the calls in flight. A real server over mTLS throughout."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, wrappers_pb2
from google.protobuf.descriptor import ServiceDescriptor
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from services.kit import server, tls
from services.kit.errors import error_middleware
from services.kit.logs import access_log_middleware
from services.kit.telemetry.metrics import Metrics
from services.kit.telemetry.rpc import server_middleware
from tests.support.env import settings_for

_S = wrappers_pb2.StringValue
SERVICE = "poly.test.v1.GateProbe"
WORKERS = 4  # the smallest POLY_GRPC_WORKERS allowed
_WAIT = 20.0  # every wait is bounded; a healthy run takes a fraction of this


@dataclass
class _Gate:
    """Handlers that hold their call until the test opens the gate."""

    opened: threading.Event = field(default_factory=threading.Event)
    entered: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))

    def block(self, request: _S, context: grpc.ServicerContext) -> _S:
        self.entered.release()
        self.opened.wait(_WAIT)
        return _S(value="done")

    def block_stream(self, request: _S, context: grpc.ServicerContext) -> Iterator[_S]:
        self.entered.release()
        self.opened.wait(_WAIT)
        yield _S(value="done")

    def wait_entered(self, calls: int) -> None:
        for _ in range(calls):
            assert self.entered.acquire(timeout=_WAIT), "a call never reached its handler"


def _echo(request: _S, context: grpc.ServicerContext) -> _S:
    return _S(value=request.value)


def _descriptor() -> ServiceDescriptor:
    proto = descriptor_pb2.FileDescriptorProto(
        name="poly/test/v1/gate.proto", package="poly.test.v1", dependency=["google/protobuf/wrappers.proto"]
    )
    service = proto.service.add(name="GateProbe")
    for name, streaming in (("Block", False), ("BlockStream", True), ("Echo", False)):
        service.method.add(
            name=name,
            input_type=".google.protobuf.StringValue",
            output_type=".google.protobuf.StringValue",
            server_streaming=streaming,
        )
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.AddSerializedFile(proto.SerializeToString())
    return pool.FindServiceByName(SERVICE)


def _registration(gate: _Gate) -> server.Registration:
    unary = {"Block": gate.block, "Echo": _echo}
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=_S.FromString, response_serializer=_S.SerializeToString
        )
        for name, fn in unary.items()
    }
    handlers["BlockStream"] = grpc.unary_stream_rpc_method_handler(
        gate.block_stream, request_deserializer=_S.FromString, response_serializer=_S.SerializeToString
    )
    generic = grpc.method_handlers_generic_handler(SERVICE, handlers)
    return server.Registration(SERVICE, lambda s: s.add_generic_rpc_handlers((generic,)), _descriptor())


@dataclass
class _Served:
    running: server.RunningServer
    channel: grpc.Channel
    gate: _Gate
    metrics: Metrics | None

    def unary(self, method: str) -> grpc.UnaryUnaryMultiCallable:
        return self.channel.unary_unary(
            f"/{SERVICE}/{method}",
            request_serializer=_S.SerializeToString,
            response_deserializer=_S.FromString,
        )

    def stream(self, method: str) -> grpc.UnaryStreamMultiCallable:
        return self.channel.unary_stream(
            f"/{SERVICE}/{method}",
            request_serializer=_S.SerializeToString,
            response_deserializer=_S.FromString,
        )

    def fill(self) -> list[grpc.Future]:
        """WORKERS calls held in their handlers: every worker busy."""
        held = [self.unary("Block").future(_S(), timeout=_WAIT * 2) for _ in range(WORKERS)]
        self.gate.wait_entered(WORKERS)
        return held

    def sample(self, name: str, **labels: str) -> float | None:
        assert self.metrics is not None
        return self.metrics.registry.get_sample_value(name, labels)


@contextmanager
def _serve(certs: Path, metrics: Metrics | None, *, grace: str = "5") -> Iterator[_Served]:
    settings = settings_for(
        "orders",
        {
            "POLY_TLS_DIR": str(certs),
            "POLY_ORDERS_PORT": "0",
            "POLY_GRPC_WORKERS": str(WORKERS),
            "POLY_GRACE_SECONDS": grace,
        },
    )
    gate = _Gate()
    # The chain every service gets from default_middlewares, with a registry of the test's own.
    middlewares = [
        *([server_middleware(metrics, None)] if metrics is not None else []),
        access_log_middleware(),
        error_middleware("orders.poly.local"),
    ]
    running = server.start(settings, [_registration(gate)], middlewares=middlewares, metrics=metrics)
    client = settings_for("cli", {"POLY_TLS_DIR": str(certs)})
    channel = grpc.secure_channel(f"localhost:{running.port}", tls.channel_credentials(client.tls))
    try:
        yield _Served(running, channel, gate, metrics)
    finally:
        gate.opened.set()
        channel.close()
        running.drain()


@pytest.fixture
def served(certs: Path) -> Iterator[_Served]:
    with _serve(certs, Metrics(version="test")) as made:
        yield made


def _refusal(error: grpc.RpcError) -> tuple[grpc.StatusCode, str, error_details_pb2.ErrorInfo, float]:
    status = rpc_status.from_call(error)
    assert status is not None
    info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
    [packed_info, packed_retry] = status.details
    assert packed_info.Unpack(info) and packed_retry.Unpack(retry)
    return error.code(), error.details() or "", info, retry.retry_delay.ToTimedelta().total_seconds()


def _refused_unary(served: _Served, method: str = "Block") -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        served.unary(method)(_S(value="one too many"), timeout=_WAIT)
    return caught.value


def test_calls_beyond_the_limit_are_refused_at_once_counted_and_health_still_answers(
    served: _Served, caplog: pytest.LogCaptureFixture
) -> None:
    assert served.sample("poly_grpc_server_max_concurrent_calls") == WORKERS
    refused = "poly_grpc_server_refused_calls_total"
    assert served.sample(refused, grpc_service=SERVICE, grpc_method="Block") == 0, "series start at 0"

    held = served.fill()
    assert served.running.in_flight.count == WORKERS
    with caplog.at_level(logging.WARNING, logger="poly.server"):
        # Answered while every worker is still held in its handler: refused, not queued.
        errors = [_refused_unary(served) for _ in range(3)]
        with pytest.raises(grpc.RpcError) as stream_refused:
            list(served.stream("BlockStream")(_S(), timeout=_WAIT))
    assert not any(call.done() for call in held)

    for error in [*errors, stream_refused.value]:
        code, message, info, retry_after = _refusal(error)
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert message == "the server is at its limit of concurrent calls; retry later"
        assert (info.reason, info.domain, dict(info.metadata)) == ("SERVER_BUSY", "orders.poly.local", {})
        assert retry_after == 1.0
    warnings = [r for r in caplog.records if r.getMessage() == "refusing calls: every worker is busy"]
    assert warnings and warnings[0].__dict__["limit"] == WORKERS and warnings[0].__dict__["refused"] == 1
    assert len(warnings) < 4, "a flood is summarised, not logged call by call"

    health = health_pb2_grpc.HealthStub(served.channel)
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=_WAIT).status == (
        health_pb2.HealthCheckResponse.SERVING
    ), "a busy server is still ready"

    assert served.sample(refused, grpc_service=SERVICE, grpc_method="Block") == 3
    assert served.sample(refused, grpc_service=SERVICE, grpc_method="BlockStream") == 1
    exhausted = {"grpc_service": SERVICE, "grpc_code": "ResourceExhausted"}
    assert (
        served.sample("grpc_server_handled_total", grpc_type="unary", grpc_method="Block", **exhausted) == 3
    )
    assert (
        served.sample(
            "grpc_server_handled_total", grpc_type="server_stream", grpc_method="BlockStream", **exhausted
        )
        == 1
    )
    assert served.sample("poly_grpc_server_in_flight_calls") == WORKERS, "refusals never count as in flight"
    assert served.running.in_flight.count == WORKERS

    served.gate.opened.set()
    assert [call.result(timeout=_WAIT).value for call in held] == ["done"] * WORKERS
    assert served.running.in_flight.count == 0
    assert [served.unary("Echo")(_S(value=str(n)), timeout=_WAIT).value for n in range(WORKERS + 2)] == [
        str(n) for n in range(WORKERS + 2)
    ]
    ok = {"grpc_type": "unary", "grpc_service": SERVICE, "grpc_code": "OK"}
    assert served.sample("grpc_server_handled_total", grpc_method="Block", **ok) == WORKERS
    assert served.sample("grpc_server_handled_total", grpc_method="Echo", **ok) == WORKERS + 2
    assert served.sample(refused, grpc_service=SERVICE, grpc_method="Block") == 3, "nothing refused since"
    assert served.sample(refused, grpc_service=SERVICE, grpc_method="Echo") == 0


def test_a_slot_freed_by_a_finished_call_is_admitted_again(served: _Served) -> None:
    held = served.fill()
    assert _refusal(_refused_unary(served, "Echo"))[2].reason == "SERVER_BUSY"
    served.gate.opened.set()
    assert held[0].result(timeout=_WAIT).value == "done"
    served.gate.opened.clear()
    for call in held[1:]:
        call.result(timeout=_WAIT)
    # Every slot is free again: WORKERS new calls are held, and only the next one is refused.
    refilled = served.fill()
    assert _refusal(_refused_unary(served, "Echo"))[2].reason == "SERVER_BUSY"
    served.gate.opened.set()
    assert [call.result(timeout=_WAIT).value for call in refilled] == ["done"] * WORKERS
    assert (
        served.sample("poly_grpc_server_refused_calls_total", grpc_service=SERVICE, grpc_method="Echo") == 2
    )


def test_drain_waits_for_the_calls_in_flight_and_refusals_never_hold_it(certs: Path) -> None:
    with _serve(certs, Metrics(version="test"), grace="30") as served:
        held = served.fill()
        for _ in range(2):
            _refused_unary(served)
        watch = health_pb2_grpc.HealthStub(served.channel).Watch(
            health_pb2.HealthCheckRequest(), timeout=_WAIT
        )
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        outcome: list[bool] = []
        draining = threading.Thread(target=lambda: outcome.append(served.running.drain()))
        draining.start()
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert outcome == [] and served.running.in_flight.count == WORKERS, "drain waits for the held calls"
        served.gate.opened.set()
        assert [call.result(timeout=_WAIT).value for call in held] == ["done"] * WORKERS
        draining.join(_WAIT)
        assert not draining.is_alive()
        assert outcome == [True], "finished within the grace period: refused calls never counted"


def test_without_metrics_calls_are_still_refused(certs: Path) -> None:
    with _serve(certs, None) as served:
        held = served.fill()
        code, _, info, _ = _refusal(_refused_unary(served))
        assert (code, info.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "SERVER_BUSY")
        served.gate.opened.set()
        assert [call.result(timeout=_WAIT).value for call in held] == ["done"] * WORKERS


def test_many_callers_at_once_get_exactly_the_limit_admitted(served: _Served) -> None:
    """Concurrent arrivals: WORKERS held, every other caller refused with RESOURCE_EXHAUSTED:
    SERVER_BUSY and counted, or grpcio's own (uncounted) refusal when the spare threads were
    all taken at that instant."""
    callers = WORKERS + 12
    finished = threading.Semaphore(0)
    calls = [served.unary("Block").future(_S(), timeout=_WAIT * 2) for _ in range(callers)]
    for call in calls:
        call.add_done_callback(lambda _: finished.release())
    served.gate.wait_entered(WORKERS)
    for _ in range(callers - WORKERS):
        assert finished.acquire(timeout=_WAIT), "a refusal never came"
    # The held calls cannot finish while the gate is shut: exactly the others are done.
    refused = [call for call in calls if call.done()]
    assert len(refused) == callers - WORKERS
    assert served.running.in_flight.count == WORKERS
    assert {call.code() for call in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    ours = [call for call in refused if call.details() != "Concurrent RPC limit exceeded!"]
    assert all(_refusal(call)[2].reason == "SERVER_BUSY" for call in ours)
    counted = served.sample("poly_grpc_server_refused_calls_total", grpc_service=SERVICE, grpc_method="Block")
    assert counted == len(ours)
    served.gate.opened.set()
    held = [call for call in calls if call not in refused]
    assert [call.result(timeout=_WAIT).value for call in held] == ["done"] * WORKERS
