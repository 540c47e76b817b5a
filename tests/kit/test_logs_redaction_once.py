"""kit.logs: each record is redacted once, whichever way it goes (the filter `setup` installs,
a library's own handler first, or the formatter on its own), and the request id of the
running call is on every line. The redaction rules themselves are in test_logs.py."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
from collections.abc import Iterator

import pytest

from services.kit import logs, request_id
from services.kit.logs import REDACTED, JsonFormatter, RedactingFilter, setup

SECRET = "s3cr3t-" + "e" * 24


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


@pytest.fixture
def redacted_texts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every text `kit.logs` redacts from now on (the real `redact`, counted)."""
    seen: list[str] = []
    real = logs.redact

    def counting(text: str) -> str:
        seen.append(text)
        return real(text)

    monkeypatch.setattr(logs, "redact", counting)
    return seen


def _log_with_everything(logger: logging.Logger) -> None:
    try:
        raise ValueError(f"cookie={SECRET}")
    except ValueError:
        logger.exception(
            "calling with Authorization: Bearer %s",
            SECRET,
            extra={"headers": {"Authorization": SECRET}, "note": f"bearer {SECRET}"},
        )


def _assert_each_text_redacted_once(texts: list[str]) -> None:
    assert texts, "something was redacted"
    assert not [text for text in texts if REDACTED in text], f"redacted again: {texts}"
    assert len(texts) == len(set(texts)), f"a text redacted twice: {texts}"


def test_a_line_through_setup_is_redacted_once(
    own_logging: None, redacted_texts: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    setup("orders")
    _log_with_everything(logging.getLogger("poly.test"))
    written = capsys.readouterr().err
    assert SECRET not in written
    line = json.loads(written)
    assert line["headers"] == {"Authorization": REDACTED} and line["note"] == f"bearer {REDACTED}"
    assert line["error"] == "ValueError" and f"cookie={REDACTED}" in line["traceback"]
    _assert_each_text_redacted_once(redacted_texts)


def test_a_line_from_a_library_s_own_handler_is_redacted_once_on_its_way_to_the_root(
    own_logging: None,
    redacted_texts: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    library = logging.getLogger("poly.test.library")
    plain = io.StringIO()
    own = logging.StreamHandler(plain)  # installed before setup, propagating to the root too
    own.setFormatter(logging.Formatter("%(message)s | %(exc_text)s"))
    monkeypatch.setattr(library, "handlers", [own])
    setup("orders")
    _log_with_everything(library)
    written = capsys.readouterr().err
    assert SECRET not in plain.getvalue() and SECRET not in written
    assert json.loads(written)["headers"] == {"Authorization": REDACTED}
    _assert_each_text_redacted_once(redacted_texts)


def test_a_caller_cannot_mark_its_record_as_already_redacted(redacted_texts: list[str]) -> None:
    record = logging.LogRecord("poly.test", logging.INFO, __file__, 1, f"Bearer {SECRET}", None, None)
    record.__dict__.update(poly_redacted=True, token=f"Bearer {SECRET}")
    for formatter_only in (True, False):
        if not formatter_only:
            RedactingFilter().filter(record)
        line = JsonFormatter("orders").format(record)
        assert SECRET not in line
        assert "poly_redacted" not in json.loads(line)


def test_every_line_written_while_a_request_id_is_current_carries_it() -> None:
    formatter = JsonFormatter("orders", context_fields=lambda: {"trace_id": "4bf9"})
    record = logging.LogRecord("poly.test", logging.INFO, __file__, 1, "charged", None, None)
    assert "request_id" not in json.loads(formatter.format(record))
    with request_id.bound("req-1"):
        line = json.loads(formatter.format(record))
    assert (line["trace_id"], line["request_id"]) == ("4bf9", "req-1")
