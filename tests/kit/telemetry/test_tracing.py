"""kit.telemetry.tracing: a collector that stalls or is down costs spans, counted, never calls."""

from __future__ import annotations

import threading
from concurrent import futures

import grpc
import pytest
from google.protobuf import wrappers_pb2
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider

from services.kit.telemetry.metrics import Metrics
from services.kit.telemetry.tracing import Tracing, _BoundedProcessor, sampler
from services.kit.telemetry_settings import TelemetrySettings
from tests.support.env import free_port
from tests.support.waiting import eventually

_S = wrappers_pb2.StringValue
_ECHO = "poly.test.v1.ProbeService"


class _StalledCollector(trace_service_pb2_grpc.TraceServiceServicer):
    """A real OTLP receiver that never answers in time: a collector that is overloaded."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def Export(self, request: object, context: grpc.ServicerContext) -> object:  # noqa: N802 - generated name
        self.release.wait(10)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.mark.slow
def test_a_stalled_collector_drops_and_counts_spans_instead_of_holding_calls() -> None:
    collector = _StalledCollector()
    receiver = grpc.server(futures.ThreadPoolExecutor(4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, receiver)
    port = receiver.add_insecure_port("127.0.0.1:0")
    receiver.start()
    metrics = Metrics()
    settings = TelemetrySettings(max_queue_size=4, max_export_batch_size=2, schedule_delay_seconds=0.01)
    try:
        exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{port}", insecure=True, timeout=1)
        provider = TracerProvider()
        provider.add_span_processor(_BoundedProcessor(exporter, settings, metrics.drop_spans))
        tracer = provider.get_tracer("t")
        for index in range(50):
            with tracer.start_as_current_span(f"call {index}"):
                pass
        dropped = metrics.registry.get_sample_value("poly_otel_spans_dropped_total", {"reason": "queue_full"})
        assert dropped is not None and dropped >= 40
        Tracing(provider).shutdown(timeout=0.5)  # returns although the collector still stalls
    finally:
        collector.release.set()
        receiver.stop(None)


def test_a_collector_that_is_down_counts_failed_exports() -> None:
    metrics = Metrics()
    settings = TelemetrySettings(max_queue_size=100, max_export_batch_size=10, schedule_delay_seconds=0.01)
    exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{free_port()}", insecure=True, timeout=0.5)
    provider = TracerProvider()
    provider.add_span_processor(_BoundedProcessor(exporter, settings, metrics.drop_spans))
    for index in range(5):
        with provider.get_tracer("t").start_as_current_span(f"call {index}"):
            pass
    eventually(
        lambda: metrics.registry.get_sample_value(
            "poly_otel_spans_dropped_total", {"reason": "export_failed"}
        ),
        timeout=30,
        what="the failed export to be counted",
    )
    Tracing(provider).shutdown(timeout=0.5)


@pytest.mark.parametrize(
    ("name", "ratio", "expected"),
    [
        ("always_on", 1.0, "AlwaysOnSampler"),
        ("parentbased_always_on", 1.0, "ParentBased{root:AlwaysOnSampler"),
        ("parentbased_traceidratio", 0.5, "ParentBased{root:TraceIdRatioBased{0.5}"),
        ("always_off", 1.0, "AlwaysOffSampler"),
    ],
    ids=["always-on", "parent-based", "parent-based-ratio", "off"],
)
def test_the_sampler_is_the_one_named(name: str, ratio: float, expected: str) -> None:
    assert sampler(name, ratio).get_description().startswith(expected)
