"""kit.backoff: doubling delays, capped, jittered within [c/2, c]."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.kit.backoff import backoff_seconds


@pytest.mark.parametrize(
    ("attempts", "ceiling"),
    [(0, 0.5), (1, 0.5), (2, 1.0), (3, 2.0), (5, 8.0), (6, 10.0), (10_000, 10.0)],
    ids=["none-yet", "first", "second", "third", "fifth", "capped", "huge"],
)
def test_the_ceiling_doubles_per_attempt_up_to_the_maximum(attempts: int, ceiling: float) -> None:
    rng = random.Random(7)
    delays = [backoff_seconds(attempts, base=0.5, maximum=10.0, rng=rng) for _ in range(50)]
    assert all(ceiling / 2 <= d <= ceiling for d in delays)
    assert len(set(delays)) > 1, "jittered"


@given(st.integers(min_value=-5, max_value=10**6), st.floats(0.001, 100), st.floats(0.001, 1000))
def test_never_past_the_maximum_nor_under_half_the_first_delay(
    attempts: int, base: float, maximum: float
) -> None:
    delay = backoff_seconds(attempts, base=base, maximum=maximum)
    assert min(maximum, base) / 2 <= delay <= maximum
