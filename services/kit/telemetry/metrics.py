"""Prometheus metrics: the names dashboards expect, and the ``/metrics`` endpoint.

gRPC metrics use go-grpc-prometheus' names and labels (``grpc_server_handled_total{grpc_type,
grpc_service, grpc_method, grpc_code}`` with Go's code spellings), which existing Grafana
dashboards and alerts already query; everything of ours is ``poly_*``. Label values are
bounded: methods, codes, event types and outcomes, never an id or a raw path.

prometheus-client, not the OpenTelemetry Prometheus exporter: bench/telemetry.py measured
the cost of one call's counter and histogram updates in both (see the README).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import start_wsgi_server
from prometheus_client.metrics_core import Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

__all__ = [
    "GO_CODE_NAMES",
    "LATENCY_BUCKETS",
    "GaugeCollector",
    "Metrics",
    "MetricsEndpoint",
    "RpcMetrics",
    "grpc_type",
    "serve_metrics",
]

_log = logging.getLogger("poly.telemetry")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Seconds; fine below 100 ms, where a healthy call sits."""

GO_CODE_NAMES: Mapping[grpc.StatusCode, str] = {
    code: "".join(part.title() for part in code.name.split("_")) for code in grpc.StatusCode
} | {grpc.StatusCode.OK: "OK", grpc.StatusCode.CANCELLED: "Canceled"}
"""``grpc_code`` label values as go-grpc-prometheus writes them (``NotFound``, ``Canceled``)."""


def grpc_type(request_streaming: bool, response_streaming: bool) -> str:
    return {
        (False, False): "unary",
        (False, True): "server_stream",
        (True, False): "client_stream",
        (True, True): "bidi_stream",
    }[(request_streaming, response_streaming)]


_RPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")


@dataclass
class _MethodSeries:
    started: Counter
    seconds: Histogram
    handled: dict[grpc.StatusCode, Counter] = field(default_factory=dict)


class RpcMetrics:
    """``grpc_<side>_started_total``, ``grpc_<side>_handled_total`` and
    ``grpc_<side>_handling_seconds``, for ``side`` "server" or "client"."""

    def __init__(self, registry: CollectorRegistry, side: str) -> None:
        self._started = Counter(
            f"grpc_{side}_started", f"RPCs started on the {side}.", _RPC_LABELS, registry=registry
        )
        self._handled = Counter(
            f"grpc_{side}_handled",
            f"RPCs completed on the {side}, whatever their status.",
            (*_RPC_LABELS, "grpc_code"),
            registry=registry,
        )
        self._seconds = Histogram(
            f"grpc_{side}_handling_seconds",
            f"Time from the start of an RPC to its status, on the {side}.",
            _RPC_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._series: dict[tuple[str, str, str], _MethodSeries] = {}
        self._lock = threading.Lock()

    def method(self, kind: str, service: str, method: str) -> _MethodSeries:
        """The series of one method (label lookups are done once, then cached)."""
        key = (kind, service, method)
        series = self._series.get(key)
        if series is None:
            with self._lock:
                series = self._series.setdefault(
                    key, _MethodSeries(self._started.labels(*key), self._seconds.labels(*key))
                )
        return series

    def started(self, series: _MethodSeries) -> None:
        series.started.inc()

    def handled(
        self, series: _MethodSeries, key: tuple[str, str, str], code: grpc.StatusCode, seconds: float | None
    ) -> None:
        """One call ended with `code` after `seconds` (None: counted, not timed)."""
        counter = series.handled.get(code)
        if counter is None:
            counter = series.handled[code] = self._handled.labels(*key, GO_CODE_NAMES[code])
        counter.inc()
        if seconds is not None:
            series.seconds.observe(seconds)


class GaugeCollector(Collector):
    """Gauges whose values are read when Prometheus scrapes (a queue's depth, a certificate's
    expiry): ``{name: (help, read)}``; a read that fails leaves its gauge out of that scrape."""

    def __init__(self, gauges: Mapping[str, tuple[str, Callable[[], float | None]]]) -> None:
        self._gauges = dict(gauges)

    def collect(self) -> Iterable[Metric]:
        for name, (help_text, read) in self._gauges.items():
            try:
                value = read()
            except Exception:  # noqa: BLE001 - a scrape must not fail because one source is unavailable
                _log.debug("gauge %s unreadable", name, exc_info=True)
                continue
            if value is not None:
                yield GaugeMetricFamily(name, help_text, value=value)


class Metrics:
    """Every metric of one process, on its own registry (tests build as many as they like)."""

    def __init__(self, *, version: str = "", registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.server = RpcMetrics(self.registry, "server")
        self.client = RpcMetrics(self.registry, "client")
        self.in_flight = Gauge(
            "poly_grpc_server_in_flight_calls", "Calls being handled now.", registry=self.registry
        )
        self.refused = Counter(
            "poly_grpc_server_refused_calls",
            "Calls refused with RESOURCE_EXHAUSTED (SERVER_BUSY): the server was handling as many as it may.",
            ("grpc_service", "grpc_method"),
            registry=self.registry,
        )
        self._refused: dict[tuple[str, str], Counter] = {}
        self._call_limit: int | None = None
        # Read at scrape time, and left out until a gRPC server has set it: a process that
        # serves no gRPC (the edge) has no limit, rather than a limit of 0.
        self.add_gauges(
            {
                "poly_grpc_server_max_concurrent_calls": (
                    "Most calls the gRPC server handles at once (POLY_GRPC_WORKERS); more are refused.",
                    lambda: self._call_limit,
                )
            }
        )
        self.spans_dropped = Counter(
            "poly_otel_spans_dropped",
            "Spans never exported: the queue was full (collector slow or down) or the export failed.",
            ("reason",),
            registry=self.registry,
        )
        Gauge(
            "poly_build_info", "Always 1; the running version.", ("version",), registry=self.registry
        ).labels(version or "unknown").set(1)
        self._started = time.time()

    def limit_calls(self, limit: int, methods: Iterable[tuple[str, str]] = ()) -> None:
        """The gRPC server handles at most `limit` calls at once. Each of `methods` (service,
        method) gets its refusal count at 0 now, so that ``rate()`` sees the first refusal."""
        self._call_limit = limit
        for service, method in methods:
            self._refused_series(service, method)

    def refused_call(self, kind: str, service: str, method: str) -> None:
        """A call the server refused because it was at its limit: counted as refused and, like
        every call, as started and handled (``ResourceExhausted``), but kept out of the latency
        histogram: a flood of instant refusals would pull the method's p99 down just when the
        calls it admits are slowest."""
        key = (kind, service, method)
        series = self.server.method(*key)
        self.server.started(series)
        self.server.handled(series, key, grpc.StatusCode.RESOURCE_EXHAUSTED, None)
        self._refused_series(service, method).inc()

    def _refused_series(self, service: str, method: str) -> Counter:
        counter = self._refused.get((service, method))
        if counter is None:
            counter = self._refused.setdefault((service, method), self.refused.labels(service, method))
        return counter

    def drop_spans(self, reason: str, count: int) -> None:
        self.spans_dropped.labels(reason).inc(count)

    def add_gauges(self, gauges: Mapping[str, tuple[str, Callable[[], float | None]]]) -> None:
        """Register gauges read at scrape time (see `GaugeCollector`)."""
        self.registry.register(GaugeCollector(gauges))


@dataclass
class MetricsEndpoint:
    """The running ``/metrics`` server."""

    address: str
    port: int
    _server: WSGIServer
    _thread: threading.Thread

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(2.0)


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> MetricsEndpoint:
    """Serve `registry` in the Prometheus text format on plain HTTP at ``host:port``
    (``port`` 0: any free port). Raises OSError when the port is taken."""
    server, thread = start_wsgi_server(port, addr=host, registry=registry)
    bound: int = server.server_address[1]
    return MetricsEndpoint(host, bound, server, thread)
