"""Build and run a service's gRPC server.

`serve(settings, registrations)` is the whole life of a service process: mTLS credentials
(client certificate required, hot reload), the middleware chain, the standard health
service, reflection (v1 and v1alpha), then blocking until SIGTERM or SIGINT, when it
drains: health goes NOT_SERVING, new calls are refused, in-flight calls get up to
``settings.server.grace_seconds`` to finish, and `serve` returns so the process exits 0.

Middleware order (outermost first): admission (counts the calls in flight, refuses those
beyond the limit), telemetry (span and metrics), access log, errors, then whatever the caller
adds (authn, authz, field behaviour), then the servicer. Health and reflection are
infrastructure and bypass the chain.

Model: the thread-pool ``grpc.server`` (bench/kit.py has the measurements). Every in-flight
call holds one thread. `ServerSettings.workers` application calls run at once; a call beyond
them is refused at once with RESOURCE_EXHAUSTED (reason ``SERVER_BUSY``), never queued. The
pool has a few spare threads beyond `workers`, so that those refusals are made (and counted)
here and health checks are answered while every worker is busy; grpcio itself refuses, before
any of this code runs and so uncounted, only what arrives while the spare threads are taken
too.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, NoReturn

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.kit import heap, reflection, telemetry, tls
from services.kit.config import Settings
from services.kit.domain_errors import ResourceExhausted
from services.kit.errors import error_middleware, to_status
from services.kit.logs import access_log_middleware
from services.kit.telemetry.metrics import Metrics, grpc_type
from services.kit.types import Background, CallInfo, Handler, Middleware

__all__ = [
    "MIN_CLIENT_PING_INTERVAL_MS",
    "Registration",
    "RunningServer",
    "StartupError",
    "chain",
    "default_middlewares",
    "registration",
    "serve",
    "start",
]

_log = logging.getLogger("poly.server")
_INFRASTRUCTURE = (health.SERVICE_NAME, reflection.V1_SERVICE_NAME, reflection.V1ALPHA_SERVICE_NAME)

MIN_CLIENT_PING_INTERVAL_MS = 10_000
"""Clients may ping idle connections this often (kit clients ping every 30 s); faster is abuse."""
_SERVER_OPTIONS = [
    # SO_REUSEPORT would let a second copy bind the same port silently.
    ("grpc.so_reuseport", 0),
    # Ping idle clients so streams held by vanished clients (and their threads) are freed.
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", MIN_CLIENT_PING_INTERVAL_MS),
    ("grpc.http2.max_ping_strikes", 2),
    # Clients reconnect every few minutes, and so re-resolve their peers' names: replicas
    # added since (a scale-out) get their share of calls. Streams open at that moment, such
    # as watches, keep their old connection for up to an hour.
    ("grpc.max_connection_age_ms", 300_000),
    ("grpc.max_connection_age_grace_ms", 3_600_000),
]


class StartupError(RuntimeError):
    """The server cannot start: its port is taken, or its certificate files are unreadable."""


@dataclass(frozen=True)
class Registration:
    """One gRPC service to serve: its full name and how to attach it to a server."""

    name: str
    attach: Callable[[grpc.Server], None]
    descriptor: ServiceDescriptor | None = None
    """Where the methods' options (policies) are read from; None for hand-built services."""


def registration(
    descriptor: ServiceDescriptor, add: Callable[[Any, grpc.Server], None], servicer: object
) -> Registration:
    """A `Registration` from generated code, e.g. ``registration(
    orders_service_pb2.DESCRIPTOR.services_by_name["OrdersService"],
    orders_service_pb2_grpc.add_OrdersServiceServicer_to_server, servicer)``."""
    return Registration(descriptor.full_name, lambda server: add(servicer, server), descriptor)


def default_middlewares(settings: Settings) -> list[Middleware]:
    """Telemetry (when `kit.telemetry.setup` ran: outermost, so the access line and
    everything after it run inside the call's span), the access log, errors."""
    observed = telemetry.installed()
    first = [observed.server_middleware()] if observed is not None else []
    return [*first, access_log_middleware(), error_middleware(f"{settings.service}.poly.local")]


def _compose(middlewares: Sequence[Middleware], call: CallInfo, behaviour: Handler) -> Handler:
    def link(middleware: Middleware, proceed: Handler) -> Handler:
        return lambda request, context: middleware(request, context, call, proceed)

    handler = behaviour
    for middleware in reversed(middlewares):
        handler = link(middleware, handler)
    return handler


class _Chain(grpc.ServerInterceptor):  # type: ignore[misc]
    """Wraps every application handler in the middleware chain, once per method."""

    def __init__(self, middlewares: Sequence[Middleware]) -> None:
        self._middlewares = list(middlewares)
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        self._lock = threading.Lock()

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        method: str = details.method
        if handler is None or not self._middlewares or method.lstrip("/").startswith(_INFRASTRUCTURE):
            return handler
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method, handler)
        with self._lock:
            self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        service, _, name = method.lstrip("/").partition("/")
        call = CallInfo(method, service, name, handler.request_streaming, handler.response_streaming)
        kind = {
            (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
            (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
            (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
            (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
        }[(handler.request_streaming, handler.response_streaming)]
        behaviour = getattr(handler, kind[0])
        return kind[1](
            _compose(self._middlewares, call, behaviour),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


_BUSY_WARNING_EVERY_SECONDS = 10.0


def _spare_threads(workers: int) -> int:
    """Threads beyond `workers` for health checks and refusals (both take microseconds)."""
    return max(2, workers // 8)


class _InFlight:
    """Admits at most `limit` application calls at once and counts them until their handler
    (or stream) has really finished.

    A call beyond the limit is refused at once, on a spare thread, with RESOURCE_EXHAUSTED
    (reason ``SERVER_BUSY``): queued, it would only wait behind calls that may each take
    seconds, and then fail its deadline anyway. A refused call never counts as in flight.
    """

    def __init__(self, limit: int, *, domain: str, metrics: Metrics | None = None) -> None:
        self.limit = limit
        self._count = 0
        self._changed = threading.Condition()
        self._metrics = metrics
        self._busy = to_status(
            ResourceExhausted(
                "SERVER_BUSY",
                "the server is at its limit of concurrent calls; retry later",
                retry_after_seconds=1.0,
            ),
            domain=domain,
        )
        self._refused_unreported = 0
        self._quiet_until = 0.0

    def _done(self) -> None:
        with self._changed:
            self._count -= 1
            if self._count == 0:
                self._changed.notify_all()

    @property
    def count(self) -> int:
        with self._changed:
            return self._count

    def wait_idle(self, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self._count == 0, timeout)

    def _stream(self, result: Iterator[Any]) -> Iterator[Any]:
        try:
            yield from result
        finally:
            self._done()

    def __call__(self, request: Any, context: grpc.ServicerContext, call: CallInfo, proceed: Handler) -> Any:
        with self._changed:
            admitted = self._count < self.limit
            if admitted:
                self._count += 1
            else:
                report = self._note_refusal()
        if not admitted:
            self._refuse(context, call, report)
        try:
            result = proceed(request, context)
        except BaseException:
            self._done()
            raise
        if call.response_streaming:
            return self._stream(result)
        self._done()
        return result

    def _note_refusal(self) -> int:
        """Called holding the lock: how many refusals to log now (0: stay quiet). One warning
        per period at most, however many calls a flood brings."""
        self._refused_unreported += 1
        now = time.monotonic()
        if now < self._quiet_until:
            return 0
        self._quiet_until = now + _BUSY_WARNING_EVERY_SECONDS
        report, self._refused_unreported = self._refused_unreported, 0
        return report

    def _refuse(self, context: grpc.ServicerContext, call: CallInfo, report: int) -> NoReturn:
        # Counted here: the telemetry middleware sits inside, so a refusal costs no span, no
        # access line and no in-flight gauge movement (cheap refusals keep the spare threads free).
        if self._metrics is not None:
            kind = grpc_type(call.request_streaming, call.response_streaming)
            self._metrics.refused_call(kind, call.service, call.name)
        if report:
            _log.warning(
                "refusing calls: every worker is busy",
                extra={"limit": self.limit, "refused": report, "method": call.method},
            )
        context.abort_with_status(self._busy)
        raise AssertionError("context.abort_with_status returned")  # it always raises


def chain(middlewares: Sequence[Middleware]) -> grpc.ServerInterceptor:
    """The single interceptor that runs `middlewares` around every application method."""
    return _Chain(middlewares)


@dataclass
class RunningServer:
    """A started server: its port, its health servicer, and how to drain it."""

    server: grpc.Server
    port: int
    health: health.HealthServicer
    names: list[str]
    grace_seconds: float
    in_flight: _InFlight
    probe: grpc.Server | None = None
    """The plaintext health port's server (`ServerSettings.health_port`), if any."""
    _stopped: threading.Event = field(default_factory=threading.Event)

    def set_serving(self) -> None:
        for name in ["", *self.names]:
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        _log.info("serving", extra={"port": self.port, "services": self.names})

    def drain(self) -> bool:
        """NOT_SERVING, refuse new calls, let in-flight ones finish within the grace period.

        Returns False when handlers were still running after it: gRPC has cancelled their
        calls, but their threads go on, so the caller must not wait for them to exit.
        """
        if self._stopped.is_set():
            return True
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        _close_health_watches(self.health)
        _log.info("draining", extra={"grace_seconds": self.grace_seconds, "in_flight": self.in_flight.count})
        stopped = self.server.stop(self.grace_seconds)
        finished = self.in_flight.wait_idle(self.grace_seconds + 0.5)
        stopped.wait(1.0)
        if self.probe is not None:  # answered NOT_SERVING throughout the drain
            self.probe.stop(None)
        if not finished:
            _log.warning(
                "calls still running after the grace period are abandoned",
                extra={"in_flight": self.in_flight.count},
            )
        _log.info("stopped")
        return finished


def _methods(registrations: Iterable[Registration]) -> Iterator[tuple[str, str]]:
    for item in registrations:
        if item.descriptor is not None:
            for method in item.descriptor.methods:
                yield item.descriptor.full_name, method.name


def _installed_metrics() -> Metrics | None:
    observed = telemetry.installed()
    return observed.recorded_metrics if observed is not None else None


class _CheckOnly(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """Check, answered by the server's own health servicer; Watch is UNIMPLEMENTED, so no one
    on the plaintext port can hold its few threads with open streams."""

    def __init__(self, inner: health.HealthServicer) -> None:
        self._inner = inner

    def Check(self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return self._inner.Check(request, context)


def _probe_server(host: str, port: int, servicer: health.HealthServicer) -> tuple[grpc.Server, int]:
    """Plaintext and health-only: it tells whether the service serves, nothing else (no
    application method, no reflection), with a few threads and calls beyond them refused."""
    probe = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="health-probe"),
        maximum_concurrent_rpcs=4,
        options=_SERVER_OPTIONS,
    )
    health_pb2_grpc.add_HealthServicer_to_server(_CheckOnly(servicer), probe)
    try:
        bound = probe.add_insecure_port(f"{host}:{port}")
    except RuntimeError:
        probe.stop(None)
        raise StartupError(
            f"cannot listen on {host}:{port} for health probes: is the port already in use?"
        ) from None
    probe.start()
    return probe, bound


def _close_health_watches(servicer: health.HealthServicer) -> None:
    # Open Watch streams would otherwise hold the drain for the whole grace period; they
    # have already been sent NOT_SERVING. A None response closes a watcher (grpcio-health).
    # Private attributes of grpcio-health, read directly so that a rename fails loudly.
    with servicer._lock:
        pending = [callback for group in servicer._send_response_callbacks.values() for callback in group]
    for callback in pending:
        callback(None)


def start(
    settings: Settings,
    registrations: Sequence[Registration],
    *,
    middlewares: Sequence[Middleware] | None = None,
    credentials: grpc.ServerCredentials | None = None,
    serving: bool = True,
    metrics: Metrics | None = None,
) -> RunningServer:
    """Bind, register and start; health says SERVING once every service is attached
    (or, with ``serving=False``, once the caller calls `RunningServer.set_serving`).

    `metrics` counts refused calls and exports the limit; by default, the installed
    telemetry's (none when metrics are off: then a refusal records nothing)."""
    try:
        credentials = credentials or tls.server_credentials(settings.tls)
    except (OSError, ValueError) as error:
        raise StartupError(f"cannot load the TLS files ({error}); `poly certs` creates them") from None
    workers = settings.server.workers
    metrics = metrics if metrics is not None else _installed_metrics()
    in_flight = _InFlight(workers, domain=f"{settings.service}.poly.local", metrics=metrics)
    chosen = default_middlewares(settings) if middlewares is None else list(middlewares)
    # One thread per call grpcio lets in, so nothing waits in the executor's queue: workers
    # for application calls, the spare ones for health checks and the kit's own refusals.
    threads = workers + _spare_threads(workers)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"{settings.service}-rpc"),
        interceptors=[chain([in_flight, *chosen])],
        maximum_concurrent_rpcs=threads,
        options=_SERVER_OPTIONS,
    )
    for item in registrations:
        item.attach(server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [item.name for item in registrations]
    reflection.enable(server, [*names, health.SERVICE_NAME])
    address = f"{settings.server.host}:{settings.server.port}"
    try:
        port = server.add_secure_port(address, credentials)
    except RuntimeError:
        server.stop(None)
        raise StartupError(f"cannot listen on {address}: is the port already in use?") from None
    if metrics is not None:
        metrics.limit_calls(workers, _methods(registrations))
    for name in ["", *names]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    probe = None
    if settings.server.health_port:
        try:
            probe, probe_port = _probe_server(
                settings.server.host, settings.server.health_port, health_servicer
            )
        except StartupError:
            server.stop(None)
            raise
        _log.info("answering health probes", extra={"address": f"{settings.server.host}:{probe_port}"})
    server.start()
    running = RunningServer(
        server, port, health_servicer, names, settings.server.grace_seconds, in_flight, probe
    )
    _log.info("listening", extra={"address": f"{settings.server.host}:{port}"})
    if serving:
        running.set_serving()
    return running


def serve(
    settings: Settings,
    registrations: Sequence[Registration],
    *,
    middlewares: Sequence[Middleware] | None = None,
    background: Sequence[Background] = (),
) -> None:
    """Start, then block until SIGTERM or SIGINT and drain. Call from the main thread.

    `background` work starts once the server accepts calls and before health says SERVING
    (a broker consumer is consuming by then), and stops after the drain, in reverse order.

    If handlers outlive the grace period, the process exits 0 at once (their calls are
    already cancelled): waiting for their threads would break the grace-period promise.
    """
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        _log.info("signal received", extra={"signal": signal.Signals(signum).name})
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            running = start(settings, registrations, middlewares=middlewares, serving=False)
        except StartupError as error:
            _log.error(str(error))
            raise SystemExit(1) from None
        started: list[Background] = []
        try:
            for work in background:
                work.start()
                started.append(work)
            running.set_serving()
            heap.freeze_startup_heap()
            while not stop.wait(1.0):
                pass
        finally:
            finished = running.drain()
            for work in reversed(started):
                work.stop()
        observed = telemetry.installed()
        if observed is not None:
            observed.close()  # bounded: queued spans are exported, /metrics stops
        if not finished:
            logging.shutdown()
            os._exit(0)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
