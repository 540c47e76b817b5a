"""Structured logs on stderr, and the per-call access log.

Each record has ``time``, ``level``, ``service``, ``logger`` and ``message``, then the fields
of the running call (``trace_id``, ``span_id``, and ``request_id`` while one is current, see
`kit.request_id`) and anything passed in ``extra=``. Access lines have the message
``finished call`` and the call in their fields: ``method``, ``code``, ``duration_ms`` and the
caller's ``request_id``; the access middleware is also what makes that id current for the
call. Two formats show them: ``json``, one object per line (`JsonFormatter`, for machines and
containers), and ``console``, one short readable line (`ConsoleFormatter`, rendered by
`kit.console` as `poly up` shows it).

Credentials never reach a line. `RedactingFilter`, on every handler `setup` installs or
finds, and `JsonFormatter` itself replace with ``[REDACTED]`` the values of ``Authorization``,
``Proxy-Authorization``, ``Cookie`` and ``Set-Cookie`` (as HTTP header lines, reprs of gRPC
metadata pairs, dict entries, ``key=value`` text), any ``Bearer`` credential, any
JWT-shaped string and ``access_token``/``refresh_token``/``id_token``/``client_secret``
values, wherever they appear: the message, its arguments, ``extra=`` fields (nested ones too)
and formatted tracebacks, a library's included. Each record is redacted once: the filter
rewrites it and marks it done, and the formatter redacts only a record no filter has seen (a
formatter used on its own). Uncaught exceptions, in any thread, are logged through the same
path instead of printed raw.

A few libraries' lines about an expected, self-healing condition are rewritten where they
are logged: aiormq's error-level "error when creating transport" for each refused attempt
while the broker is away, and its closed-connection lines, become warnings that say so in
words, without a traceback (whoever reconnects, aio-pika or `kit.bus`, logs that too).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

import grpc

from services.kit import console
from services.kit import request_id as request_ids
from services.kit.calls import final_code, observe_stream
from services.kit.telemetry_settings import LOG_FORMATS
from services.kit.types import CallInfo, Handler, Middleware

__all__ = [
    "REDACTED",
    "ConsoleFormatter",
    "ContextFields",
    "JsonFormatter",
    "RedactingFilter",
    "access_log_middleware",
    "redact",
    "setup",
]

REDACTED = "[REDACTED]"
"""What a credential is replaced with."""

_REDACTED_MARK = "poly_redacted"
"""The record attribute `RedactingFilter` sets once it has rewritten a record."""
_DONE = object()
"""Its value: an object no ``extra=`` field can be, so a caller cannot mark a record done."""
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    _REDACTED_MARK,
}
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


ContextFields = Callable[[], Mapping[str, str]]
"""Fields of whatever is running when a line is written (e.g. ``trace_id``, ``span_id``)."""


# Every pattern above needs one of these words: most text has none and is returned at once
# (one search instead of four substitutions on each field of each line).
_MAYBE_SECRET = re.compile(
    r"(?i)authorization|cookie|access_token|refresh_token|id_token|client_secret|bearer|eyJ"
)


def redact(text: str) -> str:
    """`text` with every credential it shows replaced by `REDACTED`."""
    if not _MAYBE_SECRET.search(text):
        return text
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


def _is_redacted(record: logging.LogRecord) -> bool:
    return getattr(record, _REDACTED_MARK, None) is _DONE


class RedactingFilter(logging.Filter):
    """Rewrites a record in place so that no credential survives in it: the rendered
    message (its arguments merged in), every ``extra=`` field (as JSON-ready data), the
    formatted traceback (stored as ``exc_text``, which every `logging.Formatter` prints
    instead of formatting the exception again) and the stack. Never drops a record. A record
    already rewritten (by the filter of a library's handler, before it reached the root's)
    is marked and passes untouched."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        if _is_redacted(record):
            return True
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
        setattr(record, _REDACTED_MARK, _DONE)
        return True


_redacting = RedactingFilter()


class JsonFormatter(logging.Formatter):
    """One JSON object per record, redacted: by the `RedactingFilter` in front (`setup`
    installs one), or here when no such filter has rewritten it."""

    def __init__(self, service: str, *, context_fields: ContextFields | None = None) -> None:
        super().__init__()
        self._service = service
        self._context_fields = context_fields

    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        """What a line of `record` holds, redacted, as JSON-ready data."""
        if not _is_redacted(record):
            _redacting.filter(record)
        line: dict[str, Any] = {
            "time": console.timestamp(record.created),
            "level": record.levelname.lower(),
            "service": self._service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self._context_fields is not None:
            line.update(self._context_fields())
        # Checked where it is made current (`kit.request_id`): no redaction needed.
        if (request_id := request_ids.current()) is not None:
            line["request_id"] = request_id
        line.update({k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS})
        if record.exc_info and record.exc_info[0] is not None:
            line["error"] = record.exc_info[0].__name__
        if record.exc_text:  # the filter formatted any exception into it, redacted
            line["traceback"] = record.exc_text
        if record.stack_info:
            line["stack"] = record.stack_info
        return line

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(self.fields(record), default=lambda value: redact(str(value)))


class ConsoleFormatter(JsonFormatter):
    """One short readable line per record (`kit.console.render`), redacted as the JSON is."""

    def format(self, record: logging.LogRecord) -> str:
        return console.render(self.fields(record))


def _broker_unreachable(record: logging.LogRecord) -> str:
    error = record.args[0] if isinstance(record.args, tuple) and record.args else "unknown error"
    return f"cannot connect to the message broker ({_reason(error)})"


def _broker_lost(record: logging.LogRecord) -> str:
    error = record.exc_info[1] if record.exc_info else None
    return f"connection to the message broker lost ({_reason(error)})"


def _broker_closed(record: logging.LogRecord) -> str:
    args = record.args if isinstance(record.args, tuple) else ()
    code, text = (args[1], args[2]) if len(args) >= 3 else ("?", "")
    return f"the message broker closed the connection ({code} {text})"


def _reason(error: object) -> str:
    if isinstance(error, BaseException):
        detail = str(error.args[-1] if len(error.args) > 1 else error) or type(error).__name__
        return f"{type(error).__name__}: {detail}"
    return str(error)


# (logger, how the message starts, its new level, its new message): expected while a broker restarts.
_REWRITES: tuple[tuple[str, str, int, Callable[[logging.LogRecord], str]], ...] = (
    ("aiormq.connection", "error when creating transport", logging.WARNING, _broker_unreachable),
    ("aiormq.connection", "Cancelling cause reader exited abnormally", logging.WARNING, _broker_lost),
    ("aiormq.connection", "Unexpected connection close from remote", logging.WARNING, _broker_closed),
)


class _LibraryRewrite(logging.Filter):
    """On a library's logger: its records about an expected condition, at a fitting level and
    in words (the original message's arguments are kept in the new text)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, start, level, message in _REWRITES:
            if record.name == name and isinstance(record.msg, str) and record.msg.startswith(start):
                record.msg, record.args = message(record), None
                record.exc_info, record.exc_text = None, None
                record.levelno, record.levelname = level, logging.getLevelName(level)
                # The logger's own level was checked at the old level: check the new one too.
                return logging.getLogger(name).isEnabledFor(level)
        return True


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


def setup(
    service: str,
    level: str = "INFO",
    *,
    context_fields: ContextFields | None = None,
    log_format: str = "json",
) -> None:
    """Route every logger to one handler on stderr writing `log_format` (``json`` or
    ``console``), redacting credentials on it and on every handler already installed
    elsewhere; uncaught exceptions are logged the same way (called once, at start-up).
    `context_fields` adds fields of the running call to every line (`kit.telemetry` passes the
    current trace and span ids)."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log_format: expected one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    formatter = ConsoleFormatter if log_format == "console" else JsonFormatter
    redacting = RedactingFilter()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(service, context_fields=context_fields))
    handler.addFilter(redacting)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for logger in list(logging.root.manager.loggerDict.values()):
        for other in getattr(logger, "handlers", ()):
            other.addFilter(redacting)
    for name in {name for name, *_ in _REWRITES}:
        library = logging.getLogger(name)
        if not any(isinstance(f, _LibraryRewrite) for f in library.filters):
            library.addFilter(_LibraryRewrite())
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def access_log_middleware(logger: logging.Logger | None = None) -> Middleware:
    """Logs one line per call: method, final status code, duration, and the caller's
    ``x-request-id`` when it sent a valid one (the edge always does). That id is current
    (`kit.request_id`) while the handler runs, a streaming handler's iteration included, so
    the handler's own lines and calls carry it; an invalid one is ignored."""
    log = logger or logging.getLogger("poly.access")

    def emit(
        context: grpc.ServicerContext, call: CallInfo, started: float, failed: bool, request_id: str | None
    ) -> None:
        code = final_code(context, failed)
        fields: dict[str, Any] = {
            "method": call.method,
            "code": code.name,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
        }
        if request_id is not None:
            fields["request_id"] = request_id
        log.info(console.CALL_FINISHED, extra=fields)

    def middleware(request: Any, context: grpc.ServicerContext, call: CallInfo, proceed: Handler) -> Any:
        started = time.perf_counter()
        request_id = request_ids.from_metadata(context.invocation_metadata())
        failed = True
        try:
            result = request_ids.run_bound(request_id, proceed, request, context)
            failed = False
        finally:
            if failed or not call.response_streaming:
                emit(context, call, started, failed, request_id)
        if call.response_streaming:
            # The handler's body runs as the stream is consumed: the id is current meanwhile.
            ended = observe_stream(result, lambda failed: emit(context, call, started, failed, request_id))
            return request_ids.iterate_bound(request_id, ended)
        return result

    return middleware
