"""Running the edge: load the routes, serve HTTP, reload the routes on SIGHUP and on an
interval, stop on SIGTERM or SIGINT.

The signals are taken from the first moment, so a SIGHUP while the routes are still being
loaded is a reload request, and a SIGTERM then stops the start. A reload builds the new
routes beside the old ones and swaps them in one step; if it fails for any reason (a
backend down, a bad file), the edge logs why and keeps serving the routes it had. With
``config.tokens`` (Polyservice's own edge), the signing keys that verify bearer tokens for
the rate limit are fetched in the background while the edge serves (`gateway.tokens`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl

from gateway.app import Edge
from gateway.backends import Backends
from gateway.catalog import load_routing
from gateway.config import EdgeConfig
from gateway.descriptors import DescriptorSetError
from gateway.observe import Observer, trusted_peer
from gateway.plans import Routing
from gateway.tls import ReloadingContext
from gateway.tokens import verifying
from services.kit import heap, telemetry
from services.kit.telemetry import Telemetry

__all__ = ["StartError", "observer_for", "serve"]

_log = logging.getLogger("poly.gateway")


class _Refusals:
    """Each request the edge's HTTP server refuses before any handler saw it (a CR or LF
    inside a header, a bad request line, a header section over the limit, broken chunking, a
    body over the limit, a request too slow to arrive) becomes one warning line naming the
    peer, the status and the kind of problem, never a byte of the request (a header line may
    hold a credential), and is counted in the edge's HTTP metrics (method ``_OTHER``, no
    route)."""

    def __init__(self, logger: logging.Logger, observer: Observer) -> None:
        self._log = logger
        self._observer = observer

    def __call__(self, peer: str, status: int, problem: str) -> None:
        self._observer.refused(status)
        self._log.warning(
            "malformed HTTP request refused", extra={"peer": peer, "status": status, "problem": problem}
        )


class StartError(RuntimeError):
    """The edge cannot start: its routes cannot be loaded, or its port cannot be bound.

    `usage` tells the two apart: True for what the configuration says (exit status 2), False
    for what the machine refuses, such as a port in use (exit status 1)."""

    def __init__(self, message: str, *, usage: bool = True) -> None:
        super().__init__(message)
        self.usage = usage


class _Signals:
    def __init__(self) -> None:
        self.stop, self.reload = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload.set)

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)


def observer_for(config: EdgeConfig, observed: Telemetry | None) -> Observer:
    """What `config`'s edge records: spans and metrics as `observed` (the process's telemetry)
    has them (`Observer.of`), with CLIENT spans if `config.client_spans`, and as a public
    endpoint if `config.public_endpoint` (trusting the trace context of `config.limits`'
    trusted proxies only)."""
    return Observer.of(
        observed,
        client_spans=config.client_spans,
        public_endpoint=config.public_endpoint,
        trusted_peer=trusted_peer(config.limits.trusted_proxies) if config.public_endpoint else None,
    )


async def serve(config: EdgeConfig, *, observer: Observer | None = None) -> None:
    """Serve `config` until SIGTERM or SIGINT; raises `StartError` when it cannot start.

    `observer` records spans, metrics and access lines; by default, the one `observer_for`
    builds from `config` and the process's telemetry (`services.kit.telemetry.setup`), or
    access lines alone without it.
    """
    observer = observer or observer_for(config, telemetry.installed())
    signals = _Signals()
    backends = Backends(config.backends, config.default_backend)
    _log.info("loading routes", extra={"source": _source(config)})
    try:
        routing = await _first_routing(config, backends, signals)
        if routing is not None:
            await _serve(config, routing, backends, signals, observer)
    finally:
        await backends.close()
        signals.close()


async def _first_routing(config: EdgeConfig, backends: Backends, signals: _Signals) -> Routing | None:
    """The routes to start with; None when a stop signal came first."""
    loading = asyncio.create_task(load_routing(config, backends))
    stopping = asyncio.create_task(signals.stop.wait())
    await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not loading.done():
        loading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loading
        return None
    try:
        routing = loading.result()
    except (DescriptorSetError, ValueError, OSError) as error:
        raise StartError(str(error)) from None
    signals.reload.clear()  # a SIGHUP during the start is answered by this load
    return routing


async def _serve(
    config: EdgeConfig, routing: Routing, backends: Backends, signals: _Signals, observer: Observer
) -> None:
    async with verifying(config.tokens) as verify_token:
        edge = Edge(routing, backends, config.limits, verify_token=verify_token, observer=observer)
        server = edge.server(
            on_refused=_Refusals(logging.getLogger("poly.gateway.http"), observer),
            tls=_serving_context(config),
            http2=config.http2,
        )
        drained = False
        try:
            try:
                await server.start(config.host, config.port)
            except OSError as error:
                raise StartError(
                    f"cannot listen on {config.host}:{config.port}: {error.strerror}; stop what holds it, "
                    "or listen elsewhere (--listen HOST:PORT, or POLY_GATEWAY_PORT under poly up)",
                    usage=False,
                ) from None
            routes = len(routing.router.routes)
            scheme = "https" if config.serving_tls else "http"
            _log.info(
                "serving",
                extra={"port": config.port, "routes": routes, "source": _source(config), "scheme": scheme},
            )
            reloader = asyncio.create_task(_reloads(config, edge, backends, signals.reload))
            heap.freeze_startup_heap()
            try:
                await signals.stop.wait()
            finally:
                reloader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reloader
            # Listening stops at once; requests in flight get the grace period, then are cancelled.
            _log.info("draining", extra={"grace_seconds": config.grace_seconds})
            drained = True
        finally:
            await server.shutdown(config.grace_seconds if drained else 0.0)
        if drained:
            _log.info("stopped")


def _serving_context(config: EdgeConfig) -> ssl.SSLContext | None:
    """The TLS context of `config`'s HTTPS (reloading its certificate), or None for HTTP."""
    if config.serving_tls is None:
        return None
    try:
        return ReloadingContext(config.serving_tls, http2=config.http2).context
    except (OSError, ssl.SSLError) as error:
        raise StartError(f"cannot serve HTTPS with {config.serving_tls.cert_file}: {error}") from None


def _source(config: EdgeConfig) -> str:
    return str(config.descriptor_set) if config.descriptor_set else "reflection"


async def _reloads(config: EdgeConfig, edge: Edge, backends: Backends, requested: asyncio.Event) -> None:
    interval = config.refresh_seconds or None
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(requested.wait(), timeout=interval)
        requested.clear()
        try:
            routing = await load_routing(config, backends)
            edge.reroute(routing)
        except (DescriptorSetError, ValueError, OSError) as error:
            _log.error("reload failed, still serving the previous routes", extra={"error": str(error)})
            continue
        except Exception:  # noqa: BLE001 - an unforeseen failure must not end reloading for good
            _log.exception("reload failed, still serving the previous routes")
            continue
        _log.info("reloaded", extra={"routes": len(routing.router.routes)})
