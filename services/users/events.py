"""Events the users service publishes and consumes (payloads in protos/poly/events/v1)."""

__all__ = ["CONSUMES", "PUBLISHES"]

PUBLISHES: tuple[str, ...] = ("poly.events.v1.UserDeleted",)

CONSUMES: tuple[str, ...] = ("poly.events.v1.UserRegistered",)
