"""One service's whole bus, wired: `node(settings, engine, tables, handlers)`.

The embedded transport needs, per service: an `Outbox` that routes each event to the
consumers the contract declares for it (``(poly.options.v1.event)``), a `Consumer` for its
handlers behind an `EventSinkServicer`, and a `Relay` pushing its outbox to theirs. Routes
come from the contract, so nothing is registered with peers and a service says SERVING
without waiting for them; an event for a consumer that is not up yet waits in the outbox.
The handlers are checked against the contract when the node is built: a handler for a type
the service does not consume is a programming error (ValueError), a consumed type without
a handler is logged. `Node` is the `Background` that starts and stops them with the server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from google.protobuf.message import Message
from sqlalchemy import Engine

from services.kit import config, server, telemetry
from services.kit.bus import contract
from services.kit.bus.broker import BrokerTransport
from services.kit.bus.broker_consumer import BrokerConsumer
from services.kit.bus.consumer import Consumer, EventHandler
from services.kit.bus.metrics import BusMetrics
from services.kit.bus.observed import export_bus_metrics
from services.kit.bus.outbox import Outbox, routing
from services.kit.bus.relay import Relay, RelaySettings
from services.kit.bus.sink import EVENT_SINK, EventSinkServicer, sink_registration
from services.kit.bus.tables import BusTables
from services.kit.bus.transport import EmbeddedTransport
from services.kit.clients import Channels
from services.kit.priority import BackgroundThreads

__all__ = ["Handlers", "Node", "node"]

_log = logging.getLogger("poly.bus.node")

Handlers = Mapping[type[Message], EventHandler]
"""The handler of each consumed event type."""


@dataclass
class Node:
    outbox: Outbox
    consumer: Consumer
    relay: Relay
    intake: BrokerConsumer | None
    """Its broker queue; None on the embedded transport (the publishers' relays push to its
    EventSink, at the routes the contract gives)."""
    registration: server.Registration
    channels: Channels
    metrics: BusMetrics
    broker: BrokerTransport | None = None

    def start(self) -> None:
        if self.intake is not None:
            self.intake.start()
        self.relay.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.relay.stop(timeout)
        if self.intake is not None:
            self.intake.stop(timeout)
        self.channels.close()
        if self.broker is not None:
            self.broker.close()


def node(
    settings: config.Settings,
    engine: Engine,
    tables: BusTables,
    handlers: Handlers | Callable[[Outbox], Handlers],
    *,
    metrics: BusMetrics | None = None,
    background: BackgroundThreads | None = None,
) -> Node:
    """The bus of `settings.service` over its own database `engine`: embedded transport, or
    RabbitMQ when ``settings.bus.url`` is set. Handlers that publish in their own transaction
    (a saga step) need the node's outbox: pass a function of it instead of the mapping.
    `metrics` (a new `BusMetrics` by default) is what every part of the node counts into.
    Spans go to the global tracer provider (`tracing`)."""
    # Who takes part is the event contract's to say (the protos), not a list in the kit.
    peers = sorted(contract.services() - {settings.service})
    metrics = metrics or BusMetrics()
    channels = Channels(settings, services={peer: [EVENT_SINK] for peer in peers})
    # A send must end well inside its lease, so no two replicas ever have it in flight.
    send_timeout = min(10.0, settings.bus.lease_seconds / 2)
    broker = (
        BrokerTransport(
            settings.bus.url,
            prefix=settings.bus.prefix,
            timeout=max(0.2, send_timeout - 1),
            metrics=metrics,
            name=f"{settings.bus.prefix} {settings.service} publisher",
        )
        if settings.bus.url
        else None
    )
    relay = Relay(
        engine,
        tables,
        broker or EmbeddedTransport(channels, timeout=send_timeout),
        settings=RelaySettings(
            max_attempts=settings.bus.max_attempts,
            batch_size=settings.bus.batch_size,
            lease_seconds=settings.bus.lease_seconds,
            send_timeout=send_timeout,
        ),
        metrics=metrics,
        owner=settings.service,
        background=background,
    )
    outbox = Outbox(
        tables,
        source=settings.service,
        routing=routing(settings.bus),
        metrics=metrics,
        on_commit=relay.wake,
    )
    consumer = Consumer(engine, tables, handlers(outbox) if callable(handlers) else handlers, metrics=metrics)
    _check_handlers(settings.service, consumer.event_types)
    sink = EventSinkServicer(
        consumer,
        engine,
        tables,
        service=settings.service,
        services=contract.services(),
        trust_domain=settings.tls.trust_domain,
        namespace=settings.tls.namespace,
    )
    intake = (
        BrokerConsumer(
            settings.bus.url,
            settings.service,
            consumer,
            prefix=settings.bus.prefix,
            attempts=settings.bus.max_attempts,
            connect_wait=settings.bus.subscribe_wait_seconds,
        )
        if broker
        else None
    )
    observed = telemetry.installed()
    if observed is not None:
        export_bus_metrics(observed, metrics, engine, tables, source=settings.service)
    return Node(outbox, consumer, relay, intake, sink_registration(sink), channels, metrics, broker)


def _check_handlers(service: str, handled: Collection[str]) -> None:
    """`handled` (full type names) against the types the contract names `service` a consumer of."""
    consumed = contract.consumed_by(service)
    stray = sorted(set(handled) - consumed)
    if stray:
        declared = "; ".join(
            f"{t} is consumed by {', '.join(sorted(contract.consumers_of(t))) or 'nobody'}" for t in stray
        )
        raise ValueError(
            f"{service} has a handler for {', '.join(stray)}, but the contract does not name it a "
            f"consumer ((poly.options.v1.event) in poly/events/v1/events.proto: {declared})"
        )
    unhandled = sorted(consumed - set(handled))
    if unhandled:
        # Delivered here all the same; each is refused (FAILED_PRECONDITION) until handled.
        _log.warning(
            "declared consumer of event types it has no handler for",
            extra={"service": service, "event_types": unhandled},
        )
