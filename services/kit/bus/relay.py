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
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from google.protobuf.message import DecodeError
from sqlalchemy import Connection, Engine, and_, exists, or_, select, update
from sqlalchemy.orm import aliased

from poly.events.v1.events_pb2 import EventEnvelope
from services.kit import backoff
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
    concurrency: int = 16
    """Sends in flight at once within a round (each to a different aggregate or route)."""
    send_timeout: float = 10.0
    """Longest a send may take; a delivery is sent only while its lease outlasts this, so two
    relays never have the same delivery in flight."""

    def __post_init__(self) -> None:
        if self.lease_seconds <= self.send_timeout:
            raise ValueError(
                f"lease_seconds ({self.lease_seconds}) must exceed send_timeout ({self.send_timeout})"
            )


@dataclass(frozen=True, slots=True)
class _Outcome:
    position: int
    route: str
    event_type: str
    error: str | None
    transient: bool = False


def _by_route(rows: Iterable[tuple[int, str]]) -> dict[str, list[int]]:
    grouped: dict[str, list[int]] = {}
    for position, route in rows:
        grouped.setdefault(route, []).append(position)
    return grouped


def backoff_seconds(attempts: int, settings: RelaySettings, *, rng: random.Random | None = None) -> float:
    """`kit.backoff.backoff_seconds` with the relay's base and maximum delay."""
    return backoff.backoff_seconds(attempts, base=settings.base_delay, maximum=settings.max_delay, rng=rng)


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
        self._pool: ThreadPoolExecutor | None = None

    # -- one round -------------------------------------------------------------------

    def _claim(self) -> tuple[str, dt.datetime, list[tuple[int, str, bytes]]]:
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
            lease_until = now + dt.timedelta(seconds=self._settings.lease_seconds)
            if not candidates:
                return token, lease_until, []
            for route, positions in _by_route((int(p), str(r)) for p, r in candidates).items():
                # The guard re-checks the lease: on SQLite another relay may have won the row.
                connection.execute(
                    update(d)
                    .where(
                        d.c.route == route,
                        d.c.position.in_(positions),
                        d.c.state == PENDING,
                        d.c.next_attempt_at <= now,  # another relay may have failed it meanwhile
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
        return token, lease_until, [(int(p), str(r), bytes(e)) for p, r, e in claimed]

    def _record(self, token: str, outcomes: list[_Outcome]) -> None:
        """Write a round's outcomes in one transaction (only rows this claim still holds)."""
        d = self._tables.delivery
        now = self._clock()
        with self._engine.begin() as connection:
            delivered = [(o.position, o.route) for o in outcomes if o.error is None]
            for route, positions in _by_route(delivered).items():
                connection.execute(
                    update(d)
                    .where(d.c.route == route, d.c.position.in_(positions), d.c.lease_owner == token)
                    .values(
                        state=DELIVERED, delivered_at=now, lease_owner=None, lease_until=None, last_error=None
                    )
                )
            for outcome in outcomes:
                if outcome.error is None:
                    self.metrics.add("delivered", outcome.event_type)
                else:
                    self._record_failure(connection, token, outcome, now)

    def _record_failure(
        self, connection: Connection, token: str, outcome: _Outcome, now: dt.datetime
    ) -> None:
        d = self._tables.delivery
        error = (outcome.error or "")[:500]
        mine = and_(d.c.position == outcome.position, d.c.route == outcome.route, d.c.lease_owner == token)
        attempts = int(connection.scalar(select(d.c.attempts).where(mine)) or 0) + 1
        released = {"attempts": attempts, "lease_owner": None, "lease_until": None, "last_error": error}
        if attempts >= self._settings.max_attempts and not outcome.transient:
            connection.execute(update(d).where(mine).values(state=DEAD, **released))
            self.metrics.add("dead_lettered", outcome.event_type)
            _log.warning(
                "event dead-lettered",
                extra={
                    "route": outcome.route,
                    "position": outcome.position,
                    "event_type": outcome.event_type,
                    "error": error,
                },
            )
            return
        delay = dt.timedelta(seconds=backoff_seconds(attempts, self._settings))
        connection.execute(update(d).where(mine).values(next_attempt_at=now + delay, **released))
        self.metrics.add("retried", outcome.event_type)

    def _send(self, position: int, route: str, raw: bytes, lease_until: dt.datetime) -> _Outcome | None:
        """Send one claimed delivery; None when its lease is too short to send it safely."""
        if self._clock() + dt.timedelta(seconds=self._settings.send_timeout) >= lease_until:
            return None  # another relay may claim it soon: leave it for a later round
        try:
            envelope = EventEnvelope.FromString(raw)
        except DecodeError:
            return _Outcome(position, route, "(undecodable)", "the stored envelope does not decode")
        envelope.sequence = position
        try:
            self._transport.send(route, envelope)
        except DeliveryError as failure:
            return _Outcome(position, route, envelope.type, str(failure), failure.transient)
        except Exception as error:  # noqa: BLE001 - any failure is this delivery's, never the round's
            _log.exception("unexpected error sending an event", extra={"route": route, "position": position})
            return _Outcome(position, route, envelope.type, f"{type(error).__name__}: {error}")
        return _Outcome(position, route, envelope.type, None)

    def run_once(self) -> int:
        """One round: claim, send, record. Returns how many deliveries were attempted.

        A claim holds at most one delivery per aggregate and route, so its sends can run
        concurrently without reordering any aggregate's events.
        """
        token, lease_until, claimed = self._claim()
        if not claimed:
            return 0
        if len(claimed) == 1 or self._settings.concurrency == 1:
            results = [self._send(p, r, raw, lease_until) for p, r, raw in claimed]
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._settings.concurrency, thread_name_prefix="bus-send")
            results = list(
                self._pool.map(lambda item: self._send(item[0], item[1], item[2], lease_until), claimed)
            )
        self._record(token, [outcome for outcome in results if outcome is not None])
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

    def stop(self, timeout: float | None = None) -> None:
        """Stop claiming; a round in flight may finish its sends (up to `send_timeout`)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout if timeout is not None else self._settings.send_timeout + 2)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
