"""The notifications service's tables (SQLAlchemy declarative models); `store` queries them.

One `Base` and its metadata: what the migrations build (`migrations/env.py` compares the two),
with the bus's outbox, inbox and subscriptions beside them (`BUS`).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, Index, MetaData, String, Text, UniqueConstraint, false, true
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.kit.bus import BusTables, bus_tables
from services.kit.db import Id, UtcDateTime, naming_convention

__all__ = [
    "BUS",
    "Base",
    "ContactRow",
    "DeliveryRow",
    "NotificationRow",
    "PushQuotaRow",
    "PushSubscriptionRow",
    "TemplateRow",
    "TextFailureRow",
    "TextOptOutRow",
    "WebhookQuotaRow",
    "WebhookRow",
]


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=naming_convention)


BUS: BusTables = bus_tables(Base.metadata)
"""Outbox, deliveries, inbox and subscriptions of this service's events."""


class NotificationRow(Base):
    """One consumed event to notify about, until its deliveries exist."""

    __tablename__ = "notification"
    __table_args__ = (Index("ix_notification_due", "state", "next_attempt_time"),)
    event_id: Mapped[Id]
    event_type: Mapped[str] = mapped_column(String(200))
    recipient: Mapped[str] = mapped_column(String(200))
    variables: Mapped[str] = mapped_column(Text())
    """JSON object of template values."""
    data: Mapped[str] = mapped_column(Text())
    """The payload as JSON."""
    occur_time: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int]
    last_error: Mapped[str] = mapped_column(String(500))
    next_attempt_time: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())
    create_time: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    update_time: Mapped[dt.datetime] = mapped_column(UtcDateTime())


class ContactRow(Base):
    """How to reach a user, as the users service last published it (ContactChanged)."""

    __tablename__ = "contact"
    recipient: Mapped[str] = mapped_column(String(200), primary_key=True)
    """The user, ``users/{id}``."""
    email: Mapped[str] = mapped_column(String(254))
    display_name: Mapped[str] = mapped_column(String(63))
    deleted: Mapped[bool]
    email_enabled: Mapped[bool]
    webhook_enabled: Mapped[bool]
    muted_event_types: Mapped[str] = mapped_column(String(1000))
    """Space-separated full message names."""
    version: Mapped[int] = mapped_column(BigInteger())
    """The sequence of the event it came from; 0 when read from the users service itself."""
    update_time: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    phone_number: Mapped[str] = mapped_column(String(16), server_default="")
    sms_enabled: Mapped[bool] = mapped_column(server_default=false())
    push_enabled: Mapped[bool] = mapped_column(server_default=true())


class TemplateRow(Base):
    __tablename__ = "template"
    id: Mapped[Id]
    event_type: Mapped[str] = mapped_column(String(200), unique=True)
    subject: Mapped[str] = mapped_column(String(200))
    body_text: Mapped[str] = mapped_column(Text())
    body_html: Mapped[str] = mapped_column(Text())
    update_time: Mapped[dt.datetime] = mapped_column(UtcDateTime())


class WebhookRow(Base):
    __tablename__ = "webhook"
    __table_args__ = (
        UniqueConstraint("owner", "request_id"),
        Index("ix_webhook_owner_create_time", "owner", "create_time"),
    )
    id: Mapped[Id]
    owner: Mapped[str] = mapped_column(String(200))
    url: Mapped[str] = mapped_column(String(2048))
    event_types: Mapped[str] = mapped_column(String(1000))
    """Space-separated full message names; empty means all."""
    secret: Mapped[str] = mapped_column(String(256))
    request_id: Mapped[str | None] = mapped_column(String(36))
    request_hash: Mapped[str] = mapped_column(String(64))
    create_time: Mapped[dt.datetime] = mapped_column(UtcDateTime(), index=True)


class WebhookQuotaRow(Base):
    """Webhooks per owner: the conditional increment that enforces the limit under races."""

    __tablename__ = "webhook_quota"
    owner: Mapped[str] = mapped_column(String(200), primary_key=True)
    used: Mapped[int]


class PushSubscriptionRow(Base):
    """A browser's Web Push subscription; one endpoint belongs to one user."""

    __tablename__ = "push_subscription"
    __table_args__ = (Index("ix_push_subscription_owner_create_time", "owner", "create_time"),)
    id: Mapped[Id]
    owner: Mapped[str] = mapped_column(String(200))
    endpoint: Mapped[str] = mapped_column(String(2048), unique=True)
    p256dh: Mapped[str] = mapped_column(String(100))
    auth: Mapped[str] = mapped_column(String(50))
    expire_time: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())
    create_time: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    server_key: Mapped[str] = mapped_column(String(100))
    """The VAPID public key the browser subscribed with."""


class PushQuotaRow(Base):
    """Push subscriptions per owner: the conditional increment that enforces the limit."""

    __tablename__ = "push_quota"
    owner: Mapped[str] = mapped_column(String(200), primary_key=True)
    used: Mapped[int]


class DeliveryRow(Base):
    __tablename__ = "delivery"
    __table_args__ = (
        UniqueConstraint("event_id", "channel", "destination"),
        Index("ix_delivery_due", "state", "next_attempt_time"),
        Index("ix_delivery_recipient_create_time", "recipient", "create_time"),
        Index("ix_delivery_webhook_state", "webhook", "state"),
        Index("ix_delivery_destination_channel_time", "destination", "channel", "update_time"),
    )
    id: Mapped[Id]
    recipient: Mapped[str] = mapped_column(String(200))
    channel: Mapped[str] = mapped_column(String(16))
    template: Mapped[str] = mapped_column(String(100))
    event_type: Mapped[str] = mapped_column(String(200))
    event_id: Mapped[str] = mapped_column(String(64))
    destination: Mapped[str] = mapped_column(String(2048))
    webhook: Mapped[str] = mapped_column(String(100))
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int]
    last_error: Mapped[str] = mapped_column(String(500))
    next_attempt_time: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())
    content: Mapped[str] = mapped_column(Text())
    """JSON: subject/text/html of an email, the text of a text message, or the body of a
    webhook POST."""
    create_time: Mapped[dt.datetime] = mapped_column(UtcDateTime(), index=True)
    update_time: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    provider_reference: Mapped[str] = mapped_column(String(64), server_default="", index=True)
    """What the channel's provider calls what it accepted (a text's Twilio message SID)."""


class TextFailureRow(Base):
    """A text's failure its provider reported before the delivery recorded the text as sent
    (the callback can be quicker than the answer's recording): applied once it is."""

    __tablename__ = "text_failure"
    reference: Mapped[str] = mapped_column(String(64), primary_key=True)
    error: Mapped[str] = mapped_column(String(500))
    create_time: Mapped[dt.datetime] = mapped_column(UtcDateTime())


class TextOptOutRow(Base):
    """A mobile number that answered STOP: it gets no text until it answers START."""

    __tablename__ = "text_opt_out"
    number: Mapped[str] = mapped_column(String(16), primary_key=True)
    create_time: Mapped[dt.datetime] = mapped_column(UtcDateTime())
