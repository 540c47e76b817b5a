"""A `kit.priority.BackgroundThreads` that records instead of lowering: which threads a worker
lowered, and every database statement a lowered thread ran outside `transaction` (one that,
at a lower priority, could hold SQLite's write lock while the calls wait behind it)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import Engine, event

from services.kit.priority import BackgroundThreads

_P = ParamSpec("_P")
_T = TypeVar("_T")


class RecordingBackground(BackgroundThreads):
    def __init__(self, engine: Engine, lowered_prefixes: tuple[str, ...]) -> None:
        """`lowered_prefixes`: the names of the threads a lowered thread starts (a pool's)."""
        super().__init__(0)
        self.entered: list[str] = []
        self.transactions: list[str] = []
        self.stray: list[str] = []
        self._prefixes = lowered_prefixes
        self._entered_ids: set[int] = set()
        self._inside = threading.local()
        event.listen(engine, "before_cursor_execute", self._statement)

    def enter(self) -> None:
        self.entered.append(threading.current_thread().name)
        self._entered_ids.add(threading.get_ident())

    def transaction(self, call: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        self.transactions.append(getattr(call, "__name__", repr(call)))
        self._inside.depth = getattr(self._inside, "depth", 0) + 1
        try:
            return call(*args, **kwargs)
        finally:
            self._inside.depth -= 1

    def _lowered(self) -> bool:
        thread = threading.current_thread()
        return thread.ident in self._entered_ids or thread.name.startswith(self._prefixes)

    def _statement(self, *args: Any) -> None:
        if self._lowered() and not getattr(self._inside, "depth", 0):
            self.stray.append(f"{threading.current_thread().name}: {args[2]}")
