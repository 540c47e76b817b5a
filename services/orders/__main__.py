"""Entry point: ``python -m services.orders``. Reads settings once, then wires and serves."""

from pathlib import Path

from poly.orders.v1 import orders_service_pb2, orders_service_pb2_grpc
from services.kit import authn, authz, bus, clients, config, db, logs, server
from services.orders import events, store
from services.orders.service import OrdersServicer

MIGRATIONS = Path(__file__).with_name("migrations")


def main() -> None:
    settings = config.load_or_exit("orders")
    logs.setup(settings.service, settings.log_level)
    engine = db.connect_or_exit(settings.db, migrations=MIGRATIONS)
    try:
        events_node = bus.node(settings, engine, store.BUS, events.HANDLERS)
        servicer = OrdersServicer()
        descriptor = orders_service_pb2.DESCRIPTOR.services_by_name["OrdersService"]
        registrations = [
            server.registration(
                descriptor, orders_service_pb2_grpc.add_OrdersServiceServicer_to_server, servicer
            ),
            events_node.registration,
        ]
        auth_channels = clients.Channels(settings, services={"auth": [authn.AUTH_SERVICE]})
        verifier = authn.remote_verifier(settings, auth_channels)
        server.serve(
            settings,
            registrations,
            middlewares=authz.service_middlewares(settings, verifier, registrations),
            background=[events_node],
        )
    finally:
        engine.dispose()


if __name__ == "__main__":
    main()
