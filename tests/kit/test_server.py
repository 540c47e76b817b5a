from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import wrappers_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from services.kit import server, tls
from services.kit.logs import JsonFormatter
from tests.support import probe_service
from tests.support.env import settings_for

_S = wrappers_pb2.StringValue


@pytest.fixture
def running(certs: Path) -> Iterator[server.RunningServer]:
    settings = settings_for(
        "orders", {"POLY_TLS_DIR": str(certs), "POLY_ORDERS_PORT": "0", "POLY_GRACE_SECONDS": "5"}
    )
    started = server.start(settings, [probe_service.registration()])
    try:
        yield started
    finally:
        started.drain()


@pytest.fixture
def channel(certs: Path, running: server.RunningServer) -> Iterator[grpc.Channel]:
    settings = settings_for("cli", {"POLY_TLS_DIR": str(certs)})
    with grpc.secure_channel(f"localhost:{running.port}", tls.channel_credentials(settings.tls)) as ch:
        yield ch


def _details(error: grpc.RpcError) -> list[object]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    unpacked: list[object] = []
    for detail in status.details:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest, error_details_pb2.RetryInfo):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                unpacked.append(message)
    return unpacked


def test_unary_call_through_the_chain(channel: grpc.Channel) -> None:
    assert probe_service.stub(channel, "Echo")(_S(value="hi"), timeout=5).value == "hi"


def test_domain_error_becomes_status_with_error_info(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        probe_service.stub(channel, "Missing")(_S(value="orders/42"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == "order orders/42 does not exist"
    [info] = _details(caught.value)
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert info.reason == "ORDER_NOT_FOUND"
    assert info.domain == "orders.poly.local"
    assert dict(info.metadata) == {"order": "orders/42"}


def test_field_violations_travel_as_bad_request(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        probe_service.stub(channel, "Invalid")(_S(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, bad_request = _details(caught.value)
    assert isinstance(info, error_details_pb2.ErrorInfo) and info.reason == "INVALID_ORDER"
    assert isinstance(bad_request, error_details_pb2.BadRequest)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("order.lines[0].quantity", "must be positive")
    ]


def test_unexpected_exception_is_internal_without_leaking(
    channel: grpc.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR), pytest.raises(grpc.RpcError) as caught:
        probe_service.stub(channel, "Crash")(_S(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert caught.value.details() == "internal error"
    assert "secret" not in str(caught.value.debug_error_string())
    [info] = _details(caught.value)
    assert isinstance(info, error_details_pb2.ErrorInfo) and info.reason == "INTERNAL"
    assert any("unexpected error" in r.getMessage() and r.exc_info for r in caplog.records)


def test_error_in_the_middle_of_a_stream_keeps_sent_messages(channel: grpc.Channel) -> None:
    call = probe_service.stub(channel, "Count", streaming=True)(_S(value="3"), timeout=5)
    received = []
    with pytest.raises(grpc.RpcError) as caught:
        received.extend(m.value for m in call)
    assert received == ["0", "1", "2"]
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_access_log_has_method_code_and_duration(
    channel: grpc.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="poly.access"):
        probe_service.stub(channel, "Echo")(_S(value="x"), timeout=5)
        with pytest.raises(grpc.RpcError):
            probe_service.stub(channel, "Missing")(_S(value="x"), timeout=5)
    lines = [json.loads(JsonFormatter("orders").format(r)) for r in caplog.records if r.name == "poly.access"]
    assert [(line["method"], line["code"]) for line in lines] == [
        ("/poly.test.v1.ProbeService/Echo", "OK"),
        ("/poly.test.v1.ProbeService/Missing", "NOT_FOUND"),
    ]
    assert all(line["service"] == "orders" and line["duration_ms"] >= 0 for line in lines)
    assert {line["message"] for line in lines} == {"finished call"}, "the call is in the fields, once"


def test_health_reports_serving_for_server_and_each_service(channel: grpc.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for name in ("", probe_service.SERVICE):
        response = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as caught:
        stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.slow
def test_drain_flips_health_and_lets_the_in_flight_call_finish(
    certs: Path, running: server.RunningServer, channel: grpc.Channel
) -> None:
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    probe_service.SLEEPING.clear()
    slow = probe_service.stub(channel, "Sleep").future(_S(value="1.0"), timeout=10)
    assert probe_service.SLEEPING.wait(5), "the slow call never reached its handler"
    drained = threading.Thread(target=running.drain)
    drained.start()
    assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert slow.result().value == "slept"
    drained.join(10)
    assert not drained.is_alive()
    with pytest.raises(grpc.RpcError) as caught:
        probe_service.stub(channel, "Echo")(_S(value="late"), timeout=2)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.slow
def test_a_thousand_open_streams_are_held_while_unary_calls_still_succeed(
    running: server.RunningServer, channel: grpc.Channel
) -> None:
    hold = probe_service.stub(channel, "Hold", streaming=True)
    streams = [hold(_S(), timeout=60) for _ in range(1000)]
    try:
        assert all(next(stream).value == "open" for stream in streams)
        echo = probe_service.stub(channel, "Echo")
        assert [echo(_S(value=str(i)), timeout=5).value for i in range(20)] == [str(i) for i in range(20)]
    finally:
        for stream in streams:
            stream.cancel()


def test_a_taken_port_is_a_clear_startup_error(running: server.RunningServer, certs: Path) -> None:
    settings = settings_for("users", {"POLY_TLS_DIR": str(certs), "POLY_USERS_PORT": str(running.port)})
    with pytest.raises(server.StartupError, match=f"cannot listen on 127.0.0.1:{running.port}"):
        server.start(settings, [probe_service.registration()])


def test_missing_certificates_are_a_clear_startup_error(tmp_path: Path) -> None:
    settings = settings_for("users", {"POLY_TLS_DIR": str(tmp_path / "nowhere"), "POLY_USERS_PORT": "0"})
    with pytest.raises(server.StartupError, match="poly certs"):
        server.start(settings, [probe_service.registration()])


def test_unimplemented_is_answered_quietly(channel: grpc.Channel, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING), pytest.raises(grpc.RpcError) as caught:
        probe_service.stub(channel, "Unimplemented")(_S(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert caught.value.details() == "Method not implemented!"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.fixture
def relaying(certs: Path) -> Iterator[tuple[grpc.Channel, int]]:
    """A probe server whose Relay method calls other servers over mTLS as `orders`."""
    settings = settings_for("orders", {"POLY_TLS_DIR": str(certs), "POLY_ORDERS_PORT": "0"})
    started = server.start(
        settings, [probe_service.registration(relay_credentials=tls.channel_credentials(settings.tls))]
    )
    cli = settings_for("cli", {"POLY_TLS_DIR": str(certs)})
    try:
        with grpc.secure_channel(f"localhost:{started.port}", tls.channel_credentials(cli.tls)) as ch:
            yield ch, started.port
    finally:
        started.drain()


def test_a_downstream_status_keeps_its_code_and_error_info(relaying: tuple[grpc.Channel, int]) -> None:
    channel, port = relaying
    with pytest.raises(grpc.RpcError) as caught:
        probe_service.stub(channel, "Relay")(_S(value=f"localhost:{port}"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND, "never re-wrapped as INTERNAL"
    [info] = _details(caught.value)
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert (info.reason, dict(info.metadata)) == ("ORDER_NOT_FOUND", {"order": "orders/downstream"})


def test_a_bare_transport_failure_keeps_its_code_but_not_its_text(relaying: tuple[grpc.Channel, int]) -> None:
    channel, _ = relaying
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = f"localhost:{closed.getsockname()[1]}"
    with pytest.raises(grpc.RpcError) as caught:
        probe_service.stub(channel, "Relay")(_S(value=dead), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, "stays retryable"
    assert caught.value.details() == "upstream call failed with UNAVAILABLE"
    [info] = _details(caught.value)
    assert isinstance(info, error_details_pb2.ErrorInfo) and info.reason == "UPSTREAM_UNAVAILABLE"
