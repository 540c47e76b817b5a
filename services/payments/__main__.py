"""The payments service, declared: ``python -m services.payments`` serves it (`kit.app.run`)."""

from pathlib import Path

from sqlalchemy import Connection

from poly.payments.v1 import payments_service_pb2, payments_service_pb2_grpc
from services.kit import app
from services.payments import events, store
from services.payments import settings as payments_settings
from services.payments.accounts import Accounts
from services.payments.domain import Payments
from services.payments.paypal_provider import PayPalProvider
from services.payments.provider_worker import ProviderWorker
from services.payments.service import PaymentsServicer
from services.payments.stripe_provider import StripeProvider


def outside_provider(settings: payments_settings.PaymentsSettings) -> StripeProvider | PayPalProvider | None:
    """The provider `settings` name; None where the ledger holds payments."""
    if settings.provider == "stripe":
        return StripeProvider(settings.stripe)
    if settings.provider == "paypal":
        return PayPalProvider(settings.paypal)
    return None


def wire(context: app.Context[payments_settings.PaymentsSettings]) -> app.Parts:
    settings = context.service_settings
    transactions = store.PaymentsStore(context.engine, context.outbox).transaction
    payments = Payments(transactions, provider=outside_provider(settings))
    currency = settings.default_currency

    def repository(connection: Connection) -> store.SqlRepository:
        return store.SqlRepository(connection, context.outbox)

    return app.Parts(
        servicer=PaymentsServicer(payments, Accounts(transactions, payments.outside)),
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
