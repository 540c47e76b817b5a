"""Entry point: ``python -m services.auth``. Reads settings once, then wires and serves."""

from pathlib import Path

from poly.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from services.auth import events, store
from services.auth.service import AuthServicer
from services.kit import bus, config, db, logs, server

MIGRATIONS = Path(__file__).with_name("migrations")


def main() -> None:
    settings = config.load_or_exit("auth")
    logs.setup(settings.service, settings.log_level)
    engine = db.connect_or_exit(settings.db, migrations=MIGRATIONS)
    try:
        events_node = bus.node(settings, engine, store.BUS, events.HANDLERS)
        servicer = AuthServicer()
        descriptor = auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"]
        server.serve(
            settings,
            [
                server.registration(
                    descriptor, auth_service_pb2_grpc.add_AuthServiceServicer_to_server, servicer
                ),
                events_node.registration,
            ],
            background=[events_node],
        )
    finally:
        engine.dispose()


if __name__ == "__main__":
    main()
