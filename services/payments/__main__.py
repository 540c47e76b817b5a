"""Entry point: ``python -m services.payments``. Reads settings once, then wires and serves."""

from pathlib import Path

from poly.payments.v1 import payments_service_pb2, payments_service_pb2_grpc
from services.kit import authn, authz, bus, clients, config, db, server, telemetry
from services.payments import events, store
from services.payments.domain import Payments
from services.payments.service import PaymentsServicer

MIGRATIONS = Path(__file__).with_name("migrations")


def main() -> None:
    settings = config.load_or_exit("payments")
    telemetry.setup_or_exit(settings)
    engine = db.connect_or_exit(settings.db, migrations=MIGRATIONS)
    channels = clients.Channels(settings, services={"auth": [authn.AUTH_SERVICE]})
    try:
        currency = settings.payments.default_currency
        events_node = bus.node(settings, engine, store.BUS, lambda outbox: events.handlers(outbox, currency))
        payments_store = store.PaymentsStore(db.session_factory(engine), events_node.outbox)
        servicer = PaymentsServicer(Payments(payments_store.transaction))
        descriptor = payments_service_pb2.DESCRIPTOR.services_by_name["PaymentsService"]
        registrations = [
            server.registration(
                descriptor, payments_service_pb2_grpc.add_PaymentsServiceServicer_to_server, servicer
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
