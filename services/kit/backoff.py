"""Retry delays: exponential backoff with jitter, one formula for every retry loop (the bus
relay, the notifications dispatcher, the orders payment worker)."""

from __future__ import annotations

import random

__all__ = ["backoff_seconds"]

_MAX_DOUBLINGS = 62
"""Past this the ceiling is the maximum anyway; it keeps 2**n a small int."""


def backoff_seconds(attempts: int, *, base: float, maximum: float, rng: random.Random | None = None) -> float:
    """The delay after `attempts` tries (1 for the first): uniform in [c/2, c] for
    c = min(maximum, base * 2**(attempts-1)), so concurrent retries spread out."""
    ceiling = min(maximum, base * 2 ** min(max(0, attempts - 1), _MAX_DOUBLINGS))
    return (rng or random).uniform(ceiling / 2, ceiling)
