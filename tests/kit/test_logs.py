from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import string
import sys
import threading
from collections.abc import Iterator

import aiormq
import aiormq.exceptions
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.kit.logs import REDACTED, ConsoleFormatter, JsonFormatter, redact, setup
from tests.support.env import free_port


def _record(message: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("poly.test", logging.INFO, __file__, 1, message, None, None)
    record.__dict__.update(extra)
    return record


def test_a_line_is_one_json_object_with_the_service_and_extras() -> None:
    line = JsonFormatter("payments").format(_record("served", method="/x.Y/Z", code="OK", duration_ms=1.5))
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["service"] == "payments"
    assert parsed["message"] == "served"
    assert parsed["level"] == "info"
    assert (parsed["method"], parsed["code"], parsed["duration_ms"]) == ("/x.Y/Z", "OK", 1.5)
    assert parsed["time"].endswith("Z")


def test_exceptions_are_logged_as_fields() -> None:
    try:
        raise KeyError("boom")
    except KeyError:
        record = logging.LogRecord("poly.test", logging.ERROR, __file__, 1, "failed", None, None)
        record.exc_info = sys.exc_info()
    parsed = json.loads(JsonFormatter("users").format(record))
    assert parsed["error"] == "KeyError"
    assert "boom" in parsed["traceback"]


SECRET = "s3cr3t-" + "f" * 24
JWT = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ1c2Vycy8xIn0.c2lnbmF0dXJlLWJ5dGVz"

REDACTIONS = [
    (f"Authorization: Bearer {SECRET}\r\nX: y", f"Authorization: {REDACTED}\r\nX: y"),
    (f"b'Authorization: Bearer {SECRET}\\rX-Next: 1'", f"b'Authorization: {REDACTED}\\rX-Next: 1'"),
    (f"b'authorization: Bearer {SECRET}\\x00junk'", f"b'authorization: {REDACTED}'"),
    (f"b'X-Bad\\x01: Bearer {SECRET}'", f"b'X-Bad\\x01: Bearer {REDACTED}'"),
    (
        str([("authorization", f"bearer {SECRET}"), ("x", "y")]),
        f"[('authorization', '{REDACTED}'), ('x', 'y')]",
    ),
    (str({"Cookie": f"sid={SECRET}"}), f"{{'Cookie': '{REDACTED}'}}"),
    (f"set-cookie={SECRET}", f"set-cookie={REDACTED}"),
    (f"Proxy-Authorization: Basic {SECRET}", f"Proxy-Authorization: {REDACTED}"),
    (f'{{"access_token": "{SECRET}", "n": 1}}', f'{{"access_token": "{REDACTED}", "n": 1}}'),
    (f"token {JWT} seen", f"token {REDACTED} seen"),
    ("send exactly one authorization header", "send exactly one authorization header"),
    ("expected `authorization: Bearer <token>`", f"expected `authorization: {REDACTED}`"),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    REDACTIONS,
    ids=[
        "header-line",
        "bytes-repr-with-cr",
        "bytes-repr-with-nul",
        "bearer-under-a-broken-name",
        "metadata-pairs",
        "dict",
        "key-value",
        "proxy-authorization",
        "json-token",
        "bare-jwt",
        "prose-untouched",
        "placeholder",
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


@given(
    st.text(alphabet=string.ascii_letters + string.digits + "-._~+/", min_size=8, max_size=60),
    st.sampled_from(
        ["Authorization: Bearer {}", "('authorization', 'Bearer {}')", "bearer {}", "Cookie: {}"]
    ),
    st.text(max_size=20),
    st.text(max_size=20),
)
def test_a_credential_never_survives_redaction(token: str, shape: str, before: str, after: str) -> None:
    text = before + " " + shape.format(token) + "\n" + after
    assert token not in redact(text).replace(before, "").replace(after, "")


def test_every_part_of_a_line_is_redacted_even_without_the_filter() -> None:
    try:
        raise ValueError(f"Invalid header value char:\n  b'Authorization: Bearer {SECRET}\\x00'")
    except ValueError:
        record = logging.LogRecord(
            "aiohttp.server", logging.ERROR, __file__, 1, "got %s", (f"Bearer {SECRET}",), sys.exc_info()
        )
    record.__dict__.update(
        metadata=[("authorization", f"Bearer {SECRET}"), ("x-request-id", "r1")],
        headers={"Cookie": SECRET, "Accept": "*/*"},
        nested={"call": {"token": JWT}},
    )
    line = JsonFormatter("gateway").format(record)
    assert SECRET not in line and JWT not in line, line
    parsed = json.loads(line)
    assert parsed["metadata"] == [["authorization", REDACTED], ["x-request-id", "r1"]]
    assert parsed["headers"] == {"Cookie": REDACTED, "Accept": "*/*"}
    assert parsed["error"] == "ValueError" and "Invalid header value char" in parsed["traceback"]


@pytest.fixture
def own_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """`setup` changes process-wide logging: put back what it touches after the test."""
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    broker = logging.getLogger("aiormq.connection")
    monkeypatch.setattr(broker, "filters", list(broker.filters))
    yield


def test_setup_redacts_every_handler_and_uncaught_exceptions(
    own_logging: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    library = logging.getLogger("poly.test.library")
    plain = io.StringIO()
    own = logging.StreamHandler(plain)  # a library's own handler and formatter, installed first
    own.setFormatter(logging.Formatter("%(message)s %(exc_text)s"))
    monkeypatch.setattr(library, "handlers", [own])
    monkeypatch.setattr(library, "propagate", False)

    setup("gateway", "INFO")
    try:
        raise RuntimeError(f"header b'Cookie: {SECRET}'")
    except RuntimeError:
        library.exception("failed for %s", f"Authorization: Bearer {SECRET}")
        logging.getLogger("poly.test").exception("failed", extra={"auth": ("authorization", SECRET)})
    thread = threading.Thread(target=lambda: (_ for _ in ()).throw(KeyError(f"bearer {SECRET}")))
    thread.start()
    thread.join()
    sys.excepthook(ValueError, ValueError(JWT), None)

    written = capsys.readouterr().err
    assert SECRET not in plain.getvalue() and "RuntimeError" in plain.getvalue(), plain.getvalue()
    assert SECRET not in written and JWT not in written, written
    levels = [json.loads(line)["level"] for line in written.splitlines()]
    assert levels == ["error", "critical", "critical"], written


CLOCK = r"\d\d:\d\d:\d\d"


def test_the_console_format_is_one_short_line_with_the_running_calls_fields() -> None:
    formatter = ConsoleFormatter("orders", context_fields=lambda: {"trace_id": "4bf9", "span_id": "00f0"})
    record = _record(
        "finished call", method="/poly.orders.v1.OrdersService/GetOrder", code="OK", duration_ms=2.8
    )
    assert re.fullmatch(
        rf"{CLOCK} info  OrdersService/GetOrder OK 2\.8 ms  trace_id=4bf9", formatter.format(record)
    )
    assert re.fullmatch(
        rf"{CLOCK} info  serving  trace_id=4bf9 port=1", formatter.format(_record("serving", port=1))
    )


def test_the_console_format_redacts_as_the_json_does(
    own_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    setup("gateway", "INFO", log_format="console")
    log = logging.getLogger("poly.test")
    log.info("calling with Authorization: Bearer %s", SECRET, extra={"headers": {"authorization": SECRET}})
    try:
        raise ValueError(f"bad token {JWT}")
    except ValueError:
        log.exception("failed")
    written = capsys.readouterr().err
    assert SECRET not in written and JWT not in written, written
    first, second, *traceback = written.splitlines()
    assert re.fullmatch(
        rf"{CLOCK} info  calling with Authorization: \[REDACTED\]  headers=authorization=\[REDACTED\]", first
    )
    assert re.fullmatch(rf"{CLOCK} error failed  error=ValueError", second)
    assert traceback[0] == "    Traceback (most recent call last):"
    assert traceback[-1] == f"    ValueError: bad token {REDACTED}"
    assert "{" not in first, "not JSON"


def test_setup_writes_json_by_default(own_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    setup("users")
    logging.getLogger("poly.test").info("serving", extra={"port": 1})
    assert json.loads(capsys.readouterr().err)["port"] == 1


def test_an_unknown_log_format_is_refused(own_logging: None) -> None:
    with pytest.raises(ValueError, match="json, console"):
        setup("users", log_format="yaml")


BROKER_ERROR = aiormq.exceptions.AMQPConnectionError(111, "Connect call failed ('127.0.0.1', 5672)")


def test_a_broker_that_is_away_is_a_warning_in_words(
    own_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    setup("orders")
    setup("orders")  # twice: still one rewrite
    aiormq_log = logging.getLogger("aiormq.connection")
    aiormq_log.error("error when creating transport: %r", BROKER_ERROR)
    lost = aiormq.exceptions.AMQPConnectionError("Server connection unexpectedly closed")
    aiormq_log.warning("Cancelling cause reader exited abnormally", exc_info=lost)
    aiormq_log.error(
        'Unexpected connection close from remote "%s", Connection.Close(reply_code=%r, reply_text=%r)',
        "amqp://guest:******@127.0.0.1:5672/",
        320,
        "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'",
    )
    aiormq_log.error("Unexpected frame %r", "frame")  # anything else: as it was
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(line["level"], line["message"]) for line in lines] == [
        (
            "warning",
            "cannot connect to the message broker "
            "(AMQPConnectionError: Connect call failed ('127.0.0.1', 5672))",
        ),
        (
            "warning",
            "connection to the message broker lost "
            "(AMQPConnectionError: Server connection unexpectedly closed)",
        ),
        (
            "warning",
            "the message broker closed the connection "
            "(320 CONNECTION_FORCED - broker forced connection closure with reason 'shutdown')",
        ),
        ("error", "Unexpected frame 'frame'"),
    ]
    assert not any("traceback" in line for line in lines)


def test_a_rewritten_record_below_the_level_is_not_written(
    own_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    setup("orders", "ERROR")
    logging.getLogger("aiormq.connection").error("error when creating transport: %r", BROKER_ERROR)
    assert capsys.readouterr().err == ""


def test_aiormq_refused_by_a_closed_port_logs_one_warning_in_words(
    own_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """The library's own line, not a copy of it: a rename in aiormq fails here."""
    setup("orders")
    with pytest.raises(aiormq.exceptions.AMQPConnectionError):
        asyncio.run(aiormq.connect(f"amqp://guest:guest@127.0.0.1:{free_port()}/"))
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(line["level"], line["logger"]) for line in lines] == [("warning", "aiormq.connection")]
    assert lines[0]["message"].startswith("cannot connect to the message broker (AMQPConnectionError: ")
