"""The console log format: one short readable line per record, as `poly up` shows it.

`render` turns a record (the fields of a JSON log line: ``time``, ``level``, ``message`` and
any others) into ``12:00:01 info  message key=value``. Fields that are empty, or whose text
the message already shows, are left out, and lists read ``a, b``. An access line reads as
what it records: a service's (message `CALL_FINISHED`, with ``method``, ``code`` and
``duration_ms``) as ``AuthService/Login OK 2.8 ms``, the edge's (message `HTTP_REQUEST`, with
``method``, ``route``, ``status`` and ``duration_ms``) as ``POST /v1/orders 201 63 ms``; their
other fields follow. A traceback or stack follows, indented, as do further lines of a message; control
characters (a terminal's escape sequences) are shown escaped, so no logged text can pass for
a line of its own or rewrite the screen. ``service`` and ``logger`` are not shown (a
terminal shows one component, and `poly up` names it), nor is ``span_id`` (``trace_id``
finds the trace); the JSON format keeps every field.

`kit.logs.ConsoleFormatter` writes records this way, and `poly up` renders its children's
JSON lines with the same function.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any

__all__ = ["CALL_FINISHED", "HTTP_REQUEST", "render", "timestamp"]

CALL_FINISHED = "finished call"
"""The message of a service's access line (go-grpc-middleware's): the call is in its fields."""
HTTP_REQUEST = "http request"
"""The message of the edge's access line: the request is in its fields."""

_NOT_FIELDS = frozenset({"time", "level", "service", "logger", "message", "traceback", "stack", "span_id"})
_MULTILINE = ("traceback", "stack")
_LEVELS = {"warning": "warn", "critical": "crit"}
_SHORT_FIELDS = {
    CALL_FINISHED: ("method", "code", "duration_ms"),
    HTTP_REQUEST: ("method", "route", "status", "duration_ms"),
}
# Every character that ends a line for str.splitlines, or steers a terminal, but the newline itself.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")
_INDENT = "\n    "


def timestamp(seconds: float) -> str:
    """The ``time`` field of a line written at `seconds` since the epoch: UTC, milliseconds."""
    whole = int(seconds)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((seconds - whole) * 1000):03d}Z"


def render(record: Mapping[str, Any]) -> str:
    """`record` as one readable line (plus its traceback or stack, indented below)."""
    clock = str(record.get("time", ""))[11:19]
    level = str(record.get("level", ""))
    message = str(record.get("message", ""))
    fields = {k: v for k, v in record.items() if k not in _NOT_FIELDS}
    message, fields = _access_line(message, fields)
    shown = [
        f"{_one_line(key)}={_value(value)}"
        for key, value in fields.items()
        if not _is_empty(value) and not _in_message(value, message)
    ]
    text = f"{_safe(clock)} {_safe(_LEVELS.get(level, level)):<5} {_lines(message)}"
    if shown:
        text += "  " + " ".join(shown)
    for key in _MULTILINE:
        if not _is_empty(record.get(key)):
            text += _INDENT + _lines(str(record[key]).rstrip("\n"))
    return text


def _access_line(message: str, fields: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """An access line made short: what it records in place of its constant message (a
    gRPC method as ``Service/Method``), then its duration; the fields shown are dropped."""
    names = _SHORT_FIELDS.get(message)
    if names is None or not all(key in fields for key in names):
        return message, fields
    *parts, duration = (fields[key] for key in names)
    if not isinstance(duration, int | float) or isinstance(duration, bool):
        return message, fields
    if message == CALL_FINISHED:
        service, _, name = str(parts[0]).strip("/").rpartition("/")
        parts[0] = f"{service.rsplit('.', 1)[-1]}/{name}" if service else parts[0]
    rest = {k: v for k, v in fields.items() if k not in names}
    shown = " ".join(_one_line(str(part)) for part in parts if part != "")  # an unrouted request has no route
    return f"{shown} {_duration(float(duration))}", rest


def _duration(ms: float) -> str:
    if ms < 10:
        return f"{ms:.1f} ms"
    if ms < 1000:
        return f"{ms:.0f} ms"
    return f"{ms / 1000:.1f} s"


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str | list | dict) and not value)


def _in_message(value: Any, message: str) -> bool:
    """True when the message already shows this text value as a whole word (numbers are
    never dropped: a count equal to a number in the message is a coincidence)."""
    if not isinstance(value, str) or len(value) < 2:
        return False
    return re.search(r"(?<![\w./:-])" + re.escape(value) + r"(?![\w./:-])", message) is not None


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(_value(item) for item in value)
    if isinstance(value, dict):
        return ", ".join(f"{_one_line(str(key))}={_value(item)}" for key, item in value.items())
    return _one_line(str(value))


def _one_line(text: str) -> str:
    return _safe(text.replace("\r", "\\r").replace("\n", "\\n"))


def _lines(text: str) -> str:
    """`text` with every line after the first indented: none can pass for a record of its own."""
    return _INDENT.join(_safe(line) for line in text.split("\n"))


def _safe(text: str) -> str:
    return _CONTROL.sub(lambda found: ascii(found.group())[1:-1], text)
