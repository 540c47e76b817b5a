"""Structured logs: one JSON object per line on stderr, and the per-call access log.

Each line has ``time``, ``level``, ``service``, ``logger`` and ``message``; access lines add
``method``, ``code`` and ``duration_ms``. Anything passed in ``extra=`` is included.

Credentials never reach a line. `RedactingFilter`, on every handler `setup` installs, and
`JsonFormatter` itself replace with ``[REDACTED]`` the values of ``Authorization``,
``Proxy-Authorization``, ``Cookie`` and ``Set-Cookie`` (as HTTP header lines, reprs of gRPC
metadata pairs, dict entries, ``key=value`` text), any ``Bearer`` credential, any
JWT-shaped string and ``access_token``/``refresh_token``/``id_token``/``client_secret``
values, wherever they appear: the message, its arguments, ``extra=`` fields (nested ones too)
and formatted tracebacks, a library's included. Uncaught exceptions, in any thread, are
logged through the same path instead of printed raw.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import grpc

from services.kit.types import CallInfo, Handler, Middleware

__all__ = ["REDACTED", "JsonFormatter", "RedactingFilter", "access_log_middleware", "redact", "setup"]

REDACTED = "[REDACTED]"
"""What a credential is replaced with."""

_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_SECRET_KEYS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
_SECRET_PARAMETERS = frozenset({"access_token", "refresh_token", "id_token", "client_secret"})
# A value runs to a quote or backquote, a line end, or an escaped line end in a repr (`\r`, `\n`).
_VALUE = r"(?:(?!\\[rn])[^\r\n'\"`])*"
_SEPARATOR = r"""(?:['"]\s*,\s*b?['"]|['"]?\s*[:=]\s*(?:b?['"])?)"""
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # `Authorization: Bearer x`, `('authorization', 'Bearer x')`, `"cookie": "a=b"`, `cookie=a`
    (
        re.compile(r"(?i)(?<![\w-])((?:proxy-)?authorization|(?:set-)?cookie)(" + _SEPARATOR + ")" + _VALUE),
        r"\1\2" + REDACTED,
    ),
    (
        re.compile(
            r"(?i)(?<![\w-])(access_token|refresh_token|id_token|client_secret)("
            + _SEPARATOR
            + r")[^\s&'\",;}]+"
        ),
        r"\1\2" + REDACTED,
    ),
    (re.compile(r"(?i)(?<![\w-])(bearer)(\s+)[\w\-.~+/]+=*"), r"\1\2" + REDACTED),
    (re.compile(r"\beyJ[\w-]*\.[\w-]+\.[\w-]*"), REDACTED),  # a JWT, wherever it is
)


def redact(text: str) -> str:
    """`text` with every credential it shows replaced by `REDACTED`."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _is_secret_key(key: object) -> bool:
    if isinstance(key, bytes):
        key = key.decode("latin-1")
    return isinstance(key, str) and (key.lower() in _SECRET_KEYS or key.lower() in _SECRET_PARAMETERS)


def _scrubbed(value: Any, depth: int = 0) -> Any:
    """`value` (an ``extra=`` field) with credentials redacted, as JSON-ready data."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str) or depth > 8:
        return redact(str(value))
    if isinstance(value, dict):
        return {str(k): REDACTED if _is_secret_key(k) else _scrubbed(v, depth + 1) for k, v in value.items()}
    if not isinstance(value, list | tuple | set | frozenset):
        return redact(str(value))
    items = list(value)
    if len(items) == 2 and _is_secret_key(items[0]):  # a metadata pair
        return [_scrubbed(items[0], depth + 1), REDACTED]
    return [_scrubbed(item, depth + 1) for item in items]


def _traceback_text(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    if record.exc_text:
        return redact(record.exc_text)
    assert record.exc_info is not None
    return redact(formatter.formatException(record.exc_info))


class RedactingFilter(logging.Filter):
    """Rewrites a record in place so that no credential survives in it: the rendered
    message (its arguments merged in), every ``extra=`` field, the formatted traceback
    (stored as ``exc_text``, which every `logging.Formatter` prints instead of formatting
    the exception again) and the stack. Never drops a record."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # arguments that do not fit the format: keep both, redacted
            message = f"{record.msg} {record.args!r}"
        record.msg, record.args = redact(message), None
        for key, value in list(vars(record).items()):
            if key not in _STANDARD_ATTRS:
                setattr(record, key, _scrubbed(value))
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = _traceback_text(self._formatter, record)
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, redacted (also without `RedactingFilter` in front)."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self._service,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        line.update({k: _scrubbed(v) for k, v in vars(record).items() if k not in _STANDARD_ATTRS})
        if record.exc_info and record.exc_info[0] is not None:
            line["error"] = record.exc_info[0].__name__
            line["traceback"] = _traceback_text(self, record)
        elif record.exc_text:
            line["traceback"] = redact(record.exc_text)
        if record.stack_info:
            line["stack"] = redact(record.stack_info)
        return json.dumps(line, default=lambda value: redact(str(value)))


def _log_uncaught(
    kind: type[BaseException], error: BaseException, trace: TracebackType | None, thread: str = ""
) -> None:
    logging.getLogger("poly.uncaught").critical(
        "uncaught exception", exc_info=(kind, error, trace), extra={"thread_name": thread} if thread else None
    )


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else ""
    _log_uncaught(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback, name)


def setup(service: str, level: str = "INFO") -> None:
    """Route every logger to one JSON handler on stderr, redacting credentials on it and on
    every handler already installed elsewhere; uncaught exceptions are logged the same way
    (called once, by `__main__`)."""
    redacting = RedactingFilter()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    handler.addFilter(redacting)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for logger in list(logging.root.manager.loggerDict.values()):
        for other in getattr(logger, "handlers", ()):
            other.addFilter(redacting)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def access_log_middleware(logger: logging.Logger | None = None) -> Middleware:
    """Logs one line per call with its method, final status code and duration."""
    log = logger or logging.getLogger("poly.access")

    def final_code(context: grpc.ServicerContext, failed: bool) -> grpc.StatusCode:
        code: grpc.StatusCode | None = context.code()
        if code is not None:
            return code
        if not context.is_active():
            # The call ended before the handler did: the client cancelled it (a stream that
            # stopped because the watcher left) or its deadline passed. No status is sent.
            remaining = context.time_remaining()
            if remaining is not None and remaining <= 0:
                return grpc.StatusCode.DEADLINE_EXCEEDED
            return grpc.StatusCode.CANCELLED
        return grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK

    def emit(context: grpc.ServicerContext, call: CallInfo, started: float, failed: bool) -> None:
        code = final_code(context, failed)
        log.info(
            "%s %s",
            call.method,
            code.name,
            extra={
                "method": call.method,
                "code": code.name,
                "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            },
        )

    def stream(
        result: Iterator[Any], context: grpc.ServicerContext, call: CallInfo, started: float
    ) -> Iterator[Any]:
        failed = True
        try:
            yield from result
            failed = False
        finally:
            emit(context, call, started, failed)

    def middleware(request: Any, context: grpc.ServicerContext, call: CallInfo, proceed: Handler) -> Any:
        started = time.perf_counter()
        failed = True
        try:
            result = proceed(request, context)
            failed = False
        finally:
            if failed or not call.response_streaming:
                emit(context, call, started, failed)
        return stream(result, context, call, started) if call.response_streaming else result

    return middleware
