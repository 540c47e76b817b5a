"""The relay: drains the outbox to each route, in order per aggregate, with retries.

Each round claims a bounded batch of due deliveries under a lease, sends them outside any
transaction, then records the outcome. A delivery is due when it is pending, its backoff has
passed, no live lease holds it, and no earlier delivery of the same aggregate to the same
route is still pending: so one aggregate's events reach a route in publish order, while a
dead-lettered event no longer blocks those after it. Leases make several relays of one
service (replicas) safe on SQLite and PostgreSQL alike; PostgreSQL also skips rows another
relay is claiming (``FOR UPDATE SKIP LOCKED``). A delivery claimed again after its lease ran
out with no outcome recorded (its relay died mid-round) may reach its route twice: it is
counted (``reclaimed``) and logged.

Two kinds of failure back off differently. A refusal (the route took the event and said no)
counts towards `max_attempts`, backing off up to `max_delay`. A route that is down (a
transient `DeliveryError`: UNAVAILABLE, a deadline, the broker away) costs no attempt and is
tried again within `transient_max_delay`, so a backlog drains within seconds of its recovery.
Meanwhile the relay spares it: once a send to a route fails transiently, the rest of that
round's deliveries to it are deferred unsent to one retry time; until then the relay claims
nothing for that route; then one delivery goes alone (a probe), and the others follow only if
it gets through. A route that stays down costs one send per retry delay, whatever the backlog.

Each send runs under a PRODUCER span, a child of the event's stored trace context, and a round
that covers several traces gets one span linking them all (`tracing`).
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import threading
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError
from opentelemetry.trace import TracerProvider
from sqlalchemy import Connection, Engine, and_, bindparam, exists, or_, select, update
from sqlalchemy.orm import aliased

from poly.events.v1.events_pb2 import EventEnvelope
from services.kit import backoff, leases
from services.kit.bus.metrics import BusMetrics
from services.kit.bus.tables import DEAD, DELIVERED, PENDING, BusTables
from services.kit.bus.tracing import EMBEDDED, BusTracer, Destination
from services.kit.bus.transport import DeliveryError, Described, Transport
from services.kit.priority import INLINE, BackgroundThreads

__all__ = ["Relay", "RelaySettings", "backoff_seconds"]

_log = logging.getLogger("poly.bus.relay")


@dataclass(frozen=True, slots=True)
class RelaySettings:
    batch_size: int = 100
    max_attempts: int = 8
    """Attempts before a delivery is dead-lettered (`poly bus redrive` sends it again)."""
    base_delay: float = 0.2
    max_delay: float = 60.0
    """Longest backoff after a refusal (a non-transient failure)."""
    transient_max_delay: float = 2.0
    """Longest wait before trying a route that is down again (never more than `max_delay`):
    a backlog held up by an outage is delivered within about this long of its end."""
    lease_seconds: float = 30.0
    """How long a claimed delivery is reserved; a relay that dies frees it when this ends."""
    idle_poll: float = 5.0
    """Longest wait between rounds when there is nothing to do and no wake-up comes: for work
    no wake-up announces (a lease another relay left to run out, a redriven delivery). A
    retry this relay scheduled, and a publish committed in this process, start a round on
    time without it."""
    concurrency: int = 16
    """Sends in flight at once within a round (each to a different aggregate or route)."""
    send_timeout: float = 10.0
    """Longest a send may take; a delivery is sent only while its lease outlasts this, so two
    relays never have the same delivery in flight."""

    def __post_init__(self) -> None:
        if self.transient_max_delay <= 0:
            raise ValueError(f"transient_max_delay ({self.transient_max_delay}) must be positive")
        if self.lease_seconds <= self.send_timeout:
            raise ValueError(
                f"lease_seconds ({self.lease_seconds}) must exceed send_timeout ({self.send_timeout})"
            )


_DELIVERED, _REFUSED, _DOWN, _DEFERRED, _UNSENT = "delivered", "refused", "down", "deferred", "unsent"
"""A send's outcome: taken; refused (counts towards `max_attempts`); the route was down (a
transient failure); not sent because its route failed earlier in the round; not sent because
the lease is too short."""

_RETRY_ROUND_SECONDS = 0.5
"""After a round that failed (the database was away), the next one runs this soon."""

_COUNTERS = {_DELIVERED: "delivered", _DOWN: "retried", _DEFERRED: "deferred"}


@dataclass(frozen=True, slots=True)
class _Claimed:
    position: int
    route: str
    event_type: str
    envelope: EventEnvelope | None
    """None when the stored bytes do not decode."""
    followed: bool = False
    """A later delivery of its aggregate to its route is pending (due once this one is done)."""


def _decoded(stored: bytes) -> EventEnvelope | None:
    try:
        return EventEnvelope.FromString(stored)
    except DecodeError:
        return None


@dataclass(frozen=True, slots=True)
class _Outcome:
    position: int
    route: str
    event_type: str
    kind: str
    error: str = ""


def _outcome(claimed: _Claimed, kind: str, error: str = "") -> _Outcome:
    return _Outcome(claimed.position, claimed.route, claimed.event_type, kind, error)


@dataclass(slots=True)
class _Down:
    """A route whose last round with a send to it failed transiently."""

    rounds: int
    """Consecutive such rounds: the exponent of its backoff."""
    retry_at: dt.datetime
    error: str


@dataclass
class _Round:
    """What one round's sending threads learn about routes."""

    failed: dict[str, str] = field(default_factory=dict)
    """Route -> the first transient failure of a send to it in this round."""
    reached: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def failure(self, route: str) -> str | None:
        with self.lock:
            return self.failed.get(route)

    def failed_on(self, route: str, error: str) -> None:
        with self.lock:
            self.failed.setdefault(route, error)

    def reached_route(self, route: str) -> None:
        with self.lock:
            self.reached.add(route)


def _by_route(rows: Iterable[tuple[int, str]]) -> dict[str, list[int]]:
    grouped: dict[str, list[int]] = {}
    for position, route in rows:
        grouped.setdefault(route, []).append(position)
    return grouped


def backoff_seconds(attempts: int, settings: RelaySettings, *, rng: random.Random | None = None) -> float:
    """`kit.backoff.backoff_seconds` with the relay's base and maximum delay."""
    return backoff.backoff_seconds(attempts, base=settings.base_delay, maximum=settings.max_delay, rng=rng)


def _transient_backoff_seconds(rounds: int, settings: RelaySettings) -> float:
    """The wait before trying a route again after `rounds` consecutive rounds found it down."""
    ceiling = min(settings.transient_max_delay, settings.max_delay)
    return backoff.backoff_seconds(rounds, base=min(settings.base_delay, ceiling), maximum=ceiling)


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
        tracer_provider: TracerProvider | None = None,
        background: BackgroundThreads | None = None,
    ) -> None:
        """`tracer_provider` makes the send spans (the global one by default); `background`
        lowers the relay's threads below the calls (none by default)."""
        self._background = background or INLINE
        self._engine = engine
        self._tables = tables
        self._transport = transport
        self._described = transport if isinstance(transport, Described) else None
        self._tracer = BusTracer(tracer_provider)
        self._settings = settings or RelaySettings()
        self.metrics = metrics or BusMetrics()
        self._owner = owner or f"relay-{uuid.uuid4().hex[:8]}"
        self._clock = clock
        self._down: dict[str, _Down] = {}
        """Routes found down, read and written by the round's own thread only."""
        self._next_due: dt.datetime | None = None
        self._more = False
        # Built once (`leases.Queue`): a statement costs more to build than to run.
        d, o = tables.delivery, tables.outbox
        earlier = aliased(d, name="earlier")
        later = aliased(d, name="later")
        free = and_(
            d.c.state == PENDING,
            d.c.next_attempt_at <= bindparam("claim_now"),
            or_(d.c.lease_until.is_(None), d.c.lease_until < bindparam("claim_now")),
            # A route that is down is tried again at its retry time, not before.
            d.c.route.not_in(bindparam("claim_waiting", expanding=True)),
            # In order per aggregate and route: never past an earlier delivery still pending.
            ~exists().where(
                earlier.c.route == d.c.route,
                earlier.c.aggregate_id == d.c.aggregate_id,
                earlier.c.state == PENDING,
                earlier.c.position < d.c.position,
            ),
        )
        followed = exists().where(
            later.c.route == d.c.route,
            later.c.aggregate_id == d.c.aggregate_id,
            later.c.state == PENDING,
            later.c.position > d.c.position,
        )
        self._queue = leases.Queue(
            d,
            [d.c.position, d.c.route],
            free=free,
            order_by=[d.c.position],
            lease={d.c.lease_owner: bindparam("claim_token"), d.c.lease_until: bindparam("claim_until")},
            # Read with the keys, so a claim needs no second query for what it sends.
            seen=[d.c.lease_owner, d.c.event_type, o.c.envelope, o.c.event_id, followed.label("followed")],
            returning=[d.c.position, d.c.route],
            source=d.join(o, o.c.position == d.c.position),
        )
        mine = and_(
            d.c.route == bindparam("held_route"),
            d.c.position.in_(bindparam("held_positions", expanding=True)),
            d.c.lease_owner == bindparam("held_token"),
        )
        release = update(d).where(mine).values(lease_owner=None, lease_until=None)
        self._release = {
            _DELIVERED: release.values(state=DELIVERED, delivered_at=bindparam("held_now"), last_error=None),
            # A route that is down costs no attempt: its deliveries wait for its retry time.
            _DOWN: release.values(
                next_attempt_at=bindparam("held_retry"), last_error=bindparam("held_error")
            ),
            _UNSENT: release,  # not sent: free at once for the next round
        }
        """How a claim's rows are let go, by outcome (a refusal counts an attempt: `_record_failure`)."""
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None

    # -- one round -------------------------------------------------------------------

    def _claim(self) -> tuple[str, dt.datetime, list[_Claimed]]:
        now = self._clock()
        token = f"{self._owner}:{uuid.uuid4().hex[:12]}"
        waiting = sorted(route for route, down in self._down.items() if down.retry_at > now)
        lease_until = now + dt.timedelta(seconds=self._settings.lease_seconds)
        params = {
            "claim_now": now,
            "claim_waiting": waiting,
            "claim_token": token,
            "claim_until": lease_until,
        }
        with self._engine.begin() as connection:
            taken = self._queue.claim(connection, self._settings.batch_size, params)
        if not taken.found:
            return token, lease_until, []
        mine = {(int(position), str(route)) for position, route in taken.taken}
        claimed: list[_Claimed] = []
        for position, route, previous, event_type, envelope, event_id, followed in taken.found:
            if (int(position), str(route)) not in mine:
                continue  # another relay took it between the two statements
            if previous is not None:  # an outcome always clears the lease: this one ran out
                self._reclaimed(int(position), str(route), str(event_type), str(event_id), previous)
            claimed.append(
                _Claimed(
                    int(position), str(route), str(event_type), _decoded(bytes(envelope)), bool(followed)
                )
            )
        return token, lease_until, claimed

    def _reclaimed(self, position: int, route: str, event_type: str, event_id: str, previous: str) -> None:
        self.metrics.add("reclaimed", event_type)
        _log.warning(
            "delivery claimed again after its lease expired with no outcome recorded; "
            "it may reach the route twice (the consumer's inbox applies it once)",
            extra={
                "route": route,
                "position": position,
                "event_id": event_id,
                "event_type": event_type,
                "previous_owner": previous,
            },
        )

    def _record(self, token: str, outcomes: list[_Outcome]) -> None:
        """Write a round's outcomes in one transaction (only rows this claim still holds)."""
        now = self._clock()

        def of(*kinds: str) -> dict[str, list[int]]:
            return _by_route((o.position, o.route) for o in outcomes if o.kind in kinds)

        with self._engine.begin() as connection:

            def release(kind: str, route: str, positions: list[int], **values: object) -> None:
                held = {"held_route": route, "held_positions": positions, "held_token": token}
                connection.execute(self._release[kind], {**held, **values})

            for route, positions in of(_DELIVERED).items():
                release(_DELIVERED, route, positions, held_now=now)
            for route, positions in of(_DOWN, _DEFERRED).items():
                down = self._down[route]
                release(_DOWN, route, positions, held_retry=down.retry_at, held_error=down.error[:500])
            for route, positions in of(_UNSENT).items():
                release(_UNSENT, route, positions)
            for outcome in outcomes:
                if outcome.kind == _REFUSED:
                    self._record_failure(connection, token, outcome, now)
                elif outcome.kind != _UNSENT:
                    self.metrics.add(_COUNTERS[outcome.kind], outcome.event_type)

    def _record_failure(
        self, connection: Connection, token: str, outcome: _Outcome, now: dt.datetime
    ) -> None:
        d = self._tables.delivery
        error = outcome.error[:500]
        mine = and_(d.c.position == outcome.position, d.c.route == outcome.route, d.c.lease_owner == token)
        attempts = int(connection.scalar(select(d.c.attempts).where(mine)) or 0) + 1
        released = {"attempts": attempts, "lease_owner": None, "lease_until": None, "last_error": error}
        if attempts >= self._settings.max_attempts:
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
        self._due_by(now + delay)
        self.metrics.add("retried", outcome.event_type)

    def _send(self, claimed: _Claimed, lease_until: dt.datetime, round_: _Round) -> _Outcome:
        """Send one claimed delivery, unless its lease is too short to send it safely or its
        route already failed in this round."""
        if self._clock() + dt.timedelta(seconds=self._settings.send_timeout) >= lease_until:
            return _outcome(claimed, _UNSENT)  # another relay may claim it soon: not now
        failure = round_.failure(claimed.route)
        if failure is not None:
            return _outcome(claimed, _DEFERRED, failure)
        outcome = self._transmit(claimed)
        if outcome.kind == _DOWN:
            round_.failed_on(claimed.route, outcome.error)
        elif outcome.kind == _DELIVERED:
            round_.reached_route(claimed.route)
        return outcome

    def _destination(self, route: str, envelope: EventEnvelope) -> Destination:
        if self._described is None:
            return Destination(EMBEDDED, route)
        return self._described.destination(route, envelope)

    def _transmit(self, claimed: _Claimed) -> _Outcome:
        envelope = claimed.envelope
        if envelope is None:
            return _outcome(claimed, _REFUSED, "the stored envelope does not decode")
        envelope.sequence = claimed.position
        with self._tracer.sending(envelope, self._destination(claimed.route, envelope)) as span:
            outcome = self._deliver(claimed, envelope)
            self._tracer.sent(span, outcome.kind, outcome.error)
        return outcome

    def _deliver(self, claimed: _Claimed, envelope: EventEnvelope) -> _Outcome:
        try:
            self._transport.send(claimed.route, envelope)
        except DeliveryError as error:
            return _outcome(claimed, _DOWN if error.transient else _REFUSED, str(error))
        except Exception as error:  # noqa: BLE001 - any failure is this delivery's, never the round's
            where = {"route": claimed.route, "position": claimed.position}
            _log.exception("unexpected error sending an event", extra=where)
            return _outcome(claimed, _REFUSED, f"{type(error).__name__}: {error}")
        return _outcome(claimed, _DELIVERED)

    def _send_all(self, claimed: list[_Claimed], lease_until: dt.datetime, round_: _Round) -> list[_Outcome]:
        if len(claimed) <= 1 or self._settings.concurrency == 1:
            return [self._send(item, lease_until, round_) for item in claimed]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._settings.concurrency, thread_name_prefix="bus-send")
        return list(self._pool.map(lambda item: self._send(item, lease_until, round_), claimed))

    def _note_routes(self, round_: _Round) -> None:
        """Carry what the round learnt about its routes to the next ones."""
        for route, error in round_.failed.items():
            previous = self._down.get(route)
            rounds = 1 if previous is None else previous.rounds + 1
            delay = dt.timedelta(seconds=_transient_backoff_seconds(rounds, self._settings))
            self._down[route] = _Down(rounds, self._clock() + delay, error)
            self._due_by(self._down[route].retry_at)
            if previous is None:
                _log.warning(
                    "route down: its deliveries wait, and one is tried again within the retry delay",
                    extra={"route": route, "error": error, "retry_seconds": round(delay.total_seconds(), 3)},
                )
        for route in round_.reached - round_.failed.keys():
            if self._down.pop(route, None) is not None:
                _log.info("route reached again: its backlog follows", extra={"route": route})

    def run_once(self) -> int:
        """One round: claim, send, record. Returns how many deliveries were attempted.

        A claim holds at most one delivery per aggregate and route, so its sends can run
        concurrently without reordering any aggregate's events. A route known to be down is
        not claimed before its retry time, and then one send to it (a probe) goes before the others.
        """
        token, lease_until, claimed = self._background.transaction(self._claim)
        if not claimed:
            return 0
        round_ = _Round()
        probes: dict[str, _Claimed] = {}
        rest: list[_Claimed] = []
        for item in claimed:
            if item.route in self._down and item.route not in probes:
                probes[item.route] = item
            else:
                rest.append(item)
        decoded = [(item.route, item.envelope) for item in claimed if item.envelope is not None]
        system = self._destination(*decoded[0]).system if decoded else EMBEDDED
        with self._tracer.batch([envelope for _, envelope in decoded], system):
            sent = self._send_all(list(probes.values()), lease_until, round_)
            sent += self._send_all(rest, lease_until, round_)
        self._note_routes(round_)
        self._background.transaction(self._record, token, sent)
        # Another round at once only if one can find something: a full batch may have left
        # more, and a delivery done may have freed the next of its aggregate.
        self._more = (
            len(claimed) >= self._settings.batch_size
            or any(item.followed for item in claimed)
            or any(outcome.kind == _UNSENT for outcome in sent)
        )
        return len(claimed)

    # -- the background thread ---------------------------------------------------------

    def wake(self) -> None:
        """Called after a publishing transaction commits, so delivery starts at once."""
        self._wake.set()

    def _due_by(self, moment: dt.datetime) -> None:
        """A delivery this relay put off falls due at `moment`: a round must run by then."""
        if self._next_due is None or moment < self._next_due:
            self._next_due = moment

    def _idle_seconds(self) -> float:
        """How long to wait for a wake-up: until the earliest retry this relay scheduled, at
        most `idle_poll`."""
        if self._next_due is None:
            return self._settings.idle_poll
        seconds = (self._next_due - self._clock()).total_seconds()
        if seconds <= 0:
            self._next_due = None  # due now: the next round claims it
            return 0.0
        return min(seconds + 0.01, self._settings.idle_poll)

    def _loop(self) -> None:
        self._background.enter()  # and the send threads it starts
        while not self._stop.is_set():
            try:
                busy = self.run_once() > 0 and self._more
            except Exception:  # noqa: BLE001 - a database hiccup must not kill the relay
                _log.exception("relay round failed; retrying")
                self._due_by(self._clock() + dt.timedelta(seconds=_RETRY_ROUND_SECONDS))
                busy = False
            if not busy:
                self._wake.wait(self._idle_seconds())
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
