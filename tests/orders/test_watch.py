"""The change hub behind WatchOrder: a committed change is pushed to every watcher of its
order without a read, and one re-check per pass finds changes another replica committed,
over real SQLite and PostgreSQL databases."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, event

from services.kit import bus, config, db
from services.kit.money import Money
from services.orders import domain, store
from services.orders.__main__ import SERVICE
from services.orders.watch import ChangeHub, Recheck, Watch, snapshots
from tests.support.waiting import eventually

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _order(state: str = domain.PENDING, order_id: str = "abcd") -> domain.Order:
    line = domain.Line("A", 1, Money("EUR", 5), Money("EUR", 5))
    return domain.Order(order_id, "users/u", (line,), Money("EUR", 5), state, NOW, NOW)


def _forever() -> bool:
    return True


def _no_leave(_wake: Callable[[], None]) -> None:
    """A client that never leaves: nothing to register."""


class _Reader:
    """Drains one watch in a thread; what it saw, and whether it failed."""

    def __init__(self, watch: Iterator[domain.Order]) -> None:
        self.seen: list[domain.Order] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._drain, args=(watch,), daemon=True)
        self.thread.start()

    def _drain(self, watch: Iterator[domain.Order]) -> None:
        try:
            for order in watch:
                self.seen.append(order)
        except BaseException as error:
            self.error = error

    @property
    def states(self) -> list[str]:
        return [order.state for order in self.seen]


def test_a_watch_gets_each_committed_version_in_order() -> None:
    hub = ChangeHub()
    current = _order()
    reader = _Reader(snapshots(hub, current, active=_forever, on_leave=_no_leave))
    eventually(lambda: hub.watching == 1, what="the watch to subscribe")
    for state in (domain.AWAITING_PAYMENT, domain.PAID, domain.CANCELLED):
        current = current.moved(state, NOW)
        hub.notify([current])
    reader.thread.join(5)
    assert reader.error is None and not reader.thread.is_alive()
    assert reader.states == [domain.PENDING, domain.AWAITING_PAYMENT, domain.PAID, domain.CANCELLED]
    assert hub.watching == 0


def test_a_change_committed_between_the_read_and_the_subscription_is_not_missed() -> None:
    hub = ChangeHub()
    first = _order()
    hub.notify([first.moved(domain.CANCELLED, NOW)])  # committed after `first` was read
    seen = list(snapshots(hub, first, active=_forever, on_leave=_no_leave))
    assert [order.state for order in seen] == [domain.PENDING, domain.CANCELLED]


def test_an_older_notice_after_a_newer_one_is_ignored() -> None:
    hub = ChangeHub()
    first = _order()
    authorized = first.moved(domain.AWAITING_PAYMENT, NOW)
    paid = authorized.moved(domain.PAID, NOW)
    with hub.subscribe(first) as watch:
        hub.notify([paid])
        hub.notify([authorized])  # a re-check that read before the change landed
        assert watch.take(0) == paid
        assert watch.take(0) is None
    assert hub.watched() == {}


def test_a_slow_watcher_keeps_the_newest_states() -> None:
    watch = Watch("abcd", 1)
    order = _order()
    for _ in range(40):
        order = dataclasses.replace(order, version=order.version + 1)
        watch.offer(order)
    kept = []
    while (taken := watch.take(0)) is not None:
        kept.append(taken.version)
    assert kept[-1] == 41 and kept == sorted(kept) and 0 < len(kept) < 40


def test_a_watch_stops_when_the_client_leaves() -> None:
    hub = ChangeHub()
    active = threading.Event()
    active.set()
    wake: list[Callable[[], None]] = []
    watch = snapshots(hub, _order(), active=active.is_set, on_leave=wake.append, idle_seconds=60)
    assert next(watch).state == domain.PENDING
    reader = _Reader(watch)
    eventually(lambda: bool(wake), what="the leave callback")
    active.clear()
    wake[0]()  # what gRPC's add_callback runs when the client leaves
    reader.thread.join(5)
    assert not reader.thread.is_alive() and reader.error is None and hub.watching == 0


@pytest.mark.parametrize(
    ("start", "until", "moves", "expected"),
    [
        (domain.PENDING, {domain.PAID}, [domain.AWAITING_PAYMENT, domain.PAID], ["AWAITING_PAYMENT", "PAID"]),
        (domain.PAID, {domain.PAID}, [], []),
        (domain.PENDING, {domain.PAID}, [domain.CANCELLED], ["CANCELLED"]),
        (domain.PAID, {domain.AWAITING_PAYMENT}, [domain.FULFILLED], ["FULFILLED"]),
        (
            domain.PENDING,
            {domain.AWAITING_PAYMENT, domain.PAID},
            [domain.AWAITING_PAYMENT],
            ["AWAITING_PAYMENT"],
        ),
        (
            domain.PENDING,
            set(),
            [domain.AWAITING_PAYMENT, domain.PAID, domain.FULFILLED],
            ["AWAITING_PAYMENT", "PAID", "FULFILLED"],
        ),
    ],
    ids=["ends-at-paid", "already-paid", "terminal-first", "terminal-past-until", "first-of-two", "no-until"],
)
def test_a_watch_ends_after_a_terminal_state_or_one_it_was_asked_for(
    start: str, until: set[str], moves: list[str], expected: list[str]
) -> None:
    hub = ChangeHub()
    current = _order(start)
    deadline = time.monotonic() + 5  # a watch that failed to end still stops, and the test fails
    watch = snapshots(
        hub, current, active=lambda: time.monotonic() < deadline, on_leave=_no_leave, until=until
    )
    seen = [next(watch).state]
    for state in moves:
        current = current.moved(state, NOW)
        hub.notify([current])
        seen.append(next(watch).state)
    assert next(watch, None) is None
    assert time.monotonic() < deadline, "the watch ended at once, not at its deadline"
    assert seen == [start, *expected]
    assert hub.watching == 0


# -- many watchers over a real database --------------------------------------------------

ORDERS = 20
WATCHERS_PER_ORDER = 10
PASSES = 3


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "postgresql":
        make: Callable[[], str] = request.getfixturevalue("postgres_databases")
        url = make()
    else:
        url = f"sqlite:///{tmp_path / 'orders.db'}"
    connected = db.connect(config.DatabaseSettings(url=url), migrations=SERVICE.migrations)
    yield connected
    connected.dispose()


def _allow(owner: str, resource: str) -> None:
    """An ownership check that admits everyone (the servicer's is tested with the service)."""


def _replica(engine: Engine, hub: ChangeHub | None) -> domain.Orders:
    """The orders domain as one replica runs it: its own store, and its own hub if it has one."""
    outbox = bus.Outbox(store.BUS, source="orders", routing=bus.consumer_routing())
    on_change = hub.notify if hub is not None else None
    return domain.Orders(store.OrdersStore(engine, outbox, on_change).transaction)


def _authorize(orders: domain.Orders, order: domain.Order) -> None:
    assert orders.authorized(order, f"payments/p-{order.id}") is not None


def test_many_watchers_cost_one_query_per_recheck_and_each_sees_every_change(engine: Engine) -> None:
    hub = ChangeHub()
    here = _replica(engine, hub)
    elsewhere = _replica(engine, None)  # another replica: its commits reach no hub here
    line = [domain.NewLine("sku", 1, Money("EUR", 250))]
    placed = [here.create(f"users/u{n}", line, "", "", _allow) for n in range(ORDERS)]
    readers: dict[str, list[_Reader]] = {
        order.id: [
            _Reader(
                snapshots(hub, order, active=_forever, on_leave=_no_leave, until={domain.AWAITING_PAYMENT})
            )
            for _ in range(WATCHERS_PER_ORDER)
        ]
        for order in placed
    }
    eventually(lambda: hub.watching == ORDERS * WATCHERS_PER_ORDER, what="every watch to subscribe")

    statements: list[tuple[str, str]] = []

    def record(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        statements.append((threading.current_thread().name, statement.lstrip().split()[0].upper()))

    event.listen(engine, "before_cursor_execute", record)
    recheck = Recheck(hub, here.versions, here.find, interval=3600)
    for _ in range(PASSES):
        assert recheck.run_once() == 0
    selects = [kind for _, kind in statements if kind == "SELECT"]
    assert len(selects) == PASSES, f"one query per pass for {hub.watching} watches: {statements}"

    half = ORDERS // 2
    for order in placed[:half]:
        _authorize(here, order)  # pushed from the commit: no read by any watcher
    for order in placed[half:]:
        _authorize(elsewhere, order)  # found by the next re-check
    mark = len(statements)
    assert recheck.run_once() == ORDERS - half
    assert sum(kind == "SELECT" for _, kind in statements[mark:]) == 1 + (ORDERS - half)

    for order in placed:
        for reader in readers[order.id]:
            reader.thread.join(10)
    failed = [r.error for rs in readers.values() for r in rs if r.error is not None or r.thread.is_alive()]
    assert failed == []
    assert {tuple(r.states) for rs in readers.values() for r in rs} == {
        (domain.PENDING, domain.AWAITING_PAYMENT)
    }
    watcher_threads = {r.thread.name for rs in readers.values() for r in rs}
    assert not [s for s in statements if s[0] in watcher_threads], "watchers read nothing themselves"
    assert hub.watching == 0
    event.remove(engine, "before_cursor_execute", record)
