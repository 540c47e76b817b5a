"""How the relay hands an event to a route; one Protocol, one class per transport.

A transport may also say where a delivery goes (`Described.destination`), for the relay's
spans; one that does not is described as the embedded transport, by its route.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import grpc

from poly.events.v1 import event_sink_pb2, event_sink_pb2_grpc
from poly.events.v1.events_pb2 import EventEnvelope
from services.kit.bus.tracing import EMBEDDED, Destination
from services.kit.clients import Channels
from services.kit.errors import call_code

__all__ = ["Described", "DeliveryError", "EmbeddedTransport", "Transport"]


class DeliveryError(Exception):
    """The route did not take the event; the relay retries it later.

    `transient` failures (the route is down, slow or overloaded) cost no attempt: they are
    retried within the relay's `transient_max_delay` for as long as it takes and never
    dead-letter an event. The others (refusals) count towards `max_attempts`.
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


_TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
    }
)


class Transport(Protocol):
    def send(self, route: str, envelope: EventEnvelope) -> None:
        """Deliver `envelope` to `route` or raise `DeliveryError`; must be safe to repeat."""


@runtime_checkable
class Described(Protocol):
    def destination(self, route: str, envelope: EventEnvelope) -> Destination:
        """Where a delivery of `envelope` to `route` goes, for the send span's attributes."""


class EmbeddedTransport:
    """Pushes each event over mTLS gRPC to the subscribing service's EventSink. No broker.

    The push runs in the caller's context: the relay's send span is current, so the channel's
    OpenTelemetry client interceptor (if any) carries it in the call's metadata."""

    def __init__(self, channels: Channels, *, timeout: float = 10.0) -> None:
        self._channels = channels
        self._timeout = timeout

    def destination(self, route: str, envelope: EventEnvelope) -> Destination:
        return Destination(EMBEDDED, route)

    def send(self, route: str, envelope: EventEnvelope) -> None:
        stub = event_sink_pb2_grpc.EventSinkServiceStub(self._channels.get(route))
        try:
            stub.PushEvent(event_sink_pb2.PushEventRequest(event=envelope), timeout=self._timeout)
        except grpc.RpcError as error:
            code = call_code(error)
            details = error.details() if isinstance(error, grpc.Call) else str(error)
            raise DeliveryError(
                f"{route}: {code.name}: {details}", transient=code in _TRANSIENT_CODES
            ) from None
