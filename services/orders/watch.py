"""In-process change notification for WatchOrder.

`ChangeHub.notify(orders)` runs after a transaction of this process commits changes to
`orders` (see `store.OrdersStore`): it wakes every watcher of those orders. Changes
committed by other replicas are found by each watcher's bounded fallback poll, so a watch
never misses the final state, and never busy-loops.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager

from services.orders.domain import TERMINAL, Order

__all__ = ["ChangeHub", "snapshots"]

POLL_SECONDS = 1.0


class ChangeHub:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watchers: dict[str, set[threading.Event]] = {}

    def notify(self, orders: Collection[Order]) -> None:
        with self._lock:
            woken = [event for order in orders for event in self._watchers.get(order.id, ())]
        for event in woken:
            event.set()

    @contextmanager
    def subscribe(self, order_id: str) -> Iterator[threading.Event]:
        """An event set whenever `order_id` changes here, for as long as the block runs."""
        event = threading.Event()
        with self._lock:
            self._watchers.setdefault(order_id, set()).add(event)
        try:
            yield event
        finally:
            with self._lock:
                watchers = self._watchers.get(order_id, set())
                watchers.discard(event)
                if not watchers:
                    self._watchers.pop(order_id, None)

    @property
    def watching(self) -> int:
        """How many watches are open (for tests and metrics)."""
        with self._lock:
            return sum(len(events) for events in self._watchers.values())


def snapshots(
    hub: ChangeHub,
    read: Callable[[str], Order],
    first: Order,
    *,
    active: Callable[[], bool],
    on_leave: Callable[[Callable[[], None]], object],
    until: Collection[str] = frozenset(),
    poll_seconds: float = POLL_SECONDS,
) -> Iterator[Order]:
    """`first`, then the order each time its version moves on, until a terminal state or a
    state in `until` (`first` included), or until the client leaves (`active` turns false;
    `on_leave` registers a wake-up for then)."""
    ends = TERMINAL | frozenset(until)
    yield first
    seen = first
    with hub.subscribe(first.id) as changed:
        on_leave(changed.set)
        while seen.state not in ends and active():
            changed.wait(poll_seconds)
            changed.clear()
            if not active():
                return
            current = read(first.id)
            if current.version != seen.version:
                seen = current
                yield current
