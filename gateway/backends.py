"""The edge's gRPC side: one mTLS `grpc.aio` channel per backend, presenting the edge's own
certificate, and their health for ``/readyz``."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.kit import tls
from services.kit.config import Backend, TlsSettings

__all__ = ["Backends"]

_KEEPALIVE_MS = 30_000


class Backends:
    """Channels by full service name; created on first use, inside the serving loop."""

    def __init__(self, backends: Mapping[str, Backend], tls_settings: TlsSettings) -> None:
        self._backends = dict(backends)
        self._tls = tls_settings
        self._channels: dict[Backend, grpc.aio.Channel] = {}

    @property
    def services(self) -> list[str]:
        return sorted(self._backends)

    def channel(self, service: str) -> grpc.aio.Channel:
        backend = self._backends[service]
        found = self._channels.get(backend)
        if found is None:
            options: list[tuple[str, str | int]] = [("grpc.keepalive_time_ms", _KEEPALIVE_MS)]
            if backend.server_name:
                # The backend must prove it is this component, not just any holder of a
                # certificate for the dialled host.
                options.append(("grpc.ssl_target_name_override", backend.server_name))
            found = self._channels[backend] = grpc.aio.secure_channel(
                backend.address, tls.channel_credentials(self._tls), options=options
            )
        return found

    async def health(self, *, timeout: float = 2.0) -> dict[str, str]:
        """Each backend service's gRPC health status (``SERVING``, ``NOT_SERVING``,
        ``UNAVAILABLE`` when it cannot be reached)."""

        async def one(service: str) -> tuple[str, str]:
            stub = health_pb2_grpc.HealthStub(self.channel(service))
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
            except grpc.aio.AioRpcError as error:
                return service, error.code().name
            return service, health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

        return dict(await asyncio.gather(*(one(s) for s in self.services)))

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self._channels.values()))
        self._channels.clear()
