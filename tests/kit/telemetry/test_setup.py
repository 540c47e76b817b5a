"""kit.telemetry: a kit-served process's logs, /metrics endpoint and trace file."""

from __future__ import annotations

import json
import logging
import socket
import urllib.request
from pathlib import Path

import grpc
import pytest
from google.protobuf import wrappers_pb2
from opentelemetry.sdk.trace import TracerProvider

from services.kit import tls
from services.kit.logs import JsonFormatter
from services.kit.telemetry import trace_fields
from tests.support import probe_service
from tests.support.env import make_certs, poly_environ, settings_for
from tests.support.processes import Process
from tests.support.waiting import eventually

_S = wrappers_pb2.StringValue
_ECHO = "poly.test.v1.ProbeService"


def test_trace_fields_name_the_current_span() -> None:
    provider = TracerProvider()
    assert trace_fields() == {}
    with provider.get_tracer("t").start_as_current_span("work") as span:
        fields = trace_fields()
        line = json.loads(
            JsonFormatter("orders", context_fields=trace_fields).format(
                logging.LogRecord("x", logging.INFO, "f", 1, "hello", None, None)
            )
        )
    context = span.get_span_context()
    assert fields == {
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
    }
    assert (line["trace_id"], line["span_id"]) == (fields["trace_id"], fields["span_id"])


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


@pytest.mark.slow
def test_a_kit_served_process_serves_metrics_and_writes_its_spans(tmp_path: Path) -> None:
    environ = poly_environ(tmp_path)
    settings = settings_for("orders", environ)
    make_certs(settings.tls.ca_file.parent)
    process = Process.module("tests.support.probe_service", environ)
    try:
        process.wait_for_line(lambda line: '"serving"' in line and "services" in line, timeout=30)
        client = settings_for("cli", environ)
        with grpc.secure_channel(
            f"localhost:{settings.server.port}", tls.channel_credentials(client.tls)
        ) as channel:
            probe_service.stub(channel, "Echo")(
                _S(value="hi"), metadata=[("x-request-id", "probe-42")], timeout=5
            )
        text = _scrape(settings.telemetry.metrics_port)
        assert f'grpc_server_handled_total{{grpc_code="OK",grpc_method="Echo",grpc_service="{_ECHO}"' in text
        assert 'poly_build_info{version="' in text
        assert "process_resident_memory_bytes" in text
        expiry = [
            line for line in text.splitlines() if line.startswith("poly_tls_certificate_expiry_seconds ")
        ]
        assert expiry and float(expiry[0].split()[1]) > 7 * 86400
        access = process.wait_for_line(lambda line: '"poly.access"' in line and "probe-42" in line)
        fields = json.loads(access)
        assert len(fields["trace_id"]) == 32 and fields["request_id"] == "probe-42"
        spans_file = settings.telemetry.trace_file
        eventually(
            lambda: spans_file.exists() and fields["trace_id"] in spans_file.read_text(),
            what="the call's span in the trace file",
        )
    finally:
        process.stop()


@pytest.mark.slow
def test_a_taken_metrics_port_stops_start_up_naming_the_setting(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        environ = poly_environ(tmp_path, POLY_ORDERS_METRICS_PORT=str(taken.getsockname()[1]))
        make_certs(settings_for("orders", environ).tls.ca_file.parent)
        process = Process.module("tests.support.probe_service", environ)
        try:
            assert process.wait(timeout=30) == 1
        finally:
            process.stop()
    output = "\n".join(process.lines)
    assert "POLY_ORDERS_METRICS_PORT" in output
    assert "Traceback" not in output
