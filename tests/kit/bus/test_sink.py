"""The embedded transport end to end: real gRPC servers, real mTLS identities, real databases.

Routes come from the contract: nothing in these tests subscribes before publishing. The
deprecated Subscribe only checks (service identity, types published here, declared
consumer) and records.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from sqlalchemy import select

from poly.events.v1 import event_sink_pb2, event_sink_pb2_grpc
from poly.events.v1.events_pb2 import EventEnvelope, OrderPaid
from services.kit import bus, clients, config, server, tls
from services.kit.bus.sink import MAX_SUBSCRIBED_TYPES
from tests.kit.bus.conftest import BusDb, make_bus_db, publish, record_effect
from tests.support.env import settings_for
from tests.support.status import Refusal, refusal

ORDER_CANCELLED = "poly.events.v1.OrderCancelled"
ORDER_FULFILLED = "poly.events.v1.OrderFulfilled"
ORDER_PAID = "poly.events.v1.OrderPaid"
USER_DELETED = "poly.events.v1.UserDeleted"


@dataclass
class Pair:
    """`orders` publishes; `notifications` consumes OrderPaid. Each has its own database."""

    orders_db: BusDb
    notifications_db: BusDb
    orders: server.RunningServer
    notifications: server.RunningServer
    environ: dict[str, str]

    def settings(self, component: str) -> config.Settings:
        return settings_for(component, self.environ)


def _sink_server(settings: config.Settings, bus_db: BusDb, consumer: bus.Consumer) -> server.RunningServer:
    sink = bus.EventSinkServicer(
        consumer, bus_db.engine, bus_db.tables, service=settings.service, services=config.SERVICES
    )
    return server.start(settings, [bus.sink_registration(sink)])


@pytest.fixture
def pair(certs: Path, bus_db: BusDb, tmp_path: Path) -> Iterator[Pair]:
    orders_db = make_bus_db(f"sqlite:///{tmp_path / 'orders.db'}")
    base = {"POLY_TLS_DIR": str(certs), "POLY_ORDERS_PORT": "0", "POLY_NOTIFICATIONS_PORT": "0"}
    orders = _sink_server(
        settings_for("orders", base), orders_db, bus.Consumer(orders_db.engine, orders_db.tables, {})
    )
    notifications_consumer = bus.Consumer(
        bus_db.engine, bus_db.tables, {OrderPaid: record_effect(bus_db.effects)}
    )
    notifications = _sink_server(settings_for("notifications", base), bus_db, notifications_consumer)
    environ = {
        **base,
        "POLY_ORDERS_ADDRESS": f"localhost:{orders.port}",
        "POLY_NOTIFICATIONS_ADDRESS": f"localhost:{notifications.port}",
    }
    try:
        yield Pair(orders_db, bus_db, orders, notifications, environ)
    finally:
        notifications.drain()
        orders.drain()
        orders_db.engine.dispose()


def test_a_published_event_reaches_its_declared_consumer_once_without_any_subscription(pair: Pair) -> None:
    orders_channels = clients.Channels(pair.settings("orders"), services={"notifications": [bus.EVENT_SINK]})
    try:
        outbox = bus.Outbox(pair.orders_db.tables, source="orders", routing=bus.consumer_routing())
        events = [publish(pair.orders_db, outbox, f"orders/{i}", f"orders/{i}") for i in range(5)]
        relay = bus.Relay(
            pair.orders_db.engine, pair.orders_db.tables, bus.EmbeddedTransport(orders_channels)
        )
        for _ in range(10):
            if relay.run_once() == 0:
                break
        assert pair.notifications_db.effect_counts() == {e.id: 1 for e in events}
        # A redelivery (say the acknowledgement was lost) changes nothing.
        transport = bus.EmbeddedTransport(orders_channels)
        transport.send("notifications", events[0])
        assert pair.notifications_db.effect_counts() == {e.id: 1 for e in events}
        assert _subscriptions(pair.orders_db) == [], "nothing was registered, nor needed"
    finally:
        orders_channels.close()


def _push(
    pair: Pair, caller: str, envelope: EventEnvelope
) -> grpc.RpcError | event_sink_pb2.PushEventResponse:
    settings = pair.settings(caller)
    with grpc.secure_channel(
        f"localhost:{pair.notifications.port}",
        tls.channel_credentials(settings.tls),
        options=[("grpc.ssl_target_name_override", "notifications")],
    ) as channel:
        stub = event_sink_pb2_grpc.EventSinkServiceStub(channel)
        try:
            response: event_sink_pb2.PushEventResponse = stub.PushEvent(
                event_sink_pb2.PushEventRequest(event=envelope), timeout=5
            )
        except grpc.RpcError as error:
            return error
    return response


def _order_paid(event_id: str = "0b9b7c0e-0000-4000-8000-00000000000a") -> EventEnvelope:
    envelope = EventEnvelope(
        id=event_id,
        type=ORDER_PAID,
        aggregate_id="orders/9",
        sequence=1,
        source="orders",
        schema_version=1,
    )
    envelope.occur_time.GetCurrentTime()
    envelope.payload.Pack(OrderPaid(order="orders/9"))
    return envelope


@pytest.mark.parametrize("caller", ["cli", "gateway"])
def test_a_push_from_a_non_service_identity_is_refused(pair: Pair, caller: str) -> None:
    answer = _push(pair, caller, _order_paid())
    assert isinstance(answer, grpc.RpcError) and isinstance(answer, grpc.Call)
    assert answer.code() == grpc.StatusCode.PERMISSION_DENIED
    assert pair.notifications_db.effect_counts() == {}


def test_a_push_from_a_service_identity_is_applied(pair: Pair) -> None:
    answer = _push(pair, "orders", _order_paid())
    assert isinstance(answer, event_sink_pb2.PushEventResponse)
    assert answer.outcome == event_sink_pb2.PushEventResponse.OUTCOME_APPLIED


def test_an_incomplete_envelope_is_invalid(pair: Pair) -> None:
    answer = _push(pair, "orders", EventEnvelope(id="x", type=ORDER_PAID))
    assert isinstance(answer, grpc.RpcError) and isinstance(answer, grpc.Call)
    assert answer.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_subscribing_from_a_non_service_identity_is_refused(pair: Pair) -> None:
    settings = pair.settings("cli")
    with grpc.secure_channel(
        f"localhost:{pair.orders.port}",
        tls.channel_credentials(settings.tls),
        options=[("grpc.ssl_target_name_override", "orders")],
    ) as channel:
        stub = event_sink_pb2_grpc.EventSinkServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Subscribe(event_sink_pb2.SubscribeRequest(event_types=[ORDER_PAID]), timeout=5)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_a_service_cannot_push_another_services_events(pair: Pair) -> None:
    forged = _order_paid()
    forged.source = "payments"  # pushed by `orders`, claiming to come from payments
    answer = _push(pair, "orders", forged)
    assert isinstance(answer, grpc.RpcError) and isinstance(answer, grpc.Call)
    assert answer.code() == grpc.StatusCode.PERMISSION_DENIED
    assert pair.notifications_db.effect_counts() == {}


@pytest.mark.parametrize(
    ("caller", "event_type"),
    [
        ("payments", ORDER_PAID),
        ("notifications", ORDER_PAID),
        ("users", "poly.events.v1.Nonsense"),
        ("orders", "poly.events.v1.OrderLine"),
    ],
    ids=["another-services-type", "the-consumers-own-identity", "unknown-type", "not-an-event"],
)
def test_a_service_cannot_push_a_type_it_does_not_publish(pair: Pair, caller: str, event_type: str) -> None:
    forged = _order_paid()
    forged.source = caller  # the source check alone would let it through
    forged.type = event_type
    answer = _push(pair, caller, forged)
    assert isinstance(answer, grpc.RpcError)
    refused = refusal(answer)
    assert refused.code == grpc.StatusCode.PERMISSION_DENIED
    assert refused.reason == "EVENT_TYPE_NOT_PUBLISHED_BY_CALLER"
    assert refused.metadata == {"caller": caller, "event_type": event_type}
    assert pair.notifications_db.effect_counts() == {}
    with pair.notifications_db.engine.connect() as connection:
        assert connection.execute(select(pair.notifications_db.tables.inbox.c.event_id)).all() == []


def test_a_declared_consumers_subscription_is_recorded_and_only_grows(pair: Pair) -> None:
    channels = clients.Channels(pair.settings("notifications"), services={"orders": [bus.EVENT_SINK]})
    try:
        stub = event_sink_pb2_grpc.EventSinkServiceStub(channels.get("orders"))
        first = stub.Subscribe(
            event_sink_pb2.SubscribeRequest(event_types=[ORDER_PAID, ORDER_CANCELLED]), timeout=5
        )
        assert first.subscriber == "notifications", "the subscriber is the caller's certificate identity"
        older = stub.Subscribe(event_sink_pb2.SubscribeRequest(event_types=[ORDER_PAID]), timeout=5)
        assert list(older.event_types) == [ORDER_CANCELLED, ORDER_PAID], "an old replica removes nothing"
    finally:
        channels.close()
    assert _subscriptions(pair.orders_db) == [
        ("notifications", ORDER_CANCELLED),
        ("notifications", ORDER_PAID),
    ]


def _subscriptions(bus_db: BusDb) -> list[tuple[str, str]]:
    table = bus_db.tables.subscription
    with bus_db.engine.connect() as connection:
        rows = connection.execute(select(table.c.subscriber, table.c.event_type).order_by(table.c.event_type))
        return [(str(subscriber), str(event_type)) for subscriber, event_type in rows]


def _subscribe_at_orders(pair: Pair, caller: str, event_types: list[str]) -> Refusal:
    channels = clients.Channels(pair.settings(caller), services={"orders": [bus.EVENT_SINK]})
    try:
        stub = event_sink_pb2_grpc.EventSinkServiceStub(channels.get("orders"))
        with pytest.raises(grpc.RpcError) as caught:
            stub.Subscribe(event_sink_pb2.SubscribeRequest(event_types=event_types), timeout=5)
    finally:
        channels.close()
    return refusal(caught.value)


def test_subscribe_accepts_only_types_the_service_publishes(pair: Pair) -> None:
    # What a live system stored: junk, a name that is no event, another service's event.
    requested = [
        "junk\n\u202e" + "x" * 5000,
        "poly.events.v1.NotAnEvent",
        USER_DELETED,
        ORDER_PAID,
        "poly.events.v1.OrderLine",
    ]
    refused = _subscribe_at_orders(pair, "notifications", requested)
    assert (refused.code, refused.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "EVENT_TYPE_NOT_PUBLISHED_HERE",
    )
    assert set(refused.violations) == {"event_types[0]", "event_types[1]", "event_types[2]", "event_types[4]"}
    assert "xxxxx" not in refused.message + "".join(refused.violations.values())
    assert refused.metadata["service"] == "orders" and ORDER_PAID in refused.metadata["published"]
    assert _subscriptions(pair.orders_db) == [], (
        "a refused subscription stores nothing, not even its valid part"
    )


def test_subscribe_is_bounded(pair: Pair) -> None:
    refused = _subscribe_at_orders(pair, "notifications", [ORDER_PAID] * (MAX_SUBSCRIBED_TYPES + 1))
    assert (refused.code, set(refused.violations)) == (grpc.StatusCode.INVALID_ARGUMENT, {"event_types"})
    many = _subscribe_at_orders(
        pair, "notifications", [f"poly.events.v1.No{i}" for i in range(MAX_SUBSCRIBED_TYPES)]
    )
    assert len(many.violations) == MAX_SUBSCRIBED_TYPES, "every bad entry is named, and the answer still fits"
    assert _subscriptions(pair.orders_db) == []


@pytest.mark.parametrize(
    ("caller", "requested", "refused"),
    [
        ("payments", [ORDER_PAID], ORDER_PAID),
        ("notifications", [ORDER_PAID, ORDER_FULFILLED, ORDER_CANCELLED], ORDER_FULFILLED),
        ("payments", [ORDER_CANCELLED, ORDER_PAID], ORDER_PAID),
        ("users", [ORDER_CANCELLED, ORDER_PAID], f"{ORDER_CANCELLED} {ORDER_PAID}"),
    ],
    ids=["not-a-consumer", "one-of-three-not-consumed", "another-consumers-type", "consumes-none-here"],
)
def test_subscribe_refuses_a_caller_that_is_not_a_declared_consumer(
    pair: Pair, caller: str, requested: list[str], refused: str
) -> None:
    # Every entry is published here (so it passes the argument check); the contract does not
    # name the caller a consumer of `refused`: the whole request is refused, nothing stored.
    answer = _subscribe_at_orders(pair, caller, requested)
    assert (answer.code, answer.reason) == (grpc.StatusCode.PERMISSION_DENIED, bus.NOT_CONSUMED_BY_CALLER)
    assert answer.metadata == {"caller": caller, "event_types": refused}
    assert _subscriptions(pair.orders_db) == [], "nothing stored, not even the part it consumes"
