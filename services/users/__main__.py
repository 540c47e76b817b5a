"""Entry point: ``python -m services.users``. Reads settings once, then wires and serves."""

from pathlib import Path

from poly.users.v1 import users_service_pb2, users_service_pb2_grpc
from services.kit import authn, authz, bus, clients, config, db, server, telemetry
from services.users import events, store
from services.users.domain import Users
from services.users.service import UsersServicer

MIGRATIONS = Path(__file__).with_name("migrations")


def main() -> None:
    settings = config.load_or_exit("users")
    telemetry.setup_or_exit(settings)
    engine = db.connect_or_exit(settings.db, migrations=MIGRATIONS)
    channels = clients.Channels(settings, services={"auth": [authn.AUTH_SERVICE]})
    try:
        events_node = bus.node(settings, engine, store.BUS, events.handlers)
        users_store = store.UsersStore(db.session_factory(engine), events_node.outbox)
        servicer = UsersServicer(Users(users_store.transaction))
        descriptor = users_service_pb2.DESCRIPTOR.services_by_name["UsersService"]
        registrations = [
            server.registration(
                descriptor, users_service_pb2_grpc.add_UsersServiceServicer_to_server, servicer
            ),
            events_node.registration,
        ]
        verifier = authn.remote_verifier(settings, channels)
        server.serve(
            settings,
            registrations,
            middlewares=authz.service_middlewares(settings, verifier, registrations),
            background=[events_node],
        )
    finally:
        channels.close()
        engine.dispose()


if __name__ == "__main__":
    main()
