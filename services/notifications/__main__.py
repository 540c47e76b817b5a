"""Entry point: ``python -m services.notifications``. Reads settings once, then wires and serves."""

from functools import partial
from pathlib import Path

from poly.notifications.v1 import notifications_service_pb2, notifications_service_pb2_grpc
from services.kit import authn, authz, bus, clients, config, db, server, telemetry
from services.notifications import addresses, contacts, dispatch, domain, events, senders, store
from services.notifications.dispatcher import Dispatcher, Doorbell, dispatch_settings
from services.notifications.service import NotificationsServicer

MIGRATIONS = Path(__file__).with_name("migrations")


def main() -> None:
    settings = config.load_or_exit("notifications")
    telemetry.setup_or_exit(settings)
    engine = db.connect_or_exit(settings.db, migrations=MIGRATIONS)
    channels = clients.Channels(
        settings, services={"users": [contacts.USERS_SERVICE], "auth": [authn.AUTH_SERVICE]}
    )
    try:
        wake = Doorbell()
        events_node = bus.node(settings, engine, store.BUS, partial(events.handlers, on_commit=wake.ring))
        notifications_store = store.NotificationsStore(db.session_factory(engine), events_node.outbox)
        notify = settings.notifications
        use_cases = domain.Notifications(
            notifications_store.transaction, addresses.url_policy(allow_private=notify.webhook_allow_private)
        )
        use_cases.ensure_templates()
        dispatcher = Dispatcher(
            dispatch.Dispatch(notifications_store.transaction, dispatch_settings(settings)),
            contacts.UsersDirectory(channels).lookup,
            senders.EmailSender(notify.smtp),
            senders.WebhookSender(notify),
            concurrency=notify.concurrency,
        )
        wake.connect(dispatcher.wake)
        descriptor = notifications_service_pb2.DESCRIPTOR.services_by_name["NotificationsService"]
        registrations = [
            server.registration(
                descriptor,
                notifications_service_pb2_grpc.add_NotificationsServiceServicer_to_server,
                NotificationsServicer(use_cases),
            ),
            events_node.registration,
        ]
        server.serve(
            settings,
            registrations,
            middlewares=authz.service_middlewares(
                settings, authn.remote_verifier(settings, channels), registrations
            ),
            background=[events_node, dispatcher],
        )
    finally:
        channels.close()
        engine.dispose()


if __name__ == "__main__":
    main()
