from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import random
import threading
from typing import Any

import pytest
from sqlalchemy import Row, select

from poly.events.v1.events_pb2 import EventEnvelope
from services.kit import bus
from tests.kit.bus.conftest import BusDb, Clock, ScriptedTransport, publish
from tests.support.background import RecordingBackground
from tests.support.waiting import eventually

FAST = bus.RelaySettings(batch_size=10, max_attempts=3, base_delay=1.0, max_delay=8.0, lease_seconds=30)


def _relay(bus_db: BusDb, transport: ScriptedTransport, clock: Clock, **kwargs: object) -> bus.Relay:
    kwargs.setdefault("settings", FAST)
    return bus.Relay(bus_db.engine, bus_db.tables, transport, clock=clock, **kwargs)  # type: ignore[arg-type]


def _rows(bus_db: BusDb, **where: object) -> list[Row[Any]]:
    """The delivery rows (filtered by column values), in position and route order."""
    d = bus_db.tables.delivery
    query = select(d).where(*(d.c[name] == value for name, value in where.items()))
    with bus_db.engine.connect() as connection:
        return list(connection.execute(query.order_by(d.c.position, d.c.route)).all())


def _outbox(bus_db: BusDb, clock: Clock) -> bus.Outbox:
    return bus.Outbox(bus_db.tables, source="orders", routing=bus.broker_routing(), clock=clock)


def _drain(relay: bus.Relay, rounds: int = 50) -> None:
    for _ in range(rounds):
        if relay.run_once() == 0:
            return
    raise AssertionError("the relay still had work after the bounded number of rounds")


def test_events_are_delivered_with_their_sequence(bus_db: BusDb) -> None:
    clock, transport = Clock(), ScriptedTransport()
    outbox = _outbox(bus_db, clock)
    published = [publish(bus_db, outbox, f"orders/{i % 3}", f"orders/{i % 3}") for i in range(9)]
    _drain(_relay(bus_db, transport, clock))
    assert sorted(e.id for _, e in transport.sent) == sorted(e.id for e in published)
    assert all(route == "broker" for route, _ in transport.sent)
    sequences = [e.sequence for _, e in transport.sent]
    assert len(set(sequences)) == 9 and min(sequences) > 0
    assert bus.state_counts(bus_db.engine, bus_db.tables) == {bus.DELIVERED: 9}


def test_a_failing_event_holds_back_later_events_of_its_aggregate_only(bus_db: BusDb) -> None:
    clock, transport = Clock(), ScriptedTransport()
    outbox = _outbox(bus_db, clock)
    first = publish(bus_db, outbox, "orders/A", "A1")
    second = publish(bus_db, outbox, "orders/A", "A2")
    other = publish(bus_db, outbox, "orders/B", "B1")
    transport.failures[first.id] = 1
    relay = _relay(bus_db, transport, clock)
    relay.run_once()
    assert [e.id for _, e in transport.sent] == [other.id], "A2 waits for A1; B is not held back"
    relay.run_once()
    assert [e.id for _, e in transport.sent] == [other.id], "A1 is in backoff"
    clock.advance(FAST.max_delay)
    _drain(relay)
    assert [e.id for _, e in transport.sent] == [other.id, first.id, second.id]
    assert relay.metrics.total("retried") == 1


def test_backoff_grows_exponentially_with_jitter() -> None:
    rng = random.Random(7)
    settings = bus.RelaySettings(base_delay=0.5, max_delay=10.0)
    for attempts, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (6, 10.0), (12, 10.0)]:
        delays = [bus.backoff_seconds(attempts, settings, rng=rng) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1, "jittered"


def test_a_poison_event_is_dead_lettered_without_blocking_and_can_be_redriven(bus_db: BusDb) -> None:
    clock, transport = Clock(), ScriptedTransport()
    outbox = _outbox(bus_db, clock)
    poison = publish(bus_db, outbox, "orders/A", "A1")
    later = publish(bus_db, outbox, "orders/A", "A2")
    transport.always_failing.add(poison.id)
    relay = _relay(bus_db, transport, clock)
    for _ in range(FAST.max_attempts):
        relay.run_once()
        clock.advance(FAST.max_delay)
    _drain(relay)
    assert [e.id for _, e in transport.sent] == [later.id], "the later event is not blocked by the dead one"
    [dead] = bus.dead_letters(bus_db.engine, bus_db.tables)
    assert (dead.event_id, dead.attempts, dead.route) == (poison.id, FAST.max_attempts, "broker")
    assert dead.last_error is not None and "always fails" in dead.last_error
    assert relay.metrics.total("dead_lettered") == 1

    transport.always_failing.clear()  # the consumer was fixed
    assert bus.redrive(bus_db.engine, bus_db.tables, event_ids=[poison.id], now=clock()) == 1
    _drain(relay)
    assert [e.id for _, e in transport.sent] == [later.id, poison.id]
    assert bus.dead_letters(bus_db.engine, bus_db.tables) == []


def test_a_claim_of_a_relay_that_died_is_taken_over_when_its_lease_ends(
    bus_db: BusDb, caplog: pytest.LogCaptureFixture
) -> None:
    clock, transport = Clock(), ScriptedTransport()
    event = publish(bus_db, _outbox(bus_db, clock), "orders/A", "A1")
    dead_relay = _relay(bus_db, transport, clock, owner="dead")
    token, _lease_until, claimed = dead_relay._claim()  # claims, then "dies" before recording
    assert [c.position for c in claimed] and token.startswith("dead:")
    survivor = _relay(bus_db, transport, clock, owner="survivor")
    assert survivor.run_once() == 0, "the lease still holds"
    clock.advance(FAST.lease_seconds + 1)
    with caplog.at_level(logging.WARNING, logger="poly.bus.relay"):
        _drain(survivor)
    assert [e.id for _, e in transport.sent] == [event.id]
    assert survivor.metrics.snapshot()[("reclaimed", event.type)] == 1
    [line] = [r for r in caplog.records if "lease expired" in r.getMessage()]
    assert line.levelno == logging.WARNING
    assert (line.route, line.position, line.event_id) == ("broker", claimed[0].position, event.id)  # type: ignore[attr-defined]
    assert line.previous_owner == token  # type: ignore[attr-defined]
    assert dead_relay.metrics.total("reclaimed") == 0


def test_a_delivery_retried_after_a_recorded_outcome_is_not_counted_as_reclaimed(bus_db: BusDb) -> None:
    clock, transport = Clock(), ScriptedTransport()
    event = publish(bus_db, _outbox(bus_db, clock), "orders/A", "A1")
    transport.failures[event.id] = 1
    relay = _relay(bus_db, transport, clock)
    relay.run_once()
    clock.advance(FAST.lease_seconds + FAST.max_delay)  # past both the backoff and the old lease
    _drain(relay)
    assert [e.id for _, e in transport.sent] == [event.id]
    assert relay.metrics.total("reclaimed") == 0, "its failure was recorded: the lease was released"


@pytest.mark.parametrize("relays", [2, 4])
def test_concurrent_relays_deliver_each_event_once_in_aggregate_order(bus_db: BusDb, relays: int) -> None:
    clock, transport = Clock(), ScriptedTransport()
    outbox = _outbox(bus_db, clock)
    published = [publish(bus_db, outbox, f"orders/{i % 5}", str(i)) for i in range(60)]
    workers = [_relay(bus_db, transport, clock, owner=f"r{n}") for n in range(relays)]
    errors: list[BaseException] = []

    def work(relay: bus.Relay) -> None:
        try:
            _drain(relay, rounds=200)
        except BaseException as error:  # reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(relay,)) for relay in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    sent_ids = [e.id for _, e in transport.sent]
    assert sorted(sent_ids) == sorted(e.id for e in published), "every event exactly once"
    for aggregate in {e.aggregate_id for e in published}:
        mine = [e.sequence for _, e in transport.sent if e.aggregate_id == aggregate]
        assert mine == sorted(mine), f"{aggregate} delivered out of order"
    d = bus_db.tables.delivery
    with bus_db.engine.connect() as connection:
        assert set(connection.execute(select(d.c.state)).scalars()) == {bus.DELIVERED}


class _Exploding(ScriptedTransport):
    """Raises something other than a DeliveryError for one event."""

    def __init__(self, event_id: str) -> None:
        super().__init__()
        self.event_id = event_id

    def send(self, route: str, envelope: EventEnvelope) -> None:
        if envelope.id == self.event_id:
            raise KeyError("a bug or a missing peer, not a refusal")
        super().send(route, envelope)


def test_an_unexpected_send_error_fails_that_delivery_only(bus_db: BusDb) -> None:
    clock = Clock()
    outbox = _outbox(bus_db, clock)
    events = [publish(bus_db, outbox, f"orders/{i}", f"orders/{i}") for i in range(5)]
    transport = _Exploding(events[2].id)
    relay = _relay(bus_db, transport, clock)
    relay.run_once()
    assert sorted(e.id for _, e in transport.sent) == sorted(e.id for i, e in enumerate(events) if i != 2)
    for _ in range(FAST.max_attempts):
        clock.advance(FAST.max_delay)
        relay.run_once()
    [dead] = bus.dead_letters(bus_db.engine, bus_db.tables)
    assert dead.event_id == events[2].id and "KeyError" in (dead.last_error or "")


def test_transient_failures_are_retried_without_ever_dead_lettering(bus_db: BusDb) -> None:
    clock = Clock()

    class Down(ScriptedTransport):
        def send(self, route: str, envelope: EventEnvelope) -> None:
            raise bus.DeliveryError("payments: UNAVAILABLE", transient=True)

    event = publish(bus_db, _outbox(bus_db, clock), "orders/A", "A1")
    relay = _relay(bus_db, Down(), clock)
    for _ in range(FAST.max_attempts * 3):
        relay.run_once()
        clock.advance(FAST.max_delay)
    assert bus.dead_letters(bus_db.engine, bus_db.tables) == []
    working = ScriptedTransport()
    _drain(_relay(bus_db, working, clock))
    assert [e.id for _, e in working.sent] == [event.id]


def test_a_delivery_whose_lease_would_run_out_mid_send_is_not_sent_and_is_freed(bus_db: BusDb) -> None:
    clock = Clock()
    outbox = _outbox(bus_db, clock)
    first, second = (publish(bus_db, outbox, f"orders/{a}", a) for a in "AB")

    class Slow(ScriptedTransport):
        """The first send takes so long that the round's lease is nearly over after it."""

        def send(self, route: str, envelope: EventEnvelope) -> None:
            super().send(route, envelope)
            if len(self.sent) == 1:
                clock.advance(FAST.lease_seconds - FAST.send_timeout + 0.1)

    transport = Slow()
    relay = _relay(bus_db, transport, clock, settings=dataclasses.replace(FAST, concurrency=1))
    assert relay.run_once() == 2
    assert [e.id for _, e in transport.sent] == [first.id], (
        "another relay may claim it any moment: it must not be sent twice at once"
    )
    [row] = _rows(bus_db, state=bus.PENDING)
    assert (row.lease_owner, row.lease_until, row.attempts) == (None, None, 0), "freed at once, no attempt"
    _drain(relay)
    assert [e.id for _, e in transport.sent] == [first.id, second.id]
    assert relay.metrics.total("reclaimed") == 0


def test_the_lease_must_outlast_a_send() -> None:
    with pytest.raises(ValueError, match="lease_seconds"):
        bus.RelaySettings(lease_seconds=5, send_timeout=10)


# -- a route that is down ------------------------------------------------------------------

DOWN_FOR_A_WHILE = bus.RelaySettings(
    batch_size=50, max_attempts=3, base_delay=1.0, max_delay=60.0, transient_max_delay=2.0, lease_seconds=30
)


@dataclasses.dataclass
class _Routes(ScriptedTransport):
    """Routes that are down (a transient failure) or refusing, switched by the test."""

    down: set[str] = dataclasses.field(default_factory=set)
    refusing: set[str] = dataclasses.field(default_factory=set)
    tries: list[str] = dataclasses.field(default_factory=list)
    """The route of every send, in the order they were made."""

    def send(self, route: str, envelope: EventEnvelope) -> None:
        with self.lock:
            self.tries.append(route)
        if route in self.down:
            raise bus.DeliveryError(f"{route}: UNAVAILABLE: connection refused", transient=True)
        if route in self.refusing:
            raise bus.DeliveryError(f"{route}: refused")
        super().send(route, envelope)


def _two_routes(bus_db: BusDb, clock: Clock) -> bus.Outbox:
    return bus.Outbox(
        bus_db.tables,
        source="orders",
        routing=lambda _session, _type: ["notifications", "payments"],
        clock=clock,
    )


def test_after_a_transient_failure_the_rest_of_the_round_to_that_route_is_deferred_unsent(
    bus_db: BusDb,
) -> None:
    clock, transport = Clock(), _Routes(down={"payments"})
    outbox = _two_routes(bus_db, clock)
    events = [publish(bus_db, outbox, f"orders/{i}", f"orders/{i}") for i in range(3)]
    settings = dataclasses.replace(DOWN_FOR_A_WHILE, concurrency=1)
    relay = _relay(bus_db, transport, clock, settings=settings)
    assert relay.run_once() == 6
    assert transport.tries.count("payments") == 1, "one send found it down; the other two were not made"
    assert sorted(e.id for _, e in transport.sent) == sorted(e.id for e in events), (
        "notifications is not held up"
    )
    waiting = _rows(bus_db, route="payments")
    assert {(r.state, r.attempts, r.lease_owner) for r in waiting} == {(bus.PENDING, 0, None)}, (
        "no attempt spent"
    )
    [retry_at] = {r.next_attempt_at for r in waiting}
    assert clock() < retry_at <= clock() + dt.timedelta(seconds=settings.transient_max_delay), (
        "one short retry"
    )
    assert all("UNAVAILABLE" in r.last_error for r in waiting)
    assert (relay.metrics.total("retried"), relay.metrics.total("deferred")) == (1, 2)


def test_a_route_down_for_a_while_is_tried_once_per_retry_and_its_backlog_drains_within_the_low_cap(
    bus_db: BusDb,
) -> None:
    clock, transport = Clock(), _Routes(down={"payments"})
    outbox = _two_routes(bus_db, clock)
    cap = dt.timedelta(seconds=DOWN_FOR_A_WHILE.transient_max_delay)
    relay = _relay(bus_db, transport, clock, settings=DOWN_FOR_A_WHILE)  # 16 sends at once
    published = [publish(bus_db, outbox, f"orders/{i % 4}", f"orders/{i % 4}#{i}") for i in range(8)]
    tries_per_round = []
    for step in range(120):  # a minute down, a round every half second
        if step == 60:
            published += [
                publish(bus_db, outbox, f"orders/{i % 4}", f"orders/{i % 4}#{i}") for i in range(8, 16)
            ]
        before = transport.tries.count("payments")
        relay.run_once()
        tries_per_round.append(transport.tries.count("payments") - before)
        clock.advance(0.5)
    assert tries_per_round[0] >= 1 and max(tries_per_round[1:]) <= 1, (
        "after the first round: one probe at a time"
    )
    assert sum(tries_per_round) <= 60 + 4, "at most one send per retry delay (1-2 s), whatever the backlog"
    recovery = clock()
    waiting = _rows(bus_db, route="payments")
    assert len(waiting) == 16 and {(r.state, r.attempts) for r in waiting} == {(bus.PENDING, 0)}
    assert max(r.next_attempt_at for r in waiting) <= recovery + cap, "no delivery waits longer than the cap"
    assert bus.dead_letters(bus_db.engine, bus_db.tables) == []

    transport.down.clear()  # the route is back
    while bus.backlog(bus_db.engine, bus_db.tables):
        assert clock() - recovery <= cap + dt.timedelta(seconds=0.25), "drained within the cap of recovery"
        _drain(relay)
        clock.advance(0.25)
    delivered = _rows(bus_db, route="payments")
    assert {(r.state, r.attempts) for r in delivered} == {(bus.DELIVERED, 0)}
    assert max(r.delivered_at for r in delivered) <= recovery + cap + dt.timedelta(seconds=0.25)
    to_payments = [e for route, e in transport.sent if route == "payments"]
    assert sorted(e.id for e in to_payments) == sorted(e.id for e in published), "each once"
    for aggregate in {e.aggregate_id for e in published}:
        mine = [e.sequence for e in to_payments if e.aggregate_id == aggregate]
        assert mine == sorted(mine), f"{aggregate} delivered out of order"
    assert relay.metrics.total("reclaimed") == 0


def test_refusals_after_an_outage_still_back_off_to_dead_lettering_after_max_attempts(bus_db: BusDb) -> None:
    clock, transport = Clock(), _Routes(down={"broker"})
    event = publish(bus_db, _outbox(bus_db, clock), "orders/A", "A1")
    settings = dataclasses.replace(DOWN_FOR_A_WHILE, max_delay=8.0)
    relay = _relay(bus_db, transport, clock, settings=settings)
    for _ in range(30):  # far more transient failures than max_attempts
        relay.run_once()
        clock.advance(settings.transient_max_delay)
    [row] = _rows(bus_db)
    assert (row.state, row.attempts) == (bus.PENDING, 0), "a route that is down costs no attempt"

    transport.down.clear()
    transport.refusing.add("broker")  # back, but it refuses the event
    for attempts in range(1, settings.max_attempts):
        assert relay.run_once() == 1
        [row] = _rows(bus_db)
        assert (row.state, row.attempts) == (bus.PENDING, attempts)
        ceiling = min(settings.max_delay, settings.base_delay * 2 ** (attempts - 1))
        delay = (row.next_attempt_at - clock()).total_seconds()
        assert ceiling / 2 <= delay <= ceiling, "the refusal backoff, from its first step"
        clock.advance(settings.max_delay)
    relay.run_once()
    [dead] = bus.dead_letters(bus_db.engine, bus_db.tables)
    assert (dead.event_id, dead.attempts) == (event.id, settings.max_attempts)
    assert dead.last_error is not None and "refused" in dead.last_error


def test_the_retry_delay_of_a_route_that_is_down_is_positive_and_at_most_max_delay(bus_db: BusDb) -> None:
    with pytest.raises(ValueError, match="transient_max_delay"):
        bus.RelaySettings(transient_max_delay=0)
    clock, transport = Clock(), _Routes(down={"broker"})
    publish(bus_db, _outbox(bus_db, clock), "orders/A", "A1")
    settings = dataclasses.replace(DOWN_FOR_A_WHILE, max_delay=0.5)
    relay = _relay(bus_db, transport, clock, settings=settings)
    for _ in range(10):
        relay.run_once()
        [row] = _rows(bus_db)
        assert row.next_attempt_at <= clock() + dt.timedelta(seconds=settings.max_delay)
        clock.advance(settings.max_delay)


def test_a_running_relay_retries_at_the_time_it_scheduled_not_at_its_idle_poll(bus_db: BusDb) -> None:
    """Idle, the relay waits up to `idle_poll` (long, so it costs little); a retry it put off
    runs when due, with no wake-up and no publish to start it."""
    transport = ScriptedTransport()
    outbox = bus.Outbox(bus_db.tables, source="orders", routing=bus.broker_routing())
    event = publish(bus_db, outbox, "orders/A", "A1")
    transport.failures[event.id] = 1
    settings = dataclasses.replace(FAST, base_delay=0.2, max_delay=0.2, idle_poll=600.0)
    relay = bus.Relay(bus_db.engine, bus_db.tables, transport, settings=settings)
    relay.start()
    try:
        # The retry runs well before the 600 s idle poll.
        _wait_until_delivered(bus_db, 1)
    finally:
        relay.stop(5)
    assert [e.id for _, e in transport.sent] == [event.id] and relay.metrics.total("retried") == 1


def test_a_running_relay_drains_one_aggregates_backlog_in_order_without_waiting_to_poll(
    bus_db: BusDb,
) -> None:
    """A round holds one delivery per aggregate; the next follows in the next round at once
    (the relay knows one is pending), not at the idle poll."""
    transport = ScriptedTransport()
    outbox = bus.Outbox(bus_db.tables, source="orders", routing=bus.broker_routing())
    published = [publish(bus_db, outbox, "orders/A", f"A{n}") for n in range(5)]
    published += [publish(bus_db, outbox, "orders/B", "B0")]
    relay = bus.Relay(
        bus_db.engine, bus_db.tables, transport, settings=dataclasses.replace(FAST, idle_poll=600.0)
    )
    relay.start()
    try:
        _wait_until_delivered(bus_db, 6)
    finally:
        relay.stop(5)
    sent_a = [e.id for _, e in transport.sent if e.aggregate_id == "orders/A"]
    assert sent_a == [e.id for e in published[:5]]


def test_a_running_relay_runs_below_the_calls_and_its_transactions_do_not(bus_db: BusDb) -> None:
    # Its thread (and its send threads) give way to the calls; a claim or a record, which
    # hold the write lock, must not run on them (kit.priority.BackgroundThreads).
    transport = ScriptedTransport()
    outbox = bus.Outbox(bus_db.tables, source="orders", routing=bus.broker_routing())
    for n in range(3):
        publish(bus_db, outbox, f"orders/{n}", f"E{n}")
    background = RecordingBackground(bus_db.engine, ("bus-send",))
    relay = bus.Relay(
        bus_db.engine, bus_db.tables, transport, settings=FAST, owner="orders", background=background
    )
    relay.start()
    try:
        _wait_until_delivered(bus_db, 3)
    finally:
        relay.stop(5)
    assert background.entered == ["bus-relay-orders"]
    assert background.stray == [], "a lowered thread ran a statement outside a transaction call"
    assert {"_claim", "_record"} <= set(background.transactions)


def _wait_until_delivered(bus_db: BusDb, count: int) -> None:
    """Until all `count` deliveries are DELIVERED, bounded at 10 s."""
    eventually(
        lambda: bus.state_counts(bus_db.engine, bus_db.tables) == {bus.DELIVERED: count},
        timeout=10,
        what=f"{count} deliveries delivered",
    )
