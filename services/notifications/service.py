"""gRPC servicer of poly.notifications.v1.NotificationsService: parse, call the domain, map the result."""

from __future__ import annotations

import grpc
from google.protobuf import empty_pb2

from poly.notifications.v1 import notifications_service_pb2 as pb
from poly.notifications.v1 import notifications_service_pb2_grpc, resources_pb2
from services.kit import authz, fieldmask
from services.kit.names import resource_id
from services.kit.wire import timestamp
from services.notifications.domain import (
    EMAIL,
    PUSH,
    SMS,
    WEBHOOK,
    Delivery,
    Notifications,
    PushSubscription,
    Template,
    Webhook,
)
from services.notifications.subscriptions import PushSubscriptions, expiration_ms
from services.notifications.texts import TextReports

__all__ = ["NotificationsServicer"]

_STATES = {
    "PENDING": resources_pb2.Delivery.STATE_PENDING,
    "SENT": resources_pb2.Delivery.STATE_SENT,
    "FAILED": resources_pb2.Delivery.STATE_FAILED,
    "SKIPPED": resources_pb2.Delivery.STATE_SKIPPED,
}
_CHANNELS = {
    EMAIL: resources_pb2.CHANNEL_EMAIL,
    WEBHOOK: resources_pb2.CHANNEL_WEBHOOK,
    SMS: resources_pb2.CHANNEL_SMS,
    PUSH: resources_pb2.CHANNEL_PUSH,
}


def _delivery(delivery: Delivery) -> resources_pb2.Delivery:
    return resources_pb2.Delivery(
        name=delivery.name,
        recipient=delivery.recipient,
        channel=_CHANNELS[delivery.channel],
        template=delivery.template,
        event_type=delivery.event_type,
        event_id=delivery.event_id,
        destination=delivery.destination,
        webhook=delivery.webhook,
        state=_STATES[delivery.state],
        attempts=delivery.attempts,
        last_error=delivery.last_error,
        next_attempt_time=timestamp(delivery.next_attempt_time),
        create_time=timestamp(delivery.create_time),
        update_time=timestamp(delivery.update_time),
    )


def _webhook(webhook: Webhook) -> resources_pb2.Webhook:
    return resources_pb2.Webhook(
        name=webhook.name,
        owner=webhook.owner,
        url=webhook.url,
        event_types=webhook.event_types,
        create_time=timestamp(webhook.create_time),
    )


def _push_subscription(subscription: PushSubscription) -> resources_pb2.PushSubscription:
    made = resources_pb2.PushSubscription(
        name=subscription.name,
        owner=subscription.owner,
        endpoint=subscription.endpoint,
        create_time=timestamp(subscription.create_time),
    )
    if (expiry := expiration_ms(subscription)) is not None:
        made.expiration_time = expiry
    return made


def _template(template: Template) -> resources_pb2.Template:
    return resources_pb2.Template(
        name=template.name,
        event_type=template.event_type,
        subject=template.subject,
        body_text=template.body_text,
        body_html=template.body_html,
        update_time=timestamp(template.update_time),
    )


def _scope() -> str | None:
    """Whose resources a List shows: a user's own; everyone's for admins and scoped clients."""
    caller = authz.principal()
    return None if caller.is_admin or caller.is_client else caller.subject


class NotificationsServicer(notifications_service_pb2_grpc.NotificationsServiceServicer):
    """Templates, webhooks, push subscriptions, the delivery log of emails, texts, pushes and
    webhooks, and what the text provider reports."""

    def __init__(self, notifications: Notifications, texts: TextReports, pushes: PushSubscriptions) -> None:
        self._notifications = notifications
        self._texts = texts
        self._pushes = pushes

    def ReceiveChannelEvent(
        self, request: pb.ReceiveChannelEventRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        headers = {key: value for key, value in context.invocation_metadata() if isinstance(value, str)}
        self._texts.receive(request.channel, headers, request.body.data)
        return empty_pb2.Empty()

    def GetDelivery(
        self, request: pb.GetDeliveryRequest, context: grpc.ServicerContext
    ) -> resources_pb2.Delivery:
        delivery_id = resource_id(request.name, "deliveries")
        return _delivery(self._notifications.delivery(delivery_id, authz.require_owner))

    def ListDeliveries(
        self, request: pb.ListDeliveriesRequest, context: grpc.ServicerContext
    ) -> pb.ListDeliveriesResponse:
        page = self._notifications.list_deliveries(
            _scope(), request.page_size, request.page_token, request.filter, request.order_by
        )
        return pb.ListDeliveriesResponse(
            deliveries=[_delivery(d) for d in page.deliveries], next_page_token=page.next_page_token
        )

    def CreateWebhook(
        self, request: pb.CreateWebhookRequest, context: grpc.ServicerContext
    ) -> pb.CreateWebhookResponse:
        given = request.webhook
        webhook, secret = self._notifications.create_webhook(
            authz.principal().subject,
            given.url,
            list(given.event_types),
            given.secret,
            webhook_id=request.webhook_id,
            request_id=request.request_id,
            check_owner=authz.require_owner,
        )
        return pb.CreateWebhookResponse(webhook=_webhook(webhook), signing_secret=secret)

    def GetWebhook(
        self, request: pb.GetWebhookRequest, context: grpc.ServicerContext
    ) -> resources_pb2.Webhook:
        webhook_id = resource_id(request.name, "webhooks")
        return _webhook(self._notifications.webhook(webhook_id, authz.require_owner))

    def ListWebhooks(
        self, request: pb.ListWebhooksRequest, context: grpc.ServicerContext
    ) -> pb.ListWebhooksResponse:
        webhooks, token = self._notifications.list_webhooks(_scope(), request.page_size, request.page_token)
        return pb.ListWebhooksResponse(webhooks=[_webhook(w) for w in webhooks], next_page_token=token)

    def DeleteWebhook(
        self, request: pb.DeleteWebhookRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        self._notifications.delete_webhook(resource_id(request.name, "webhooks"), authz.require_owner)
        return empty_pb2.Empty()

    def GetPushConfig(
        self, request: pb.GetPushConfigRequest, context: grpc.ServicerContext
    ) -> resources_pb2.PushConfig:
        key = self._pushes.config(request.name)
        return resources_pb2.PushConfig(name=request.name, application_server_key=key)

    def CreatePushSubscription(
        self, request: pb.CreatePushSubscriptionRequest, context: grpc.ServicerContext
    ) -> resources_pb2.PushSubscription:
        given = request.push_subscription
        expiration = given.expiration_time if given.HasField("expiration_time") else None
        made = self._pushes.create(
            authz.principal().subject, given.endpoint, given.keys.p256dh, given.keys.auth, expiration
        )
        return _push_subscription(made)

    def GetPushSubscription(
        self, request: pb.GetPushSubscriptionRequest, context: grpc.ServicerContext
    ) -> resources_pb2.PushSubscription:
        subscription_id = resource_id(request.name, "pushSubscriptions")
        return _push_subscription(self._pushes.get(subscription_id, authz.require_owner))

    def ListPushSubscriptions(
        self, request: pb.ListPushSubscriptionsRequest, context: grpc.ServicerContext
    ) -> pb.ListPushSubscriptionsResponse:
        found, token = self._pushes.list(_scope(), request.page_size, request.page_token)
        return pb.ListPushSubscriptionsResponse(
            push_subscriptions=[_push_subscription(s) for s in found], next_page_token=token
        )

    def DeletePushSubscription(
        self, request: pb.DeletePushSubscriptionRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        self._pushes.delete(resource_id(request.name, "pushSubscriptions"), authz.require_owner)
        return empty_pb2.Empty()

    def GetTemplate(
        self, request: pb.GetTemplateRequest, context: grpc.ServicerContext
    ) -> resources_pb2.Template:
        return _template(self._notifications.template(resource_id(request.name, "templates")))

    def ListTemplates(
        self, request: pb.ListTemplatesRequest, context: grpc.ServicerContext
    ) -> pb.ListTemplatesResponse:
        found, token = self._notifications.list_templates(request.page_size, request.page_token)
        return pb.ListTemplatesResponse(templates=[_template(t) for t in found], next_page_token=token)

    def UpdateTemplate(
        self, request: pb.UpdateTemplateRequest, context: grpc.ServicerContext
    ) -> resources_pb2.Template:
        template_id = resource_id(request.template.name, "templates", field="template.name")
        paths = fieldmask.update_paths(request.update_mask.paths, request.template)
        values = {path: getattr(request.template, path) for path in paths}
        return _template(self._notifications.update_template(template_id, values, paths))
