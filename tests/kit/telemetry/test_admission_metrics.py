"""kit.telemetry.metrics: the concurrent-call limit and the calls refused at it."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import grpc
import pytest
from google.protobuf import wrappers_pb2
from prometheus_client import generate_latest

from services.kit import tls
from services.kit.telemetry.metrics import Metrics
from tests.support import probe_service
from tests.support.env import make_certs, poly_environ, settings_for
from tests.support.processes import Process

_S = wrappers_pb2.StringValue
_SERVICE = "poly.orders.v1.OrdersService"
_PROBE = probe_service.SERVICE


def _exposed(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_a_process_without_a_grpc_server_claims_no_limit_and_no_refusals() -> None:
    text = _exposed(Metrics(version="test"))
    assert "poly_grpc_server_max_concurrent_calls" not in text, "the edge has no limit, not a limit of 0"
    assert "poly_grpc_server_refused_calls_total{" not in text


def test_the_limit_is_a_gauge_and_every_registered_method_starts_at_zero_refusals() -> None:
    metrics = Metrics(version="test")
    metrics.limit_calls(1200, [(_SERVICE, "GetOrder"), (_SERVICE, "WatchOrder")])
    text = _exposed(metrics)
    assert "# TYPE poly_grpc_server_max_concurrent_calls gauge" in text
    assert metrics.registry.get_sample_value("poly_grpc_server_max_concurrent_calls") == 1200
    assert "# TYPE poly_grpc_server_refused_calls_total counter" in text
    for method in ("GetOrder", "WatchOrder"):
        labels = {"grpc_service": _SERVICE, "grpc_method": method}
        assert metrics.registry.get_sample_value("poly_grpc_server_refused_calls_total", labels) == 0


def test_a_refused_call_is_counted_as_refused_started_and_handled_resource_exhausted() -> None:
    metrics = Metrics(version="test")
    metrics.limit_calls(4, [(_SERVICE, "GetOrder")])
    for _ in range(3):
        metrics.refused_call("unary", _SERVICE, "GetOrder")
    metrics.refused_call("server_stream", _SERVICE, "WatchOrder")  # not pre-registered: created on use
    sample = metrics.registry.get_sample_value
    assert (
        sample("poly_grpc_server_refused_calls_total", {"grpc_service": _SERVICE, "grpc_method": "GetOrder"})
        == 3
    )
    assert (
        sample(
            "poly_grpc_server_refused_calls_total", {"grpc_service": _SERVICE, "grpc_method": "WatchOrder"}
        )
        == 1
    )
    unary = {"grpc_type": "unary", "grpc_service": _SERVICE, "grpc_method": "GetOrder"}
    assert sample("grpc_server_started_total", unary) == 3
    assert sample("grpc_server_handled_total", {**unary, "grpc_code": "ResourceExhausted"}) == 3
    assert not sample("grpc_server_handling_seconds_count", unary), "instant refusals would pull p99 down"
    assert sample("poly_grpc_server_in_flight_calls") == 0, "a refused call was never in flight"


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def _value(text: str, series: str) -> float | None:
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == series:
            return float(value)
    return None


@pytest.mark.slow
def test_a_kit_served_process_counts_its_refusals_on_its_metrics_endpoint(tmp_path: Path) -> None:
    """The default wiring: `serve` with the process's telemetry, default middlewares."""
    environ = poly_environ(tmp_path, POLY_GRPC_WORKERS="4")
    settings = settings_for("orders", environ)
    make_certs(settings.tls.ca_file.parent)
    process = Process.module("tests.support.probe_service", environ)
    try:
        process.wait_for_line(lambda line: '"serving"' in line and "services" in line, timeout=30)
        client = settings_for("cli", environ)
        with grpc.secure_channel(
            f"localhost:{settings.server.port}", tls.channel_credentials(client.tls)
        ) as channel:
            # Hold keeps its stream (and its worker) until the client leaves.
            streams = [
                probe_service.stub(channel, "Hold", streaming=True)(_S(), timeout=60) for _ in range(4)
            ]
            try:
                assert [next(stream).value for stream in streams] == ["open"] * 4
                with pytest.raises(grpc.RpcError) as caught:
                    probe_service.stub(channel, "Echo")(_S(value="one too many"), timeout=10)
                assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
                text = _scrape(settings.telemetry.metrics_port)
            finally:
                for stream in streams:
                    stream.cancel()
        echo = f'grpc_method="Echo",grpc_service="{_PROBE}"'
        assert _value(text, "poly_grpc_server_max_concurrent_calls") == 4
        assert _value(text, "poly_grpc_server_in_flight_calls") == 4
        assert _value(text, f"poly_grpc_server_refused_calls_total{{{echo}}}") == 1
        assert (
            _value(
                text, f'grpc_server_handled_total{{grpc_code="ResourceExhausted",{echo},grpc_type="unary"}}'
            )
            == 1
        )
        warning = process.wait_for_line(lambda line: "refusing calls" in line)
        assert json.loads(warning)["refused"] == 1
    finally:
        process.stop()
