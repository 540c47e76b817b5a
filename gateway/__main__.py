"""Entry point: ``python -m gateway``. Reads settings once, compiles the routes, serves HTTP.

The routes come from the descriptor set (``POLY_GATEWAY_DESCRIPTOR_SET``, by default the one
``make gen`` writes) for the services named in ``POLY_GATEWAY_BACKENDS`` (by default the
five Polyservice APIs, each at its ``POLY_<SERVICE>_ADDRESS``).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from aiohttp import web
from google.protobuf.descriptor import MethodDescriptor

from gateway import openapi
from gateway.app import Edge
from gateway.backends import Backends
from gateway.descriptors import DescriptorSetError, load_descriptor_set
from gateway.routes import Route, compile_routes
from services.kit import config, logs

POLICY_OPTION = "poly.options.v1.policy"
_ACCESS_PUBLIC, _ACCESS_INTERNAL = 1, 4
SUCCESS_STATUS_OPTION = "poly.options.v1.http_status"
"""A method's success status (201 for creates, 204 for Empty); without it, grpc-gateway's 200."""
"""Polyservice's access policy option: methods it marks INTERNAL (service-to-service only)
get no route. A service without the option is routed whole."""


async def _serve(app: web.Application, host: str, port: int, routes: int) -> None:
    """Serve until SIGTERM or SIGINT; "serving" is logged once the port accepts connections."""
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        logging.getLogger("poly.gateway").info("serving", extra={"port": port, "routes": routes})
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> int:
    settings = config.load_or_exit("gateway")
    assert settings.gateway is not None
    logs.setup(settings.service, settings.log_level)
    log = logging.getLogger("poly.gateway")
    try:
        descriptors = load_descriptor_set(settings.gateway.descriptor_set)
        services = descriptors.services(settings.gateway.backends)
    except DescriptorSetError as error:
        log.error(str(error))
        return 2

    def access(method: MethodDescriptor) -> int:
        policy = descriptors.method_option(method, POLICY_OPTION)
        return int(getattr(policy, "access", 0))

    def success_status(route: Route) -> int:
        declared = descriptors.method_option(route.method, SUCCESS_STATUS_OPTION)
        return declared if isinstance(declared, int) and 200 <= declared < 300 else 200

    router = compile_routes(services, include=lambda method: access(method) != _ACCESS_INTERNAL)
    document = openapi.openapi_document(
        router,
        title="Polyservice",
        version="v1",
        success_status=success_status,
        comments=descriptors.comment,
        # Without the policy option (a foreign service) nothing says a token is needed.
        is_public=lambda method: (
            descriptors.method_option(method, POLICY_OPTION) is None or access(method) == _ACCESS_PUBLIC
        ),
    )
    backends = Backends(settings.gateway.backends, settings.tls)
    edge = Edge(router, backends, settings.gateway, document=document, success_status=success_status)
    try:
        asyncio.run(
            _serve(edge.application(), settings.server.host, settings.server.port, len(router.routes))
        )
    except OSError as error:
        log.error(f"cannot listen on {settings.server.host}:{settings.server.port}: {error.strerror}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
