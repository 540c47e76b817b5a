"""The embedded transport's receiving end: every consuming service serves EventSinkService.

Routes come from the contract: the publishing service's relay pushes each event to every
consumer its ``(poly.options.v1.event)`` declares (`outbox.consumer_routing`), so a consumer
registers nothing at start-up and an event waits in the publisher's outbox for a consumer
that has not started yet.

`EventSinkServicer.PushEvent` accepts events only from Polyservice service identities
(the SPIFFE ID in the caller's client certificate), only of types that caller is the
declared publisher of (read by `contract`), and only with that caller as their source; then
it applies them through the `Consumer`, under a CONSUMER span whose parent is the trace
context the envelope carries (`tracing`).
`Subscribe` is deprecated and kept only for peers of the previous version during a rolling
deploy: it checks and records, and changes no route. Every entry must be a type this service
publishes (at most `MAX_SUBSCRIBED_TYPES`; any other is INVALID_ARGUMENT with a field
violation each) whose declared consumers include the caller (otherwise PERMISSION_DENIED,
`NOT_CONSUMED_BY_CALLER`); a refused request stores nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence

import grpc
from opentelemetry.trace import TracerProvider
from sqlalchemy import Engine, insert, select

from poly.events.v1 import event_sink_pb2, event_sink_pb2_grpc
from poly.events.v1.events_pb2 import EventEnvelope
from services.kit import db, server, tls
from services.kit.bus import contract
from services.kit.bus.consumer import Consumer, Outcome, is_transient_database_error
from services.kit.bus.tables import BusTables
from services.kit.bus.tracing import EMBEDDED, BusTracer, Destination
from services.kit.domain_errors import FieldViolation, InvalidArgument, PermissionDenied, Unavailable

__all__ = [
    "EVENT_SINK",
    "MAX_SUBSCRIBED_TYPES",
    "NOT_CONSUMED_BY_CALLER",
    "EventSinkServicer",
    "sink_registration",
]

_log = logging.getLogger("poly.bus.sink")

EVENT_SINK = event_sink_pb2.DESCRIPTOR.services_by_name["EventSinkService"]

MAX_SUBSCRIBED_TYPES = 100
"""Most entries one Subscribe may list (each must be a type published here, so far fewer)."""

NOT_CONSUMED_BY_CALLER = "EVENT_TYPE_NOT_CONSUMED_BY_CALLER"
"""The ErrorInfo reason of a Subscribe to a type whose declared consumers omit the caller."""

_OUTCOMES = {
    Outcome.APPLIED: event_sink_pb2.PushEventResponse.OUTCOME_APPLIED,
    Outcome.DUPLICATE: event_sink_pb2.PushEventResponse.OUTCOME_DUPLICATE,
}


class EventSinkServicer(event_sink_pb2_grpc.EventSinkServiceServicer):
    def __init__(
        self,
        consumer: Consumer,
        engine: Engine,
        tables: BusTables,
        *,
        service: str,
        services: Collection[str],
        trust_domain: str = "poly.local",
        namespace: str = "default",
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        """`service` is this service: PushEvent applies the events it consumes, Subscribe
        accepts only types it publishes, each from one of its declared consumers.
        `tracer_provider` makes the consumer spans (the global one by default)."""
        self._service = service
        self._published = contract.published_by(service)
        self._consumer = consumer
        self._engine = engine
        self._tables = tables
        self._tracer = BusTracer(tracer_provider)
        self._destination = Destination(EMBEDDED, service)
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
        with self._tracer.processing(envelope, self._destination) as span:
            outcome = self._apply(caller, envelope)
            self._tracer.processed(span, outcome.value)
        return event_sink_pb2.PushEventResponse(outcome=_OUTCOMES[outcome])

    def _apply(self, caller: str, envelope: EventEnvelope) -> Outcome:
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
            return self._consumer.apply(envelope)
        except Exception as error:
            if is_transient_database_error(error):
                # UNAVAILABLE: the relay keeps retrying and never dead-letters for this.
                raise Unavailable(
                    "EVENT_STORE_UNAVAILABLE", "the event store is unavailable; retry"
                ) from None
            raise

    def Subscribe(  # noqa: N802 - generated gRPC method name
        self, request: event_sink_pb2.SubscribeRequest, context: grpc.ServicerContext
    ) -> event_sink_pb2.SubscribeResponse:
        """Deprecated: check and record only (routes come from the contract)."""
        subscriber = self._service_caller(context)
        self._check_published_here(subscriber, request.event_types)
        types = sorted(set(request.event_types))
        self._check_consumer(subscriber, types)
        subscription = self._tables.subscription
        with db.transaction(self._engine) as connection:
            # Records only grow: a replica of an older version re-subscribing during a
            # rolling deploy must not take away the types a newer one asked for.
            query = select(subscription.c.event_type).where(subscription.c.subscriber == subscriber)
            known = set(connection.scalars(query))
            added = [t for t in types if t not in known]
            if added:
                connection.execute(
                    insert(subscription), [{"subscriber": subscriber, "event_type": t} for t in added]
                )
            current = sorted(known | set(types))
        _log.info("subscribed", extra={"subscriber": subscriber, "event_types": current, "added": added})
        return event_sink_pb2.SubscribeResponse(subscriber=subscriber, event_types=current)

    def _check_published_here(self, subscriber: str, requested: Sequence[str]) -> None:
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

    def _check_consumer(self, subscriber: str, types: Sequence[str]) -> None:
        """Refuse the whole request unless the contract names `subscriber` a consumer of each
        of `types` (all published here, so known names, safe to repeat)."""
        refused = [t for t in types if subscriber not in contract.consumers_of(t)]
        if refused:
            _log.warning(
                "subscription refused",
                extra={"subscriber": subscriber, "event_types": refused, "reason": NOT_CONSUMED_BY_CALLER},
            )
            raise PermissionDenied(
                NOT_CONSUMED_BY_CALLER,
                "{caller} is not a declared consumer of {event_types}",
                caller=subscriber,
                event_types=" ".join(refused),
            )


def sink_registration(servicer: EventSinkServicer) -> server.Registration:
    return server.registration(
        EVENT_SINK, event_sink_pb2_grpc.add_EventSinkServiceServicer_to_server, servicer
    )
