from __future__ import annotations

import random
import threading

import pytest
from sqlalchemy import select

from poly.events.v1.events_pb2 import EventEnvelope
from services.kit import bus
from tests.kit.bus.conftest import BusDb, Clock, ScriptedTransport, publish

FAST = bus.RelaySettings(batch_size=10, max_attempts=3, base_delay=1.0, max_delay=8.0, lease_seconds=30)


def _relay(bus_db: BusDb, transport: ScriptedTransport, clock: Clock, **kwargs: object) -> bus.Relay:
    return bus.Relay(bus_db.engine, bus_db.tables, transport, settings=FAST, clock=clock, **kwargs)  # type: ignore[arg-type]


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


def test_a_claim_of_a_relay_that_died_is_taken_over_when_its_lease_ends(bus_db: BusDb) -> None:
    clock, transport = Clock(), ScriptedTransport()
    event = publish(bus_db, _outbox(bus_db, clock), "orders/A", "A1")
    dead_relay = _relay(bus_db, transport, clock, owner="dead")
    token, _lease_until, claimed = dead_relay._claim()  # claims, then "dies" before sending
    assert [p for p, _, _ in claimed] and token.startswith("dead:")
    survivor = _relay(bus_db, transport, clock, owner="survivor")
    assert survivor.run_once() == 0, "the lease still holds"
    clock.advance(FAST.lease_seconds + 1)
    _drain(survivor)
    assert [e.id for _, e in transport.sent] == [event.id]


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


def test_a_delivery_whose_lease_would_run_out_mid_send_is_not_sent(bus_db: BusDb) -> None:
    clock, transport = Clock(), ScriptedTransport()
    publish(bus_db, _outbox(bus_db, clock), "orders/A", "A1")
    relay = _relay(bus_db, transport, clock)
    _token, lease_until, [(position, route, raw)] = relay._claim()
    clock.advance(FAST.lease_seconds - FAST.send_timeout + 0.1)  # the round got here late
    assert relay._send(position, route, raw, lease_until) is None
    assert transport.sent == [], "another relay may claim it any moment: it must not be sent twice at once"


def test_the_lease_must_outlast_a_send() -> None:
    with pytest.raises(ValueError, match="lease_seconds"):
        bus.RelaySettings(lease_seconds=5, send_timeout=10)
