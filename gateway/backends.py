"""The edge's gRPC side: one `grpc.aio` channel per backend target, with that target's
transport security (plaintext, TLS, or mTLS presenting the edge's certificate), and their
health for ``/readyz``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.config import Target, Transport

__all__ = ["READY_STATES", "Backends", "credentials"]

READY_STATES = frozenset({"SERVING", "REACHABLE"})
"""Health states in which a backend counts as ready."""

_KEEPALIVE_MS = 30_000
_MAX_RECONNECT_BACKOFF_MS = 3_000


def credentials(transport: Transport) -> grpc.ChannelCredentials | None:
    """The channel credentials of `transport`; None for plaintext. The files are read now:
    one channel per target is built on first use and kept, so a rotated client certificate
    takes a restart of the edge."""
    if transport.mode == "plaintext":
        return None
    mtls = transport.mode == "mtls"
    return grpc.ssl_channel_credentials(
        root_certificates=_read(transport.ca_file),
        private_key=_read(transport.key_file) if mtls else None,
        certificate_chain=_read(transport.cert_file) if mtls else None,
    )


def _read(path: Path | None) -> bytes | None:
    return path.read_bytes() if path is not None else None


class Backends:
    """Channels by full service name; created on first use, inside the serving loop.

    `targets` maps named services; every other service goes to `default` (when given).
    """

    def __init__(self, targets: Mapping[str, Target], default: Target | None = None) -> None:
        self._targets = dict(targets)
        self._default = default
        self._channels: dict[Target, grpc.aio.Channel] = {}

    def target(self, service: str) -> Target:
        found = self._targets.get(service, self._default)
        if found is None:
            raise KeyError(f"no backend for {service}")
        return found

    def channel_to(self, target: Target) -> grpc.aio.Channel:
        found = self._channels.get(target)
        if found is None:
            options: list[tuple[str, str | int]] = [
                ("grpc.keepalive_time_ms", _KEEPALIVE_MS),
                # A backend that comes back is found within seconds, not after minutes of backoff.
                ("grpc.initial_reconnect_backoff_ms", 250),
                ("grpc.max_reconnect_backoff_ms", _MAX_RECONNECT_BACKOFF_MS),
                # Every address the name resolves to (a headless Service: every ready pod),
                # not the first one alone: long-lived HTTP/2 connections never rebalance.
                ("grpc.lb_policy_name", "round_robin"),
            ]
            if target.transport.server_name:
                # The backend must prove it is this name, not just any holder of a
                # certificate for the dialled host.
                options.append(("grpc.ssl_target_name_override", target.transport.server_name))
            secure = credentials(target.transport)
            found = self._channels[target] = (
                grpc.aio.insecure_channel(target.address, options=options)
                if secure is None
                else grpc.aio.secure_channel(target.address, secure, options=options)
            )
        return found

    def channel(self, service: str) -> grpc.aio.Channel:
        return self.channel_to(self.target(service))

    async def health(self, services: Iterable[str], *, timeout: float = 2.0) -> dict[str, str]:
        """Each of `services`' gRPC health: ``SERVING``, ``NOT_SERVING``, the status code
        of a failed check (``UNAVAILABLE`` when unreachable), or ``REACHABLE`` for a backend
        that answers but has no health service (grpc-gateway's users rarely add one)."""

        async def check(service: str, name: str) -> str:
            stub = health_pb2_grpc.HealthStub(self.channel(service))
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=timeout)
            except grpc.aio.AioRpcError as error:
                code: grpc.StatusCode = error.code()
                if code == grpc.StatusCode.UNIMPLEMENTED:
                    return "REACHABLE"
                if code == grpc.StatusCode.NOT_FOUND and name:
                    return await check(service, "")  # no per-service status: the server's own
                return str(code.name)
            return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

        async def one(service: str) -> tuple[str, str]:
            return service, await check(service, service)

        return dict(await asyncio.gather(*(one(s) for s in services)))

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self._channels.values()))
        self._channels.clear()
