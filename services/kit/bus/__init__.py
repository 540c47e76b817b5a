"""The event bus: transactional outbox, relay, idempotent inbox, two transports.

A service declares what it publishes and consumes and gets the rest from here:

- `Outbox.publish(connection, event, aggregate_id=...)` writes the event in the caller's
  transaction (``bus_outbox``) with one ``bus_delivery`` row per route: per declared
  consumer (embedded), or one to the broker; none for an event nobody consumes.
- `Relay` (a background thread) delivers due rows in order per aggregate and route, with
  exponential backoff and jitter, and dead-letters a delivery after `max_attempts`.
- `Consumer.apply(envelope)` runs the handler and records the event id in ``bus_inbox``
  in one transaction: effects happen once even when delivery happens twice.
- Embedded transport: `EmbeddedTransport` pushes to each declared consumer's
  `EventSinkServicer` over mTLS; routes come from the contract, so nothing registers at
  start-up (the deprecated ``Subscribe`` RPC only checks and records, for older peers).
- RabbitMQ transport (``POLY_BUS_URL=amqp://…``): `topology` derives the exchanges, queues
  and bindings from the contract and declares them (every service does, at start);
  `BrokerTransport` publishes with confirms, `BrokerConsumer` consumes the service's quorum
  queue, acknowledging after the commit; `redrive_dead_queue` returns dead-lettered
  messages to it.
- `contract`: who publishes and who consumes which event, from ``(poly.options.v1.event)``
  in the protos; the sink, both consumers and the outbox refuse an event whose source is not
  its publisher, routes follow its consumers, and a node refuses handlers it does not list.
- `admin`: dead letters, redrive, and counts for `poly bus`.
- `tracing`: the W3C trace context rides in each envelope, so a request, the relay's send
  span and each consumer's process span are one trace, on both transports.
- `node(settings, engine, tables, handlers)`: all of the above wired for one service.
"""

from services.kit.bus.admin import DeadLetter, dead_letters, redrive, state_counts
from services.kit.bus.broker import BrokerTransport
from services.kit.bus.broker_consumer import REASON_HEADER, BrokerConsumer, redrive_dead_queue
from services.kit.bus.consumer import Consumer, EventHandler, EventNotHandled, Outcome
from services.kit.bus.contract import (
    NOT_PUBLISHED_BY_CALLER,
    EventNotPublishedByCaller,
    check_publisher,
    published_by,
    publisher_of,
)
from services.kit.bus.metrics import ApplyDelayObserver, BusMetrics, backlog
from services.kit.bus.node import Handlers, Node, node
from services.kit.bus.outbox import Outbox, Routing, broker_routing, consumer_routing, routing
from services.kit.bus.relay import Relay, RelaySettings, backoff_seconds
from services.kit.bus.sink import EVENT_SINK, NOT_CONSUMED_BY_CALLER, EventSinkServicer, sink_registration
from services.kit.bus.tables import DEAD, DELIVERED, PENDING, BusTables, bus_tables
from services.kit.bus.topology import dead_queue_name, exchange_name, queue_name
from services.kit.bus.tracing import BusTracer, Destination, current_trace_context
from services.kit.bus.transport import DeliveryError, EmbeddedTransport, Transport

__all__ = [
    "DEAD",
    "DELIVERED",
    "EVENT_SINK",
    "NOT_CONSUMED_BY_CALLER",
    "NOT_PUBLISHED_BY_CALLER",
    "PENDING",
    "REASON_HEADER",
    "ApplyDelayObserver",
    "BrokerConsumer",
    "BrokerTransport",
    "BusMetrics",
    "BusTracer",
    "BusTables",
    "Consumer",
    "DeadLetter",
    "DeliveryError",
    "Destination",
    "EmbeddedTransport",
    "EventHandler",
    "EventNotHandled",
    "EventNotPublishedByCaller",
    "EventSinkServicer",
    "Handlers",
    "Node",
    "Outbox",
    "Outcome",
    "Relay",
    "RelaySettings",
    "Routing",
    "Transport",
    "backlog",
    "backoff_seconds",
    "broker_routing",
    "consumer_routing",
    "current_trace_context",
    "check_publisher",
    "node",
    "queue_name",
    "bus_tables",
    "dead_letters",
    "dead_queue_name",
    "exchange_name",
    "published_by",
    "publisher_of",
    "redrive",
    "redrive_dead_queue",
    "routing",
    "sink_registration",
    "state_counts",
]
