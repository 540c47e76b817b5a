"""gateway.limits: token buckets and failure windows, on a hand-driven clock."""

from __future__ import annotations

from gateway import limits
from gateway.limits import FailureWindows, TokenBuckets
from tests.support.clock import MonotonicClock


def test_exports() -> None:
    assert set(limits.__all__) == {"FailureWindows", "TokenBuckets"}


def test_a_bucket_lets_the_burst_through_then_refills_at_the_rate() -> None:
    clock = MonotonicClock()
    buckets = TokenBuckets(0.5, 2, clock=clock)
    assert [buckets.take("a"), buckets.take("a")] == [0.0, 0.0]
    assert buckets.take("a") == 2.0, "one token needs 2 s at 0.5/s"
    assert buckets.take("b") == 0.0, "each client has its own bucket"
    clock.now += 2.0
    assert buckets.take("a") == 0.0


def test_past_the_limit_a_client_waits_for_the_end_of_its_window() -> None:
    clock = MonotonicClock()
    failures = FailureWindows(3, 60.0, clock=clock)
    for _ in range(3):
        assert failures.wait("a") == 0.0
        failures.record("a")
    clock.now += 10.0
    assert failures.wait("a") == 50.0
    assert failures.wait("b") == 0.0
    clock.now += 50.0
    assert failures.wait("a") == 0.0
    failures.record("a")
    assert failures.wait("a") == 0.0, "a new window starts from one failure"
