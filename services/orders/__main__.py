"""Entry point: ``python -m services.orders``. Reads settings once, then wires and serves."""

from pathlib import Path

from poly.orders.v1 import orders_service_pb2, orders_service_pb2_grpc
from services.kit import authn, authz, bus, clients, config, db, server, telemetry
from services.orders import capture, events, store, watch
from services.orders.domain import Orders
from services.orders.service import OrdersServicer

MIGRATIONS = Path(__file__).with_name("migrations")


def main() -> None:
    settings = config.load_or_exit("orders")
    telemetry.setup_or_exit(settings)
    engine = db.connect_or_exit(settings.db, migrations=MIGRATIONS)
    channels = clients.Channels(
        settings, services={"auth": [authn.AUTH_SERVICE], "payments": [capture.PAYMENTS_SERVICE]}
    )
    try:
        hub = watch.ChangeHub()
        events_node = bus.node(
            settings, engine, store.BUS, lambda outbox: events.handlers(outbox, on_change=hub.notify)
        )
        orders_store = store.OrdersStore(db.session_factory(engine), events_node.outbox, hub.notify)
        orders = Orders(orders_store.transaction)
        capture_worker = capture.CaptureWorker(orders, capture.grpc_capturer(channels))
        hub.listen(capture_worker.changed)
        servicer = OrdersServicer(orders, hub)
        descriptor = orders_service_pb2.DESCRIPTOR.services_by_name["OrdersService"]
        registrations = [
            server.registration(
                descriptor, orders_service_pb2_grpc.add_OrdersServiceServicer_to_server, servicer
            ),
            events_node.registration,
        ]
        verifier = authn.remote_verifier(settings, channels)
        server.serve(
            settings,
            registrations,
            middlewares=authz.service_middlewares(settings, verifier, registrations),
            background=[events_node, capture_worker],
        )
    finally:
        channels.close()
        engine.dispose()


if __name__ == "__main__":
    main()
