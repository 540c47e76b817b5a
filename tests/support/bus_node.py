"""A bus node process for the crash tests: a kit server with the real embedded transport.

    python -m tests.support.bus_node publisher   # identity `orders`: relay + EventSink
    python -m tests.support.bus_node consumer    # identity `notifications`: EventSink + effects

Settings come from POLY_* as for a service. For fault injection, BUS_TEST_CRASH_AFTER=LO,HI
makes the process SIGKILL itself after a random number (in [LO, HI)) of passes through its
crash points: the publisher after a push was accepted but before it recorded the delivery;
the consumer inside the handler before its commit, or after the commit before its answer
went out. BUS_TEST_POISON_ORDER names an order whose event the consumer always refuses.
"""

from __future__ import annotations

import os
import random
import signal
import sys

from google.protobuf.message import Message
from sqlalchemy import Connection, MetaData

from poly.events.v1.events_pb2 import EventEnvelope, OrderPaid
from services.kit import bus, clients, config, db, logs, server
from tests.support.effects import effect_table, record_effect

_POISON = os.environ.get("BUS_TEST_POISON_ORDER", "")


def _crash_budget() -> int | None:
    window = os.environ.get("BUS_TEST_CRASH_AFTER")
    if not window:
        return None
    low, high = (int(part) for part in window.split(","))
    return random.Random(os.getpid()).randrange(low, high)


_budget = [_crash_budget()]


def _maybe_crash() -> None:
    if _budget[0] is None:
        return
    _budget[0] -= 1
    if _budget[0] <= 0:
        os.kill(os.getpid(), signal.SIGKILL)


class _CrashingTransport:
    def __init__(self, inner: bus.Transport) -> None:
        self._inner = inner

    def send(self, route: str, envelope: EventEnvelope) -> None:
        self._inner.send(route, envelope)
        _maybe_crash()  # accepted by the consumer, not yet recorded as delivered


class _CrashingConsumer(bus.Consumer):
    def apply(self, envelope: EventEnvelope) -> bus.Outcome:
        outcome = super().apply(envelope)
        _maybe_crash()  # committed, but the answer never leaves
        return outcome


def _handler(recorder: bus.EventHandler) -> bus.EventHandler:
    def handle(connection: Connection, payload: Message, envelope: EventEnvelope) -> None:
        assert isinstance(payload, OrderPaid)
        if _POISON and payload.order == _POISON:
            raise RuntimeError(f"poison order {payload.order}")
        recorder(connection, payload, envelope)
        _maybe_crash()  # the effect is written but not committed

    return handle


def main(role: str) -> None:
    service = {"publisher": "orders", "consumer": "notifications"}[role]
    settings = config.load_or_exit(service)
    logs.setup(f"{role}-{service}", settings.log_level)
    metadata = MetaData(naming_convention=db.naming_convention)
    tables = bus.bus_tables(metadata)
    effects = effect_table(metadata)
    engine = db.connect_or_exit(settings.db)
    metadata.create_all(engine)
    peer = "notifications" if role == "publisher" else "orders"
    channels = clients.Channels(settings, services={peer: [bus.EVENT_SINK]})
    background: list[object] = []
    send_timeout = settings.bus.lease_seconds / 2
    broker = (
        bus.BrokerTransport(settings.bus.url, prefix=settings.bus.prefix, timeout=send_timeout - 0.5)
        if settings.bus.url
        else None
    )
    if role == "publisher":
        consumer = bus.Consumer(engine, tables, {})
        relay = bus.Relay(
            engine,
            tables,
            _CrashingTransport(broker or bus.EmbeddedTransport(channels, timeout=send_timeout)),
            settings=bus.RelaySettings(
                max_attempts=settings.bus.max_attempts,
                base_delay=0.05,
                max_delay=0.5,
                lease_seconds=settings.bus.lease_seconds,
                send_timeout=send_timeout,
                idle_poll=0.05,
            ),
            owner=f"publisher-{os.getpid()}",
        )
        background.append(relay)
    else:
        consumer = _CrashingConsumer(engine, tables, {OrderPaid: _handler(record_effect(effects))})
        if settings.bus.url:  # embedded: nothing to start, the publisher's routes come from the contract
            background.append(
                bus.BrokerConsumer(
                    settings.bus.url,
                    service,
                    consumer,
                    prefix=settings.bus.prefix,
                    attempts=settings.bus.max_attempts,
                    retry_delay=0.05,
                )
            )
    sink = bus.EventSinkServicer(consumer, engine, tables, service=service, services=config.SERVICES)
    try:
        server.serve(settings, [bus.sink_registration(sink)], background=background)  # type: ignore[list-item]
    finally:
        channels.close()
        if broker is not None:
            broker.close()
        engine.dispose()


if __name__ == "__main__":
    main(sys.argv[1])
