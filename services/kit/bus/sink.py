"""The embedded transport's receiving end: every consuming service serves EventSinkService.

`EventSinkServicer.PushEvent` accepts events only from Polyservice service identities
(the SPIFFE ID in the caller's client certificate), only of types that caller is the
declared publisher of (``(poly.options.v1.event)``, read by `contract`), and only with that
caller as their source; then it applies them through the `Consumer`.
`Subscribe` records which event types the calling service wants from this one: only types
this service is the declared publisher of (at most `MAX_SUBSCRIBED_TYPES`); any other entry
is INVALID_ARGUMENT with a field violation each, and nothing is stored. Who may consume
which type is not declared anywhere yet, so any service identity may subscribe to any type
published here. `Subscriber` is the other side: at start-up it asks each peer for the
consumed types that peer publishes (from the contract), and skips peers that publish none.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Sequence

import grpc
from sqlalchemy import insert, select
from sqlalchemy.orm import Session, sessionmaker

from poly.events.v1 import event_sink_pb2, event_sink_pb2_grpc
from services.kit import server, tls
from services.kit.bus import contract
from services.kit.bus.consumer import Consumer, Outcome, is_transient_database_error
from services.kit.bus.tables import BusTables
from services.kit.clients import Channels
from services.kit.errors import FieldViolation, InvalidArgument, PermissionDenied, Unavailable

__all__ = ["EVENT_SINK", "MAX_SUBSCRIBED_TYPES", "EventSinkServicer", "Subscriber", "sink_registration"]

_log = logging.getLogger("poly.bus.sink")

EVENT_SINK = event_sink_pb2.DESCRIPTOR.services_by_name["EventSinkService"]

MAX_SUBSCRIBED_TYPES = 100
"""Most entries one Subscribe may list (each must be a type published here, so far fewer)."""

_OUTCOMES = {
    Outcome.APPLIED: event_sink_pb2.PushEventResponse.OUTCOME_APPLIED,
    Outcome.DUPLICATE: event_sink_pb2.PushEventResponse.OUTCOME_DUPLICATE,
}


class EventSinkServicer(event_sink_pb2_grpc.EventSinkServiceServicer):
    def __init__(
        self,
        consumer: Consumer,
        factory: sessionmaker[Session],
        tables: BusTables,
        *,
        service: str,
        services: Collection[str],
        trust_domain: str = "poly.local",
        namespace: str = "default",
    ) -> None:
        """`service` is this (publishing) service: Subscribe accepts only types it publishes."""
        self._service = service
        self._published = contract.published_by(service)
        self._consumer = consumer
        self._factory = factory
        self._tables = tables
        self._callers = {
            tls.spiffe_id(name, trust_domain=trust_domain, namespace=namespace): name for name in services
        }

    def _service_caller(self, context: grpc.ServicerContext) -> str:
        identity = tls.peer_identity(context)
        name = self._callers.get(identity or "")
        if name is None:
            raise PermissionDenied(
                "EVENT_CALLER_NOT_A_SERVICE",
                "{caller} may not push or subscribe to events",
                caller=identity or "an unidentified caller",
            )
        return name

    def PushEvent(  # noqa: N802 - generated gRPC method name
        self, request: event_sink_pb2.PushEventRequest, context: grpc.ServicerContext
    ) -> event_sink_pb2.PushEventResponse:
        caller = self._service_caller(context)
        envelope = request.event
        # Before anything else: a certificate pushes only the events its service publishes.
        if not contract.may_publish(caller, envelope.type):
            _log.warning(
                "event refused",
                extra={
                    "event_id": envelope.id,
                    "event_type": envelope.type,
                    "caller": caller,
                    "source": envelope.source,
                    "reason": contract.NOT_PUBLISHED_BY_CALLER,
                },
            )
            raise contract.EventNotPublishedByCaller(caller, envelope.type)
        if envelope.source and envelope.source != caller:
            raise PermissionDenied(
                "EVENT_SOURCE_MISMATCH",
                "{caller} may only push its own events, not those of {source}",
                caller=caller,
                source=envelope.source,
            )
        missing = [f for f in ("id", "type", "aggregate_id", "source") if not getattr(envelope, f)]
        if missing or not envelope.HasField("payload"):
            raise InvalidArgument(
                "EVENT_ENVELOPE_INCOMPLETE",
                "the event envelope is incomplete",
                violations=[
                    FieldViolation(f"event.{name}", "required")
                    for name in [*missing, *([] if envelope.HasField("payload") else ["payload"])]
                ],
            )
        try:
            outcome = self._consumer.apply(envelope)
        except Exception as error:
            if is_transient_database_error(error):
                # UNAVAILABLE: the relay keeps retrying and never dead-letters for this.
                raise Unavailable(
                    "EVENT_STORE_UNAVAILABLE", "the event store is unavailable; retry"
                ) from None
            raise
        return event_sink_pb2.PushEventResponse(outcome=_OUTCOMES[outcome])

    def Subscribe(  # noqa: N802 - generated gRPC method name
        self, request: event_sink_pb2.SubscribeRequest, context: grpc.ServicerContext
    ) -> event_sink_pb2.SubscribeResponse:
        subscriber = self._service_caller(context)
        self._check_subscription(subscriber, request.event_types)
        types = sorted(set(request.event_types))
        subscription = self._tables.subscription
        with self._factory.begin() as session:
            # Subscriptions only grow: a replica of an older version re-subscribing during a
            # rolling deploy must not take away the types a newer one asked for.
            query = select(subscription.c.event_type).where(subscription.c.subscriber == subscriber)
            known = set(session.scalars(query))
            added = [t for t in types if t not in known]
            if added:
                session.execute(
                    insert(subscription), [{"subscriber": subscriber, "event_type": t} for t in added]
                )
            current = sorted(known | set(types))
        _log.info("subscribed", extra={"subscriber": subscriber, "event_types": current, "added": added})
        return event_sink_pb2.SubscribeResponse(subscriber=subscriber, event_types=current)

    def _check_subscription(self, subscriber: str, requested: Sequence[str]) -> None:
        """Refuse the whole request unless every entry is a type this service publishes."""
        if len(requested) > MAX_SUBSCRIBED_TYPES:
            violations = [FieldViolation("event_types", f"must have at most {MAX_SUBSCRIBED_TYPES} entries")]
        else:
            violations = [
                FieldViolation(f"event_types[{index}]", "is no event type published here")
                for index, event_type in enumerate(requested)
                if event_type not in self._published
            ]
        if violations:
            # Never the requested strings themselves: they are the caller's, of any length.
            _log.warning(
                "subscription refused",
                extra={"subscriber": subscriber, "requested": len(requested), "refused": len(violations)},
            )
            raise InvalidArgument(
                "EVENT_TYPE_NOT_PUBLISHED_HERE",
                "{service} accepts subscriptions only to the event types it publishes: {published}",
                violations=violations,
                service=self._service,
                published=" ".join(sorted(self._published)) or "none",
            )


def sink_registration(servicer: EventSinkServicer) -> server.Registration:
    return server.registration(
        EVENT_SINK, event_sink_pb2_grpc.add_EventSinkServiceServicer_to_server, servicer
    )


class Subscriber:
    """Registers this service's event types with their publishers, retrying until every one
    accepts.

    Each peer is asked only for the consumed types the contract names it the publisher of
    (a peer refuses any other), and a peer that publishes none of them is not asked at all.
    `start` returns once all those peers have answered or `initial_wait` has passed; peers
    still unreachable then (a publisher that is down) keep being retried in the background.
    """

    def __init__(
        self,
        channels: Channels,
        peers: Sequence[str],
        event_types: Sequence[str],
        *,
        initial_wait: float = 10.0,
        retry_interval: float = 1.0,
    ) -> None:
        self._channels = channels
        self._requests = {
            peer: event_sink_pb2.SubscribeRequest(event_types=wanted)
            for peer in peers
            if (wanted := sorted({t for t in event_types if contract.publisher_of(t) == peer}))
        }
        orphans = sorted({t for t in event_types if contract.publisher_of(t) not in peers})
        if orphans:
            _log.warning("no peer publishes these consumed event types", extra={"event_types": orphans})
        self._pending = set(self._requests)
        self._refused_by: set[str] = set()
        self._lock = threading.Lock()
        self._initial_wait = initial_wait
        self._retry_interval = retry_interval
        self._stop = threading.Event()
        self._all_done = threading.Event()
        self._thread: threading.Thread | None = None

    def _try(self, peer: str) -> bool:
        stub = event_sink_pb2_grpc.EventSinkServiceStub(self._channels.get(peer))
        try:
            stub.Subscribe(self._requests[peer], timeout=5)
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
            # A refusal (not an outage) will not go away by itself: say so once, keep trying.
            refused = code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED)
            first_refusal = refused and peer not in self._refused_by
            if refused:
                self._refused_by.add(peer)
            _log.log(
                logging.WARNING if first_refusal else logging.DEBUG,
                "subscription not yet accepted",
                extra={"peer": peer, "code": code.name},
            )
            return False
        return True

    def _loop(self) -> None:
        while self.pending and not self._stop.is_set():
            for peer in sorted(self.pending):
                if self._try(peer):
                    with self._lock:
                        self._pending.discard(peer)
            if self.pending:
                self._stop.wait(self._retry_interval)
        self._all_done.set()

    @property
    def pending(self) -> set[str]:
        """Peers that have not accepted the subscription yet."""
        with self._lock:
            return set(self._pending)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="bus-subscriber", daemon=True)
        self._thread.start()
        if not self._all_done.wait(self._initial_wait):
            _log.warning(
                "subscriptions still pending; retrying in the background",
                extra={"peers": sorted(self._pending)},
            )

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
