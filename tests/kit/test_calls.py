"""kit.calls: how a served call ended, as every observer sees it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import grpc
import pytest

from services.kit.calls import final_code, metadata_value, observe_stream, with_metadata


class _Pair(NamedTuple):
    """How grpcio hands out invocation metadata: ``(key, value)`` with attribute access."""

    key: str
    value: str | bytes


class _Context:
    """The three answers `final_code` asks a servicer context for."""

    def __init__(
        self, code: grpc.StatusCode | None, active: bool = True, remaining: float | None = 5.0
    ) -> None:
        self._code, self._active, self._remaining = code, active, remaining

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def is_active(self) -> bool:
        return self._active

    def time_remaining(self) -> float | None:
        return self._remaining

    def invocation_metadata(self) -> list[Any]:
        return [_Pair("x-request-id", "abc"), _Pair("bin-bin", b"\x00")]


@pytest.mark.parametrize(
    ("context", "failed", "expected"),
    [
        (_Context(grpc.StatusCode.NOT_FOUND), True, grpc.StatusCode.NOT_FOUND),
        (_Context(None), False, grpc.StatusCode.OK),
        (_Context(None), True, grpc.StatusCode.UNKNOWN),
        (_Context(None, active=False, remaining=0.0), True, grpc.StatusCode.DEADLINE_EXCEEDED),
        (_Context(None, active=False, remaining=3.0), False, grpc.StatusCode.CANCELLED),
    ],
    ids=["set-by-handler", "ok", "exception", "deadline", "cancelled"],
)
def test_final_code(context: _Context, failed: bool, expected: grpc.StatusCode) -> None:
    assert final_code(context, failed) is expected  # type: ignore[arg-type]


def test_metadata_value_reads_text_values_only() -> None:
    context = _Context(None)
    assert metadata_value(context, "x-request-id") == "abc"  # type: ignore[arg-type]
    assert metadata_value(context, "bin-bin") == ""  # type: ignore[arg-type]
    assert metadata_value(context, "absent") == ""  # type: ignore[arg-type]


def test_observe_stream_reports_the_end_once_however_it_ends() -> None:
    ends: list[bool] = []
    assert list(observe_stream(iter([1, 2]), ends.append)) == [1, 2]

    def broken() -> Iterator[int]:
        yield 1
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        list(observe_stream(broken(), ends.append))
    abandoned = observe_stream(iter([1, 2, 3]), ends.append)
    next(abandoned)
    abandoned.close()  # the client went away mid-stream
    assert ends == [False, True, True]


class _Sent(NamedTuple):
    """What gRPC hands a client interceptor: a ``grpc.ClientCallDetails`` (older grpcio
    versions' had no `wait_for_ready` or `compression`)."""

    method: str
    timeout: float | None
    metadata: Any
    credentials: Any


def test_an_outgoing_call_keeps_everything_but_the_metadata_it_is_given() -> None:
    sent = _Sent("/poly.orders.v1.OrdersService/GetOrder", 2.5, [("x-request-id", "a")], None)
    rewritten = with_metadata(
        sent, [("x-request-id", "a"), ("traceparent", "00-" + "1" * 32 + "-" + "2" * 16 + "-01")]
    )
    assert (rewritten.method, rewritten.timeout, rewritten.credentials) == (sent.method, 2.5, None)
    assert [key for key, _ in rewritten.metadata] == ["x-request-id", "traceparent"]
    assert (rewritten.wait_for_ready, rewritten.compression) == (None, None)
    assert sent.metadata == [("x-request-id", "a")], "the caller's details are not changed"
