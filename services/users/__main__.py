"""The users service, declared: ``python -m services.users`` serves it (`kit.app.run`)."""

from pathlib import Path

from poly.users.v1 import users_service_pb2, users_service_pb2_grpc
from services.kit import app
from services.users import events, store
from services.users.domain import Users
from services.users.service import UsersServicer


def wire(context: app.Context[None]) -> app.Parts:
    users = Users(store.UsersStore(context.engine, context.outbox).transaction)
    return app.Parts(
        servicer=UsersServicer(users),
        handlers=events.handlers(lambda connection: store.SqlRepository(connection, context.outbox)),
    )


SERVICE = app.Service(
    name="users",
    api=users_service_pb2.DESCRIPTOR.services_by_name["UsersService"],
    add_servicer=users_service_pb2_grpc.add_UsersServiceServicer_to_server,
    migrations=Path(__file__).with_name("migrations"),
    bus_tables=store.BUS,
    settings=app.no_settings,
    wire=wire,
)

if __name__ == "__main__":
    app.run(SERVICE)
