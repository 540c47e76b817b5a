"""Entry point: ``python -m services.orders``. Reads settings once, then wires and serves."""

from pathlib import Path

from poly.orders.v1 import orders_service_pb2, orders_service_pb2_grpc
from services.kit import bus, config, db, logs, server
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
        server.serve(
            settings,
            [
                server.registration(
                    descriptor, orders_service_pb2_grpc.add_OrdersServiceServicer_to_server, servicer
                ),
                events_node.registration,
            ],
            background=[events_node],
        )
    finally:
        engine.dispose()


if __name__ == "__main__":
    main()
