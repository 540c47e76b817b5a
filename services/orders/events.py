"""Events the orders service publishes and consumes (payloads in protos/poly/events/v1)."""

__all__ = ["CONSUMES", "PUBLISHES"]

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
