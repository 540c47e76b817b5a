"""Clocks tests move by hand: what the kit's `clock=` parameters take instead of the time
(`Clock`, a UTC datetime) or of `time.monotonic` (`MonotonicClock`, seconds)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field


@dataclass
class Clock:
    now: dt.datetime = field(default_factory=lambda: dt.datetime(2026, 1, 1, tzinfo=dt.UTC))

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


@dataclass
class MonotonicClock:
    """Monotonic seconds the test moves by hand."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
