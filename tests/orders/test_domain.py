"""Pure rules of orders: the transition table, backoff, and the change hub behind WatchOrder."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import threading
import time

import pytest

from services.kit.domain_errors import InvalidArgument
from services.kit.money import Money
from services.orders import domain
from services.orders.watch import ChangeHub, snapshots

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
LEGAL = {
    ("PENDING", "AWAITING_PAYMENT"),
    ("PENDING", "PAYMENT_FAILED"),
    ("PENDING", "CANCELLED"),
    ("AWAITING_PAYMENT", "PAID"),
    ("AWAITING_PAYMENT", "CANCELLED"),
    ("PAID", "FULFILLED"),
    ("PAID", "CANCELLED"),
}


def _order(state: str = domain.PENDING) -> domain.Order:
    line = domain.Line("A", 1, Money("EUR", 5), Money("EUR", 5))
    return domain.Order("abcd", "users/u", (line,), Money("EUR", 5), state, NOW, NOW)


@pytest.mark.parametrize(
    ("source", "target"),
    list(itertools.product(domain.STATES, repeat=2)),
    ids=[f"{a}->{b}" for a, b in itertools.product(domain.STATES, repeat=2)],
)
def test_only_the_contracts_transitions_are_legal(source: str, target: str) -> None:
    order = _order(source)
    if (source, target) in LEGAL:
        moved = order.moved(target, NOW + dt.timedelta(seconds=1))
        assert (moved.state, moved.version) == (target, order.version + 1)
        assert moved.etag != order.etag
        assert (moved.next_capture_at is not None) == (target == domain.AWAITING_PAYMENT)
    else:
        with pytest.raises(ValueError, match="illegal transition"):
            order.moved(target, NOW)


def test_terminal_states_are_the_ones_without_moves() -> None:
    assert {domain.FULFILLED, domain.CANCELLED, domain.PAYMENT_FAILED} == domain.TERMINAL


def test_capture_backoff_doubles_and_is_capped() -> None:
    assert dt.timedelta(seconds=0.25) <= domain.capture_backoff(0) <= dt.timedelta(seconds=0.5)
    assert dt.timedelta(seconds=2) <= domain.capture_backoff(3) <= dt.timedelta(seconds=4)
    assert domain.capture_backoff(500) <= domain.CAPTURE_BACKOFF_MAX


def test_the_capture_request_id_is_stable_per_order() -> None:
    assert domain.capture_request_id(_order()) == domain.capture_request_id(_order(domain.PAID))
    other = dataclasses.replace(_order(), id="efgh")
    assert domain.capture_request_id(other) != domain.capture_request_id(_order())


def test_a_watch_is_woken_by_the_hub_long_before_its_fallback_poll() -> None:
    hub = ChangeHub()
    current = [_order()]
    seen: list[domain.Order] = []
    leave: list[object] = []
    watch = snapshots(
        hub, lambda _id: current[0], current[0], active=lambda: True, on_leave=leave.append, poll_seconds=30
    )
    reader = threading.Thread(target=lambda: seen.extend(watch), daemon=True)
    reader.start()
    deadline = time.monotonic() + 5
    while hub.watching == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    for state in (domain.AWAITING_PAYMENT, domain.CANCELLED):
        current[0] = current[0].moved(state, NOW)
        hub.notify([current[0]])
        while len(seen) < (2 if state == domain.AWAITING_PAYMENT else 3) and time.monotonic() < deadline:
            time.sleep(0.01)
    reader.join(5)
    assert [o.state for o in seen] == [domain.PENDING, domain.AWAITING_PAYMENT, domain.CANCELLED]
    assert time.monotonic() - started < 5 and hub.watching == 0 and len(leave) == 1


def test_a_watch_stops_when_the_client_leaves() -> None:
    hub = ChangeHub()
    active = threading.Event()
    active.set()
    wake: list[object] = []
    watch = snapshots(
        hub, lambda _id: _order(), _order(), active=active.is_set, on_leave=wake.append, poll_seconds=30
    )
    assert next(watch).state == domain.PENDING
    finished = threading.Event()

    def drain() -> None:
        list(watch)
        finished.set()

    threading.Thread(target=drain, daemon=True).start()
    deadline = time.monotonic() + 5
    while not wake and time.monotonic() < deadline:
        time.sleep(0.01)
    active.clear()
    wake[0]()  # type: ignore[operator]  # what gRPC's add_callback runs when the client leaves
    assert finished.wait(5) and hub.watching == 0


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
    current = [_order(start)]
    reads: list[domain.Order] = []

    def read(_id: str) -> domain.Order:
        reads.append(current[0])
        return current[0]

    deadline = time.monotonic() + 5  # a watch that failed to end still stops, and the test fails
    watch = snapshots(
        ChangeHub(),
        read,
        current[0],
        active=lambda: time.monotonic() < deadline,
        on_leave=lambda _wake: None,
        until=until,
        poll_seconds=0.001,
    )
    seen = [next(watch).state]
    for state in moves:
        current[0] = current[0].moved(state, NOW)
        seen.append(next(watch).state)
    reads_at_end = len(reads)
    assert next(watch, None) is None
    assert seen == [start, *expected]
    assert len(reads) == reads_at_end, "the watch ends at once, without reading the order again"


def test_watch_until_keeps_the_states_it_is_given() -> None:
    assert domain.watch_until([]) == frozenset()
    assert domain.watch_until([domain.PAID, domain.PAID]) == {domain.PAID}
    assert domain.watch_until(domain.STATES) == set(domain.STATES)


@pytest.mark.parametrize(
    ("states", "fields"),
    [
        ([""], {"until_states[0]"}),
        ([domain.PAID, "", "SHIPPED"], {"until_states[1]", "until_states[2]"}),
        ([domain.PAID] * (len(domain.STATES) + 1), {"until_states"}),
    ],
    ids=["unspecified", "two-of-three", "too-many"],
)
def test_watch_until_refuses_what_is_no_state(states: list[str], fields: set[str]) -> None:
    with pytest.raises(InvalidArgument) as refused:
        domain.watch_until(states)
    assert refused.value.reason == "UNTIL_STATES_INVALID"
    assert {v.field for v in refused.value.violations} == fields
