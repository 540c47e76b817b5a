"""The request id of the work running now, so one id can be followed through every service.

The edge gives each request an id and sends it as ``x-request-id`` metadata. A served call
makes the valid id it received current for as long as its handler runs (`kit.logs`' access
middleware, a streaming handler's iteration included). While one is current, every log line
carries it as ``request_id`` (`kit.logs`), every call made through a `kit.clients` channel
sends it on, an event published to the outbox keeps it (`kit.bus.tracing`) and the consumer
that applies the event makes it current again, and work handed to a background worker
(`kit.telemetry.handoff`) resumes with it.

An id comes from another process (a caller, an event), so it is used only when `is_valid`:
1 to 128 characters of ``A-Z a-z 0-9 . _ : -`` (the rule the edge applies to a client's
``X-Request-Id``). Anything else is ignored: never made current, logged or sent on.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from contextvars import ContextVar, Token
from typing import Any, TypeGuard, TypeVar

__all__ = [
    "MAX_LENGTH",
    "METADATA_KEY",
    "bound",
    "current",
    "from_metadata",
    "is_valid",
    "iterate_bound",
    "run_bound",
    "valid_or_none",
]

METADATA_KEY = "x-request-id"
"""The gRPC metadata key (and the key in an event envelope's ``trace_context``)."""
MAX_LENGTH = 128
"""Longest id used."""

_VALID = re.compile(rf"[A-Za-z0-9._:\-]{{1,{MAX_LENGTH}}}")
_current: ContextVar[str | None] = ContextVar("poly_request_id", default=None)
_T = TypeVar("_T")


def is_valid(value: object) -> TypeGuard[str]:
    """Whether `value` may be used as a request id: a str of 1 to `MAX_LENGTH` characters of
    ``A-Z a-z 0-9 . _ : -`` (so it can never carry quotes, spaces or control characters)."""
    return isinstance(value, str) and len(value) <= MAX_LENGTH and _VALID.fullmatch(value) is not None


def valid_or_none(value: object) -> str | None:
    """`value` when `is_valid`, else None."""
    return value if is_valid(value) else None


def current() -> str | None:
    """The id of the call, event or job running now; None outside one."""
    return _current.get()


def from_metadata(metadata: Iterable[Any] | None) -> str | None:
    """The valid id in gRPC invocation metadata (items with ``key`` and ``value``), or None:
    the first ``x-request-id`` decides, so a second one cannot replace an invalid first."""
    for item in metadata or ():
        if item.key == METADATA_KEY:
            return valid_or_none(item.value)
    return None


class _Bound:
    """`bound`'s context manager: a class, cheaper than a generator, as it wraps every event
    applied and every job resumed."""

    __slots__ = ("_token", "_value")

    def __init__(self, value: str | None) -> None:
        self._value = value
        self._token: Token[str | None] | None = None

    def __enter__(self) -> str | None:
        self._token = _current.set(self._value)
        return self._value

    def __exit__(self, *_exc: object) -> None:
        if self._token is not None:
            _reset(self._token)


def bound(value: object) -> AbstractContextManager[str | None]:
    """`value` current inside the block when it `is_valid`, none otherwise (an invalid id
    never lets an outer one show through either); the block gets what is current."""
    return _Bound(valid_or_none(value))


def run_bound(value: str | None, work: Callable[..., _T], *args: Any) -> _T:
    """``work(*args)`` with `value` (already checked: `from_metadata`, `valid_or_none`) current;
    `bound` without a context manager's cost, for every served call."""
    token = _current.set(value)
    try:
        return work(*args)
    finally:
        _reset(token)


def iterate_bound(value: str | None, items: Iterator[_T]) -> Iterator[_T]:
    """`items` with `value` (already checked) current while each one is produced: a streaming
    handler's body runs as its stream is iterated, long after the handler returned it."""
    token = _current.set(value)
    try:
        yield from items
    finally:
        _reset(token)


def _reset(token: Token[str | None]) -> None:
    # A generator closed in another thread (collected there) runs its `finally` in that
    # thread's context, where the token does not belong: nothing of ours is set there.
    with contextlib.suppress(ValueError):
        _current.reset(token)
