"""How a served call ended, as the middlewares that observe it (access log, metrics, traces)
all need to know it the same way; and an outgoing call's metadata, as the client
interceptors that add to it (request id, trace context) rewrite it."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import grpc

__all__ = ["final_code", "metadata_value", "observe_stream", "with_metadata"]


def final_code(context: grpc.ServicerContext, failed: bool) -> grpc.StatusCode:
    """The status the client gets: what the handler set, else CANCELLED or DEADLINE_EXCEEDED
    when the call ended before the handler did, else UNKNOWN for an exception, else OK."""
    code: grpc.StatusCode | None = context.code()
    if code is not None:
        return code
    if not context.is_active():
        # The call ended before the handler did: the client cancelled it (a stream that
        # stopped because the watcher left) or its deadline passed. No status is sent.
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK


def observe_stream(result: Iterator[Any], on_end: Callable[[bool], None]) -> Iterator[Any]:
    """`result`, calling ``on_end(failed)`` once the stream has ended, however it ends."""
    failed = True
    try:
        yield from result
        failed = False
    finally:
        on_end(failed)


def metadata_value(context: grpc.ServicerContext, key: str) -> str:
    """The first value of invocation metadata `key` (lower case), or ""."""
    for item in context.invocation_metadata() or ():
        if item.key == key:
            return item.value if isinstance(item.value, str) else ""
    return ""


class _CallDetails(NamedTuple):
    """A call about to be sent (``grpc.ClientCallDetails``'s fields; gRPC exports no class)."""

    method: str
    timeout: float | None
    metadata: Sequence[tuple[str, str | bytes]] | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


def with_metadata(details: Any, metadata: Sequence[tuple[str, str | bytes]]) -> Any:
    """An outgoing call's `details` (a ``grpc.ClientCallDetails``) with `metadata` instead of its own."""
    return _CallDetails(
        details.method,
        details.timeout,
        metadata,
        details.credentials,
        getattr(details, "wait_for_ready", None),
        getattr(details, "compression", None),
    )
