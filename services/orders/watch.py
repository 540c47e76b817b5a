"""Change delivery for WatchOrder: pushed from the change itself, not polled per watcher.

`ChangeHub.notify(orders)` runs after a transaction of this process commits changes to
`orders` (`store.OrdersStore`'s after-commit notice) and hands every watcher of those orders
the order as committed: a change made here costs its watchers no database read at all.
Changes committed by another replica are found by `Recheck`, the hub's one periodic check:
a single query for the versions of every watched order, then one read per order that moved.
Its cost follows the number of watched orders changed elsewhere, not the number of open
watches, and nothing runs while no watch is open.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager

from sqlalchemy.exc import SQLAlchemyError

from services.kit import db
from services.orders.domain import TERMINAL, Order

__all__ = ["ChangeHub", "Recheck", "Watch", "snapshots"]

_log = logging.getLogger("poly.orders.watch")

RECHECK_SECONDS = 1.0
"""How stale a change committed by another replica may be when a watcher sees it."""
IDLE_SECONDS = 30.0
"""A waiting watch looks at whether its client is still there at least this often (leaving
also wakes it at once: `snapshots`' `on_leave`); it reads nothing then."""
_PENDING = 16
"""Snapshots held for one slow watcher; past it the oldest go (the newest state wins)."""


class Watch:
    """One open watch of one order: the snapshots newer than the last one it was given."""

    __slots__ = ("_pending", "_wake", "order_id", "version")

    def __init__(self, order_id: str, version: int) -> None:
        self.order_id = order_id
        self.version = version
        """The newest version handed to this watch (or read by it before it subscribed)."""
        self._pending: deque[Order] = deque(maxlen=_PENDING)
        self._wake = threading.Event()

    def offer(self, order: Order) -> None:
        """Hand `order` over if it is newer than anything this watch has (the hub's lock is held)."""
        if order.version > self.version:
            self.version = order.version
            self._pending.append(order)
            self._wake.set()

    def wake(self) -> None:
        """Wake the reader without a change (its client left; it checks and returns)."""
        self._wake.set()

    def take(self, timeout: float) -> Order | None:
        """The next snapshot, waiting up to `timeout` seconds for one; None if woken without."""
        if not self._pending:
            self._wake.wait(timeout)
            self._wake.clear()
        return self._pending.popleft() if self._pending else None


class ChangeHub:
    """Every open watch by order, and the last committed snapshot of recently changed orders
    (so a watch that subscribes just after a change it did not read still gets it)."""

    def __init__(self, *, remember: int = 1024) -> None:
        self._lock = threading.Lock()
        self._watches: dict[str, set[Watch]] = {}
        self._recent: OrderedDict[str, Order] = OrderedDict()
        self._remember = remember

    def notify(self, orders: Collection[Order]) -> None:
        """`orders` were committed: give each to its watchers."""
        with self._lock:
            for order in orders:
                known = self._recent.get(order.id)
                if known is not None and known.version >= order.version:
                    continue
                self._recent[order.id] = order
                self._recent.move_to_end(order.id)
                if len(self._recent) > self._remember:
                    self._recent.popitem(last=False)
                for watch in self._watches.get(order.id, ()):
                    watch.offer(order)

    @contextmanager
    def subscribe(self, first: Order) -> Iterator[Watch]:
        """A watch of `first`'s order, given every committed version after `first`'s, for as
        long as the block runs."""
        watch = Watch(first.id, first.version)
        with self._lock:
            self._watches.setdefault(first.id, set()).add(watch)
            known = self._recent.get(first.id)
            if known is not None:
                watch.offer(known)  # committed between the caller's read and now
        try:
            yield watch
        finally:
            with self._lock:
                watches = self._watches.get(first.id, set())
                watches.discard(watch)
                if not watches:
                    self._watches.pop(first.id, None)

    def watched(self) -> dict[str, int]:
        """Each watched order's newest version known here."""
        with self._lock:
            return {order_id: max(w.version for w in watches) for order_id, watches in self._watches.items()}

    @property
    def watching(self) -> int:
        """How many watches are open (for tests and metrics)."""
        with self._lock:
            return sum(len(watches) for watches in self._watches.values())


class Recheck:
    """The hub's periodic check for changes committed by other replicas (a `kit.types.Background`).

    Each pass reads the versions of all watched orders in one read-only transaction
    (`versions`) and the whole order (`read`) only of those that moved."""

    def __init__(
        self,
        hub: ChangeHub,
        versions: Callable[[Collection[str]], Mapping[str, int]],
        read: Callable[[str], Order | None],
        *,
        interval: float = RECHECK_SECONDS,
    ) -> None:
        self._hub = hub
        self._versions = versions
        self._read = read
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> int:
        """One pass; how many orders were found changed elsewhere."""
        known = self._hub.watched()
        if not known:
            return 0
        with db.reading():
            current = self._versions(known)
            moved = [order_id for order_id, version in current.items() if version > known[order_id]]
            changed = [order for order_id in moved if (order := self._read(order_id)) is not None]
        self._hub.notify(changed)
        return len(changed)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.run_once()
            except SQLAlchemyError:
                _log.exception("watch re-check failed (database); retrying")

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="orders-watch-recheck", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)


def snapshots(
    hub: ChangeHub,
    first: Order,
    *,
    active: Callable[[], bool],
    on_leave: Callable[[Callable[[], None]], object],
    until: Collection[str] = frozenset(),
    idle_seconds: float = IDLE_SECONDS,
) -> Iterator[Order]:
    """`first`, then each newer committed version of the order, until a terminal state or a
    state in `until` (`first` included), or until the client leaves (`active` turns false;
    `on_leave` registers a wake-up for then). Reads nothing itself: the hub brings changes."""
    ends = TERMINAL | frozenset(until)
    yield first
    if first.state in ends:
        return
    with hub.subscribe(first) as watch:
        on_leave(watch.wake)
        while active():
            order = watch.take(idle_seconds)
            if order is None:
                continue
            yield order
            if order.state in ends:
                return
