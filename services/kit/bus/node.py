"""One service's whole bus, wired: `node(settings, engine, tables, handlers)`.

The embedded transport needs, per service: an `Outbox` that routes to subscribers, a
`Consumer` for its handlers behind an `EventSinkServicer`, a `Subscriber` that registers
its event types with the services that publish them, and a `Relay` pushing its outbox to theirs.
`Node` is the `Background` that starts and stops them with the server.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from google.protobuf.message import Message
from sqlalchemy import Engine

from services.kit import config, db, server
from services.kit.bus.broker import BrokerConsumer, BrokerTransport
from services.kit.bus.consumer import Consumer, EventHandler
from services.kit.bus.metrics import BusMetrics
from services.kit.bus.outbox import Outbox, routing
from services.kit.bus.relay import Relay, RelaySettings
from services.kit.bus.sink import EVENT_SINK, EventSinkServicer, Subscriber, sink_registration
from services.kit.bus.tables import BusTables
from services.kit.bus.transport import EmbeddedTransport
from services.kit.clients import Channels

__all__ = ["Handlers", "Node", "node"]

Handlers = Mapping[type[Message], EventHandler]
"""The handler of each consumed event type."""


@dataclass
class Node:
    outbox: Outbox
    consumer: Consumer
    relay: Relay
    intake: Subscriber | BrokerConsumer
    """How events reach this service: subscriptions at its peers, or its broker queue."""
    registration: server.Registration
    channels: Channels
    metrics: BusMetrics
    broker: BrokerTransport | None = None

    def start(self) -> None:
        self.intake.start()
        self.relay.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.relay.stop(timeout)
        self.intake.stop(timeout)
        self.channels.close()
        if self.broker is not None:
            self.broker.close()


def node(
    settings: config.Settings,
    engine: Engine,
    tables: BusTables,
    handlers: Handlers | Callable[[Outbox], Handlers],
) -> Node:
    """The bus of `settings.service` over its own database `engine`: embedded transport, or
    RabbitMQ when ``settings.bus.url`` is set. Handlers that publish in their own transaction
    (a saga step) need the node's outbox: pass a function of it instead of the mapping."""
    peers = [name for name in config.SERVICES if name != settings.service]
    metrics = BusMetrics()
    channels = Channels(settings, services={peer: [EVENT_SINK] for peer in peers})
    factory = db.session_factory(engine)
    # A send must end well inside its lease, so no two replicas ever have it in flight.
    send_timeout = min(10.0, settings.bus.lease_seconds / 2)
    broker = (
        BrokerTransport(settings.bus.url, prefix=settings.bus.prefix, timeout=max(0.2, send_timeout - 1))
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
    )
    outbox = Outbox(
        tables,
        source=settings.service,
        routing=routing(settings.bus, tables),
        metrics=metrics,
        on_commit=relay.wake,
    )
    consumer = Consumer(
        factory, tables, handlers(outbox) if callable(handlers) else handlers, metrics=metrics
    )
    sink = EventSinkServicer(
        consumer,
        factory,
        tables,
        service=settings.service,
        services=config.SERVICES,
        trust_domain=settings.tls.trust_domain,
        namespace=settings.tls.namespace,
    )
    wait = settings.bus.subscribe_wait_seconds
    intake: Subscriber | BrokerConsumer = (
        BrokerConsumer(
            settings.bus.url,
            settings.service,
            consumer,
            prefix=settings.bus.prefix,
            attempts=settings.bus.max_attempts,
            connect_wait=wait,
        )
        if broker
        else Subscriber(channels, peers, consumer.event_types, initial_wait=wait)
    )
    return Node(outbox, consumer, relay, intake, sink_registration(sink), channels, metrics, broker)
