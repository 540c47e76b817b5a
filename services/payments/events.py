"""Events the payments service publishes and consumes (payloads in protos/poly/events/v1)."""

__all__ = ["CONSUMES", "PUBLISHES"]

PUBLISHES: tuple[str, ...] = (
    "poly.events.v1.PaymentAuthorized",
    "poly.events.v1.PaymentFailed",
    "poly.events.v1.PaymentCaptured",
    "poly.events.v1.PaymentVoided",
    "poly.events.v1.PaymentRefunded",
)

CONSUMES: tuple[str, ...] = (
    "poly.events.v1.OrderCreated",
    "poly.events.v1.OrderCancelled",
)
