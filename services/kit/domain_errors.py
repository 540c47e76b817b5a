"""The errors domain code raises: plain exceptions with a reason, and no transport in sight.

Domain code raises these (``raise FailedPrecondition("ORDER_NOT_CANCELLABLE", ...)``); it
never sees gRPC. `services.kit.errors` is the one place that turns them into gRPC statuses
(each `ErrorKind` is the canonical code of the same name), with ``google.rpc`` details.

Exception tree::

    DomainError
     ├── InvalidArgument      field violations
     ├── NotFound
     ├── AlreadyExists
     ├── FailedPrecondition
     ├── Aborted              lost an optimistic-concurrency race; retry
     ├── PermissionDenied
     ├── Unauthenticated
     ├── ResourceExhausted    optional retry delay
     └── Unavailable
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar

__all__ = [
    "Aborted",
    "AlreadyExists",
    "DomainError",
    "ErrorKind",
    "FailedPrecondition",
    "FieldViolation",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
]


class ErrorKind(enum.Enum):
    """What kind of refusal an error is: the canonical status code of the same name."""

    UNKNOWN = enum.auto()
    INVALID_ARGUMENT = enum.auto()
    NOT_FOUND = enum.auto()
    ALREADY_EXISTS = enum.auto()
    FAILED_PRECONDITION = enum.auto()
    ABORTED = enum.auto()
    PERMISSION_DENIED = enum.auto()
    UNAUTHENTICATED = enum.auto()
    RESOURCE_EXHAUSTED = enum.auto()
    UNAVAILABLE = enum.auto()


@dataclass(frozen=True, slots=True)
class FieldViolation:
    field: str
    """Path of the offending field, e.g. ``order.lines[2].quantity``."""
    description: str


class _KeepUnknown(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


class DomainError(Exception):
    """A rule of the domain refused the request. `message` may use ``{name}`` from `metadata`."""

    kind: ClassVar[ErrorKind] = ErrorKind.UNKNOWN

    def __init__(self, reason: str, message: str, **metadata: object) -> None:
        if not reason.isupper() or len(reason) > 63:
            raise ValueError(f"reason must be UPPER_SNAKE and at most 63 characters: {reason!r}")
        self.reason = reason
        self.metadata = {key: str(value) for key, value in metadata.items()}
        try:
            self.message = message.format_map(_KeepUnknown(self.metadata))
        except (ValueError, IndexError, AttributeError, KeyError):
            self.message = message  # braces that are not placeholders: keep the text as written
        super().__init__(self.message)


class InvalidArgument(DomainError):
    kind = ErrorKind.INVALID_ARGUMENT

    def __init__(
        self, reason: str, message: str, *, violations: list[FieldViolation] | None = None, **metadata: object
    ) -> None:
        super().__init__(reason, message, **metadata)
        self.violations = list(violations or [])


class NotFound(DomainError):
    kind = ErrorKind.NOT_FOUND


class AlreadyExists(DomainError):
    kind = ErrorKind.ALREADY_EXISTS


class FailedPrecondition(DomainError):
    kind = ErrorKind.FAILED_PRECONDITION


class Aborted(DomainError):
    kind = ErrorKind.ABORTED


class PermissionDenied(DomainError):
    kind = ErrorKind.PERMISSION_DENIED


class Unauthenticated(DomainError):
    kind = ErrorKind.UNAUTHENTICATED


class ResourceExhausted(DomainError):
    kind = ErrorKind.RESOURCE_EXHAUSTED

    def __init__(
        self, reason: str, message: str, *, retry_after_seconds: float | None = None, **metadata: object
    ) -> None:
        super().__init__(reason, message, **metadata)
        self.retry_after_seconds = retry_after_seconds


class Unavailable(DomainError):
    kind = ErrorKind.UNAVAILABLE

    def __init__(
        self, reason: str, message: str, *, retry_after_seconds: float | None = None, **metadata: object
    ) -> None:
        super().__init__(reason, message, **metadata)
        self.retry_after_seconds = retry_after_seconds
