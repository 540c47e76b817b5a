"""Graceful shutdown of a real kit process on SIGTERM."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import wrappers_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.kit import config, tls
from tests.support import probe_service
from tests.support.env import poly_environ, settings_for
from tests.support.processes import Process, health_check

pytestmark = pytest.mark.slow


def test_sigterm_flips_health_drains_the_in_flight_call_and_exits_zero(tmp_path: Path) -> None:
    tls.ensure_certificates(tmp_path / "certs", config.COMPONENTS)
    # A long grace period: the exit must come from the drain finishing, not from the grace expiring.
    environ = poly_environ(tmp_path, POLY_GRACE_SECONDS="30")
    process = Process.module("tests.support.probe_service", environ)
    cli = settings_for("cli", environ)
    address = cli.peers["orders"]
    try:
        assert health_check(cli, address) == "SERVING"
        with grpc.secure_channel(address, tls.channel_credentials(cli.tls)) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=20)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            slow = probe_service.stub(channel, "Sleep").future(
                wrappers_pb2.StringValue(value="1.5"), timeout=20
            )
            process.wait_for_line(
                lambda line: "/poly.test.v1.ProbeService/Sleep" in line and "started" in line
            )
            signalled = time.monotonic()
            process.signal(signal.SIGTERM)
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert slow.result().value == "slept"
            assert process.wait(timeout=10) == 0
            assert time.monotonic() - signalled < 5, "exited once the in-flight call was done"
        assert '"message": "draining"' in process.output()
    finally:
        process.stop()


def test_a_handler_outliving_the_grace_period_is_abandoned_and_the_exit_is_still_prompt(
    tmp_path: Path,
) -> None:
    tls.ensure_certificates(tmp_path / "certs", config.COMPONENTS)
    environ = poly_environ(tmp_path, POLY_GRACE_SECONDS="1")
    process = Process.module("tests.support.probe_service", environ)
    cli = settings_for("cli", environ)
    try:
        assert health_check(cli, cli.peers["orders"]) == "SERVING"
        with grpc.secure_channel(cli.peers["orders"], tls.channel_credentials(cli.tls)) as channel:
            slow = probe_service.stub(channel, "Sleep").future(
                wrappers_pb2.StringValue(value="30"), timeout=60
            )
            process.wait_for_line(lambda line: "sleep started" in line)
            signalled = time.monotonic()
            process.signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0
            assert time.monotonic() - signalled < 1 + 2.5, "the grace period bounds the exit"
            assert slow.exception() is not None, "the abandoned call was cancelled, not answered"
        assert "abandoned" in process.output()
    finally:
        process.stop()
