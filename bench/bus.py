"""Event bus throughput and latency, per transport and database, by measurement.

What is measured
----------------
Four scenarios, each on fresh state: transport ``embedded`` (the relay pushes each event
over mTLS gRPC to the consumer's EventSink, the consumer applies it inside the call) or
``rabbitmq`` (the relay publishes with publisher confirms to the consumer's quorum queue;
a `BrokerConsumer` applies and acknowledges), times database ``sqlite`` (one file per side)
or ``postgresql`` (two databases made with CREATE DATABASE and dropped afterwards).

Each scenario wires, in this one process as the kit's tests do: a publisher database
(``bus_outbox``/``bus_delivery``), a consumer database (``bus_inbox`` plus an effect table,
one row per applied event), a `Relay` thread (``idle_poll`` 0.01 s, woken after every
publishing commit by ``Outbox(on_commit=relay.wake)``) and the consumer side (two kit gRPC
servers with real certificates, the routes coming from the contract, or a `BrokerConsumer`).
Then three phases:

1. burst: N events (default 2000, ``--events N``, ``--quick`` 200) over 20 aggregates,
   published in transactions of 10 as fast as the main thread can, while the relay and
   the consumer work concurrently.
   events/s = N / (commit of the last effect - commit of the first publishing transaction).
   p50/p99 ms = per event, commit of its effect - commit of its publishing transaction.
2. low load: 100 events, one per transaction, 20 ms apart; p50/p99 of the same latency.
3. exactly once: once the outbox backlog is 0 and after a short settle, the effect rows
   are counted per event id: every published event must have one row, and nothing else.

A publish commit time is taken by an ``after_commit`` hook on the publishing session,
registered before the outbox's own (so before the relay is woken); an effect commit time
by an ``after_commit`` hook the handler registers on the consumer's session. Both are
``time.perf_counter()`` in this process. Each scenario gives up after ``--timeout``
seconds (default 120) and says where; servers, threads, databases and broker objects
(a unique ``polybench-<hex>`` prefix per scenario) are removed in every case.

How to read it
--------------
* Compare rows of one run with each other; the machine (2 cores) is shared and noisy,
  and publisher, relay, consumer and gRPC/aio-pika threads share one process and one GIL.
* A relay round claims at most one due event per aggregate, sends them concurrently, each
  waiting until it is taken (the gRPC push returns after the consumer's commit; a broker
  publish after the broker's confirm), then records the round in one transaction. So burst
  events/s is about (events per busy round) * 1000 / (busy round ms); the "where the time
  goes" table (burst phase, means) shows these terms, the mean send, and the consumer's
  own ``Consumer.apply`` time.
* Burst latency is mostly queueing: the publisher outruns the relay, so an event waits
  behind everything published before it, and p99 approaches the length of the burst.
  Low-load latency is the cost of one event through an idle pipeline (wake-up, claim,
  send, apply).
* Access logs are off (INFO is not enabled), as in a quiet production log level.

Usage: ``python bench/bus.py [--events N] [--quick] [--timeout S]``. Results are printed
as markdown and written to ``bench/results/bus.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import os
import platform
import signal
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aio_pika
import grpc
import sqlalchemy
from google.protobuf.message import Message
from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.engine import make_url

from poly.events.v1.events_pb2 import EventEnvelope, OrderPaid
from services.kit import bus, clients, config, db, server, tls
from services.kit.bus import contract, topology
from services.kit.config import DatabaseSettings, redact_url

RESULTS_PATH = Path(__file__).resolve().parent / "results" / "bus.json"
TRANSPORTS = ("embedded", "rabbitmq")
DATABASES = ("sqlite", "postgresql")
ORDER_PAID = OrderPaid.DESCRIPTOR.full_name
PUBLISHER, CONSUMER = "orders", "notifications"
AGGREGATES = 20
BATCH = 10
LOW_LOAD_EVENTS = 100
LOW_LOAD_PAUSE = 0.02
IDLE_POLL = 0.01
SETTLE = 0.5
"""After the backlog is 0: time for a late duplicate (a redelivery) to show up before counting."""
SETUP_WAIT = 10.0


@dataclass(frozen=True)
class Options:
    events: int
    quick: bool
    timeout: float
    postgres_url: str
    amqp_url: str
    only: tuple[str, ...]


class ScenarioFailed(Exception):
    """A scenario could not be measured (timed out or could not be wired); the message says where."""


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self._end - time.monotonic())

    def check(self, doing: str) -> None:
        if self.remaining() <= 0:
            raise ScenarioFailed(f"gave up after {self.seconds:.0f} s while {doing}")


class Stopwatch:
    """Thread-safe totals of named durations: count and seconds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals: dict[str, tuple[int, float]] = {}

    def add(self, name: str, seconds: float, count: int = 1) -> None:
        with self._lock:
            done, spent = self._totals.get(name, (0, 0.0))
            self._totals[name] = (done + count, spent + seconds)

    def snapshot(self) -> dict[str, tuple[int, float]]:
        with self._lock:
            return dict(self._totals)


def _between(
    before: dict[str, tuple[int, float]], after: dict[str, tuple[int, float]]
) -> dict[str, tuple[int, float]]:
    return {
        name: (count - before.get(name, (0, 0.0))[0], seconds - before.get(name, (0, 0.0))[1])
        for name, (count, seconds) in after.items()
    }


class TimedTransport:
    """The real transport, with the time each `send` takes added to a stopwatch."""

    def __init__(self, inner: bus.Transport, watch: Stopwatch) -> None:
        self._inner = inner
        self._watch = watch

    def send(self, route: str, envelope: EventEnvelope) -> None:
        started = time.perf_counter()
        try:
            self._inner.send(route, envelope)
        finally:
            self._watch.add("send", time.perf_counter() - started)


class TimedConsumer(bus.Consumer):
    """`bus.Consumer`, with the time of each `apply` (handler + inbox, one transaction) timed."""

    def __init__(
        self,
        engine: Engine,
        tables: bus.BusTables,
        handlers: dict[type[Message], bus.EventHandler],
        *,
        watch: Stopwatch,
    ) -> None:
        super().__init__(engine, tables, handlers)
        self._watch = watch

    def apply(self, envelope: EventEnvelope) -> bus.Outcome:
        started = time.perf_counter()
        try:
            return super().apply(envelope)
        finally:
            self._watch.add("apply", time.perf_counter() - started)


class TimedRelay(bus.Relay):
    """`bus.Relay`, with busy rounds (claim, sends, records) and idle rounds timed apart."""

    def __init__(
        self,
        engine: Engine,
        tables: bus.BusTables,
        transport: bus.Transport,
        *,
        settings: bus.RelaySettings,
        watch: Stopwatch,
    ) -> None:
        super().__init__(engine, tables, transport, settings=settings, owner=PUBLISHER)
        self._watch = watch

    def run_once(self) -> int:
        started = time.perf_counter()
        attempted = 0
        try:
            attempted = super().run_once()
        finally:
            elapsed = time.perf_counter() - started
            if attempted:
                self._watch.add("busy_round", elapsed)
                self._watch.add("attempted", 0.0, attempted)
            else:
                self._watch.add("idle_round", elapsed)
        return attempted


class EffectClock:
    """Commit time of each event's first effect, and a wait for a number of distinct effects."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._committed: dict[str, float] = {}
        self._target = 0
        self._reached = threading.Event()

    def mark(self, event_id: str) -> None:
        now = time.perf_counter()
        with self._lock:
            self._committed.setdefault(event_id, now)
            if len(self._committed) >= self._target:
                self._reached.set()

    def expect(self, count: int) -> None:
        with self._lock:
            self._target = count
            if len(self._committed) >= count:
                self._reached.set()
            else:
                self._reached.clear()

    def wait(self, deadline: Deadline, doing: str) -> None:
        if not self._reached.wait(deadline.remaining()):
            with self._lock:
                done = len(self._committed)
            raise ScenarioFailed(
                f"gave up after {deadline.seconds:.0f} s while {doing}: "
                f"{done}/{self._target} effects committed"
            )

    def committed(self) -> dict[str, float]:
        with self._lock:
            return dict(self._committed)


@dataclass
class Side:
    """One service's database: the bus tables and the bench's effect table."""

    engine: Engine
    tables: bus.BusTables
    effects: Table


def effect_table(metadata: MetaData) -> Table:
    """Not unique on event_id on purpose: a duplicate effect shows up as a second row."""
    return Table(
        "bench_effect",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("event_id", String(36), nullable=False),
        Column("aggregate_id", String(200), nullable=False),
        Column("order", String(200), nullable=False),
    )


def effect_handler(effects: Table, clock: EffectClock) -> bus.EventHandler:
    def handler(connection: Connection, payload: Message, envelope: EventEnvelope) -> None:
        if not isinstance(payload, OrderPaid):
            raise TypeError(f"expected OrderPaid, got {type(payload).__name__}")
        connection.execute(
            insert(effects).values(
                event_id=envelope.id, aggregate_id=envelope.aggregate_id, order=payload.order
            )
        )
        event_id = envelope.id
        db.after_commit(connection, lambda: clock.mark(event_id))

    return handler


def safely(what: str, action: Callable[[], object]) -> None:
    """Run one clean-up step; a failure is reported and does not skip the others."""
    try:
        action()
    except Exception as error:
        print(f"  clean-up: could not {what}: {type(error).__name__}: {error}", file=sys.stderr)


def open_side(url: str, cleanup: contextlib.ExitStack) -> Side:
    metadata = MetaData(naming_convention=db.naming_convention)
    tables = bus.bus_tables(metadata)
    effects = effect_table(metadata)
    engine = db.engine(DatabaseSettings(url=url))
    cleanup.callback(safely, "dispose an engine", engine.dispose)
    metadata.create_all(engine)
    return Side(engine, tables, effects)


def _drop_database(admin: Engine, name: str) -> None:
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def database_urls(kind: str, directory: Path, admin_url: str, cleanup: contextlib.ExitStack) -> list[str]:
    """Two fresh databases, publisher's then consumer's; PostgreSQL ones are dropped on clean-up."""
    if kind == "sqlite":
        return [f"sqlite:///{directory / f'{role}.db'}" for role in (PUBLISHER, CONSUMER)]
    admin = create_engine(
        make_url(admin_url).set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT"
    )
    cleanup.callback(safely, "dispose the admin engine", admin.dispose)
    urls = []
    for _role in (PUBLISHER, CONSUMER):
        name = f"polybench_{uuid.uuid4().hex[:12]}"
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        cleanup.callback(safely, f"drop database {name}", functools.partial(_drop_database, admin, name))
        url = make_url(admin_url).set(drivername="postgresql+psycopg", database=name)
        urls.append(url.render_as_string(hide_password=False))
    return urls


def wire_embedded(
    publisher: Side,
    consumer_side: Side,
    consumer: bus.Consumer,
    certs: Path,
    home: Path,
    cleanup: contextlib.ExitStack,
) -> tuple[bus.Transport, bus.Routing]:
    """Two kit servers (publisher and consumer EventSinks) and the publisher's channels for
    the relay; routes come from the contract (the consumer declared for OrderPaid)."""
    base = {
        "POLY_HOME": str(home),
        "POLY_TLS_DIR": str(certs),
        "POLY_GRACE_SECONDS": "2",
        f"POLY_{PUBLISHER.upper()}_PORT": "0",
        f"POLY_{CONSUMER.upper()}_PORT": "0",
    }

    def sink_server(component: str, side: Side, sink_consumer: bus.Consumer) -> server.RunningServer:
        sink = bus.EventSinkServicer(
            sink_consumer, side.engine, side.tables, service=component, services=config.SERVICES
        )
        running = server.start(config.load(component, base), [bus.sink_registration(sink)])
        cleanup.callback(safely, f"drain the {component} server", running.drain)
        return running

    publishing = sink_server(PUBLISHER, publisher, bus.Consumer(publisher.engine, publisher.tables, {}))
    consuming = sink_server(CONSUMER, consumer_side, consumer)
    environ = {
        **base,
        f"POLY_{PUBLISHER.upper()}_ADDRESS": f"127.0.0.1:{publishing.port}",
        f"POLY_{CONSUMER.upper()}_ADDRESS": f"127.0.0.1:{consuming.port}",
    }
    if contract.consumers_of(ORDER_PAID) != {CONSUMER}:
        raise ScenarioFailed(f"the contract no longer names {CONSUMER} the one consumer of {ORDER_PAID}")
    publisher_channels = clients.Channels(
        config.load(PUBLISHER, environ), services={CONSUMER: [bus.EVENT_SINK]}
    )
    cleanup.callback(safely, "close the publisher's channels", publisher_channels.close)
    return bus.EmbeddedTransport(publisher_channels), bus.consumer_routing()


def delete_broker_objects(url: str, prefix: str) -> None:
    async def delete() -> None:
        connection = await aio_pika.connect(url, timeout=10)
        async with connection:
            channel = await connection.channel()
            declared = topology.topology(prefix)  # every service declares all of it
            for queue in declared.queues:
                await channel.queue_delete(queue.name)
            for exchange in (*declared.exchanges, declared.dead_exchange):
                await channel.exchange_delete(exchange)

    asyncio.run(asyncio.wait_for(delete(), 30))


def wire_broker(
    url: str, consumer: bus.Consumer, cleanup: contextlib.ExitStack
) -> tuple[bus.Transport, bus.Routing]:
    """The consumer's queue (a `BrokerConsumer`) and the publisher's `BrokerTransport`."""
    prefix = f"polybench-{uuid.uuid4().hex[:10]}"
    cleanup.callback(
        safely, f"delete the broker objects {prefix}.*", lambda: delete_broker_objects(url, prefix)
    )
    intake = bus.BrokerConsumer(url, CONSUMER, consumer, prefix=prefix, connect_wait=SETUP_WAIT)
    cleanup.callback(safely, "stop the broker consumer", intake.stop)
    intake.start()
    if not intake.ready.is_set():
        raise ScenarioFailed(f"the broker consumer was not consuming within {SETUP_WAIT:.0f} s ({url})")
    transport = bus.BrokerTransport(url, prefix=prefix)
    cleanup.callback(safely, "close the broker transport", transport.close)
    return transport, bus.broker_routing()


def publish_transaction(
    publisher: Side, outbox: bus.Outbox, numbers: Iterable[int], marks: dict[str, float], watch: Stopwatch
) -> list[str]:
    """Publish one event per number in one transaction; `marks` gets each id's commit time."""
    ids: list[str] = []

    def committed() -> None:
        now = time.perf_counter()
        for event_id in ids:
            marks[event_id] = now

    started = time.perf_counter()
    with db.transaction(publisher.engine) as connection:
        db.after_commit(connection, committed)  # before the outbox's wake-up
        for number in numbers:
            aggregate = f"{PUBLISHER}/{number % AGGREGATES}"
            envelope = outbox.publish(
                connection, OrderPaid(order=f"{aggregate}#{number}"), aggregate_id=aggregate
            )
            ids.append(envelope.id)
    watch.add("publish_tx", time.perf_counter() - started)
    return ids


def wait_for_empty_backlog(publisher: Side, deadline: Deadline, doing: str) -> None:
    while (left := bus.backlog(publisher.engine, publisher.tables)) > 0:
        if deadline.remaining() <= 0:
            raise ScenarioFailed(
                f"gave up after {deadline.seconds:.0f} s while {doing}: {left} deliveries pending"
            )
        time.sleep(0.02)  # the relay thread's progress: nothing to block on


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = (len(ordered) - 1) * q
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latencies_ms(ids: Iterable[str], marks: dict[str, float], effects: dict[str, float]) -> list[float]:
    return [(effects[event_id] - marks[event_id]) * 1000 for event_id in ids]


def breakdown(spent: dict[str, tuple[int, float]], delivered: int) -> dict[str, float | int | None]:
    """Mean milliseconds per step over a phase, from stopwatch differences."""

    def mean_ms(name: str) -> float | None:
        count, seconds = spent.get(name, (0, 0.0))
        return round(seconds / count * 1000, 3) if count else None

    attempted = spent.get("attempted", (0, 0.0))[0]
    busy_count, busy_s = spent.get("busy_round", (0, 0.0))
    return {
        "publish_tx_ms": mean_ms("publish_tx"),
        "send_ms": mean_ms("send"),
        "apply_ms": mean_ms("apply"),
        "busy_round_ms": round(busy_s / busy_count * 1000, 3) if busy_count else None,
        "busy_rounds": busy_count,
        "events_per_busy_round": round(attempted / busy_count, 1) if busy_count else None,
        "idle_rounds": spent.get("idle_round", (0, 0))[0],
        "delivered": delivered,
    }


@dataclass
class Phase:
    ids: list[str] = field(default_factory=list)
    spent_before: dict[str, tuple[int, float]] = field(default_factory=dict)
    delivered_before: int = 0


def run_scenario(transport: str, database: str, opts: Options, certs: Path, work: Path) -> dict[str, Any]:
    deadline = Deadline(opts.timeout)
    watch = Stopwatch()
    clock = EffectClock()
    marks: dict[str, float] = {}
    with contextlib.ExitStack() as cleanup:
        directory = Path(tempfile.mkdtemp(prefix=f"{transport}-{database}-", dir=work))
        urls = database_urls(database, directory, opts.postgres_url, cleanup)
        publisher, consumer_side = open_side(urls[0], cleanup), open_side(urls[1], cleanup)
        handlers: dict[type[Message], bus.EventHandler] = {
            OrderPaid: effect_handler(consumer_side.effects, clock)
        }
        consumer = TimedConsumer(consumer_side.engine, consumer_side.tables, handlers, watch=watch)
        if transport == "embedded":
            sender, routing = wire_embedded(publisher, consumer_side, consumer, certs, directory, cleanup)
        else:
            sender, routing = wire_broker(opts.amqp_url, consumer, cleanup)
        deadline.check("wiring")
        relay = TimedRelay(
            publisher.engine,
            publisher.tables,
            TimedTransport(sender, watch),
            settings=bus.RelaySettings(idle_poll=IDLE_POLL),
            watch=watch,
        )
        cleanup.callback(safely, "stop the relay", relay.stop)
        relay.start()
        outbox = bus.Outbox(publisher.tables, source=PUBLISHER, routing=routing, on_commit=relay.wake)

        burst = Phase()
        for start in range(0, opts.events, BATCH):
            deadline.check(f"publishing the burst ({start}/{opts.events} published)")
            numbers = range(start, min(start + BATCH, opts.events))
            burst.ids += publish_transaction(publisher, outbox, numbers, marks, watch)
        clock.expect(len(burst.ids))
        clock.wait(deadline, "waiting for the burst's effects")
        wait_for_empty_backlog(publisher, deadline, "waiting for the burst's deliveries to be recorded")
        burst_spent = _between(burst.spent_before, watch.snapshot())
        burst_delivered = relay.metrics.total("delivered")

        low = Phase(spent_before=watch.snapshot(), delivered_before=relay.metrics.total("delivered"))
        for number in range(opts.events, opts.events + LOW_LOAD_EVENTS):
            deadline.check(f"publishing at low load ({number - opts.events}/{LOW_LOAD_EVENTS} published)")
            low.ids += publish_transaction(publisher, outbox, [number], marks, watch)
            time.sleep(LOW_LOAD_PAUSE)
        clock.expect(len(burst.ids) + len(low.ids))
        clock.wait(deadline, "waiting for the low-load effects")
        wait_for_empty_backlog(publisher, deadline, "waiting for the low-load deliveries to be recorded")
        low_spent = _between(low.spent_before, watch.snapshot())
        low_delivered = relay.metrics.total("delivered") - low.delivered_before
        time.sleep(SETTLE)

        with consumer_side.engine.connect() as connection:
            effects = consumer_side.effects
            grouped = select(effects.c.event_id, func.count()).group_by(effects.c.event_id)
            counts: dict[str, int] = {str(event_id): int(n) for event_id, n in connection.execute(grouped)}
        published = set(burst.ids) | set(low.ids)
        missing = len(published - set(counts))
        duplicated = sum(1 for event_id in published if counts.get(event_id, 0) > 1)
        unknown = len(set(counts) - published)
        once = missing == duplicated == unknown == 0
        verdict = (
            f"yes ({len(published)}/{len(published)})"
            if once
            else f"NO: {missing} missing, {duplicated} duplicated, {unknown} unknown"
        )

        committed = clock.committed()
        burst_latency = latencies_ms(burst.ids, marks, committed)
        low_latency = latencies_ms(low.ids, marks, committed)
        first_publish = min(marks[i] for i in burst.ids)
        last_publish = max(marks[i] for i in burst.ids)
        last_effect = max(committed[i] for i in burst.ids)
        return {
            "transport": transport,
            "database": database,
            "events_per_s": round(len(burst.ids) / (last_effect - first_publish), 1),
            "p50_ms": round(percentile(burst_latency, 0.5), 2),
            "p99_ms": round(percentile(burst_latency, 0.99), 2),
            "low_load_p50_ms": round(percentile(low_latency, 0.5), 2),
            "low_load_p99_ms": round(percentile(low_latency, 0.99), 2),
            "exactly_once": verdict,
            "error": None,
            "details": {
                "events": len(burst.ids),
                "low_load_events": len(low.ids),
                "publish_s": round(last_publish - first_publish, 3),
                "publish_events_per_s": round(len(burst.ids) / (last_publish - first_publish), 1)
                if last_publish > first_publish
                else None,
                "drain_after_last_publish_s": round(last_effect - last_publish, 3),
                "burst_max_ms": round(max(burst_latency), 2),
                "low_load_max_ms": round(max(low_latency), 2),
                "burst": breakdown(burst_spent, burst_delivered),
                "low_load": breakdown(low_spent, low_delivered),
                "retried": relay.metrics.total("retried"),
                "dead_lettered": relay.metrics.total("dead_lettered"),
                "duplicates_seen_by_inbox": consumer.metrics.total("duplicate"),
                "effect_rows": sum(counts.values()),
            },
        }


def failed_row(transport: str, database: str, reason: str) -> dict[str, Any]:
    return {
        "transport": transport,
        "database": database,
        "events_per_s": None,
        "p50_ms": None,
        "p99_ms": None,
        "low_load_p50_ms": None,
        "low_load_p99_ms": None,
        "exactly_once": "not checked",
        "error": reason,
        "details": {},
    }


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}" if value >= 100 else f"{value:.2f}"
    return str(value)


def results_table(rows: Sequence[dict[str, Any]]) -> str:
    columns = [
        ("transport", "transport"),
        ("database", "database"),
        ("events/s", "events_per_s"),
        ("p50 ms", "p50_ms"),
        ("p99 ms", "p99_ms"),
        ("low-load p50 ms", "low_load_p50_ms"),
        ("low-load p99 ms", "low_load_p99_ms"),
        ("exactly once", "exactly_once"),
    ]
    lines = ["| " + " | ".join(title for title, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row[key]) for _, key in columns) + " |" for row in rows]
    return "\n".join(lines)


def time_table(rows: Sequence[dict[str, Any]]) -> str:
    columns = [
        ("publish tx (10 ev)", "publish_tx_ms"),
        ("relay send", "send_ms"),
        ("consumer apply", "apply_ms"),
        ("busy round ms", "busy_round_ms"),
        ("events / busy round", "events_per_busy_round"),
    ]
    lines = [
        "| transport | database | publish ev/s | " + " | ".join(title for title, _ in columns) + " |",
        "|" + "---|" * (len(columns) + 3),
    ]
    for row in rows:
        if row["error"]:
            continue
        burst = row["details"]["burst"]
        cells = [row["transport"], row["database"], _cell(row["details"]["publish_events_per_s"])]
        cells += [_cell(burst[key]) for _, key in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine_info(opts: Options) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "sqlalchemy": sqlalchemy.__version__,
        "aio_pika": aio_pika.__version__,
        "sqlite": sqlite3.sqlite_version,
    }
    admin = create_engine(make_url(opts.postgres_url).set(drivername="postgresql+psycopg"))
    try:
        with admin.connect() as connection:
            info["postgresql"] = connection.scalar(text("SHOW server_version"))
    except Exception as error:
        info["postgresql"] = f"unreachable: {type(error).__name__}"
    finally:
        admin.dispose()
    return info


def parse_args(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=None, help="burst size (default 2000; --quick: 200)")
    parser.add_argument("--quick", action="store_true", help="a 200-event burst")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before a scenario gives up")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument(
        "--only", action="append", default=[], metavar="TRANSPORT/DATABASE", help="e.g. embedded/sqlite"
    )
    args = parser.parse_args(argv)
    events = args.events if args.events is not None else (200 if args.quick else 2000)
    if events < BATCH:
        parser.error(f"--events must be at least {BATCH}")
    known = {f"{t}/{d}" for t in TRANSPORTS for d in DATABASES}
    for chosen in args.only:
        if chosen not in known:
            parser.error(f"--only {chosen}: expected one of {sorted(known)}")
    return Options(events, args.quick, args.timeout, args.postgres_url, args.amqp_url, tuple(args.only))


def run(opts: Options) -> int:
    began = time.monotonic()
    logging.basicConfig(level=logging.WARNING, format="  %(levelname)s %(name)s: %(message)s")
    rows: list[dict[str, Any]] = []
    print(
        f"# Event bus: {opts.events}-event burst ({AGGREGATES} aggregates, {BATCH} per transaction), "
        f"{LOW_LOAD_EVENTS} events at low load ({LOW_LOAD_PAUSE * 1000:.0f} ms apart); "
        f"relay idle_poll {IDLE_POLL} s; timeout {opts.timeout:.0f} s per scenario\n",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="polybench-bus-") as scratch:
        work = Path(scratch)
        certs = work / "certs"
        tls.ensure_certificates(certs, config.COMPONENTS)
        for transport in TRANSPORTS:
            for database in DATABASES:
                if opts.only and f"{transport}/{database}" not in opts.only:
                    continue
                print(f"{transport}/{database} ...", end=" ", flush=True)
                started = time.monotonic()
                try:
                    row = run_scenario(transport, database, opts, certs, work)
                except ScenarioFailed as failure:
                    row = failed_row(transport, database, str(failure))
                except Exception as error:
                    row = failed_row(transport, database, f"{type(error).__name__}: {error}")
                row["wall_s"] = round(time.monotonic() - started, 1)
                print(f"{row['error'] or 'done'} ({row['wall_s']:.0f} s)", flush=True)
                rows.append(row)
    print("\n" + results_table(rows))
    if not all(row["error"] for row in rows):
        print("\nWhere the time goes (burst phase, mean ms per event unless noted):\n")
        print(time_table(rows))
    for row in rows:
        if row["error"]:
            print(f"\n{row['transport']}/{row['database']} was not measured: {row['error']}")
    elapsed = time.monotonic() - began
    print(f"\n(wall time {elapsed:.0f} s; JSON in {RESULTS_PATH})")
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_PATH.write_text(
        json.dumps(
            {
                "generated_at": datetime.now().astimezone().isoformat(timespec="seconds"),
                "machine": machine_info(opts),
                "options": {**asdict(opts), "amqp_url": redact_url(opts.amqp_url), "only": list(opts.only)},
                "settings": {
                    "aggregates": AGGREGATES,
                    "events_per_transaction": BATCH,
                    "low_load_events": LOW_LOAD_EVENTS,
                    "low_load_pause_s": LOW_LOAD_PAUSE,
                    "relay_idle_poll_s": IDLE_POLL,
                    "relay_batch_size": bus.RelaySettings().batch_size,
                    "settle_s": SETTLE,
                },
                "scenarios": rows,
                "wall_s": round(elapsed, 1),
            },
            indent=2,
        )
        + "\n"
    )
    return 1 if any(row["error"] for row in rows) else 0


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # so `kill <pid>` also unwinds through every scenario's clean-up


def main(argv: Sequence[str]) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return run(parse_args(argv))
    except KeyboardInterrupt:
        print("\ninterrupted; the scenario in progress was cleaned up", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
