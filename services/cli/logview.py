"""How `poly up` shows a component's output: one short readable line per event, or JSON.

A JSON log line reads as the kit's console format (`services.kit.console`), e.g.
``12:00:01 info  message key=value`` or, for a call, ``AuthService/Login OK 2.8 ms``.

A grpc-core line (C-core's absl format, ``I1203 13:22:45.240260  7721 file.cc:2563] text``,
or ``E0000 00:00:1733240000.123456 ...`` before absl knows the time) becomes a record of the
same shape, at its own level; a failed TLS handshake reads e.g. ``TLS handshake refused: the
client sent no certificate``. Any other line (a raw traceback, a crash) is shown unchanged.

`as_json` is the ``--log-format json`` view: a JSON line unchanged, any other line made a
JSON record of the component's. `Output` writes either view, with `poly up`'s own lines.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Mapping
from typing import IO, Any

from services.kit.console import render, timestamp
from services.kit.telemetry_settings import LOG_FORMATS

__all__ = ["Output", "as_json", "readable"]

_GRPC_CORE = re.compile(
    r"^(?P<level>[DIWEF])\d{4} [\d:.]+\s+\d+ (?P<source>[^\s\]]+:\d+)\] ?(?P<message>.*)$"
)
_GRPC_LEVELS = {"D": "debug", "I": "info", "W": "warning", "E": "error", "F": "fatal"}
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


class Output:
    """Where `poly up` writes, in `log_format`: ``console``, each line prefixed with its
    component's name, padded to `width`; or ``json``, one object per line. Safe from any
    thread; a stdout that is gone (``poly up | head``) is ignored, so the children's output
    is still drained."""

    def __init__(self, out: IO[str], *, log_format: str = "console", width: int = 0) -> None:
        if log_format not in LOG_FORMATS:
            raise ValueError(f"log_format: expected one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
        self._out = out
        self._json = log_format == "json"
        self._width = width
        self._lock = threading.Lock()

    def say(
        self, name: str, text: str, *, level: str = "info", fields: Mapping[str, str] | None = None
    ) -> None:
        """A message of `poly up` itself (`name` ``poly``), or of its mailbox (``mail``);
        `fields` (e.g. a ``trace_id`` the message names) follow it in the JSON record."""
        if self._json:
            logger = "poly.mailbox" if name == "mail" else "poly.up"
            record = {"time": timestamp(time.time()), "level": level, "service": "poly", "logger": logger}
            self._write([json.dumps({**record, "message": text, **(fields or {})})])
        else:
            self._write(self._prefixed(name, text))

    def relay(self, name: str, line: str, *, received: float) -> None:
        """One line of component `name`'s output."""
        if not self._json:
            self._write(self._prefixed(name, readable(line, received=received)))
        elif (record := as_json(line, name, received=received)) is not None:
            self._write([record])

    def _prefixed(self, name: str, text: str) -> list[str]:
        return [f"{name:<{self._width}} | {line}" for line in text.splitlines() or [""]]

    def _write(self, lines: list[str]) -> None:
        with self._lock:
            try:
                for line in lines:
                    self._out.write(line + "\n")
                self._out.flush()
            except (OSError, ValueError):
                pass  # our stdout is gone (e.g. `poly up | head`); keep draining the children


def readable(line: str, *, received: float | None = None) -> str:
    """`line` (one line of a component's output) as `poly up` shows it.

    `received` (seconds since the epoch, default now) is the clock shown for a grpc-core
    line, whose own timestamp may be local time or unknown; JSON lines show their own.
    """
    record = _record(line)
    if record is not None:
        return render(record)
    core = _GRPC_CORE.match(line)
    if core is not None:
        return render(_from_grpc_core(core, time.time() if received is None else received))
    return line


def as_json(line: str, component: str, *, received: float | None = None) -> str | None:
    """`line` as one JSON object: a log line as it is, a grpc-core line or any other output
    (a raw traceback) as a record of `component`'s (logger ``grpc`` or ``stderr``). None for
    an empty line."""
    if _record(line) is not None:
        return line
    if not line.strip():
        return None
    received = time.time() if received is None else received
    core = _GRPC_CORE.match(line)
    if core is not None:
        made = {**_from_grpc_core(core, received), "service": component, "logger": "grpc"}
    else:
        # Not written through the kit's logging: output it never expected (a crash, a library's print).
        made = {"time": timestamp(received), "level": "error", "service": component, "logger": "stderr"}
        made["message"] = line
    return json.dumps(made)


def _record(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "message" in record else None


def _from_grpc_core(core: re.Match[str], received: float) -> dict[str, Any]:
    record: dict[str, Any] = {"time": timestamp(received), "level": _GRPC_LEVELS[core["level"]]}
    handshake = _tls_handshake(core["message"])
    if handshake is not None:
        record["message"] = handshake
    else:
        record.update(message=core["message"], grpc=core["source"])
    return record


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
