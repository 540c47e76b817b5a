"""Callable shapes shared across the kit."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # annotations only: settings (`kit.config`) and the CLI import this without grpc
    import grpc

__all__ = ["Background", "CallInfo", "Handler", "Middleware", "Environ"]

Environ = Mapping[str, str]
"""Where settings come from; `os.environ` in production, a dict in tests."""


@dataclass(frozen=True, slots=True)
class CallInfo:
    """What a middleware knows about the call it wraps."""

    method: str
    """Full method path, e.g. ``/poly.orders.v1.OrdersService/GetOrder``."""
    service: str
    """Fully-qualified service name, e.g. ``poly.orders.v1.OrdersService``."""
    name: str
    """Method name, e.g. ``GetOrder``."""
    request_streaming: bool
    response_streaming: bool


Handler = Callable[[Any, "grpc.ServicerContext"], Any]
"""A gRPC behaviour: (request or request iterator, context) -> response or iterator."""

Middleware = Callable[[Any, "grpc.ServicerContext", CallInfo, Handler], Any]
"""One link of the server chain: ``(request, context, call, proceed) -> response``.

For a server-streaming method the result is an iterator; a middleware that must see the
end of the stream wraps it. Middlewares are composed once by `kit.server`.
"""


class Background(Protocol):
    """Work a service runs beside its server (the bus relay, a broker consumer)."""

    def start(self) -> None:
        """Begin; may block briefly (the server is already accepting calls, not yet SERVING)."""

    def stop(self, timeout: float = 5.0) -> None:
        """End within `timeout` seconds; called after the server has drained."""
