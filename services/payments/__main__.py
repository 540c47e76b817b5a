"""The payments service, declared: ``python -m services.payments`` serves it (`kit.app.run`)."""

from pathlib import Path

from sqlalchemy import Connection

from poly.payments.v1 import payments_service_pb2, payments_service_pb2_grpc
from services.kit import app
from services.payments import events, store
from services.payments import settings as payments_settings
from services.payments.domain import Payments
from services.payments.paypal_provider import PayPalProvider
from services.payments.provider_worker import ProviderWorker
from services.payments.providers import PaymentProvider
from services.payments.service import PaymentsServicer
from services.payments.stripe_provider import StripeProvider


def wire(context: app.Context[payments_settings.PaymentsSettings]) -> app.Parts:
    settings = context.service_settings
    transactions = store.PaymentsStore(context.engine, context.outbox).transaction
    provider: PaymentProvider | None = None  # the ledger's
    if settings.provider == "stripe":
        provider = StripeProvider(settings.stripe)
    elif settings.provider == "paypal":
        provider = PayPalProvider(settings.paypal)
    payments = Payments(transactions, provider=provider)
    currency = settings.default_currency

    def repository(connection: Connection) -> store.SqlRepository:
        return store.SqlRepository(connection, context.outbox)

    return app.Parts(
        servicer=PaymentsServicer(payments),
        handlers=events.handlers(repository, currency),
        workers=[ProviderWorker(transactions, payments.outside)] if payments.outside else [],
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
