"""Events the notifications service publishes and consumes (payloads in protos/poly/events/v1)."""

__all__ = ["CONSUMES", "PUBLISHES"]

PUBLISHES: tuple[str, ...] = (
    "poly.events.v1.NotificationDelivered",
    "poly.events.v1.NotificationFailed",
)

CONSUMES: tuple[str, ...] = (
    "poly.events.v1.UserRegistered",
    "poly.events.v1.OrderPaid",
    "poly.events.v1.OrderPaymentFailed",
    "poly.events.v1.OrderCancelled",
)
