from __future__ import annotations

import io
import json
import logging
import string
import sys
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.kit.logs import REDACTED, JsonFormatter, redact, setup


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


def test_setup_redacts_every_handler_and_uncaught_exceptions(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
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
