"""Traces: the process's tracer provider, built from `TelemetrySettings`.

Parent-based sampling by default, batch export on a background thread, and a queue bounded
here (not only inside the SDK) so that every span that could not be kept is counted: a
collector that is down fills the queue, later spans are dropped and counted, and no call
waits for it. Exporters: OTLP over gRPC when an endpoint is set, else a file of OTLP JSON
lines under the component's home (what `poly trace` reads), ``console`` or ``none``.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)

from services.kit.telemetry.spanfile import SpanFileExporter
from services.kit.telemetry_settings import TelemetrySettings

__all__ = ["DropCounter", "Tracing", "sampler", "start_tracing"]

_log = logging.getLogger("poly.telemetry")

DropCounter = Callable[[str, int], None]
"""Called with (reason, spans) for spans that were never exported."""


def sampler(name: str, ratio: float) -> Sampler:
    """The sampler an ``OTEL_TRACES_SAMPLER`` value names."""
    root: Sampler = {"always_on": ALWAYS_ON, "always_off": ALWAYS_OFF}.get(
        name.removeprefix("parentbased_"), ALWAYS_ON
    )
    if name.endswith("traceidratio"):
        root = TraceIdRatioBased(ratio)
    return ParentBased(root) if name.startswith("parentbased_") else root


class _CountingExporter(SpanExporter):
    """Tells the bounded processor how many spans left its queue, and counts failed exports."""

    def __init__(self, inner: SpanExporter, taken: Callable[[int], None], dropped: DropCounter) -> None:
        self._inner = inner
        self._taken = taken
        self._dropped = dropped

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self._taken(len(spans))
        try:
            result = self._inner.export(spans)
        except Exception:  # noqa: BLE001 - an exporter must never take the worker thread down
            _log.warning("span export failed", exc_info=True)
            result = SpanExportResult.FAILURE
        if result is not SpanExportResult.SUCCESS:
            self._dropped("export_failed", len(spans))
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return bool(self._inner.force_flush(timeout_millis))


class _BoundedProcessor(SpanProcessor):
    """A `BatchSpanProcessor` whose queue bound is enforced (and counted) here."""

    def __init__(self, exporter: SpanExporter, settings: TelemetrySettings, dropped: DropCounter) -> None:
        self._limit = settings.max_queue_size
        self._queued = 0
        self._lock = threading.Lock()
        self._dropped = dropped
        self._batch = BatchSpanProcessor(
            _CountingExporter(exporter, self._taken, dropped),
            max_queue_size=settings.max_queue_size,
            schedule_delay_millis=settings.schedule_delay_seconds * 1000,
            max_export_batch_size=settings.max_export_batch_size,
            export_timeout_millis=settings.otlp_timeout_seconds * 1000,
        )

    def _taken(self, count: int) -> None:
        with self._lock:
            self._queued = max(0, self._queued - count)

    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        if span.context is None or not span.context.trace_flags.sampled:
            return
        with self._lock:
            full = self._queued >= self._limit
            if not full:
                self._queued += 1
        if full:
            self._dropped("queue_full", 1)
            return
        self._batch.on_end(span)

    def shutdown(self) -> None:
        self._batch.shutdown()  # type: ignore[no-untyped-call]

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return bool(self._batch.force_flush(timeout_millis))


def _exporter(settings: TelemetrySettings) -> SpanExporter:
    if settings.traces_exporter == "console":
        return ConsoleSpanExporter()
    if settings.traces_exporter == "file":
        return SpanFileExporter(settings.trace_file)
    # Imported only when used: the OTLP exporter's import takes a third of a second.
    from services.kit.telemetry.otlp import LeanOTLPSpanExporter  # noqa: PLC0415

    credentials = None
    if settings.otlp_certificate is not None:
        credentials = grpc.ssl_channel_credentials(settings.otlp_certificate.read_bytes())
    exporter: SpanExporter = LeanOTLPSpanExporter(
        endpoint=settings.otlp_endpoint,
        insecure=settings.otlp_insecure,
        credentials=credentials,
        headers=dict(settings.otlp_headers) or None,
        timeout=settings.otlp_timeout_seconds,
    )
    return exporter


@dataclass
class Tracing:
    """The installed provider (None when tracing is off) and its orderly end."""

    provider: TracerProvider | None

    def shutdown(self, timeout: float = 3.0) -> None:
        """Export what is queued, waiting at most `timeout` seconds: a collector that is down
        must not hold up a process that is stopping."""
        provider = self.provider
        if provider is None:
            return
        done = threading.Thread(target=provider.shutdown, name="otel-shutdown", daemon=True)
        done.start()
        done.join(timeout)
        if done.is_alive():
            _log.warning("spans not exported within %.0f s of stopping were dropped", timeout)


def start_tracing(settings: TelemetrySettings, *, version: str, dropped: DropCounter) -> Tracing:
    """Install the global tracer provider `settings` describe (once per process)."""
    if not settings.tracing:
        return Tracing(None)
    resource = Resource(
        {
            **settings.resource_attributes,
            "service.name": settings.service_name,
            "service.version": version,
            "service.instance.id": str(uuid.uuid4()),
            "deployment.environment": settings.environment,
            "deployment.environment.name": settings.environment,
            "telemetry.sdk.language": "python",
            "telemetry.sdk.name": "opentelemetry",
        }
    )
    provider = TracerProvider(
        sampler=sampler(settings.sampler, settings.sampler_arg), resource=resource, shutdown_on_exit=False
    )
    try:
        exporter = _exporter(settings)
    except (OSError, ValueError) as error:
        _log.error("tracing is off: cannot create the span exporter (%s)", error)
        return Tracing(None)
    provider.add_span_processor(_BoundedProcessor(exporter, settings, dropped))
    trace.set_tracer_provider(provider)
    return Tracing(provider)
