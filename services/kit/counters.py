"""Counters a component keeps in memory for the metrics layer to export: thread-safe counts
keyed by a counter name and one label (an event type, a delivery channel)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping

__all__ = ["Counters"]


class Counters:
    """Thread-safe ``(counter, label) -> count``; a subclass's docstring names its counters."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()

    def add(self, name: str, label: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[(name, label)] += amount

    def snapshot(self) -> Mapping[tuple[str, str], int]:
        """``{(counter, label): count}`` at this instant."""
        with self._lock:
            return dict(self._counts)

    def total(self, name: str) -> int:
        """Counter `name` summed over its labels."""
        with self._lock:
            return sum(count for (counter, _), count in self._counts.items() if counter == name)
