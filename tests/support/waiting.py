"""Waiting for state another process will reach: poll it, bounded in time, never a bare sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["eventually"]

_T = TypeVar("_T")


def eventually(probe: Callable[[], _T | None], *, timeout: float = 20.0, what: str = "the condition") -> _T:
    """The first truthy result of `probe`, polled until `timeout` seconds pass; then a failure
    naming `what` and the last result seen."""
    deadline = time.monotonic() + timeout
    delay, last = 0.02, None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last saw {last!r}")
        time.sleep(delay)  # polling another process's state: there is nothing to block on
        delay = min(delay * 2, 0.25)
