"""Consuming: apply each event exactly once in effect, whatever the delivery does.

`Consumer.apply(envelope)` runs the handler for the event's type inside one transaction
that also inserts the event id into ``bus_inbox``. A redelivered event finds its id there
(or collides with a concurrent delivery on the primary key) and is skipped as a duplicate;
a handler that fails rolls back its effect and its inbox row together, so the event is
retried later. A type without a handler is refused (`EventNotHandled`, FAILED_PRECONDITION),
not dropped. Each applied event's delay (its commit time less its ``occur_time``) goes to
`BusMetrics.observe_apply_delay`.

Before any of that, the envelope's `source` must be the declared publisher of its `type`
(`contract.may_publish`): whatever transport brought it, a forged event is refused with
`contract.EventNotPublishedByCaller` (PERMISSION_DENIED) and nothing is written, not even
its inbox row.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from enum import Enum

from google.protobuf.message import Message
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from poly.events.v1.events_pb2 import EventEnvelope
from services.kit import db
from services.kit.bus import contract
from services.kit.bus.metrics import BusMetrics
from services.kit.bus.tables import BusTables
from services.kit.domain_errors import FailedPrecondition, Unavailable
from services.kit.sql import if_absent

__all__ = [
    "NOT_HANDLED",
    "Consumer",
    "EventHandler",
    "EventNotHandled",
    "Outcome",
    "is_transient_database_error",
]

_log = logging.getLogger("poly.bus.consumer")

EventHandler = Callable[[Connection, Message, EventEnvelope], None]
"""``(connection, payload, envelope) -> None``: make the event's effect in the transaction
`connection` is in."""


NOT_HANDLED = "EVENT_TYPE_NOT_HANDLED"
"""The ErrorInfo reason of an event whose type has no handler here."""


class EventNotHandled(FailedPrecondition):
    """No handler for `event_type` here (say, an old replica during a rolling deploy)."""

    def __init__(self, event_type: str) -> None:
        super().__init__(NOT_HANDLED, "no handler for {event_type} here", event_type=event_type)
        self.event_type = event_type


class _Duplicate(Exception):
    """The event id is already in the inbox: its effect happened once already."""


class Outcome(Enum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"


class Consumer:
    def __init__(
        self,
        engine: Engine,
        tables: BusTables,
        handlers: Mapping[type[Message], EventHandler],
        *,
        metrics: BusMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`clock` gives the current time in seconds since the epoch (for the apply delay)."""
        self._engine = engine
        self._handlers = {cls.DESCRIPTOR.full_name: (cls, handler) for cls, handler in handlers.items()}
        self.metrics = metrics or BusMetrics()
        self._clock = clock
        self._inbox = tables.inbox

    @property
    def event_types(self) -> list[str]:
        """Full names of the event types this consumer has handlers for."""
        return sorted(self._handlers)

    def apply(self, envelope: EventEnvelope) -> Outcome:
        if not contract.may_publish(envelope.source, envelope.type):
            known = contract.publisher_of(envelope.type) is not None
            self.metrics.add("refused", envelope.type if known else "unknown")
            _log.warning(
                "event refused",
                extra={
                    "event_id": envelope.id,
                    "event_type": envelope.type,
                    "source": envelope.source,
                    "reason": contract.NOT_PUBLISHED_BY_CALLER,
                },
            )
            raise contract.EventNotPublishedByCaller(envelope.source, envelope.type)
        found = self._handlers.get(envelope.type)
        if found is None:
            # Routed here but unknown (say, an old replica during a rolling deploy): refuse it,
            # so it is retried or dead-lettered and re-drivable, never acknowledged and lost.
            self.metrics.add("unhandled", envelope.type)
            raise EventNotHandled(envelope.type)
        cls, handler = found
        payload = cls()
        if not envelope.payload.Unpack(payload):
            raise ValueError(f"event {envelope.id}: payload is not a {envelope.type}")
        try:
            with db.transaction(self._engine) as connection:
                # Recorded first, in one statement: an event already in the inbox (or being
                # recorded by a concurrent delivery, which this waits for) inserts nothing.
                record = if_absent(self._inbox, connection.dialect.name)
                inbox_row = {"event_id": envelope.id, "event_type": envelope.type, "source": envelope.source}
                if connection.execute(record, inbox_row).first() is None:
                    raise _Duplicate
                handler(connection, payload, envelope)
        except _Duplicate:
            self.metrics.add("duplicate", envelope.type)
            return Outcome.DUPLICATE
        self.metrics.add("applied", envelope.type)
        occurred = envelope.occur_time
        if occurred.seconds or occurred.nanos:  # an envelope without a time has no delay to tell
            # Hosts' clocks differ: an event from a publisher whose clock runs ahead counts as 0.
            delay = self._clock() - (occurred.seconds + occurred.nanos / 1e9)
            self.metrics.observe_apply_delay(envelope.type, max(0.0, delay))
        return Outcome.APPLIED


def is_transient_database_error(error: BaseException) -> bool:
    """The consumer's database is unreachable, restarting or busy (`kit.db`'s
    ``DATABASE_BUSY``), not the event that is at fault."""
    if isinstance(error, Unavailable):
        return True
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    return isinstance(error, (OperationalError, InterfaceError))
