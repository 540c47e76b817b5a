"""The notifications service's own database: the queries over its tables (`tables`; no other
service reads them), which it re-exports.

`NotificationsStore.transaction()` opens one connection and one transaction and yields a
`SqlRepository` (the `domain.Repository` over it); events published inside it join that
transaction. Work is claimed with conditional UPDATEs (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL), so two dispatchers never hold the same row.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from typing import Any, cast

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    Engine,
    Row,
    Table,
    Update,
    and_,
    bindparam,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.orm import InstrumentedAttribute

from services.kit import leases
from services.kit.bus import Outbox
from services.kit.db import transactions
from services.kit.sql import filter_conditions, insert_if_absent, keyset_page
from services.notifications import events
from services.notifications.domain import (
    FAILED,
    PENDING,
    PUSH,
    SENT,
    SKIPPED,
    SMS,
    WEBHOOK,
    Contact,
    Delivery,
    DeliveryQuery,
    Lease,
    Notification,
    Outgoing,
    PushSubscription,
    Template,
    Webhook,
)
from services.notifications.tables import (
    BUS,
    Base,
    ContactRow,
    DeliveryRow,
    NotificationRow,
    PushQuotaRow,
    PushSubscriptionRow,
    TemplateRow,
    TextFailureRow,
    TextOptOutRow,
    WebhookQuotaRow,
    WebhookRow,
)

__all__ = [
    "BUS",
    "Base",
    "ContactRow",
    "DeliveryRow",
    "NotificationRow",
    "NotificationsStore",
    "PushQuotaRow",
    "PushSubscriptionRow",
    "SqlRepository",
    "TemplateRow",
    "TextFailureRow",
    "TextOptOutRow",
    "WebhookQuotaRow",
    "WebhookRow",
]


def _notification(row: Any) -> Notification:
    return Notification(
        row.event_id,
        row.event_type,
        row.recipient,
        json.loads(row.variables),
        json.loads(row.data),
        row.occur_time,
        row.attempts,
    )


def _contact(row: Row[Any]) -> Contact:
    return Contact(
        row.recipient,
        row.email,
        row.display_name,
        row.deleted,
        row.email_enabled,
        row.webhook_enabled,
        tuple(row.muted_event_types.split()),
        row.phone_number,
        row.sms_enabled,
        row.push_enabled,
    )


def _template(row: Row[Any]) -> Template:
    return Template(row.id, row.event_type, row.subject, row.body_text, row.body_html, row.update_time)


def _webhook(row: Row[Any]) -> Webhook:
    return Webhook(row.id, row.owner, row.url, tuple(row.event_types.split()), row.create_time)


def _push_subscription(row: Any) -> PushSubscription:
    return PushSubscription(
        row.id,
        row.owner,
        row.endpoint,
        row.p256dh,
        row.auth,
        row.expire_time,
        row.create_time,
        row.server_key,
    )


def _delivery(row: Any) -> Delivery:
    return Delivery(
        id=row.id,
        recipient=row.recipient,
        channel=row.channel,
        template=row.template,
        event_type=row.event_type,
        event_id=row.event_id,
        destination=row.destination,
        webhook=row.webhook,
        state=row.state,
        attempts=row.attempts,
        last_error=row.last_error,
        next_attempt_time=row.next_attempt_time if row.state == PENDING else None,
        create_time=row.create_time,
        update_time=row.update_time,
    )


def _free(model: type[NotificationRow] | type[DeliveryRow]) -> ColumnElement[bool]:
    """Due, pending, and not leased by a live dispatcher, at ``claim_now``."""
    return and_(
        model.state == PENDING,
        model.next_attempt_time <= bindparam("claim_now"),
        or_(model.lease_until.is_(None), model.lease_until < bindparam("claim_now")),
    )


def _queue(model: type[NotificationRow] | type[DeliveryRow], key: InstrumentedAttribute[str]) -> leases.Queue:
    """Free rows of `model`, oldest due first; a claim leases them and counts an attempt."""
    return leases.Queue(
        model,
        [key],
        free=_free(model),
        order_by=[model.next_attempt_time],
        lease={
            model.lease_owner: bindparam("claim_owner"),
            model.lease_until: bindparam("claim_until"),
            model.attempts: model.attempts + 1,
        },
        seen=[model.lease_until],
        returning=list(cast(Table, model.__table__).c),
    )


_QUEUES = {
    NotificationRow: _queue(NotificationRow, NotificationRow.event_id),
    DeliveryRow: _queue(DeliveryRow, DeliveryRow.id),
}
"""Built once: the statements cost more to build than to run (a claim binds its time and lease)."""


def _claim(
    connection: Connection,
    model: type[NotificationRow] | type[DeliveryRow],
    *,
    now: dt.datetime,
    lease_until: dt.datetime,
    owner: str,
    limit: int,
) -> tuple[Sequence[Any], set[str]]:
    """Lease up to `limit` free rows of `model` (oldest due first) to `owner`, attempts + 1;
    with the keys of those whose previous lease expired (an outcome always clears the lease)."""
    claimed = _QUEUES[model].claim(
        connection, limit, {"claim_now": now, "claim_until": lease_until, "claim_owner": owner}
    )
    return claimed.taken, {row[0] for row in claimed.found if row[1] is not None}


def _leased(lease: Lease | None) -> dict[str, object]:
    return {} if lease is None else {"lease_owner": lease.owner, "lease_until": lease.until}


# What every notification runs, built once with bind parameters, on the tables (plain rows):
# a statement costs more to build than to run, and an ORM object more to read than a row.
_NOTIFICATIONS, _DELIVERIES = cast(Table, NotificationRow.__table__), cast(Table, DeliveryRow.__table__)
_TEMPLATES = cast(Table, TemplateRow.__table__)
_SETTLED: dict[str, Any] = {
    "state": bindparam("settled_state"),
    "next_attempt_time": bindparam("settled_next"),
    "lease_owner": None,
    "lease_until": None,
    "update_time": bindparam("settled_at"),
}
"""An outcome: its state, when to try again (None: never), and the lease let go."""


def _settle(table: Table, key: Column[str]) -> Update:
    """An outcome, written only by the holder of the lease on a row still pending."""
    return (
        update(table)
        .where(key == bindparam("settled_id"), table.c.lease_owner == bindparam("settled_owner"))
        .where(table.c.state == PENDING)
        .values(_SETTLED)
    )


_SETTLE_NOTIFICATION = _settle(_NOTIFICATIONS, _NOTIFICATIONS.c.event_id).values(
    last_error=bindparam("settled_error")
)
_SETTLE_DELIVERY = _settle(_DELIVERIES, _DELIVERIES.c.id).returning(*_DELIVERIES.c)
_SETTLE_DELIVERY_WITH_ERROR = _SETTLE_DELIVERY.values(last_error=bindparam("settled_error"))
_TEMPLATE = select(_TEMPLATES).where(_TEMPLATES.c.id == bindparam("template_id"))
_WEBHOOKS = cast(Table, WebhookRow.__table__)
_WEBHOOKS_OF = (
    select(_WEBHOOKS)
    .where(_WEBHOOKS.c.owner == bindparam("webhook_owner"))
    .order_by(_WEBHOOKS.c.create_time, _WEBHOOKS.c.id)
)
_PUSH_SUBSCRIPTIONS = cast(Table, PushSubscriptionRow.__table__)
_PUSH_SUBSCRIPTIONS_OF = (
    select(_PUSH_SUBSCRIPTIONS)
    .where(_PUSH_SUBSCRIPTIONS.c.owner == bindparam("push_owner"))
    .order_by(_PUSH_SUBSCRIPTIONS.c.create_time, _PUSH_SUBSCRIPTIONS.c.id)
)
"""Read for every notification resolved: built once (181 µs a call built each time, 38 not)."""
_CONTACTS = cast(Table, ContactRow.__table__)
_CONTACT = select(_CONTACTS).where(_CONTACTS.c.recipient == bindparam("contact_recipient"))
_NEWER_CONTACT = (
    update(_CONTACTS)
    .where(
        _CONTACTS.c.recipient == bindparam("new_recipient"), _CONTACTS.c.version < bindparam("new_version")
    )
    .values({c.name: bindparam(f"new_{c.name}") for c in _CONTACTS.c if c.name != "recipient"})
)
"""A contact replaced only by one from a later event (events may be delivered again, late)."""


_DELIVERY_COLUMNS = {
    "state": DeliveryRow.state,
    "channel": DeliveryRow.channel,
    "event_type": DeliveryRow.event_type,
    "event_id": DeliveryRow.event_id,
    "recipient": DeliveryRow.recipient,
    "create_time": DeliveryRow.create_time,
}


class SqlRepository:
    """`domain.Repository` over one connection (one transaction)."""

    def __init__(self, connection: Connection, outbox: Outbox | None) -> None:
        self._connection = connection
        self._outbox = outbox

    # -- notifications --------------------------------------------------------------------

    def add_notification(
        self, notification: Notification, now: dt.datetime, lease: Lease | None = None
    ) -> bool:
        values = {
            "event_id": notification.event_id,
            "event_type": notification.event_type,
            "recipient": notification.recipient,
            "variables": json.dumps(dict(notification.variables), sort_keys=True),
            "data": json.dumps(dict(notification.data), sort_keys=True),
            "occur_time": notification.occur_time,
            "state": PENDING,
            "attempts": notification.attempts,
            "last_error": "",
            "next_attempt_time": now,
            "create_time": now,
            "update_time": now,
            **_leased(lease),
        }
        return insert_if_absent(self._connection, NotificationRow, values)

    def claim_notifications(
        self, now: dt.datetime, lease_until: dt.datetime, owner: str, limit: int
    ) -> list[Notification]:
        claimed, _ = _claim(
            self._connection,
            NotificationRow,
            now=now,
            lease_until=lease_until,
            owner=owner,
            limit=limit,
        )
        return [_notification(row) for row in claimed]

    def settle_notification(
        self,
        event_id: str,
        owner: str,
        *,
        state: str,
        error: str,
        next_time: dt.datetime | None,
        now: dt.datetime,
    ) -> bool:
        settled = self._connection.execute(
            _SETTLE_NOTIFICATION,
            {
                "settled_id": event_id,
                "settled_owner": owner,
                "settled_state": state,
                "settled_error": error,
                "settled_next": next_time,
                "settled_at": now,
            },
        )
        return bool(getattr(settled, "rowcount", 0))

    # -- contacts -------------------------------------------------------------------------

    def contact(self, recipient: str) -> Contact | None:
        row = self._connection.execute(_CONTACT, {"contact_recipient": recipient}).first()
        return None if row is None else _contact(row)

    def record_contact(self, contact: Contact, version: int, now: dt.datetime) -> None:
        values = {
            "recipient": contact.user,
            "email": contact.email,
            "display_name": contact.display_name,
            "deleted": contact.deleted,
            "email_enabled": contact.email_enabled,
            "webhook_enabled": contact.webhook_enabled,
            "muted_event_types": " ".join(contact.muted),
            "version": version,
            "update_time": now,
            "phone_number": contact.phone_number,
            "sms_enabled": contact.sms_enabled,
            "push_enabled": contact.push_enabled,
        }
        newer = {f"new_{name}": value for name, value in values.items()}
        if version and self._replaced(newer):
            return
        if insert_if_absent(self._connection, ContactRow, values):
            return
        # Another transaction inserted it between the two statements (PostgreSQL): this one
        # still wins if it is the later version.
        if version:
            self._replaced(newer)

    def _replaced(self, newer: Mapping[str, object]) -> bool:
        return bool(getattr(self._connection.execute(_NEWER_CONTACT, newer), "rowcount", 0))

    # -- templates ------------------------------------------------------------------------

    def ensure_templates(self, defaults: Sequence[Template]) -> None:
        existing = set(self._connection.scalars(select(TemplateRow.id)))
        for template in (t for t in defaults if t.id not in existing):
            values = {
                "id": template.id,
                "event_type": template.event_type,
                "subject": template.subject,
                "body_text": template.body_text,
                "body_html": template.body_html,
                "update_time": template.update_time,
            }
            insert_if_absent(self._connection, TemplateRow, values)

    def template(self, template_id: str) -> Template | None:
        row = self._connection.execute(_TEMPLATE, {"template_id": template_id}).first()
        return None if row is None else _template(row)

    def list_templates(self, after: str | None, limit: int) -> list[Template]:
        position = None if after is None else [after]
        statement = keyset_page(select(_TEMPLATES), (TemplateRow.id,), after=position, limit=limit)
        return [_template(row) for row in self._connection.execute(statement)]

    def save_template(self, template: Template) -> None:
        self._connection.execute(
            update(TemplateRow)
            .where(TemplateRow.id == template.id)
            .values(
                subject=template.subject,
                body_text=template.body_text,
                body_html=template.body_html,
                update_time=template.update_time,
            )
        )

    # -- webhooks -------------------------------------------------------------------------

    def _reserve(self, quota: type[WebhookQuotaRow] | type[PushQuotaRow], owner: str, limit: int) -> bool:
        insert_if_absent(self._connection, quota, {"owner": owner, "used": 0})
        reserved = self._connection.execute(
            update(quota).where(quota.owner == owner, quota.used < limit).values(used=quota.used + 1)
        )
        return bool(getattr(reserved, "rowcount", 0))

    def _release(self, quota: type[WebhookQuotaRow] | type[PushQuotaRow], owner: str) -> None:
        self._connection.execute(
            update(quota).where(quota.owner == owner, quota.used > 0).values(used=quota.used - 1)
        )

    def reserve_webhook_slot(self, owner: str, limit: int) -> bool:
        return self._reserve(WebhookQuotaRow, owner, limit)

    def release_webhook_slot(self, owner: str) -> None:
        self._release(WebhookQuotaRow, owner)

    def add_webhook(self, webhook: Webhook, secret: str, request_id: str, request_hash: str) -> bool:
        values = {
            "id": webhook.id,
            "owner": webhook.owner,
            "url": webhook.url,
            "event_types": " ".join(webhook.event_types),
            "secret": secret,
            "request_id": request_id or None,
            "request_hash": request_hash,
            "create_time": webhook.create_time,
        }
        return insert_if_absent(self._connection, WebhookRow, values)

    def webhook_by_request(self, owner: str, request_id: str) -> tuple[Webhook, str, str] | None:
        row = self._connection.execute(
            select(_WEBHOOKS).where(WebhookRow.owner == owner, WebhookRow.request_id == request_id)
        ).first()
        return None if row is None else (_webhook(row), row.secret, row.request_hash)

    def webhook(self, webhook_id: str) -> Webhook | None:
        row = self._connection.execute(select(_WEBHOOKS).where(WebhookRow.id == webhook_id)).first()
        return None if row is None else _webhook(row)

    def webhooks_of(self, owner: str) -> list[Webhook]:
        return [_webhook(row) for row in self._connection.execute(_WEBHOOKS_OF, {"webhook_owner": owner})]

    def list_webhooks(self, owner: str | None, after: Sequence[str] | None, limit: int) -> list[Webhook]:
        statement = select(_WEBHOOKS)
        if owner is not None:
            statement = statement.where(WebhookRow.owner == owner)
        statement = keyset_page(
            statement, (WebhookRow.create_time, WebhookRow.id), after=after, descending=True, limit=limit
        )
        return [_webhook(row) for row in self._connection.execute(statement)]

    def delete_webhook(self, webhook_id: str, now: dt.datetime) -> bool:
        deleted = self._connection.execute(delete(WebhookRow).where(WebhookRow.id == webhook_id))
        if not getattr(deleted, "rowcount", 0):
            return False
        self._connection.execute(
            update(DeliveryRow)
            .where(DeliveryRow.webhook == f"webhooks/{webhook_id}", DeliveryRow.state == PENDING)
            .values(state=SKIPPED, last_error="webhook deleted", lease_owner=None, update_time=now)
        )
        return True

    # -- push subscriptions ---------------------------------------------------------------

    def reserve_push_slot(self, owner: str, limit: int) -> bool:
        return self._reserve(PushQuotaRow, owner, limit)

    def release_push_slot(self, owner: str) -> None:
        self._release(PushQuotaRow, owner)

    def add_push_subscription(self, subscription: PushSubscription) -> bool:
        values = {
            "id": subscription.id,
            "owner": subscription.owner,
            "endpoint": subscription.endpoint,
            "p256dh": subscription.p256dh,
            "auth": subscription.auth,
            "expire_time": subscription.expire_time,
            "create_time": subscription.create_time,
            "server_key": subscription.server_key,
        }
        return insert_if_absent(self._connection, PushSubscriptionRow, values)

    def renew_push_subscription(self, subscription: PushSubscription) -> None:
        self._connection.execute(
            update(PushSubscriptionRow)
            .where(PushSubscriptionRow.id == subscription.id)
            .values(
                p256dh=subscription.p256dh,
                auth=subscription.auth,
                expire_time=subscription.expire_time,
                server_key=subscription.server_key,
            )
        )

    def push_subscription(self, subscription_id: str) -> PushSubscription | None:
        row = self._connection.execute(
            select(_PUSH_SUBSCRIPTIONS).where(PushSubscriptionRow.id == subscription_id)
        ).first()
        return None if row is None else _push_subscription(row)

    def push_subscription_at(self, endpoint: str) -> PushSubscription | None:
        row = self._connection.execute(
            select(_PUSH_SUBSCRIPTIONS).where(PushSubscriptionRow.endpoint == endpoint)
        ).first()
        return None if row is None else _push_subscription(row)

    def push_subscriptions_of(self, owner: str) -> list[PushSubscription]:
        found = self._connection.execute(_PUSH_SUBSCRIPTIONS_OF, {"push_owner": owner})
        return [_push_subscription(row) for row in found]

    def list_push_subscriptions(
        self, owner: str | None, after: Sequence[str] | None, limit: int
    ) -> list[PushSubscription]:
        statement = select(_PUSH_SUBSCRIPTIONS)
        if owner is not None:
            statement = statement.where(PushSubscriptionRow.owner == owner)
        statement = keyset_page(
            statement,
            (PushSubscriptionRow.create_time, PushSubscriptionRow.id),
            after=after,
            descending=True,
            limit=limit,
        )
        return [_push_subscription(row) for row in self._connection.execute(statement)]

    def delete_push_subscription(self, subscription_id: str, now: dt.datetime) -> str | None:
        deleted = self._connection.execute(
            delete(PushSubscriptionRow)
            .where(PushSubscriptionRow.id == subscription_id)
            .returning(PushSubscriptionRow.owner)
        ).first()
        if deleted is None:
            return None
        self._connection.execute(
            update(DeliveryRow)
            .where(
                DeliveryRow.channel == PUSH,
                DeliveryRow.destination == f"pushSubscriptions/{subscription_id}",
                DeliveryRow.state == PENDING,
            )
            .values(state=SKIPPED, last_error="push subscription removed", lease_owner=None, update_time=now)
        )
        return str(deleted.owner)

    # -- deliveries -----------------------------------------------------------------------

    def add_delivery(
        self, delivery: Delivery, content: Mapping[str, str], lease: Lease | None = None
    ) -> bool:
        values = {
            "id": delivery.id,
            "recipient": delivery.recipient,
            "channel": delivery.channel,
            "template": delivery.template,
            "event_type": delivery.event_type,
            "event_id": delivery.event_id,
            "destination": delivery.destination,
            "webhook": delivery.webhook,
            "state": delivery.state,
            "attempts": delivery.attempts,
            "last_error": delivery.last_error,
            "next_attempt_time": delivery.next_attempt_time,
            "content": json.dumps(dict(content), sort_keys=True),
            "create_time": delivery.create_time,
            "update_time": delivery.update_time,
            **_leased(lease),
        }
        return insert_if_absent(self._connection, DeliveryRow, values)

    def delivery(self, delivery_id: str) -> Delivery | None:
        row = self._connection.execute(select(_DELIVERIES).where(DeliveryRow.id == delivery_id)).first()
        return None if row is None else _delivery(row)

    def list_deliveries(
        self, query: DeliveryQuery, after: Sequence[str] | None, limit: int
    ) -> list[Delivery]:
        statement = select(_DELIVERIES).where(*filter_conditions(query.terms, _DELIVERY_COLUMNS))
        if query.recipient is not None:
            statement = statement.where(DeliveryRow.recipient == query.recipient)
        column = DeliveryRow.update_time if query.order.field == "update_time" else DeliveryRow.create_time
        statement = keyset_page(
            statement, (column, DeliveryRow.id), after=after, descending=query.order.descending, limit=limit
        )
        return [_delivery(row) for row in self._connection.execute(statement)]

    def claim_deliveries(
        self, now: dt.datetime, lease_until: dt.datetime, owner: str, limit: int
    ) -> list[Outgoing]:
        claimed, expired = _claim(
            self._connection,
            DeliveryRow,
            now=now,
            lease_until=lease_until,
            owner=owner,
            limit=limit,
        )
        hooks = [row.webhook.removeprefix("webhooks/") for row in claimed if row.channel == WEBHOOK]
        secrets: dict[str, str] = {}
        if hooks:  # most claims take no webhook delivery: no lookup then
            found = self._connection.execute(
                select(WebhookRow.id, WebhookRow.secret).where(WebhookRow.id.in_(hooks))
            )
            secrets = {hook_id: secret for hook_id, secret in found}
        return [
            Outgoing(
                _delivery(row),
                json.loads(row.content),
                secrets.get(row.webhook.removeprefix("webhooks/"), ""),
                reclaimed=row.id in expired,
            )
            for row in claimed
        ]

    def settle_delivery(
        self,
        delivery_id: str,
        owner: str,
        *,
        state: str,
        error: str,
        next_time: dt.datetime | None,
        now: dt.datetime,
    ) -> Delivery | None:
        params = {
            "settled_id": delivery_id,
            "settled_owner": owner,
            "settled_state": state,
            "settled_error": error,
            "settled_next": next_time,
            "settled_at": now,
        }
        # A success keeps the last failure's error: it says what the earlier attempts met.
        statement = _SETTLE_DELIVERY_WITH_ERROR if error else _SETTLE_DELIVERY
        settled = self._connection.execute(statement, params).first()
        return None if settled is None else _delivery(settled)

    # -- text messages --------------------------------------------------------------------

    def texts_refused(self, number: str) -> bool:
        found = self._connection.execute(select(TextOptOutRow.number).where(TextOptOutRow.number == number))
        return found.first() is not None

    def refuse_texts(self, number: str, refused: bool, now: dt.datetime) -> None:
        if refused:
            insert_if_absent(self._connection, TextOptOutRow, {"number": number, "create_time": now})
        else:
            self._connection.execute(delete(TextOptOutRow).where(TextOptOutRow.number == number))

    def texts_taken(self, number: str, since: dt.datetime, now: dt.datetime, besides: str) -> int:
        """Texts to `number` sent since `since`, and those being sent now (leased), other
        than delivery `besides`: texts racing to one number count each other."""
        sent = (DeliveryRow.state == SENT) & (DeliveryRow.update_time >= since)
        in_flight = (DeliveryRow.state == PENDING) & (DeliveryRow.lease_until > now)
        counted = select(func.count()).where(
            DeliveryRow.destination == number,
            DeliveryRow.channel == SMS,
            DeliveryRow.id != besides,
            sent | in_flight,
        )
        return int(self._connection.execute(counted).scalar_one())

    def defer_delivery(
        self, delivery_id: str, owner: str, *, why: str, next_time: dt.datetime, now: dt.datetime
    ) -> bool:
        """Back to PENDING until `next_time`, its attempt not counted (it was not tried)."""
        statement = _settle(_DELIVERIES, _DELIVERIES.c.id).values(
            attempts=_DELIVERIES.c.attempts - 1, last_error=why[:500]
        )
        params = {
            "settled_id": delivery_id,
            "settled_owner": owner,
            "settled_state": PENDING,
            "settled_next": next_time,
            "settled_at": now,
        }
        return bool(getattr(self._connection.execute(statement, params), "rowcount", 0))

    def keep_text_failure(self, reference: str, error: str, now: dt.datetime) -> None:
        values = {"reference": reference, "error": error[:500], "create_time": now}
        insert_if_absent(self._connection, TextFailureRow, values)

    def text_failure(self, reference: str) -> str:
        """The failure kept for `reference` (`keep_text_failure`), taken; "" when none is."""
        found = self._connection.execute(
            delete(TextFailureRow)
            .where(TextFailureRow.reference == reference)
            .returning(TextFailureRow.error)
        ).first()
        return "" if found is None else str(found.error)

    def set_provider_reference(self, delivery_id: str, reference: str) -> None:
        self._connection.execute(
            update(DeliveryRow).where(DeliveryRow.id == delivery_id).values(provider_reference=reference)
        )

    def fail_sent(self, reference: str, error: str, now: dt.datetime) -> Delivery | None:
        """The SENT delivery the provider knows as `reference`, now FAILED (None if there is
        no such delivery, or it is not SENT)."""
        if not reference:
            return None
        statement = (
            update(DeliveryRow)
            .where(DeliveryRow.provider_reference == reference, DeliveryRow.state == SENT)
            .values(state=FAILED, last_error=error[:500], update_time=now)
            .returning(*_DELIVERIES.c)
        )
        failed = self._connection.execute(statement).first()
        return None if failed is None else _delivery(failed)

    def publish_outcome(self, delivery: Delivery) -> None:
        if self._outbox is None:
            raise RuntimeError("this repository was opened without an outbox and cannot publish")
        self._outbox.publish(self._connection, events.delivery_outcome(delivery), aggregate_id=delivery.name)


class NotificationsStore:
    """Transactions over the notifications database, each yielding a `SqlRepository`."""

    def __init__(self, engine: Engine, outbox: Outbox | None) -> None:
        self.transaction = transactions(engine, lambda connection: SqlRepository(connection, outbox))
