"""mTLS channels to other components.

`channel(settings, "orders", services=[...])` dials the address in ``settings.peers`` with
this component's own certificate, checks that the server's certificate names ``orders``,
balances ``round_robin`` over every address DNS returns (many replicas), and carries a
service config built from the called services' descriptors: a default deadline for unary
methods and retries on ``UNAVAILABLE`` for methods marked idempotent. `Channels` rebuilds a
channel when the certificate files change, so a rotated client certificate is used without
a restart. Every call on a channel sends the current request id (`kit.request_id`) as
``x-request-id`` metadata, unless the caller set its own: one id across every service a
request reaches.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from poly.options.v1 import options_pb2
from services.kit import request_id, telemetry, tls
from services.kit.calls import with_metadata
from services.kit.config import Settings, TlsSettings

__all__ = [
    "KEEPALIVE_MS",
    "MAX_RECONNECT_BACKOFF_MS",
    "Channels",
    "channel",
    "idempotent_methods",
    "service_config",
]


def service_config(
    *,
    deadline_seconds: float,
    services: Sequence[ServiceDescriptor] = (),
) -> dict[str, Any]:
    """gRPC service config for calls to `services`.

    Methods with a single response get `deadline_seconds` as their default timeout
    (a caller's own deadline still wins when shorter); server-streaming methods get none,
    since a watch may rightly stay open for hours. Methods marked
    ``(poly.options.v1.idempotent)`` retry on UNAVAILABLE with exponential backoff.
    """
    retryable = set(idempotent_methods(*services))
    groups: dict[tuple[bool, bool], list[dict[str, str]]] = {}
    for service in services:
        for method in service.methods:
            key = (not method.server_streaming, (service.full_name, method.name) in retryable)
            groups.setdefault(key, []).append({"service": service.full_name, "method": method.name})
    configs: list[dict[str, Any]] = []
    for (timed, retried), names in sorted(groups.items()):
        entry: dict[str, Any] = {"name": names}
        if timed:
            entry["timeout"] = f"{deadline_seconds:.3f}s"
        if retried:
            entry["retryPolicy"] = dict(_RETRY_POLICY)
        if len(entry) > 1:
            configs.append(entry)
    return {"loadBalancingConfig": [{"round_robin": {}}], "methodConfig": configs}


_RETRY_POLICY: dict[str, Any] = {
    "maxAttempts": 4,
    "initialBackoff": "0.1s",
    "maxBackoff": "2s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}

KEEPALIVE_MS = 30_000
"""Ping interval on connections with calls in flight (servers accept down to 10 s)."""

MAX_RECONNECT_BACKOFF_MS = 2_000
"""Longest wait between connection attempts to a peer that is down. gRPC's default (120 s,
growing 1.6-fold from 1 s) failed calls fast for 14.6 s after a peer that had been down for
29 s came back; at 2 s a peer's callers (the bus relay among them) reach it within about 2 s
of its return, for one connection attempt every 2 s while it is away."""


def idempotent_methods(*services: ServiceDescriptor) -> list[tuple[str, str]]:
    """The ``(service, method)`` pairs marked ``(poly.options.v1.idempotent) = true``."""
    return [
        (service.full_name, method.name)
        for service in services
        for method in service.methods
        if method.GetOptions().Extensions[options_pb2.idempotent]
    ]


def _with_request_id(details: Any) -> Any:
    """`details` plus ``x-request-id`` when an id is current and the caller set none."""
    current = request_id.current()
    if current is None:  # the common case outside a request: nothing is copied
        return details
    metadata = list(details.metadata or ())
    if any(str(key).lower() == request_id.METADATA_KEY for key, _ in metadata):
        return details
    metadata.append((request_id.METADATA_KEY, current))
    return with_metadata(details, metadata)


class _SendRequestId(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
):
    """The current request id on unary and server-streaming calls (the kinds the kit makes)."""

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(_with_request_id(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(_with_request_id(details), request)


_SEND_REQUEST_ID = _SendRequestId()


def _target(address: str) -> str:
    return address if "://" in address or address.startswith("dns:") else f"dns:///{address}"


def channel(
    settings: Settings,
    peer: str,
    *,
    services: Sequence[ServiceDescriptor] = (),
    tls_settings: TlsSettings | None = None,
) -> grpc.Channel:
    """A new mTLS channel from this component to `peer` (a name from ``settings.peers``).

    `services` are the descriptors of what will be called on it, e.g.
    ``orders_service_pb2.DESCRIPTOR.services_by_name["OrdersService"]``: they decide the
    default deadlines and which methods retry (`service_config`).
    """
    config = service_config(deadline_seconds=settings.client_deadline_seconds, services=services)
    raw = grpc.secure_channel(
        _target(settings.peers[peer]),
        tls.channel_credentials(tls_settings or settings.tls),
        options=[
            # The server must prove it is `peer`: every certificate also names localhost,
            # so the dialled host alone would let any component impersonate any other.
            ("grpc.ssl_target_name_override", peer),
            ("grpc.service_config", json.dumps(config)),
            ("grpc.enable_retries", 1),
            ("grpc.keepalive_time_ms", KEEPALIVE_MS),
            ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
        ],
    )
    carrying = grpc.intercept_channel(raw, _SEND_REQUEST_ID)
    observed = telemetry.installed()
    return observed.instrument(carrying) if observed is not None else carrying


class Channels:
    """Channels to peers, rebuilt when this component's certificate files change.

    The check is a stat of three files at most once per `check_interval` seconds; a
    replaced channel is closed after `close_delay` so calls already on it can finish.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        services: Mapping[str, Sequence[ServiceDescriptor]] | None = None,
        check_interval: float = 5.0,
        close_delay: float = 30.0,
    ) -> None:
        self._settings = settings
        self._check_interval = check_interval
        self._close_delay = close_delay
        self._services = dict(services or {})
        self._lock = threading.Lock()
        self._channels: dict[str, grpc.Channel] = {}
        self._stamp: tls.FilesStamp | None = None  # read on first use, not at wiring time
        self._checked = time.monotonic()

    def _retire(self, stale: list[grpc.Channel]) -> None:
        timer = threading.Timer(self._close_delay, lambda: [c.close() for c in stale])
        timer.daemon = True
        timer.start()

    def get(self, peer: str) -> grpc.Channel:
        with self._lock:
            now = time.monotonic()
            if self._stamp is None:
                self._stamp = tls.files_stamp(self._settings.tls)
            elif now - self._checked >= self._check_interval:
                self._checked = now
                try:
                    stamp = tls.files_stamp(self._settings.tls)
                except OSError:
                    stamp = self._stamp  # mid-rotation: keep the current channels
                if stamp != self._stamp:
                    self._stamp = stamp
                    self._retire(list(self._channels.values()))
                    self._channels.clear()
            existing = self._channels.get(peer)
            if existing is None:
                existing = self._channels[peer] = channel(
                    self._settings, peer, services=self._services.get(peer, ())
                )
            return existing

    def close(self) -> None:
        with self._lock:
            for open_channel in self._channels.values():
                open_channel.close()
            self._channels.clear()
