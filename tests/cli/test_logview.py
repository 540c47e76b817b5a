from __future__ import annotations

import calendar
import io
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.cli.logview import Output, as_json, readable

TIME = "2024-12-03T13:22:45.240Z"
RECEIVED = float(calendar.timegm((2024, 12, 3, 13, 22, 46, 0, 0, 0)))
"""When `poly up` read a grpc-core line: shown as its clock, 13:22:46 (UTC, as JSON lines)."""


def _json(message: str, level: str = "info", **fields: Any) -> str:
    record = {"time": TIME, "level": level, "service": "auth", "logger": "poly.test", "message": message}
    return json.dumps({**record, **fields})


SUBSCRIBE = "/poly.events.v1.EventSinkService/Subscribe"

JSON_LINES = [
    (_json("serving", port=50051), "13:22:45 info  serving  port=50051"),
    (_json("stopped"), "13:22:45 info  stopped"),
    (
        _json("finished call", method=SUBSCRIBE, code="OK", duration_ms=2.779),
        "13:22:45 info  EventSinkService/Subscribe OK 2.8 ms",
    ),
    (
        _json(
            "finished call",
            trace_id="abc123",
            span_id="def456",
            method="/poly.orders.v1.OrdersService/ListOrders",
            code="UNAUTHENTICATED",
            duration_ms=153.4,
            request_id="r-1",
        ),
        "13:22:45 info  OrdersService/ListOrders UNAUTHENTICATED 153 ms  trace_id=abc123 request_id=r-1",
    ),
    (
        _json("finished call", method="/x.Y/Slow", code="ABORTED", duration_ms=5012.0),
        "13:22:45 info  Y/Slow ABORTED 5.0 s",
    ),
    (
        _json("served", method="/x.Y/Z", code="OK", duration_ms=1.5),
        "13:22:45 info  served  method=/x.Y/Z code=OK duration_ms=1.5",
    ),
    (
        _json("webhook delivered", delivery="deliveries/7", attempt=1, error="", detail=None),
        "13:22:45 info  webhook delivered  delivery=deliveries/7 attempt=1",
    ),
    (
        _json("serving", services=["poly.auth.v1.AuthService", "poly.events.v1.EventSinkService"], peers=[]),
        "13:22:45 info  serving  services=poly.auth.v1.AuthService, poly.events.v1.EventSinkService",
    ),
    (_json("limits", sizes={"body": 1024, "head": 64}), "13:22:45 info  limits  sizes=body=1024, head=64"),
    (_json("reload", changed=True), "13:22:45 info  reload  changed=true"),
    (
        _json("subscribed orders to payments", subscriber="orders", source="payments", kind="order"),
        "13:22:45 info  subscribed orders to payments  kind=order",
    ),
    (_json("retrying 2 events", attempt=2), "13:22:45 info  retrying 2 events  attempt=2"),
    (_json("peer gone", level="warning", peer="users"), "13:22:45 warn  peer gone  peer=users"),
    (_json("bad input", problem="one\ntwo"), "13:22:45 info  bad input  problem=one\\ntwo"),
    (
        _json("uncaught", level="critical", error="KeyError", traceback="Traceback:\n  KeyError: 'x'"),
        "13:22:45 crit  uncaught  error=KeyError\n    Traceback:\n      KeyError: 'x'",
    ),
    (_json("where", stack="Stack:\n  f()"), "13:22:45 info  where\n    Stack:\n      f()"),
]


@pytest.mark.parametrize(
    ("line", "shown"),
    JSON_LINES,
    ids=[
        "fields",
        "message-only",
        "call-short",
        "call-ms-extra-fields-no-span-id",
        "call-seconds",
        "not-a-call-line-keeps-its-fields",
        "empty-and-none-omitted",
        "list-compact-empty-list-omitted",
        "dict-compact",
        "bool",
        "text-already-in-message-omitted",
        "numbers-always-kept",
        "warning-as-warn",
        "newline-in-a-field-escaped",
        "traceback-indented-below",
        "stack-indented-below",
    ],
)
def test_a_json_line_reads_as_one_short_line(line: str, shown: str) -> None:
    assert readable(line) == shown


HANDSHAKE = "Handshake failed with error SSL_ERROR_SSL: error:{code}:SSL routines:OPENSSL_internal:{reason}"
NO_CONTEXT = ": Invalid certificate verification context"
GRPC_CORE_LINES = [
    (
        "I1203 13:22:45.240260    7721 ssl_transport_security.cc:2563] "
        + HANDSHAKE.format(code="100000c0", reason="PEER_DID_NOT_RETURN_A_CERTIFICATE")
        + NO_CONTEXT,
        "13:22:46 info  TLS handshake refused: the client sent no certificate",
    ),
    (
        "E0000 00:00:1733232165.123456    1234 ssl_transport_security.cc:1654] "
        + HANDSHAKE.format(code="100000c0", reason="PEER_DID_NOT_RETURN_A_CERTIFICATE")
        + NO_CONTEXT,
        "13:22:46 error TLS handshake refused: the client sent no certificate",
    ),
    (
        "I1203 13:22:45.247278    7721 ssl_transport_security.cc:2563] "
        + HANDSHAKE.format(code="1000009c", reason="HTTP_REQUEST")
        + NO_CONTEXT,
        "13:22:46 info  TLS handshake refused: the client sent plain HTTP, not TLS",
    ),
    (
        "I1203 13:23:09.383478    7662 ssl_transport_security.cc:2563] "
        + HANDSHAKE.format(code="1000007d", reason="CERTIFICATE_VERIFY_FAILED")
        + ": self signed certificate",
        "13:22:46 info  TLS handshake failed: certificate not trusted (self signed certificate)",
    ),
    (
        "I1203 13:23:09.594124    7643 ssl_transport_security.cc:2563] "
        + HANDSHAKE.format(code="100000f0", reason="UNSUPPORTED_PROTOCOL")
        + NO_CONTEXT,
        "13:22:46 info  TLS handshake refused: the peer's TLS version is not supported",
    ),
    (
        "I1203 13:23:09.594124    7643 ssl_transport_security.cc:2563] "
        + HANDSHAKE.format(code="10000410", reason="SOMETHING_NEW")
        + NO_CONTEXT,
        "13:22:46 info  TLS handshake failed: something new",
    ),
    (
        "I1203 13:23:09.594124    7643 ssl_transport_security.cc:2563] "
        "Handshake failed with error SSL_ERROR_SYSCALL",
        "13:22:46 info  TLS handshake failed: SSL_ERROR_SYSCALL",
    ),
    (
        "W1203 13:23:09.594124    7643 chttp2_transport.cc:1234] "
        "ipv4:127.0.0.1:50512: Keepalive watchdog fired",
        "13:22:46 warn  ipv4:127.0.0.1:50512: Keepalive watchdog fired  grpc=chttp2_transport.cc:1234",
    ),
    (
        "F0000 00:00:1733232165.123456    1234 src/core/lib/surface/init.cc:42] assertion failed: x",
        "13:22:46 fatal assertion failed: x  grpc=src/core/lib/surface/init.cc:42",
    ),
]


@pytest.mark.parametrize(
    ("line", "shown"),
    GRPC_CORE_LINES,
    ids=[
        "no-client-certificate",
        "no-client-certificate-before-absl-knows-the-time",
        "plain-http",
        "untrusted-certificate-with-reason",
        "old-tls-version",
        "unknown-openssl-reason",
        "handshake-without-openssl-reason",
        "other-warning-keeps-its-source",
        "fatal-kept-whole",
    ],
)
def test_a_grpc_core_line_becomes_one_readable_line(line: str, shown: str) -> None:
    assert readable(line, received=RECEIVED) == shown


UNCHANGED = [
    "Traceback (most recent call last):",
    '  File "/work/main/services/auth/__main__.py", line 3, in <module>',
    "ModuleNotFoundError: No module named 'argon2'",
    "poly gateway: cannot listen on 127.0.0.1:8080: address already in use",
    "*** SIGSEGV received at time=1733232165 on cpu 3 ***",
    "",
    "[1, 2]",
    '{"level": "info"}',
    "I1203 not quite grpc-core",
]


@pytest.mark.parametrize(
    "line",
    UNCHANGED,
    ids=[
        "traceback-head",
        "traceback-frame",
        "traceback-error",
        "plain-text",
        "crash",
        "empty",
        "json-not-an-object",
        "json-without-message",
        "almost-grpc-core",
    ],
)
def test_any_other_line_is_shown_as_it_is(line: str) -> None:
    assert readable(line, received=RECEIVED) == line


@given(st.text().filter(lambda text: "\n" not in text))
def test_any_line_is_rendered_without_error(line: str) -> None:
    assert isinstance(readable(line, received=RECEIVED), str)


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)


_ONE_LINE = st.text(st.characters(blacklist_categories=("Cc", "Zl", "Zp")))


@given(_ONE_LINE, st.dictionaries(st.text().filter(lambda key: key != "method"), _JSON_VALUES, max_size=5))
def test_a_json_record_starts_with_its_clock_level_and_message(message: str, fields: dict[str, Any]) -> None:
    shown = readable(json.dumps({**fields, "message": message, "time": TIME, "level": "info"}))
    assert shown.startswith(f"13:22:45 info  {message}")


def test_a_json_line_passes_through_unchanged_in_the_json_view() -> None:
    line = _json("finished call", method="/x.Y/Z", code="OK", duration_ms=1.5)
    assert as_json(line, "auth", received=RECEIVED) == line


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            GRPC_CORE_LINES[0][0],
            {
                "level": "info",
                "logger": "grpc",
                "message": "TLS handshake refused: the client sent no certificate",
            },
        ),
        (
            GRPC_CORE_LINES[7][0],
            {
                "level": "warning",
                "logger": "grpc",
                "message": "ipv4:127.0.0.1:50512: Keepalive watchdog fired",
                "grpc": "chttp2_transport.cc:1234",
            },
        ),
        (UNCHANGED[2], {"level": "error", "logger": "stderr", "message": UNCHANGED[2]}),
        ('{"level": "info"}', {"level": "error", "logger": "stderr", "message": '{"level": "info"}'}),
    ],
    ids=["grpc-core-handshake", "grpc-core-other", "raw-traceback-line", "json-without-message"],
)
def test_any_other_line_becomes_a_json_record_of_its_component(line: str, expected: dict[str, str]) -> None:
    made = as_json(line, "auth", received=RECEIVED)
    assert made is not None and "\n" not in made
    assert json.loads(made) == {"time": "2024-12-03T13:22:46.000Z", "service": "auth", **expected}


def test_an_empty_line_is_left_out_of_the_json_view() -> None:
    assert as_json("", "auth", received=RECEIVED) is None
    assert as_json("   ", "auth", received=RECEIVED) is None


@given(st.text().filter(lambda text: "\n" not in text))
def test_any_line_is_one_json_object_or_nothing_in_the_json_view(line: str) -> None:
    made = as_json(line, "auth", received=RECEIVED)
    assert made is None or isinstance(json.loads(made), dict)


def test_the_console_output_prefixes_each_line_with_its_component() -> None:
    out = io.StringIO()
    output = Output(out, width=6)
    output.say("poly", "ready  auth\nsecond line")
    output.relay("auth", _json("serving", port=1), received=RECEIVED)
    output.relay("auth", "raw text", received=RECEIVED)
    assert out.getvalue().splitlines() == [
        "poly   | ready  auth",
        "poly   | second line",
        "auth   | 13:22:45 info  serving  port=1",
        "auth   | raw text",
    ]


def test_the_json_output_is_one_object_per_line_with_its_service() -> None:
    out = io.StringIO()
    output = Output(out, log_format="json", width=6)
    child = _json("finished call", method="/x.Y/Z", code="OK", duration_ms=1.5)
    output.relay("auth", child, received=RECEIVED)
    output.relay("auth", "", received=RECEIVED)
    output.relay("auth", GRPC_CORE_LINES[0][0], received=RECEIVED)
    output.say("poly", "port 1 is in use\nsecond line", level="error")
    output.say("mail", "to a@example.com")
    lines = out.getvalue().splitlines()
    assert lines[0] == child, "the component's own line, byte for byte"
    records = [json.loads(line) for line in lines]
    assert [(r["service"], r["logger"], r["level"]) for r in records] == [
        ("auth", "poly.test", "info"),
        ("auth", "grpc", "info"),
        ("poly", "poly.up", "error"),
        ("poly", "poly.mailbox", "info"),
    ]
    assert records[2]["message"] == "port 1 is in use\nsecond line"


def test_an_output_whose_stream_is_gone_keeps_quiet() -> None:
    closed = io.StringIO()
    closed.close()
    Output(closed).say("poly", "nobody reads this")  # no error: the children are still drained


def test_an_unknown_output_format_is_refused() -> None:
    with pytest.raises(ValueError, match="json, console"):
        Output(io.StringIO(), log_format="yaml")
