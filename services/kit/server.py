"""Build and run a service's gRPC server.

`serve(settings, registrations)` is the whole life of a service process: mTLS credentials
(client certificate required, hot reload), the middleware chain, the standard health
service, reflection (v1 and v1alpha), then blocking until SIGTERM or SIGINT, when it
drains: health goes NOT_SERVING, new calls are refused, in-flight calls get up to
``settings.server.grace_seconds`` to finish, and `serve` returns so the process exits 0.

Middleware order (outermost first): access log, errors, then whatever the caller adds
(authn, authz, telemetry in later layers), then the servicer. Health and reflection are
infrastructure and bypass the chain.

Model: the thread-pool ``grpc.server`` (bench/kit.py has the measurements). Every in-flight
call holds one thread; `ServerSettings.workers` bounds them, and calls beyond it are
refused with RESOURCE_EXHAUSTED rather than queued without limit.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.kit import reflection, tls
from services.kit.config import Settings
from services.kit.errors import error_middleware
from services.kit.logs import access_log_middleware
from services.kit.types import CallInfo, Handler, Middleware

__all__ = [
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


class StartupError(RuntimeError):
    """The server cannot start: its port is taken, or its certificate files are unreadable."""


@dataclass(frozen=True)
class Registration:
    """One gRPC service to serve: its full name and how to attach it to a server."""

    name: str
    attach: Callable[[grpc.Server], None]


def registration(
    descriptor: ServiceDescriptor, add: Callable[[Any, grpc.Server], None], servicer: object
) -> Registration:
    """A `Registration` from generated code, e.g. ``registration(
    orders_service_pb2.DESCRIPTOR.services_by_name["OrdersService"],
    orders_service_pb2_grpc.add_OrdersServiceServicer_to_server, servicer)``."""
    return Registration(descriptor.full_name, lambda server: add(servicer, server))


def default_middlewares(settings: Settings) -> list[Middleware]:
    return [access_log_middleware(), error_middleware(f"{settings.service}.poly.local")]


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
    _stopped: threading.Event = field(default_factory=threading.Event)

    def drain(self) -> None:
        """NOT_SERVING, refuse new calls, let in-flight ones finish within the grace period."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        _close_health_watches(self.health)
        _log.info("draining", extra={"grace_seconds": self.grace_seconds})
        self.server.stop(self.grace_seconds).wait(self.grace_seconds + 1)
        _log.info("stopped")


def _close_health_watches(servicer: health.HealthServicer) -> None:
    # Open Watch streams would otherwise hold the drain for the whole grace period; they
    # have already been sent NOT_SERVING. A None response closes a watcher (grpcio-health).
    callbacks = getattr(servicer, "_send_response_callbacks", {})
    with getattr(servicer, "_lock", threading.Lock()):
        pending = [callback for group in callbacks.values() for callback in list(group)]
    for callback in pending:
        callback(None)


def start(
    settings: Settings,
    registrations: Sequence[Registration],
    *,
    middlewares: Sequence[Middleware] | None = None,
    credentials: grpc.ServerCredentials | None = None,
) -> RunningServer:
    """Bind, register and start; health says SERVING once every service is attached."""
    try:
        credentials = credentials or tls.server_credentials(settings.tls)
    except (OSError, ValueError) as error:
        raise StartupError(f"cannot load the TLS files ({error}); `poly certs` creates them") from None
    workers = settings.server.workers
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{settings.service}-rpc"),
        interceptors=[chain(default_middlewares(settings) if middlewares is None else middlewares)],
        maximum_concurrent_rpcs=workers,
        # SO_REUSEPORT would let a second copy bind the same port silently.
        options=[("grpc.so_reuseport", 0)],
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
    server.start()
    for name in ["", *names]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    _log.info("serving", extra={"address": f"{settings.server.host}:{port}", "services": names})
    return RunningServer(server, port, health_servicer, names, settings.server.grace_seconds)


def serve(
    settings: Settings,
    registrations: Sequence[Registration],
    *,
    middlewares: Sequence[Middleware] | None = None,
) -> None:
    """Start, then block until SIGTERM or SIGINT and drain. Call from the main thread."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        _log.info("signal received", extra={"signal": signal.Signals(signum).name})
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            running = start(settings, registrations, middlewares=middlewares)
        except StartupError as error:
            _log.error(str(error))
            raise SystemExit(1) from None
        while not stop.wait(1.0):
            pass
        running.drain()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
