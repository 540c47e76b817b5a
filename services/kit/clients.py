"""mTLS channels to other components.

`channel(settings, "orders")` dials the address in ``settings.peers`` with this component's
own certificate, ``round_robin`` over every address DNS returns (many replicas), and a
service config that gives each call a default deadline and retries ``UNAVAILABLE`` for
the methods listed as idempotent (`retryable`). `Channels` rebuilds a channel when the
certificate files change, so a rotated client certificate is used without a restart.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from poly.options.v1 import options_pb2
from services.kit import tls
from services.kit.config import Settings, TlsSettings

__all__ = ["Channels", "channel", "idempotent_methods", "service_config"]


def service_config(*, deadline_seconds: float, retryable: Iterable[tuple[str, str]] = ()) -> dict[str, Any]:
    """gRPC service config: a default timeout for all, retries on UNAVAILABLE for `retryable`.

    `retryable` holds ``(service, method)`` pairs, e.g. ``("poly.orders.v1.OrdersService", "GetOrder")``.
    """
    timeout = f"{deadline_seconds:.3f}s"
    retry_names = [{"service": s, "method": m} for s, m in retryable]
    configs: list[dict[str, Any]] = []
    if retry_names:
        configs.append(
            {
                "name": retry_names,
                "timeout": timeout,
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        )
    configs.append({"name": [{}], "timeout": timeout})
    return {"loadBalancingConfig": [{"round_robin": {}}], "methodConfig": configs}


def idempotent_methods(*services: ServiceDescriptor) -> list[tuple[str, str]]:
    """The ``(service, method)`` pairs marked ``(poly.options.v1.idempotent) = true``."""
    return [
        (service.full_name, method.name)
        for service in services
        for method in service.methods
        if method.GetOptions().Extensions[options_pb2.idempotent]
    ]


def _target(address: str) -> str:
    return address if "://" in address or address.startswith("dns:") else f"dns:///{address}"


def channel(
    settings: Settings,
    peer: str,
    *,
    retryable: Iterable[tuple[str, str]] = (),
    tls_settings: TlsSettings | None = None,
) -> grpc.Channel:
    """A new mTLS channel from this component to `peer` (a name from ``settings.peers``)."""
    config = service_config(deadline_seconds=settings.client_deadline_seconds, retryable=retryable)
    return grpc.secure_channel(
        _target(settings.peers[peer]),
        tls.channel_credentials(tls_settings or settings.tls),
        options=[
            ("grpc.service_config", json.dumps(config)),
            ("grpc.enable_retries", 1),
            ("grpc.keepalive_time_ms", 30_000),
        ],
    )


class Channels:
    """Channels to peers, rebuilt when this component's certificate files change.

    The check is a stat of three files at most once per `check_interval` seconds; a
    replaced channel is closed after `close_delay` so calls already on it can finish.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        check_interval: float = 5.0,
        close_delay: float = 30.0,
        retryable: Iterable[tuple[str, str]] = (),
    ) -> None:
        self._settings = settings
        self._check_interval = check_interval
        self._close_delay = close_delay
        self._retryable = tuple(retryable)
        self._lock = threading.Lock()
        self._channels: dict[str, grpc.Channel] = {}
        self._stamp = self._read_stamp()
        self._checked = time.monotonic()

    def _read_stamp(self) -> tuple[tuple[int, int], ...]:
        tls_settings = self._settings.tls
        files = (tls_settings.ca_file, tls_settings.cert_file, tls_settings.key_file)
        return tuple((s.st_mtime_ns, s.st_size) for s in (f.stat() for f in files))

    def _retire(self, stale: list[grpc.Channel]) -> None:
        timer = threading.Timer(self._close_delay, lambda: [c.close() for c in stale])
        timer.daemon = True
        timer.start()

    def get(self, peer: str) -> grpc.Channel:
        with self._lock:
            now = time.monotonic()
            if now - self._checked >= self._check_interval:
                self._checked = now
                try:
                    stamp = self._read_stamp()
                except OSError:
                    stamp = self._stamp  # mid-rotation: keep the current channels
                if stamp != self._stamp:
                    self._stamp = stamp
                    self._retire(list(self._channels.values()))
                    self._channels.clear()
            existing = self._channels.get(peer)
            if existing is None:
                existing = self._channels[peer] = channel(self._settings, peer, retryable=self._retryable)
            return existing

    def close(self) -> None:
        with self._lock:
            for open_channel in self._channels.values():
                open_channel.close()
            self._channels.clear()
