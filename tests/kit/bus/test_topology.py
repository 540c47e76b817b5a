"""The RabbitMQ topology: derived from the contract alone, declared the same by everyone."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import aio_pika
import pytest

from services.kit.bus import contract, topology
from tests.support.broker import delete_namespace


@pytest.fixture
def prefix(amqp_url: str) -> Iterator[str]:
    name = f"polytest-{uuid.uuid4().hex[:10]}"
    yield name
    delete_namespace(amqp_url, name)


def test_exchange_per_event_family() -> None:
    assert topology.exchange_name("poly.events.v1.OrderPaid") == "poly.events.order"
    assert topology.exchange_name("poly.events.v1.PaymentCaptured", "x") == "x.events.payment"
    assert topology.exchange_name("poly.events.v1.UserRegistered") == "poly.events.user"


@pytest.mark.parametrize(
    ("event_type", "queues"),
    [
        ("poly.events.v1.UserRegistered", ["p.notifications", "p.payments", "p.users"]),
        ("poly.events.v1.OrderCancelled", ["p.notifications", "p.payments"]),
        ("poly.events.v1.OrderPaid", ["p.notifications"]),
        ("poly.events.v1.UserDeleted", ["p.auth"]),
        ("poly.events.v1.PaymentVoided", []),
        ("poly.events.v1.NotificationDelivered", []),
    ],
    ids=[
        "three-consumers",
        "two-consumers",
        "one-consumer",
        "auth-consumes",
        "nobody",
        "nobody-notification",
    ],
)
def test_each_event_type_is_bound_to_the_queue_of_each_declared_consumer(
    event_type: str, queues: list[str]
) -> None:
    bindings = [b for b in topology.topology("p").bindings if b.routing_key == event_type]
    assert sorted(b.queue for b in bindings) == queues
    assert {b.exchange for b in bindings} <= {topology.exchange_name(event_type, "p")}


def test_the_topology_follows_the_contract_and_nothing_else() -> None:
    declared = topology.topology("p")
    events = [e.full_name for e in contract.events() if contract.publisher_of(e.full_name)]
    consumers = sorted({s for t in events for s in contract.consumers_of(t)})
    assert [q.name for q in declared.queues] == [
        name for service in consumers for name in (f"p.{service}", f"p.{service}.dead")
    ]
    assert set(declared.exchanges) == {topology.exchange_name(t, "p") for t in events}
    event_bindings = {(b.queue, b.routing_key) for b in declared.bindings if b.exchange != "p.dead"}
    assert event_bindings == {(f"p.{s}", t) for t in events for s in contract.consumers_of(t)}
    dead_bindings = {(b.queue, b.routing_key) for b in declared.bindings if b.exchange == "p.dead"}
    assert dead_bindings == {(f"p.{s}.dead", s) for s in consumers}


def test_queue_arguments_are_those_every_earlier_declarer_used() -> None:
    # A queue declared again with other arguments is refused (PRECONDITION_FAILED), so these
    # must stay what deployed services and `redrive_dead_queue` have always declared.
    assert topology.queue_arguments("payments", "poly") == {
        "x-queue-type": "quorum",
        "x-single-active-consumer": True,
        "x-dead-letter-exchange": "poly.dead",
        "x-dead-letter-routing-key": "payments",
    }
    assert topology.dead_queue_arguments() == {"x-queue-type": "quorum"}


def _declare_twice_then_inspect(url: str, prefix: str) -> tuple[topology.Declared, dict[str, Any]]:
    async def go() -> tuple[topology.Declared, dict[str, Any]]:
        connection = await aio_pika.connect(url, timeout=10)
        async with connection:
            first = await topology.declare(await connection.channel(), prefix, timeout=10)
            second = await topology.declare(await connection.channel(), prefix, timeout=10)
            assert first.topology == second.topology
            channel = await connection.channel()
            found: dict[str, Any] = {}
            for queue in second.topology.queues:
                passive = await channel.declare_queue(queue.name, passive=True)
                found[queue.name] = passive.declaration_result.message_count
            exchange = await channel.get_exchange(
                topology.exchange_name("poly.events.v1.UserRegistered", prefix)
            )
            await exchange.publish(aio_pika.Message(b"x"), routing_key="poly.events.v1.UserRegistered")
            for service in ("users", "payments", "notifications", "auth"):
                queue = await channel.declare_queue(topology.queue_name(service, prefix), passive=True)
                found[f"after:{service}"] = queue.declaration_result.message_count
            return second, found

    return asyncio.run(go())


def test_declaring_twice_is_harmless_and_fans_each_type_out_to_its_consumers(
    amqp_url: str, prefix: str
) -> None:
    declared, found = _declare_twice_then_inspect(amqp_url, prefix)
    assert {name for name in found if not name.startswith("after:")} == {
        q.name for q in declared.topology.queues
    }
    assert set(declared.queues) == {q.name for q in declared.topology.queues}
    assert set(declared.exchanges) == {*declared.topology.exchanges, f"{prefix}.dead"}
    # UserRegistered reaches users, payments and notifications, and no one else.
    assert [found[f"after:{s}"] for s in ("users", "payments", "notifications", "auth")] == [1, 1, 1, 0]
