"""A clock tests move by hand: what the kit's `clock=` parameters take instead of the time."""

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
