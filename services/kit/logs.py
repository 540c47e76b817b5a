"""Structured logs: one JSON object per line on stderr, and the per-call access log.

Each line has ``time``, ``level``, ``service``, ``logger`` and ``message``; access lines add
``method``, ``code`` and ``duration_ms``. Anything passed in ``extra=`` is included.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

import grpc

from services.kit.types import CallInfo, Handler, Middleware

__all__ = ["JsonFormatter", "access_log_middleware", "setup"]

_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
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
            "message": record.getMessage(),
        }
        line.update({k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS})
        if record.exc_info and record.exc_info[0] is not None:
            line["error"] = record.exc_info[0].__name__
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def setup(service: str, level: str = "INFO") -> None:
    """Route every logger to one JSON handler on stderr (called once, by `__main__`)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def access_log_middleware(logger: logging.Logger | None = None) -> Middleware:
    """Logs one line per call with its method, final status code and duration."""
    log = logger or logging.getLogger("poly.access")

    def emit(context: grpc.ServicerContext, call: CallInfo, started: float, failed: bool) -> None:
        code = context.code() or (grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK)
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
