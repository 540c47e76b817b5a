"""Telemetry for a component, set up once at start: logs carrying trace ids, the tracer
provider, and the Prometheus registry with its ``/metrics`` endpoint.

`setup(settings)` is the first call of every entry point (it sets up logging too). It
installs one `Telemetry` for the process, which the rest of the kit picks up: `kit.server`
adds `Telemetry.server_middleware`, `kit.clients` passes every channel through
`Telemetry.instrument`, `kit.db` and `kit.bus` register their gauges with `add_gauges`. A
service's own modules import none of this; they get it by being served by the kit.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import grpc
from cryptography import x509
from opentelemetry import trace

from services.kit import logs
from services.kit.config import Settings
from services.kit.telemetry.metrics import Metrics, MetricsEndpoint, serve_metrics
from services.kit.telemetry.rpc import instrument_channel, server_middleware
from services.kit.telemetry.tracing import Tracing, start_tracing
from services.kit.telemetry_settings import TelemetrySettings
from services.kit.types import Middleware

__all__ = [
    "StartupError",
    "Telemetry",
    "installed",
    "setup",
    "setup_component",
    "setup_or_exit",
    "trace_fields",
    "version",
]

_log = logging.getLogger("poly.telemetry")


class StartupError(RuntimeError):
    """The metrics endpoint cannot listen (its port is taken)."""


def version() -> str:
    """The installed package's version (``service.version``, ``poly_build_info``)."""
    try:
        return metadata.version("polyservice")
    except metadata.PackageNotFoundError:
        return "unknown"


def trace_fields() -> Mapping[str, str]:
    """``trace_id`` and ``span_id`` of the span running now, for every log line it writes."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {"trace_id": format(context.trace_id, "032x"), "span_id": format(context.span_id, "016x")}


def _certificate_expiry(path: Path) -> Callable[[], float | None]:
    cached: dict[tuple[int, int], float] = {}

    def seconds_left() -> float | None:
        stat = path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp not in cached:
            certificate = x509.load_pem_x509_certificate(path.read_bytes())
            cached.clear()
            cached[stamp] = certificate.not_valid_after_utc.timestamp()
        return cached[stamp] - dt.datetime.now(dt.UTC).timestamp()

    return seconds_left


@dataclass
class Telemetry:
    """What `setup` installed for this process."""

    settings: TelemetrySettings
    metrics: Metrics
    tracing: Tracing
    endpoint: MetricsEndpoint | None

    @property
    def tracer_provider(self) -> trace.TracerProvider | None:
        return self.tracing.provider

    @property
    def recorded_metrics(self) -> Metrics | None:
        """The registry's metrics when something serves them (POLY_<NAME>_METRICS_PORT is not 0);
        None otherwise, so that per-call work is skipped when no one can read it."""
        return self.metrics if self.settings.metrics_port else None

    def tracer(self, name: str) -> trace.Tracer | None:
        """A tracer, or None when tracing is off (so callers can skip span work entirely)."""
        provider = self.tracing.provider
        return provider.get_tracer(name, version()) if provider is not None else None

    def server_middleware(self) -> Middleware:
        """Server spans and ``grpc_server_*`` metrics for every served call."""
        return server_middleware(self.recorded_metrics, self.tracer("poly.server"))

    def instrument(self, channel: grpc.Channel) -> grpc.Channel:
        """`channel` with client spans (``traceparent`` sent) and ``grpc_client_*`` metrics."""
        return instrument_channel(channel, self.recorded_metrics, self.tracing.provider)

    def add_gauges(self, gauges: Mapping[str, tuple[str, Callable[[], float | None]]]) -> None:
        self.metrics.add_gauges(gauges)

    def close(self) -> None:
        """Export the spans still queued (bounded) and stop serving metrics."""
        self.tracing.shutdown()
        if self.endpoint is not None:
            self.endpoint.close()


_installed: Telemetry | None = None
_install_lock = threading.Lock()


def installed() -> Telemetry | None:
    """The process's telemetry, once `setup` has run (None in code run without it, e.g. tests)."""
    return _installed


def setup(settings: Settings) -> Telemetry:
    """Logs, traces and metrics for the component `settings` describe. Call once, first.

    Raises `StartupError` when the metrics port is taken.
    """
    return setup_component(
        settings.service, settings.log_level, settings.telemetry, certificate=settings.tls.cert_file
    )


def setup_component(
    service: str,
    log_level: str,
    telemetry_settings: TelemetrySettings,
    *,
    certificate: Path | None = None,
    port_hint: str = "",
) -> Telemetry:
    """`setup` from its pieces, for an entry point without kit `Settings` (``poly gateway
    ARGS``, the standalone edge). `certificate` is the one whose expiry is exported (none
    without it); `port_hint` says how to move the metrics port, in the error when it is taken
    (by default: ``POLY_<SERVICE>_METRICS_PORT``).

    Raises `StartupError` when the metrics port is taken.
    """
    global _installed  # noqa: PLW0603 - one tracer provider and one /metrics per process, so one of these
    logs.setup(service, log_level, context_fields=trace_fields, log_format=telemetry_settings.log_format)
    running = version()
    metrics = Metrics(version=running)
    tracing = start_tracing(telemetry_settings, version=running, dropped=metrics.drop_spans)
    if certificate:
        metrics.add_gauges(
            {
                "poly_tls_certificate_expiry_seconds": (
                    "Seconds until the certificate this component presents expires.",
                    _certificate_expiry(certificate),
                )
            }
        )
    endpoint = None
    if telemetry_settings.metrics_port:
        host, port = telemetry_settings.metrics_host, telemetry_settings.metrics_port
        try:
            endpoint = serve_metrics(metrics.registry, host, port)
        except OSError as error:
            tracing.shutdown(0.5)
            raise StartupError(
                f"cannot serve metrics on {host}:{port} ({error.strerror or error}): is the port in use? "
                f"{port_hint or f'POLY_{service.upper()}_METRICS_PORT moves it, 0 turns it off'}"
            ) from None
        _log.info("serving metrics", extra={"address": f"http://{host}:{endpoint.port}/metrics"})
    telemetry = Telemetry(telemetry_settings, metrics, tracing, endpoint)
    with _install_lock:
        _installed = telemetry
    return telemetry


def setup_or_exit(settings: Settings) -> Telemetry:
    """`setup`, or log why it cannot and exit with status 1 (for entry points)."""
    try:
        return setup(settings)
    except StartupError as error:
        _log.error(str(error))
        raise SystemExit(1) from None
