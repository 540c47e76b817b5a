"""The RabbitMQ topology, derived from the contract and declared by every service.

`topology(prefix)` describes it from ``(poly.options.v1.event)`` alone (`contract`):

- one durable topic exchange per event family, ``<prefix>.events.<family>``, where the family
  is the first word of the event's name (OrderPaid -> ``order``); the routing key is the
  event's full type;
- one durable quorum queue per service that consumes anything, ``<prefix>.<service>``, with a
  single active consumer (replicas keep per-aggregate order) and a dead-letter route through
  the direct exchange ``<prefix>.dead`` to the quorum queue ``<prefix>.<service>.dead``;
- one binding per event type and consumer: the consumer's queue to the type's exchange.

`declare(channel, prefix)` declares all of it, idempotently. Every declarer passes the same
arguments (a queue redeclared with others is refused with PRECONDITION_FAILED), so it is safe
for every service to declare the whole topology at start (`BrokerTransport` before its first
publish on each connection, `BrokerConsumer` before it consumes) and for ``poly bus declare``
to do so from a deploy job: a consumer's queue exists and collects its events from the moment
any of them runs, whatever the start order. Declaring only adds: a binding or queue the
contract no longer lists stays until an operator deletes it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue, TimeoutType

from services.kit.bus import contract

__all__ = [
    "Binding",
    "Declared",
    "QueueSpec",
    "Topology",
    "dead_exchange_name",
    "dead_queue_arguments",
    "dead_queue_name",
    "declare",
    "exchange_name",
    "queue_arguments",
    "queue_name",
    "topology",
]


def exchange_name(event_type: str, prefix: str = "poly") -> str:
    """``poly.events.v1.PaymentCaptured`` -> ``poly.events.payment``."""
    name = event_type.rsplit(".", 1)[-1]
    match = re.match(r"[A-Z][a-z0-9]*", name)
    family = (match.group(0) if match else name).lower()
    return f"{prefix}.events.{family}"


def queue_name(service: str, prefix: str = "poly") -> str:
    return f"{prefix}.{service}"


def dead_queue_name(service: str, prefix: str = "poly") -> str:
    return f"{prefix}.{service}.dead"


def dead_exchange_name(prefix: str = "poly") -> str:
    return f"{prefix}.dead"


def queue_arguments(service: str, prefix: str = "poly") -> dict[str, Any]:
    """The arguments of `service`'s queue: every declarer must pass exactly these."""
    return {
        "x-queue-type": "quorum",
        "x-single-active-consumer": True,
        "x-dead-letter-exchange": dead_exchange_name(prefix),
        "x-dead-letter-routing-key": service,
    }


def dead_queue_arguments() -> dict[str, Any]:
    """The arguments of every dead-letter queue."""
    return {"x-queue-type": "quorum"}


@dataclass(frozen=True, slots=True)
class QueueSpec:
    name: str
    arguments: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Binding:
    queue: str
    exchange: str
    routing_key: str


@dataclass(frozen=True, slots=True)
class Topology:
    """What `declare` declares, in the order it declares it."""

    exchanges: tuple[str, ...]
    """The family topic exchanges."""
    dead_exchange: str
    queues: tuple[QueueSpec, ...]
    """Each consuming service's queue, then its dead-letter queue."""
    bindings: tuple[Binding, ...]
    """Event queues to family exchanges (by type), then dead-letter queues to the dead exchange."""


def topology(prefix: str = "poly") -> Topology:
    """The whole topology the contract implies, under `prefix`."""
    declared = sorted(e.full_name for e in contract.events() if contract.publisher_of(e.full_name))
    consumers = sorted({service for t in declared for service in contract.consumers_of(t)})
    dead = dead_exchange_name(prefix)
    queues: list[QueueSpec] = []
    for service in consumers:
        queues.append(QueueSpec(queue_name(service, prefix), queue_arguments(service, prefix)))
        queues.append(QueueSpec(dead_queue_name(service, prefix), dead_queue_arguments()))
    bindings = [
        Binding(queue_name(service, prefix), exchange_name(event_type, prefix), event_type)
        for event_type in declared
        for service in sorted(contract.consumers_of(event_type))
    ]
    bindings += [Binding(dead_queue_name(service, prefix), dead, service) for service in consumers]
    return Topology(
        exchanges=tuple(sorted({exchange_name(t, prefix) for t in declared})),
        dead_exchange=dead,
        queues=tuple(queues),
        bindings=tuple(bindings),
    )


@dataclass(frozen=True, slots=True)
class Declared:
    """The declared topology, with the channel's objects to publish to and consume from."""

    topology: Topology
    exchanges: Mapping[str, AbstractExchange]
    """Every exchange by name, the dead-letter exchange included."""
    queues: Mapping[str, AbstractQueue]


async def declare(channel: AbstractChannel, prefix: str = "poly", *, timeout: TimeoutType = None) -> Declared:
    """Declare the whole topology on `channel` (idempotent). A broker that holds an entity of
    the same name with other arguments closes the channel (PRECONDITION_FAILED): that is
    raised, as is any other failure, and nothing is retried here."""
    wanted = topology(prefix)
    exchanges: dict[str, AbstractExchange] = {}
    for name in wanted.exchanges:
        exchanges[name] = await channel.declare_exchange(
            name, aio_pika.ExchangeType.TOPIC, durable=True, timeout=timeout
        )
    exchanges[wanted.dead_exchange] = await channel.declare_exchange(
        wanted.dead_exchange, aio_pika.ExchangeType.DIRECT, durable=True, timeout=timeout
    )
    queues: dict[str, AbstractQueue] = {}
    for spec in wanted.queues:
        queues[spec.name] = await channel.declare_queue(
            spec.name, durable=True, arguments=dict(spec.arguments), timeout=timeout
        )
    for binding in wanted.bindings:
        await queues[binding.queue].bind(
            exchanges[binding.exchange], routing_key=binding.routing_key, timeout=timeout
        )
    return Declared(wanted, exchanges, queues)
