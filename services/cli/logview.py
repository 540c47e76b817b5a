"""How `poly up` shows a component's output: one short readable line per event.

A JSON log line becomes ``12:00:01 info  message key=value``: fields that are empty, or
whose text the message already shows, are left out, lists read ``a, b``, and a per-call
line reads ``AuthService/Login OK 2.8 ms``. A traceback or stack follows, indented.

A grpc-core line (C-core's absl format, ``I1203 13:22:45.240260  7721 file.cc:2563] text``,
or ``E0000 00:00:1733240000.123456 ...`` before absl knows the time) gets the same shape,
at its own level; a failed TLS handshake reads e.g. ``TLS handshake refused: the client
sent no certificate``. Any other line (a raw traceback, a crash) is shown unchanged.

This is only the terminal's view: the JSON the services write keeps every field.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

__all__ = ["readable"]

_NOT_FIELDS = frozenset({"time", "level", "service", "logger", "message", "traceback", "stack"})
_MULTILINE = ("traceback", "stack")
_LEVELS = {"warning": "warn", "critical": "crit"}
_CALL_FIELDS = ("method", "code", "duration_ms")

_GRPC_CORE = re.compile(
    r"^(?P<level>[DIWEF])\d{4} [\d:.]+\s+\d+ (?P<source>[^\s\]]+:\d+)\] ?(?P<message>.*)$"
)
_GRPC_LEVELS = {"D": "debug", "I": "info", "W": "warn", "E": "error", "F": "fatal"}
_HANDSHAKE = re.compile(r"^Handshake failed with error (?P<kind>\w+)(?::\s*(?P<rest>.*))?$")
# BoringSSL: `error:100000c0:SSL routines:OPENSSL_internal:PEER_DID_NOT_RETURN_A_CERTIFICATE: detail`
_OPENSSL_REASON = re.compile(r"error:[0-9a-fA-F]+:[^:]*:[^:]*:(?P<reason>[A-Z0-9_]+)(?::\s*(?P<detail>.*))?$")
_GRPC_FILLER = "Invalid certificate verification context"  # grpc appends it to every handshake error
_REFUSED, _FAILED = "TLS handshake refused: ", "TLS handshake failed: "
_TLS_REASONS = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": _REFUSED + "the client sent no certificate",
    "HTTP_REQUEST": _REFUSED + "the client sent plain HTTP, not TLS",
    "WRONG_VERSION_NUMBER": _REFUSED + "the peer does not speak TLS",
    "UNSUPPORTED_PROTOCOL": _REFUSED + "the peer's TLS version is not supported",
    "NO_SHARED_CIPHER": _REFUSED + "no cipher in common",
    "CERTIFICATE_VERIFY_FAILED": _FAILED + "certificate not trusted",
    "TLSV1_ALERT_UNKNOWN_CA": _FAILED + "the peer does not trust our certificate authority",
    "SSLV3_ALERT_BAD_CERTIFICATE": _FAILED + "the peer rejected our certificate",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": _FAILED + "the peer says our certificate has expired",
}


def readable(line: str, *, received: float | None = None) -> str:
    """`line` (one line of a component's output) as `poly up` shows it.

    `received` (seconds since the epoch, default now) is the clock shown for a grpc-core
    line, whose own timestamp may be local time or unknown; JSON lines show their own.
    """
    try:
        record = json.loads(line)
    except ValueError:
        record = None
    if isinstance(record, dict) and "message" in record:
        return _from_record(record)
    core = _GRPC_CORE.match(line)
    if core is not None:
        return _from_grpc_core(core, time.time() if received is None else received)
    return line


def _from_record(record: dict[str, Any]) -> str:
    clock = str(record.get("time", ""))[11:19]
    level = str(record.get("level", ""))
    message = str(record["message"])
    fields = {k: v for k, v in record.items() if k not in _NOT_FIELDS}
    message, fields = _call_line(message, fields)
    shown = [
        f"{key}={_value(value)}"
        for key, value in fields.items()
        if not _is_empty(value) and not _in_message(value, message)
    ]
    text = f"{clock} {_LEVELS.get(level, level):<5} {message}" + ("  " + " ".join(shown) if shown else "")
    for key in _MULTILINE:
        if not _is_empty(record.get(key)):
            text += "\n" + "\n".join("    " + t for t in str(record[key]).splitlines())
    return text


def _call_line(message: str, fields: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """An access-log line (``/pkg.Service/Method CODE`` with its three fields) made short."""
    if not all(key in fields for key in _CALL_FIELDS):
        return message, fields
    method, code, duration = (fields[key] for key in _CALL_FIELDS)
    if message != f"{method} {code}" or not isinstance(duration, int | float):
        return message, fields
    service, _, name = str(method).strip("/").rpartition("/")
    short = f"{service.rsplit('.', 1)[-1]}/{name}" if service else str(method)
    rest = {k: v for k, v in fields.items() if k not in _CALL_FIELDS}
    return f"{short} {code} {_duration(float(duration))}", rest


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
        return ", ".join(f"{key}={_value(item)}" for key, item in value.items())
    return str(value).replace("\r", "\\r").replace("\n", "\\n")


def _from_grpc_core(core: re.Match[str], received: float) -> str:
    clock = time.strftime("%H:%M:%S", time.gmtime(received))  # JSON lines show UTC too
    level = _GRPC_LEVELS[core["level"]]
    message = _tls_handshake(core["message"]) or f"{core['message']}  grpc={core['source']}"
    return f"{clock} {level:<5} {message}"


def _tls_handshake(message: str) -> str | None:
    """A grpc-core handshake failure in a few words, or None for any other message."""
    handshake = _HANDSHAKE.match(message)
    if handshake is None:
        return None
    rest = (handshake["rest"] or "").strip()
    found = _OPENSSL_REASON.search(rest)
    if found is None:
        return _FAILED + (rest or handshake["kind"])
    reason = found["reason"]
    detail = (found["detail"] or "").strip()
    text = _TLS_REASONS.get(reason, _FAILED + reason.lower().replace("_", " "))
    return text + (f" ({detail})" if detail and detail != _GRPC_FILLER else "")
