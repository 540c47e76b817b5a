"""The payments service, declared: ``python -m services.payments`` serves it (`kit.app.run`)."""

from pathlib import Path

from sqlalchemy import Connection

from poly.payments.v1 import payments_service_pb2, payments_service_pb2_grpc
from services.kit import app
from services.payments import events, store
from services.payments import settings as payments_settings
from services.payments.domain import Payments
from services.payments.service import PaymentsServicer


def wire(context: app.Context[payments_settings.PaymentsSettings]) -> app.Parts:
    payments = Payments(store.PaymentsStore(context.engine, context.outbox).transaction)
    currency = context.service_settings.default_currency

    def repository(connection: Connection) -> store.SqlRepository:
        return store.SqlRepository(connection, context.outbox)

    return app.Parts(
        servicer=PaymentsServicer(payments),
        handlers=events.handlers(repository, currency),
    )


SERVICE = app.Service(
    name="payments",
    api=payments_service_pb2.DESCRIPTOR.services_by_name["PaymentsService"],
    add_servicer=payments_service_pb2_grpc.add_PaymentsServiceServicer_to_server,
    migrations=Path(__file__).with_name("migrations"),
    bus_tables=store.BUS,
    settings=payments_settings.read,
    wire=wire,
)

if __name__ == "__main__":
    app.run(SERVICE)
