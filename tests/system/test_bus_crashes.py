"""Exactly-once effects through crashes: real processes, real mTLS, real databases.

A publisher process (`orders`: relay) and a consumer process (`notifications`: EventSink
and a handler recording effects) run from `tests.support.bus_node`. Each kills itself with
SIGKILL at a random one of its crash points after a random number of passes; the test
restarts whatever died, publishes 1,000 events meanwhile, waits until every delivery is
made, and then counts the effects in the consumer's database.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import pytest
from sqlalchemy import Engine, MetaData, func, select

from poly.events.v1.events_pb2 import OrderPaid
from services.kit import bus, config, db, tls
from services.kit.config import DatabaseSettings
from tests.support.broker import delete_namespace
from tests.support.effects import effect_table
from tests.support.env import free_port
from tests.support.processes import Process, run_module

pytestmark = pytest.mark.slow

EVENTS, AGGREGATES, PER_TRANSACTION = 1000, 10, 20
CRASHING_STARTS = 6
"""Starts of each role that crash; later ones run clean, so the run always completes."""


@dataclass
class Nodes:
    environ: dict[str, str]
    processes: dict[str, Process] = field(default_factory=dict)
    starts: dict[str, int] = field(default_factory=lambda: {"publisher": 0, "consumer": 0})
    crashes: dict[str, int] = field(default_factory=lambda: {"publisher": 0, "consumer": 0})

    def start(self, role: str, *, crash_window: str | None) -> None:
        crashing = crash_window is not None and self.starts[role] < CRASHING_STARTS
        extra = {"BUS_TEST_CRASH_AFTER": crash_window} if crashing and crash_window else {}
        self.processes[role] = Process.module("tests.support.bus_node", {**self.environ, **extra}, role)
        self.starts[role] += 1

    def keep_alive(self, crash_window: str | None) -> None:
        for role, process in list(self.processes.items()):
            code = process.popen.poll()
            if code is not None:
                assert code == -9, f"{role} died with {code}, not by an injected SIGKILL:\n{process.output()}"
                self.crashes[role] += 1
                assert self.starts[role] < 40, "bounded restarts"
                self.start(role, crash_window=crash_window)

    def stop(self) -> None:
        for process in self.processes.values():
            process.stop()


def _wait(condition: Callable[[], bool], nodes: Nodes, crash_window: str | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        nodes.keep_alive(crash_window)
        assert time.monotonic() < deadline, f"timed out; starts={nodes.starts} crashes={nodes.crashes}"
        time.sleep(0.05)  # polling another process's database: nothing to wait on instead


@pytest.fixture(params=["sqlite", "postgresql"])
def urls(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'orders.db'}", f"sqlite:///{tmp_path / 'notifications.db'}"
    make = request.getfixturevalue("postgres_databases")
    return make(), make()


@pytest.fixture(params=["embedded", "rabbitmq"])
def transport(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """The POLY_BUS_* settings of one transport; a RabbitMQ namespace is deleted afterwards."""
    if request.param == "embedded":
        yield {}
        return
    url = request.getfixturevalue("amqp_url")
    prefix = f"polytest-{uuid.uuid4().hex[:10]}"
    yield {"POLY_BUS_URL": url, "POLY_BUS_PREFIX": prefix}
    delete_namespace(url, prefix)


@pytest.fixture
def nodes(tmp_path: Path, urls: tuple[str, str], transport: dict[str, str]) -> Iterator[Nodes]:
    tls.ensure_certificates(tmp_path / "certs", config.COMPONENTS)
    environ = {
        "POLY_HOME": str(tmp_path),
        "POLY_ORDERS_PORT": str(free_port()),
        "POLY_NOTIFICATIONS_PORT": str(free_port()),
        "POLY_ORDERS_DATABASE_URL": urls[0],
        "POLY_NOTIFICATIONS_DATABASE_URL": urls[1],
        "POLY_BUS_LEASE_SECONDS": "3",
        "POLY_BUS_MAX_ATTEMPTS": "1000",
        "POLY_GRACE_SECONDS": "2",
        **transport,
    }
    environ["POLY_ORDERS_ADDRESS"] = f"localhost:{environ['POLY_ORDERS_PORT']}"
    environ["POLY_NOTIFICATIONS_ADDRESS"] = f"localhost:{environ['POLY_NOTIFICATIONS_PORT']}"
    started = Nodes(environ)
    try:
        yield started
    finally:
        started.stop()


def _engine(url: str) -> Engine:
    return db.engine(DatabaseSettings(url=url))


def _queue_drained(environ: dict[str, str]) -> bool:
    """No message waits in the consumer's broker queue (always true for the embedded transport)."""
    if "POLY_BUS_URL" not in environ:
        return True

    async def ready_messages() -> int:
        connection = await aio_pika.connect(environ["POLY_BUS_URL"], timeout=10)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(
                bus.queue_name("notifications", environ["POLY_BUS_PREFIX"]), passive=True
            )
            return int(queue.declaration_result.message_count or 0)

    return asyncio.run(ready_messages()) == 0


def _outbox_when_ready(
    nodes: Nodes, orders_engine: Engine, tables: bus.BusTables, window: str | None
) -> bus.Outbox:
    """An outbox for the test to publish with, once the publisher has created its tables (and,
    on RabbitMQ, the consumer consumes its queue). On the embedded transport the consumer may
    still be starting: routes come from the contract, so its events wait in the outbox."""

    def tables_created() -> bool:
        try:
            with orders_engine.connect() as connection:
                connection.scalar(select(func.count()).select_from(tables.outbox))
        except Exception:  # the publisher has not created its tables yet
            return False
        return True

    if "POLY_BUS_URL" in nodes.environ:
        consumer = nodes.processes["consumer"]
        _wait(lambda: tables_created() and '"consuming"' in consumer.output(), nodes, window, 60)
        return bus.Outbox(tables, source="orders", routing=bus.broker_routing())
    _wait(tables_created, nodes, window, timeout=60)
    return bus.Outbox(tables, source="orders", routing=bus.consumer_routing())


def test_a_thousand_events_have_their_effect_exactly_once_in_order_through_sigkills(
    nodes: Nodes, urls: tuple[str, str]
) -> None:
    window = "40,250"
    nodes.start("publisher", crash_window=window)
    nodes.start("consumer", crash_window=window)
    orders_metadata = MetaData(naming_convention=db.naming_convention)
    tables = bus.bus_tables(orders_metadata)
    orders_engine, notifications_engine = _engine(urls[0]), _engine(urls[1])
    try:
        outbox = _outbox_when_ready(nodes, orders_engine, tables, window)
        rng = random.Random(1)
        published: dict[str, list[str]] = {}
        for start in range(0, EVENTS, PER_TRANSACTION):
            with db.transaction(orders_engine) as session:
                for number in range(start, start + PER_TRANSACTION):
                    aggregate = f"orders/{rng.randrange(AGGREGATES)}"
                    envelope = outbox.publish(
                        session, OrderPaid(order=f"{aggregate}#{number}"), aggregate_id=aggregate
                    )
                    published.setdefault(aggregate, []).append(envelope.id)
            nodes.keep_alive(window)

        def all_delivered() -> bool:
            counts = bus.state_counts(orders_engine, tables)
            return counts.get(bus.DELIVERED, 0) == EVENTS

        _wait(all_delivered, nodes, window, timeout=240)
        effects = effect_table(MetaData())

        def all_applied() -> bool:
            # With a broker, "delivered" means the broker confirmed it; the consumer may lag.
            with notifications_engine.connect() as connection:
                applied = int(connection.scalar(select(func.count()).select_from(effects)) or 0)
            return applied >= EVENTS and _queue_drained(nodes.environ)

        _wait(all_applied, nodes, window, timeout=240)
        with notifications_engine.connect() as connection:
            rows = connection.execute(
                select(effects.c.event_id, effects.c.aggregate_id).order_by(effects.c.id)
            ).all()
        applied = [event_id for event_id, _ in rows]
        assert len(applied) == EVENTS, f"{len(applied)} effects for {EVENTS} events"
        assert sorted(applied) == sorted(i for ids in published.values() for i in ids), "each exactly once"
        for aggregate, ids in published.items():
            assert [e for e, a in rows if a == aggregate] == ids, f"{aggregate}: effects out of publish order"
        assert nodes.crashes["publisher"] >= 1 and nodes.crashes["consumer"] >= 1, nodes.crashes
    finally:
        orders_engine.dispose()
        notifications_engine.dispose()


def _poly(environ: dict[str, str], *args: str) -> str:
    result = run_module("services.cli", environ, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("transport", ["embedded"], indirect=True)  # the broker's dead letters: test_broker
def test_a_poison_event_is_dead_lettered_without_blocking_and_poly_bus_redrive_delivers_it_once_fixed(
    nodes: Nodes, urls: tuple[str, str]
) -> None:
    poison_order = "orders/P#poison"
    nodes.environ.update({"POLY_BUS_MAX_ATTEMPTS": "3", "BUS_TEST_POISON_ORDER": poison_order})
    nodes.start("publisher", crash_window=None)
    nodes.start("consumer", crash_window=None)
    tables = bus.bus_tables(MetaData())
    orders_engine, notifications_engine = _engine(urls[0]), _engine(urls[1])
    try:
        outbox = _outbox_when_ready(nodes, orders_engine, tables, None)
        with db.transaction(orders_engine) as session:
            poison = outbox.publish(session, OrderPaid(order=poison_order), aggregate_id="orders/P")
            later = [
                outbox.publish(session, OrderPaid(order=f"orders/P#{i}"), aggregate_id="orders/P")
                for i in range(3)
            ]

        def settled() -> bool:
            return bus.state_counts(orders_engine, tables) == {bus.DELIVERED: 3, bus.DEAD: 1}

        _wait(settled, nodes, None, timeout=60)
        effects = effect_table(MetaData())

        def applied() -> list[str]:
            with notifications_engine.connect() as connection:
                return list(connection.execute(select(effects.c.event_id).order_by(effects.c.id)).scalars())

        assert applied() == [e.id for e in later], "the later events were not blocked by the poison one"
        listing = _poly(nodes.environ, "bus", "dead", "orders")
        assert poison.id in listing and "INTERNAL" in listing and "1 dead letter(s)" in listing

        nodes.processes["consumer"].stop()  # deploy the fix: the consumer without the poison rule
        del nodes.environ["BUS_TEST_POISON_ORDER"]
        nodes.start("consumer", crash_window=None)
        assert "re-driven 1 delivery" in _poly(
            nodes.environ, "bus", "redrive", "orders", "--event", poison.id
        )
        _wait(lambda: bus.state_counts(orders_engine, tables) == {bus.DELIVERED: 4}, nodes, None, timeout=60)
        assert applied() == [*(e.id for e in later), poison.id], "re-delivered once"
        assert "dead       0" in _poly(nodes.environ, "bus", "status", "orders")
    finally:
        orders_engine.dispose()
        notifications_engine.dispose()
