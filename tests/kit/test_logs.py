from __future__ import annotations

import json
import logging
import sys

from services.kit.logs import JsonFormatter


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
