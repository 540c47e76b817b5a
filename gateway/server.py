"""Running the edge: load the routes, serve HTTP, reload the routes on SIGHUP and on an
interval, stop on SIGTERM or SIGINT.

A reload builds the new routes beside the old ones and swaps them in one step; if it fails
(a backend down, a bad file), the edge logs why and keeps serving the routes it had.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from aiohttp import web

from gateway.app import Edge
from gateway.backends import Backends
from gateway.catalog import load_routing
from gateway.config import EdgeConfig
from gateway.descriptors import DescriptorSetError

__all__ = ["StartError", "serve"]

_log = logging.getLogger("poly.gateway")


class StartError(RuntimeError):
    """The edge cannot start: its routes cannot be loaded, or its port cannot be bound."""


async def serve(config: EdgeConfig) -> None:
    """Serve `config` until SIGTERM or SIGINT; raises `StartError` when it cannot start."""
    backends = Backends(config.backends, config.default_backend)
    try:
        routing = await load_routing(config, backends)
    except (DescriptorSetError, ValueError) as error:
        await backends.close()
        raise StartError(str(error)) from None
    edge = Edge(routing, backends, config.limits)
    runner = web.AppRunner(edge.application(), handler_cancellation=True, access_log=None)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, config.host, config.port).start()
        except OSError as error:
            raise StartError(f"cannot listen on {config.host}:{config.port}: {error.strerror}") from None
        source = str(config.descriptor_set) if config.descriptor_set else "reflection"
        routes = len(routing.router.routes)
        _log.info("serving", extra={"port": config.port, "routes": routes, "source": source})
        await _until_stopped(config, edge, backends)
    finally:
        await runner.cleanup()


async def _until_stopped(config: EdgeConfig, edge: Edge, backends: Backends) -> None:
    stop, reload = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload.set)
    reloader = asyncio.create_task(_reloads(config, edge, backends, reload))
    try:
        await stop.wait()
    finally:
        reloader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reloader


async def _reloads(config: EdgeConfig, edge: Edge, backends: Backends, requested: asyncio.Event) -> None:
    interval = config.refresh_seconds or None
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(requested.wait(), timeout=interval)
        requested.clear()
        try:
            routing = await load_routing(config, backends)
        except (DescriptorSetError, ValueError) as error:
            _log.error("reload failed, still serving the previous routes", extra={"error": str(error)})
            continue
        edge.reroute(routing)
        _log.info("reloaded", extra={"routes": len(routing.router.routes)})
