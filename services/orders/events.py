"""Events the orders service publishes and consumes (payloads in protos/poly/events/v1)."""

from collections.abc import Mapping

from google.protobuf.message import Message

from services.kit.bus import EventHandler

__all__ = ["CONSUMES", "HANDLERS", "PUBLISHES"]

PUBLISHES: tuple[str, ...] = (
    "poly.events.v1.OrderCreated",
    "poly.events.v1.OrderCancelled",
    "poly.events.v1.OrderPaid",
    "poly.events.v1.OrderPaymentFailed",
    "poly.events.v1.OrderFulfilled",
)

CONSUMES: tuple[str, ...] = (
    "poly.events.v1.PaymentAuthorized",
    "poly.events.v1.PaymentFailed",
    "poly.events.v1.PaymentCaptured",
    "poly.events.v1.PaymentVoided",
)

HANDLERS: Mapping[type[Message], EventHandler] = {}
"""The handler of each consumed event; the service subscribes to exactly these types.
Filled in by the domain work: until then the service subscribes to nothing."""
