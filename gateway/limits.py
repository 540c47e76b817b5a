"""What the edge counts per client: `TokenBuckets` for the request rate and `FailureWindows`
for failed authentications. Both are keyed by a client string (the edge uses the client's
address), forget idle clients instead of growing without bound, and take their clock as a
parameter.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["FailureWindows", "TokenBuckets"]

_MAX_CLIENTS = 100_000


class TokenBuckets:
    """Per-client token buckets: `rate` tokens a second, at most `burst` saved up."""

    def __init__(self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate, self._burst, self._clock = rate, burst, clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, client: str) -> float:
        """0 when a request may go now, else the seconds until one may."""
        now = self._clock()
        tokens, stamp = self._buckets.get(client, (float(self._burst), now))
        tokens = min(float(self._burst), tokens + (now - stamp) * self._rate)
        if tokens < 1.0:
            self._buckets[client] = (tokens, now)
            return (1.0 - tokens) / self._rate
        self._buckets[client] = (tokens - 1.0, now)
        if len(self._buckets) > _MAX_CLIENTS:  # forget the idle ones instead of growing forever
            self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 60}
        return 0.0


class FailureWindows:
    """Failures per client in fixed windows of `window` seconds, each starting at the
    client's first failure: past `limit` in one window, the client waits for its end."""

    def __init__(self, limit: int, window: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._limit, self._window, self._clock = limit, window, clock
        self._counts: dict[str, tuple[int, float]] = {}

    def wait(self, client: str) -> float:
        """0 when `client` may try now, else the seconds until it may."""
        count, started = self._counts.get(client, (0, 0.0))
        remaining = started + self._window - self._clock()
        return remaining if count >= self._limit and remaining > 0 else 0.0

    def record(self, client: str) -> None:
        """Count one failure of `client`."""
        now = self._clock()
        count, started = self._counts.get(client, (0, now))
        if now - started >= self._window:
            count, started = 0, now
        self._counts[client] = (count + 1, started)
        if len(self._counts) > _MAX_CLIENTS:  # forget the windows that are over
            self._counts = {k: v for k, v in self._counts.items() if now - v[1] < self._window}
