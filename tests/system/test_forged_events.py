"""No service can forge another's events: the five services as processes, real mTLS.

Every service certificate tries every event type whose declared publisher
(``(poly.options.v1.event)``) is another service: pushed to every other service's EventSink
with the envelope's source set to the caller (so the source check alone would pass), and,
on the broker transport, published straight to the RabbitMQ exchange the bus uses. Nothing
may be applied: every push is PERMISSION_DENIED with EVENT_TYPE_NOT_PUBLISHED_BY_CALLER,
every forged message ends in a dead-letter queue, no inbox holds a forged id, the victim's
identity still logs in (a forged UserDeleted) and the victim's order is never PAID (a forged
PaymentAuthorized + PaymentCaptured, sent while payments is down so the order stays PENDING;
orders consumes no payment event, and the broker has no queue that would take one).
A forged Subscribe (junk, a name that is no event, another publisher's type, too many
entries) is INVALID_ARGUMENT at every service, one for a type published there whose declared
consumers do not include the caller is PERMISSION_DENIED, and neither stores anything.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import aio_pika
import grpc
import pytest
from google.api import resource_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from sqlalchemy import create_engine, text

from poly.events.v1 import event_sink_pb2, event_sink_pb2_grpc
from poly.events.v1.events_pb2 import EventEnvelope
from poly.orders.v1 import orders_service_pb2 as orders_pb
from poly.orders.v1 import orders_service_pb2_grpc, resources_pb2
from poly.type.v1.money_pb2 import Money
from services.kit import bus, config
from services.kit.bus import contract
from services.kit.bus.sink import MAX_SUBSCRIBED_TYPES
from tests.support.broker import delete_namespace
from tests.support.env import production_shape
from tests.support.identity import Deployment, bearer, start
from tests.support.status import refusal
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

Order = resources_pb2.Order
REASON = "EVENT_TYPE_NOT_PUBLISHED_BY_CALLER"
NOT_CONSUMED = "EVENT_TYPE_NOT_CONSUMED_BY_CALLER"
EVENT_TYPES = sorted(m.full_name for m in contract.events())


@dataclass
class Victim:
    user: str
    email: str
    token: str
    order: str = ""


@dataclass
class Forgery:
    """What the forgers sent, and what came back."""

    ids: set[str] = field(default_factory=set)
    answers: dict[tuple[str, str, str], str] = field(default_factory=dict)
    """(forger, target, type) -> the status code name and ErrorInfo reason of the push."""
    dead: dict[str, set[str]] = field(default_factory=dict)
    """Consuming service -> ids of the forged messages routed to its queue."""


def _consumers(event_type: str) -> list[str]:
    """The services whose queue the broker binds to `event_type`: its declared consumers."""
    return sorted(contract.consumers_of(event_type))


def _value(field_: FieldDescriptor, victim: Victim) -> object:
    reference = field_.GetOptions().Extensions[resource_pb2.resource_reference].type
    by_reference = {
        "users.poly.local/User": victim.user,
        "orders.poly.local/Order": victim.order,
        "payments.poly.local/Payment": f"payments/{uuid.uuid4()}",
        "payments.poly.local/Account": f"accounts/{uuid.uuid4()}",
        "notifications.poly.local/Delivery": f"deliveries/{uuid.uuid4()}",
    }
    if reference:
        return by_reference[reference]
    if field_.type == field_.TYPE_STRING:
        return victim.email if field_.name == "email" else "FORGED"
    if field_.type == field_.TYPE_BOOL:
        return True
    return 1  # numbers and enums


def _payload(event: Descriptor, victim: Victim) -> Message:
    """An instance of `event` about the victim's user and order, every field set."""
    payload = GetMessageClass(event)()
    for field_ in event.fields:
        if field_.is_repeated:
            continue
        if field_.message_type is not None:
            if field_.message_type.full_name == Money.DESCRIPTOR.full_name:
                getattr(payload, field_.name).CopyFrom(Money(currency_code="EUR", amount_minor=100))
            continue
        setattr(payload, field_.name, _value(field_, victim))
    return payload


def _envelope(event_type: str, forger: str, victim: Victim) -> EventEnvelope:
    payload = _payload(next(m for m in contract.events() if m.full_name == event_type), victim)
    envelope = EventEnvelope(
        id=str(uuid.uuid4()),
        type=event_type,
        aggregate_id=victim.order or victim.user,
        sequence=1,
        source=forger,  # the caller itself: the envelope-source check alone lets it through
        schema_version=1,
    )
    envelope.occur_time.GetCurrentTime()
    envelope.payload.Pack(payload)
    return envelope


def _not_owned(forger: str) -> list[str]:
    return [t for t in EVENT_TYPES if contract.publisher_of(t) != forger]


@dataclass
class System:
    deployment: Deployment
    broker: tuple[str, str] | None
    """(URL, prefix) on the RabbitMQ transport."""

    def push_all(self, victim: Victim, targets: Callable[[str], list[str]], forgery: Forgery) -> None:
        """Every forger pushes every type it does not publish to each of `targets(forger)`."""
        for forger in config.SERVICES:
            for target in targets(forger):
                stub = event_sink_pb2_grpc.EventSinkServiceStub(self.deployment.channel(target, as_=forger))
                for event_type in _not_owned(forger):
                    envelope = _envelope(event_type, forger, victim)
                    forgery.ids.add(envelope.id)
                    try:
                        reply = stub.PushEvent(event_sink_pb2.PushEventRequest(event=envelope), timeout=10)
                        answer = f"OK {event_sink_pb2.PushEventResponse.Outcome.Name(reply.outcome)}"
                    except grpc.RpcError as error:
                        refused = refusal(error)
                        answer = f"{refused.code.name} {refused.reason}"
                    forgery.answers[(forger, target, event_type)] = answer

    def publish_all(self, victim: Victim, forgery: Forgery) -> None:
        """Every forger publishes every consumed type it does not publish straight to RabbitMQ,
        as the broker transport does (its exchange, routing key and ``source`` header)."""
        assert self.broker is not None
        url, prefix = self.broker

        async def go() -> None:
            connection = await aio_pika.connect(url, timeout=10)
            async with connection:
                channel = await connection.channel()
                for forger in config.SERVICES:
                    for event_type in _not_owned(forger):
                        consumers = _consumers(event_type)
                        if not consumers:
                            continue  # no queue is bound for it: nothing to forge into
                        envelope = _envelope(event_type, forger, victim)
                        forgery.ids.add(envelope.id)
                        for consumer in consumers:
                            forgery.dead.setdefault(consumer, set()).add(envelope.id)
                        exchange = await channel.get_exchange(bus.exchange_name(event_type, prefix))
                        await exchange.publish(
                            aio_pika.Message(
                                body=envelope.SerializeToString(),
                                message_id=envelope.id,
                                type=event_type,
                                content_type="application/x-protobuf",
                                headers={"aggregate_id": envelope.aggregate_id, "source": forger},
                                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                            ),
                            routing_key=event_type,
                            mandatory=True,
                        )

        asyncio.run(go())

    def dead_letters(self, service: str) -> dict[str, str]:
        """Envelope id -> ``x-poly-reason`` of each message in `service`'s dead-letter queue."""
        assert self.broker is not None
        url, prefix = self.broker

        async def go() -> dict[str, str]:
            connection = await aio_pika.connect(url, timeout=10)
            async with connection:
                channel = await connection.channel()
                queue = await channel.declare_queue(bus.dead_queue_name(service, prefix), passive=True)
                found: dict[str, str] = {}
                for _ in range(int(queue.declaration_result.message_count or 0)):
                    message = await queue.get(fail=False, no_ack=False, timeout=10)
                    if message is None:
                        break
                    reason = (message.headers or {}).get(bus.REASON_HEADER)
                    found[EventEnvelope.FromString(message.body).id] = str(reason)
                return found  # not acknowledged: closing the channel puts them back

        return asyncio.run(go())

    def inbox(self, service: str) -> set[str]:
        engine = create_engine(self.deployment.settings(service).db.url)
        try:
            with engine.connect() as connection:
                return {str(row[0]) for row in connection.execute(text("SELECT event_id FROM bus_inbox"))}
        finally:
            engine.dispose()

    def subscriptions(self, service: str) -> set[tuple[str, str]]:
        engine = create_engine(self.deployment.settings(service).db.url)
        try:
            with engine.connect() as connection:
                rows = connection.execute(text("SELECT subscriber, event_type FROM bus_subscription"))
                return {(str(subscriber), str(event_type)) for subscriber, event_type in rows}
        finally:
            engine.dispose()

    def contact(self, victim: Victim) -> tuple[str, bool] | None:
        """Display name and deleted flag of the victim's contact as notifications records it."""
        engine = create_engine(self.deployment.settings("notifications").db.url)
        try:
            with engine.connect() as connection:
                row = connection.execute(
                    text("SELECT display_name, deleted FROM contact WHERE recipient = :user"),
                    {"user": victim.user},
                ).first()
                return None if row is None else (str(row[0]), bool(row[1]))
        finally:
            engine.dispose()

    def orders(self) -> orders_service_pb2_grpc.OrdersServiceStub:
        return orders_service_pb2_grpc.OrdersServiceStub(self.deployment.channel("orders"))

    def order_state(self, victim: Victim) -> int:
        found = self.orders().GetOrder(
            orders_pb.GetOrderRequest(name=victim.order), metadata=bearer(victim.token), timeout=10
        )
        state: int = found.state
        return state


@pytest.fixture(scope="module", params=["sqlite-embedded", "postgresql-rabbitmq"])
def system(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    production: dict[str, str] = {}
    if request.param == "postgresql-rabbitmq":
        production = production_shape(request)
    deployment = start(
        tmp_path_factory.mktemp("forged"),
        config.SERVICES,
        {**production, "POLY_BUS_SUBSCRIBE_WAIT_SECONDS": "20"},
    )
    broker = (production["POLY_BUS_URL"], production["POLY_BUS_PREFIX"]) if production else None
    try:
        yield System(deployment, broker)
    finally:
        deployment.stop()
        if broker is not None:
            families = sorted({bus.exchange_name(t, "").removeprefix(".events.") for t in EVENT_TYPES})
            delete_namespace(*broker, consumers=config.SERVICES, families=tuple(families))


def test_no_service_can_forge_another_services_events(system: System) -> None:
    deployment = system.deployment
    user, email = deployment.register()
    victim = Victim(user, email, deployment.login(email).access_token)

    # An order that stays PENDING: payments, which would settle it, is down meanwhile.
    deployment.processes.pop("payments").stop()
    price = Money(currency_code="EUR", amount_minor=500)
    line = resources_pb2.OrderLine(sku="SKU-1", quantity=1, unit_price=price)
    placed = system.orders().CreateOrder(
        orders_pb.CreateOrderRequest(order=Order(lines=[line]), request_id=str(uuid.uuid4())),
        metadata=bearer(victim.token),
        timeout=10,
    )
    victim.order = placed.name
    assert placed.state == Order.STATE_PENDING

    forgery = Forgery()
    up = [s for s in config.SERVICES if s != "payments"]
    system.push_all(victim, lambda forger: [s for s in up if s != forger], forgery)
    if system.broker is not None:
        system.publish_all(victim, forgery)
        eventually(
            lambda: all(
                set(system.dead_letters(service)) >= forged
                for service, forged in forgery.dead.items()
                if service in up
            ),
            timeout=30,
            what="the forged events to reach the dead-letter queues of the services up",
        )
    assert system.order_state(victim) == Order.STATE_PENDING, "a forged capture paid the order"

    deployment.start(["payments"])
    system.push_all(victim, lambda forger: [] if forger == "payments" else ["payments"], forgery)

    refused = f"PERMISSION_DENIED {REASON}"
    wrong = {pair: answer for pair, answer in forgery.answers.items() if answer != refused}
    assert wrong == {}, "pushes not refused as forged"
    assert len(forgery.answers) == sum(
        len(_not_owned(forger)) * (len(config.SERVICES) - 1) for forger in config.SERVICES
    )
    if system.broker is not None:
        for service, forged in forgery.dead.items():

            def arrived(service: str = service, forged: set[str] = forged) -> dict[str, str] | None:
                found = system.dead_letters(service)
                return found if set(found) >= forged else None

            dead = eventually(arrived, timeout=30, what=f"every forged message for {service} dead-lettered")
            assert {dead[i] for i in forged} == {REASON}, f"{service}: dead-lettered without the reason"
    for service in config.SERVICES:
        assert system.inbox(service).isdisjoint(forgery.ids), f"{service} applied a forged event"
    assert deployment.login(email).access_token, "a forged UserDeleted disabled the identity"
    assert system.contact(victim) in (None, ("", False)), "a forged ContactChanged rewrote the contact"
    # Genuine events still flow: payments now settles the order (no funds: the payment fails).
    failed = eventually(
        lambda: system.order_state(victim) == Order.STATE_PAYMENT_FAILED, what="the order to settle genuinely"
    )
    assert failed


def test_a_forged_subscription_is_refused_and_stores_nothing(system: System) -> None:
    junk = "junk\n\u202e" + "x" * 5000
    for target in config.SERVICES:
        forger = next(s for s in config.SERVICES if s != target)
        before = system.subscriptions(target)
        elsewhere = next(t for t in EVENT_TYPES if contract.publisher_of(t) not in (target, None))
        stub = event_sink_pb2_grpc.EventSinkServiceStub(system.deployment.channel(target, as_=forger))
        for event_types in (
            [junk, "poly.events.v1.NotAnEvent", elsewhere],
            [elsewhere] * (MAX_SUBSCRIBED_TYPES + 1),
        ):
            with pytest.raises(grpc.RpcError) as refused:
                stub.Subscribe(event_sink_pb2.SubscribeRequest(event_types=event_types), timeout=10)
            found = refusal(refused.value)
            assert found.code == grpc.StatusCode.INVALID_ARGUMENT, (target, found)
            assert found.violations, (target, found)
        # A type published here, asked for by a service the contract does not name its consumer.
        for published in sorted(contract.published_by(target)):
            outsider = next(
                s for s in config.SERVICES if s != target and s not in contract.consumers_of(published)
            )
            stub = event_sink_pb2_grpc.EventSinkServiceStub(system.deployment.channel(target, as_=outsider))
            with pytest.raises(grpc.RpcError) as refused:
                stub.Subscribe(event_sink_pb2.SubscribeRequest(event_types=[published]), timeout=10)
            found = refusal(refused.value)
            denied = (grpc.StatusCode.PERMISSION_DENIED, NOT_CONSUMED)
            assert (found.code, found.reason) == denied, (target, published, found)
        assert system.subscriptions(target) == before, f"{target} stored a forged subscription"
