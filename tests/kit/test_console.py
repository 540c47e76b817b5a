from __future__ import annotations

import calendar
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.kit.console import CALL_FINISHED, HTTP_REQUEST, render, timestamp

TIME = "2024-12-03T13:22:45.240Z"


def _record(message: str, level: str = "info", **fields: Any) -> dict[str, Any]:
    return {
        "time": TIME,
        "level": level,
        "service": "orders",
        "logger": "poly.test",
        "message": message,
        **fields,
    }


CALL = {"method": "/poly.orders.v1.OrdersService/GetOrder", "code": "OK", "duration_ms": 2.779}

RENDERED = [
    (_record("serving", port=50051), "13:22:45 info  serving  port=50051"),
    (_record(CALL_FINISHED, **CALL), "13:22:45 info  OrdersService/GetOrder OK 2.8 ms"),
    (
        _record(CALL_FINISHED, trace_id="4bf9", span_id="00f0", **CALL, request_id="r-1"),
        "13:22:45 info  OrdersService/GetOrder OK 2.8 ms  trace_id=4bf9 request_id=r-1",
    ),
    (
        _record(CALL_FINISHED, method="/x.Y/Slow", code="DEADLINE_EXCEEDED", duration_ms=153.4),
        "13:22:45 info  Y/Slow DEADLINE_EXCEEDED 153 ms",
    ),
    (_record(CALL_FINISHED, method="/x.Y/Z", code="OK", duration_ms=5012), "13:22:45 info  Y/Z OK 5.0 s"),
    (
        _record(CALL_FINISHED, method="/x.Y/Z", code="OK"),
        "13:22:45 info  finished call  method=/x.Y/Z code=OK",
    ),
    (
        _record(CALL_FINISHED, method="/x.Y/Z", code="OK", duration_ms=True),
        "13:22:45 info  finished call  method=/x.Y/Z code=OK duration_ms=true",
    ),
    (
        _record(
            HTTP_REQUEST,
            trace_id="4bf9",
            span_id="00f0",
            method="POST",
            route="/v1/orders",
            status=201,
            bytes=481,
            duration_ms=62.6,
            request_id="r-1",
            peer="127.0.0.1",
        ),
        "13:22:45 info  POST /v1/orders 201 63 ms  trace_id=4bf9 bytes=481 request_id=r-1 peer=127.0.0.1",
    ),
    (
        _record(HTTP_REQUEST, method="GET", route="", status=404, bytes=90, duration_ms=0.4),
        "13:22:45 info  GET 404 0.4 ms  bytes=90",
    ),
    (
        _record(HTTP_REQUEST, method="GET\x1b[2J", route="/a\nb", status=200, duration_ms=1),
        "13:22:45 info  GET\\x1b[2J /a\\nb 200 1.0 ms",
    ),
    (
        _record("served", method="/x.Y/Z", code="OK", duration_ms=1.5),
        "13:22:45 info  served  method=/x.Y/Z code=OK duration_ms=1.5",
    ),
    (
        _record("delivery sent", delivery="deliveries/7", error="", detail=None),
        "13:22:45 info  delivery sent  delivery=deliveries/7",
    ),
    (_record("peer gone", "warning"), "13:22:45 warn  peer gone"),
    (_record("down", "critical"), "13:22:45 crit  down"),
    (_record("several\nlines"), "13:22:45 info  several\n    lines"),
    (_record("x", problem="one\ntwo\rthree"), "13:22:45 info  x  problem=one\\ntwo\\rthree"),
    (
        _record("failed", "error", error="KeyError", traceback="Traceback:\n  KeyError: 'x'\n"),
        "13:22:45 error failed  error=KeyError\n    Traceback:\n      KeyError: 'x'",
    ),
    ({"message": "bare"}, "       bare"),
]


@pytest.mark.parametrize(
    ("record", "shown"),
    RENDERED,
    ids=[
        "fields",
        "call-short",
        "call-keeps-trace-and-request-id-not-span-id",
        "call-ms",
        "call-seconds",
        "call-without-duration-keeps-its-fields",
        "call-with-a-bool-duration-keeps-its-fields",
        "http-request-short",
        "http-request-without-a-route",
        "http-request-method-and-route-escaped",
        "not-a-call-message-keeps-its-fields",
        "empty-and-none-omitted",
        "warning-as-warn",
        "critical-as-crit",
        "message-lines-indented",
        "field-line-ends-escaped",
        "traceback-indented-below",
        "nothing-but-a-message",
    ],
)
def test_a_record_reads_as_one_short_line(record: dict[str, Any], shown: str) -> None:
    assert render(record) == shown


def test_no_logged_text_can_pass_for_a_line_of_its_own_or_steer_the_terminal() -> None:
    forged = "ok\n13:22:46 info  AuthService/Login OK 1.0 ms\r\x1b[2J\u2028\x85."
    assert render(_record(forged, **{"user\n": "a\nb\x1b[2J"})).split("\n") == [
        "13:22:45 info  ok",
        "    13:22:46 info  AuthService/Login OK 1.0 ms\\r\\x1b[2J\\u2028\\x85.  user\\n=a\\nb\\x1b[2J",
    ]


def test_timestamp_is_utc_with_milliseconds() -> None:
    seconds = calendar.timegm((2024, 12, 3, 13, 22, 45, 0, 0, 0)) + 0.2405
    assert timestamp(seconds) == "2024-12-03T13:22:45.240Z"


_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)


@given(st.text(), st.dictionaries(st.text(), _VALUES, max_size=5))
def test_every_rendered_line_after_the_first_is_indented(message: str, fields: dict[str, Any]) -> None:
    shown = render({**fields, "message": message, "time": TIME, "level": "info"})
    first, *rest = shown.split("\n")
    assert first.startswith("13:22:45 info  ")
    assert all(line.startswith("    ") for line in rest)
    assert len(shown.splitlines()) == len(rest) + 1, "nothing else ends a line"
