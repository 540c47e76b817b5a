"""The JSON log lines a test's in-process components write, through the kit's own formatter
and redacting filter (as `kit.logs.setup` installs them), kept in memory."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from services.kit.logs import JsonFormatter, RedactingFilter

__all__ = ["LogLines", "captured"]


class LogLines:
    def __init__(self, stream: io.StringIO) -> None:
        self._stream = stream

    def text(self) -> str:
        """Everything written so far, as written."""
        return self._stream.getvalue()

    def all(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text().splitlines()]

    def where(self, **fields: object) -> list[dict[str, Any]]:
        """The lines whose fields include `fields`."""
        return [line for line in self.all() if all(line.get(k) == v for k, v in fields.items())]

    def access(self, method: str) -> list[dict[str, Any]]:
        """The access lines of calls to `method` (``/package.Service/Method``)."""
        return self.where(message="finished call", method=method)


@contextmanager
def captured(logger: str = "poly") -> Iterator[LogLines]:
    """`logger`'s lines (INFO and up) while the block runs; its level is put back after."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("test"))
    handler.addFilter(RedactingFilter())
    target = logging.getLogger(logger)
    level = target.level
    target.addHandler(handler)
    target.setLevel(logging.INFO)
    try:
        yield LogLines(stream)
    finally:
        target.removeHandler(handler)
        target.setLevel(level)
