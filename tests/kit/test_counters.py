from __future__ import annotations

import threading

from services.kit.counters import Counters


def test_counts_are_per_name_and_label_and_thread_safe() -> None:
    counters = Counters()

    def bump() -> None:
        for _ in range(1000):
            counters.add("reclaimed", "email")

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    counters.add("reclaimed", "webhook", 3)
    counters.add("sent", "email")
    assert counters.snapshot() == {
        ("reclaimed", "email"): 4000,
        ("reclaimed", "webhook"): 3,
        ("sent", "email"): 1,
    }
    assert counters.total("reclaimed") == 4003
    assert counters.total("unknown") == 0


def test_a_snapshot_does_not_change_afterwards() -> None:
    counters = Counters()
    counters.add("sent", "email")
    taken = counters.snapshot()
    counters.add("sent", "email")
    assert taken == {("sent", "email"): 1}
