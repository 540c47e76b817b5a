"""The notifications service, declared: ``python -m services.notifications`` serves it
(`kit.app.run`)."""

from pathlib import Path

from poly.notifications.v1 import notifications_service_pb2, notifications_service_pb2_grpc
from services.kit import app
from services.notifications import (
    addresses,
    contacts,
    dispatch,
    domain,
    events,
    push,
    senders,
    sms,
    store,
    subscriptions,
)
from services.notifications import settings as notifications_settings
from services.notifications.dispatcher import Dispatcher, dispatch_settings
from services.notifications.service import NotificationsServicer
from services.notifications.texts import TextReports


def wire(context: app.Context[notifications_settings.NotificationsSettings]) -> app.Parts:
    settings = context.service_settings
    transaction = store.NotificationsStore(context.engine, context.outbox).transaction
    address_policy = addresses.url_policy(allow_private=settings.webhook_allow_private)
    use_cases = domain.Notifications(transaction, address_policy)
    use_cases.ensure_templates()
    pushing = settings.push.enabled
    dispatch_rules = dispatch_settings(settings)
    dispatcher = Dispatcher(
        dispatch.Dispatch(transaction, dispatch_rules),
        contacts.UsersDirectory(context.channels).lookup,
        senders.EmailSender(settings.smtp),
        senders.WebhookSender(settings),
        concurrency=settings.concurrency,
        texts=sms.SmsSender(settings.twilio) if settings.twilio.enabled else None,
        pushes=push.PushSender(settings) if pushing else None,
    )
    return app.Parts(
        servicer=NotificationsServicer(
            use_cases,
            TextReports(transaction, settings.twilio),
            subscriptions.PushSubscriptions(transaction, address_policy, dispatch_rules.push_key),
        ),
        # Each recorded event is taken by this dispatcher and handed to it on commit: it
        # delivers it in the event's trace, with no claim.
        handlers=events.handlers(
            lambda connection: store.SqlRepository(connection, context.outbox),
            lease=dispatcher.lease,
            on_commit=dispatcher.take,
        ),
        workers=[dispatcher],
    )


SERVICE = app.Service(
    name="notifications",
    api=notifications_service_pb2.DESCRIPTOR.services_by_name["NotificationsService"],
    add_servicer=notifications_service_pb2_grpc.add_NotificationsServiceServicer_to_server,
    migrations=Path(__file__).with_name("migrations"),
    bus_tables=store.BUS,
    calls={"users": [contacts.USERS_SERVICE]},
    settings=notifications_settings.read,
    wire=wire,
)

if __name__ == "__main__":
    app.run(SERVICE)
