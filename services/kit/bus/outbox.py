"""Publishing: an event is a row written in the same transaction as the change it reports.

`Outbox.publish(connection, event, aggregate_id=...)` adds the event to ``bus_outbox`` and one
``bus_delivery`` row per route (from the contract's consumers), inside the caller's
transaction: if it rolls back, the event never existed; once it commits, the relay will
deliver it even if the process dies at once.
An outbox publishes only the events its `source` is the declared publisher of
(``(poly.options.v1.event)``): anything else is a programming error, refused before a row
is written, so the code cannot drift from the contract the consumers enforce.
The envelope carries the publishing request's W3C trace context (the current span's, see
`tracing`), so the consumers' spans join the request's trace.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Mapping

from google.protobuf.any_pb2 import Any as AnyMessage
from google.protobuf.message import Message
from sqlalchemy import (
    Connection,
    Insert,
    Integer,
    LargeBinary,
    Select,
    String,
    bindparam,
    func,
    insert,
    literal,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import ARRAY

from poly.events.v1.events_pb2 import EventEnvelope
from services.kit.bus import contract
from services.kit.bus.metrics import BusMetrics
from services.kit.bus.tables import PENDING, BusTables
from services.kit.bus.tracing import current_trace_context
from services.kit.config import BusSettings
from services.kit.db import Executor, UtcDateTime, after_commit, connection_of, transaction_state
from services.kit.wire import timestamp

__all__ = ["Outbox", "Routing", "broker_routing", "consumer_routing", "routing"]

Routing = Callable[[Connection, str], list[str]]
"""Where an event of a type goes: ``(connection, event_type) -> routes``."""


def consumer_routing() -> Routing:
    """Embedded transport: one route per declared consumer of the type (the contract's
    ``consumers``), so an event waits in the outbox for a consumer that has not started yet."""
    return lambda _connection, event_type: sorted(contract.consumers_of(event_type))


def broker_routing(route: str = "broker") -> Routing:
    """One route named `route` for every consumed type: how broker deliveries were routed
    before routes named consumers (the broker fanned each out); kept for tests of the relay
    that need a single route. An event nobody consumes goes nowhere."""
    return lambda _connection, event_type: [route] if contract.consumers_of(event_type) else []


def routing(settings: BusSettings) -> Routing:
    """One route per declared consumer, on both transports: the embedded relay pushes to the
    consumer's EventSink, the broker transport publishes to the consumer's queue, so either
    way a consumer that is missing holds back its own deliveries and nobody else's."""
    return consumer_routing()


class Outbox:
    def __init__(
        self,
        tables: BusTables,
        *,
        source: str,
        routing: Routing,
        metrics: BusMetrics | None = None,
        on_commit: Callable[[], None] | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._tables = tables
        self._source = source
        self._routing = routing
        self._metrics = metrics or BusMetrics()
        self._on_commit = on_commit
        self._clock = clock
        # Built once: a statement costs more to build than to run from the compiled cache.
        self._insert_event = insert(tables.outbox).returning(tables.outbox.c.position)
        self._insert_deliveries = insert(tables.delivery)
        self._publish_postgresql = _publish_in_one_statement(tables)

    def publish(
        self,
        executor: Executor,
        event: Message,
        *,
        aggregate_id: str,
        trace_context: Mapping[str, str] | None = None,
        schema_version: int = 1,
    ) -> EventEnvelope:
        """Record `event` (a ``poly.events.v1`` message) in the transaction `executor` is in.

        `trace_context` (W3C ``traceparent``/``tracestate``) is the current span's unless given."""
        if not aggregate_id:
            raise ValueError("aggregate_id is required: it orders the events of one aggregate")
        event_type = event.DESCRIPTOR.full_name
        if not contract.may_publish(self._source, event_type):
            raise ValueError(
                f"{self._source} is not the declared publisher of {event_type} "
                f"(its (poly.options.v1.event) names {contract.publisher_of(event_type) or 'none'})"
            )
        now = self._clock()
        payload = AnyMessage()
        payload.Pack(event)
        envelope = EventEnvelope(
            id=str(uuid.uuid4()),
            type=event_type,
            aggregate_id=aggregate_id,
            occur_time=timestamp(now),
            source=self._source,
            schema_version=schema_version,
            trace_context=current_trace_context() if trace_context is None else dict(trace_context),
            payload=payload,
        )
        row = {
            "event_id": envelope.id,
            "event_type": event_type,
            "aggregate_id": aggregate_id,
            "occur_time": now,
            "envelope": envelope.SerializeToString(),
        }
        connection = connection_of(executor)
        routes = self._routing(connection, event_type)
        if connection.dialect.name == "postgresql":
            # One round trip for the lock, the event and its deliveries (three otherwise).
            connection.execute(self._publish_postgresql, {**row, "routes": routes}).scalar_one()
        else:
            position = connection.execute(self._insert_event, row).scalar_one()
            if routes:
                deliveries = [
                    {
                        "position": position,
                        "route": route,
                        "event_type": event_type,
                        "aggregate_id": aggregate_id,
                        "state": PENDING,
                        "attempts": 0,
                        "next_attempt_at": now,
                    }
                    for route in routes
                ]
                connection.execute(self._insert_deliveries, deliveries)
        self._metrics.add("published", event_type)
        # No route, nothing to deliver: the relay is not woken for it.
        if routes and self._on_commit is not None:
            state = transaction_state(connection)
            if not state.get("bus_wake"):  # one wake-up per transaction, however many events
                state["bus_wake"] = True
                after_commit(connection, self._on_commit)
        return envelope


def _publish_in_one_statement(tables: BusTables) -> Select[tuple[int]]:
    """PostgreSQL: hold the aggregate, insert the event, insert one delivery per route, in one
    statement (each of the three was a round trip to the server).

    Positions come from a sequence, but transactions commit in any order: the advisory lock,
    held until this transaction commits, makes the aggregate's next event get a later
    position, so the relay can never see (and deliver) the later event first. The lock is
    taken by the row source the event is inserted from, so before its position is drawn."""
    outbox, delivery = tables.outbox, tables.delivery
    held = select(
        func.pg_advisory_xact_lock(func.hashtextextended(bindparam("aggregate_id", type_=String()), 0)).label(
            "held"
        )
    ).subquery("held")
    event: Insert = insert(outbox).from_select(
        ["event_id", "event_type", "aggregate_id", "occur_time", "envelope"],
        select(
            bindparam("event_id", type_=String()),
            bindparam("event_type", type_=String()),
            bindparam("aggregate_id", type_=String()),
            bindparam("occur_time", type_=UtcDateTime()),
            bindparam("envelope", type_=LargeBinary()),
        ).select_from(held),
    )
    published = event.returning(outbox.c.position).cte("published")
    route = func.unnest(bindparam("routes", type_=ARRAY(String()))).table_valued("route").render_derived()
    deliveries = insert(delivery).from_select(
        ["position", "route", "event_type", "aggregate_id", "state", "attempts", "next_attempt_at"],
        select(
            published.c.position,
            route.c.route,
            bindparam("event_type", type_=String()),
            bindparam("aggregate_id", type_=String()),
            literal(PENDING, String()),
            literal(0, Integer()),
            bindparam("occur_time", type_=UtcDateTime()),
        ).select_from(published.join(route, true())),
    )
    return select(published.c.position).add_cte(deliveries.cte("delivered"))
