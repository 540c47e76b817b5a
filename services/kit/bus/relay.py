"""The relay: drains the outbox to each route, in order per aggregate, with retries.

Each round claims a bounded batch of due deliveries under a lease, sends them outside any
transaction, then records the outcome. A delivery is due when it is pending, its backoff has
passed, no live lease holds it, and no earlier delivery of the same aggregate to the same
route is still pending: so one aggregate's events reach a route in publish order, while a
dead-lettered event no longer blocks those after it. Leases make several relays of one
service (replicas) safe on SQLite and PostgreSQL alike; PostgreSQL also skips rows another
relay is claiming (``FOR UPDATE SKIP LOCKED``).
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine, and_, exists, or_, select, update
from sqlalchemy.orm import aliased

from poly.events.v1.events_pb2 import EventEnvelope
from services.kit.bus.metrics import BusMetrics
from services.kit.bus.tables import DEAD, DELIVERED, PENDING, BusTables
from services.kit.bus.transport import DeliveryError, Transport

__all__ = ["Relay", "RelaySettings", "backoff_seconds"]

_log = logging.getLogger("poly.bus.relay")


@dataclass(frozen=True, slots=True)
class RelaySettings:
    batch_size: int = 100
    max_attempts: int = 8
    """Attempts before a delivery is dead-lettered (`poly bus redrive` sends it again)."""
    base_delay: float = 0.2
    max_delay: float = 60.0
    lease_seconds: float = 30.0
    """How long a claimed delivery is reserved; a relay that dies frees it when this ends."""
    idle_poll: float = 0.5
    """Longest wait between rounds when there is nothing to do and no wake-up comes."""


def backoff_seconds(attempts: int, settings: RelaySettings, *, rng: random.Random | None = None) -> float:
    """Exponential backoff with jitter: uniform in [c/2, c] for c = min(max, base * 2**(attempts-1))."""
    ceiling = min(settings.max_delay, settings.base_delay * 2 ** max(0, attempts - 1))
    return (rng or random).uniform(ceiling / 2, ceiling)


class Relay:
    def __init__(
        self,
        engine: Engine,
        tables: BusTables,
        transport: Transport,
        *,
        settings: RelaySettings | None = None,
        metrics: BusMetrics | None = None,
        owner: str | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._engine = engine
        self._tables = tables
        self._transport = transport
        self._settings = settings or RelaySettings()
        self.metrics = metrics or BusMetrics()
        self._owner = owner or f"relay-{uuid.uuid4().hex[:8]}"
        self._clock = clock
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- one round -------------------------------------------------------------------

    def _claim(self) -> tuple[str, list[tuple[int, str, bytes]]]:
        d, o = self._tables.delivery, self._tables.outbox
        earlier = aliased(d)
        now = self._clock()
        token = f"{self._owner}:{uuid.uuid4().hex[:12]}"
        due = (
            select(d.c.position, d.c.route)
            .where(
                d.c.state == PENDING,
                d.c.next_attempt_at <= now,
                or_(d.c.lease_until.is_(None), d.c.lease_until < now),
                ~exists().where(
                    earlier.c.route == d.c.route,
                    earlier.c.aggregate_id == d.c.aggregate_id,
                    earlier.c.state == PENDING,
                    earlier.c.position < d.c.position,
                ),
            )
            .order_by(d.c.position)
            .limit(self._settings.batch_size)
        )
        with self._engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                due = due.with_for_update(skip_locked=True, of=d)
            candidates = connection.execute(due).all()
            if not candidates:
                return token, []
            lease_until = now + dt.timedelta(seconds=self._settings.lease_seconds)
            for position, route in candidates:
                # The guard re-checks the lease: on SQLite another relay may have won the row.
                connection.execute(
                    update(d)
                    .where(
                        d.c.position == position,
                        d.c.route == route,
                        d.c.state == PENDING,
                        or_(d.c.lease_until.is_(None), d.c.lease_until < now),
                    )
                    .values(lease_owner=token, lease_until=lease_until)
                )
        with self._engine.connect() as connection:
            claimed = connection.execute(
                select(d.c.position, d.c.route, o.c.envelope)
                .join(o, o.c.position == d.c.position)
                .where(d.c.lease_owner == token, d.c.state == PENDING)
                .order_by(d.c.position)
            ).all()
        return token, [(int(p), str(r), bytes(e)) for p, r, e in claimed]

    def _record(self, token: str, position: int, route: str, error: str | None, event_type: str) -> None:
        d = self._tables.delivery
        now = self._clock()
        mine = and_(d.c.position == position, d.c.route == route, d.c.lease_owner == token)
        with self._engine.begin() as connection:
            if error is None:
                connection.execute(
                    update(d)
                    .where(mine)
                    .values(
                        state=DELIVERED, delivered_at=now, lease_owner=None, lease_until=None, last_error=None
                    )
                )
                self.metrics.add("delivered", event_type)
                return
            attempts = int(connection.scalar(select(d.c.attempts).where(mine)) or 0) + 1
            if attempts >= self._settings.max_attempts:
                connection.execute(
                    update(d)
                    .where(mine)
                    .values(
                        state=DEAD,
                        attempts=attempts,
                        lease_owner=None,
                        lease_until=None,
                        last_error=error[:500],
                    )
                )
                self.metrics.add("dead_lettered", event_type)
                _log.warning(
                    "event dead-lettered",
                    extra={"route": route, "position": position, "event_type": event_type, "error": error},
                )
                return
            delay = backoff_seconds(attempts, self._settings)
            connection.execute(
                update(d)
                .where(mine)
                .values(
                    attempts=attempts,
                    next_attempt_at=now + dt.timedelta(seconds=delay),
                    lease_owner=None,
                    lease_until=None,
                    last_error=error[:500],
                )
            )
            self.metrics.add("retried", event_type)

    def run_once(self) -> int:
        """One round: claim, send, record. Returns how many deliveries were attempted."""
        token, claimed = self._claim()
        for position, route, raw in claimed:
            envelope = EventEnvelope.FromString(raw)
            envelope.sequence = position
            try:
                self._transport.send(route, envelope)
            except DeliveryError as failure:
                self._record(token, position, route, str(failure), envelope.type)
            else:
                self._record(token, position, route, None, envelope.type)
        return len(claimed)

    # -- the background thread ---------------------------------------------------------

    def wake(self) -> None:
        """Called after a publishing transaction commits, so delivery starts at once."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.run_once() > 0
            except Exception:  # noqa: BLE001 - a database hiccup must not kill the relay
                _log.exception("relay round failed; retrying")
                busy = False
            if not busy:
                self._wake.wait(self._settings.idle_poll)
                self._wake.clear()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=f"bus-relay-{self._owner}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
