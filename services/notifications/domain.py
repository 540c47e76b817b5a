"""Rules of notifications: templates, webhooks, and the delivery log.

Each consumed event records one Notification (PENDING -> RESOLVED | ABANDONED) in its consumer
transaction; the dispatcher resolves it once the recipient's contact is known into at most one
Delivery per (event, channel, destination), a unique constraint. Delivery states: PENDING ->
SENT | FAILED (retries with backoff, permanent errors at once) or SKIPPED (deleted user, muted
type, disabled channel, deleted webhook or push subscription, a number that answered STOP);
FAILED and SKIPPED are
terminal, and so is SENT but for a text its provider reports undelivered later. Work is claimed
with a lease, so a dead dispatcher's claims are retaken; outcomes are recorded only by the lease
holder, with NotificationDelivered/NotificationFailed in the same transaction. A user has at most
MAX_WEBHOOKS webhooks; a webhook URL must pass the address policy at create and at every send.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import Protocol, TypeVar

from services.kit import filters, idempotency, paging
from services.kit.domain_errors import (
    AlreadyExists,
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from services.kit.names import chosen_id_problems
from services.notifications import templates

__all__ = [
    "ABANDONED",
    "DELIVERY_FIELDS",
    "EMAIL",
    "FAILED",
    "MAX_WEBHOOKS",
    "PENDING",
    "PUSH",
    "RESOLVED",
    "SENT",
    "SKIPPED",
    "SMS",
    "WEBHOOK",
    "Contact",
    "Delivery",
    "DeliveryPage",
    "DeliveryQuery",
    "Lease",
    "Notification",
    "Notifications",
    "Outgoing",
    "PushSubscription",
    "Repository",
    "Template",
    "Transactions",
    "Webhook",
    "default_templates",
    "owned_page",
    "record_notification",
    "utcnow",
]

EMAIL, WEBHOOK, SMS, PUSH = "EMAIL", "WEBHOOK", "SMS", "PUSH"
PENDING, SENT, FAILED, SKIPPED = "PENDING", "SENT", "FAILED", "SKIPPED"
RESOLVED, ABANDONED = "RESOLVED", "ABANDONED"
MAX_WEBHOOKS = 10
_SECRET = re.compile(r"[!-~]{32,256}", re.ASCII)

OwnerCheck = Callable[[str, str], None]
"""``check(owner, resource)`` (`authz.require_owner`): admits the current caller for a
resource owned by ``users/{id}`` ("" when it does not exist: only callers who may see
everything pass), or refuses with PERMISSION_DENIED naming only `resource`, the name asked
for. It runs before existence is checked, so another's resource and a missing one answer
alike (AIP-211)."""
AddressPolicy = Callable[[str], str | None]
"""Why a webhook URL may not be called (scheme, host, resolved addresses), or None."""


@dataclass(frozen=True, slots=True)
class Notification:
    """What one consumed event asks to be sent: recorded in the consumer's transaction."""

    event_id: str
    event_type: str
    recipient: str
    variables: Mapping[str, str]
    """Template values taken from the payload (see `templates.EVENT_VARIABLES`)."""
    data: Mapping[str, object]
    """The payload as JSON, the ``data`` of a webhook body."""
    occur_time: dt.datetime
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class Lease:
    """Work written already taken by a dispatcher (`owner`) until `until`: it is handed to
    that dispatcher in memory after the commit, not claimed by a query. If the dispatcher dies
    first, the lease runs out and any dispatcher claims the row."""

    owner: str
    until: dt.datetime


@dataclass(frozen=True, slots=True)
class Contact:
    user: str
    email: str
    display_name: str
    deleted: bool
    email_enabled: bool = True
    webhook_enabled: bool = True
    muted: tuple[str, ...] = ()
    phone_number: str = ""
    """E.164, or empty."""
    sms_enabled: bool = False
    """Texts are opted into."""
    push_enabled: bool = True


@dataclass(frozen=True, slots=True)
class Template:
    id: str
    event_type: str
    subject: str
    body_text: str
    body_html: str
    update_time: dt.datetime

    @property
    def name(self) -> str:
        return f"templates/{self.id}"


@dataclass(frozen=True, slots=True)
class Webhook:
    id: str
    owner: str
    url: str
    event_types: tuple[str, ...]
    create_time: dt.datetime

    @property
    def name(self) -> str:
        return f"webhooks/{self.id}"

    def wants(self, event_type: str) -> bool:
        return not self.event_types or event_type in self.event_types


@dataclass(frozen=True, slots=True)
class PushSubscription:
    """A browser's Web Push subscription: its push service's URL and the keys pushes are
    encrypted to (unpadded base64url, as the browser gives them)."""

    id: str
    owner: str
    endpoint: str
    p256dh: str
    auth: str = field(repr=False)
    """The shared authentication secret: never shown."""
    expire_time: dt.datetime | None
    create_time: dt.datetime
    server_key: str
    """The application server (VAPID) key the browser subscribed with: pushes signed with
    another are refused, so a subscription made for a replaced key is stale."""

    @property
    def name(self) -> str:
        return f"pushSubscriptions/{self.id}"

    def expired(self, now: dt.datetime) -> bool:
        return self.expire_time is not None and self.expire_time <= now

    def usable(self, now: dt.datetime, server_key: str) -> bool:
        """Whether a push signed with `server_key` may go to it now."""
        return not self.expired(now) and self.server_key == server_key


@dataclass(frozen=True, slots=True)
class Delivery:
    id: str
    recipient: str
    channel: str
    template: str
    """``templates/{id}`` for email, "" for webhooks."""
    event_type: str
    event_id: str
    destination: str
    webhook: str
    """``webhooks/{id}`` for webhooks, "" for email."""
    state: str
    attempts: int
    last_error: str
    next_attempt_time: dt.datetime | None
    create_time: dt.datetime
    update_time: dt.datetime

    @property
    def name(self) -> str:
        return f"deliveries/{self.id}"


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A claimed delivery with what to send: for email, ``subject``/``text``/``html``; for a
    text, ``text``; for a push, ``payload`` (JSON) plus the subscription as it is now; for a
    webhook, ``body`` (JSON) plus the webhook's current signing secret."""

    delivery: Delivery
    content: Mapping[str, str]
    secret: str = ""
    subscription: PushSubscription | None = None
    """A push's subscription; None once it was removed."""
    reclaimed: bool = False
    """Its previous lease ran out with no outcome recorded (the dispatcher holding it died):
    that attempt may have been sent, so this one may send it twice."""


@dataclass(frozen=True, slots=True)
class DeliveryQuery:
    terms: tuple[filters.Term, ...]
    recipient: str | None
    """Only this user's deliveries; None for callers who see all."""
    order: filters.Ordering


@dataclass(frozen=True, slots=True)
class DeliveryPage:
    deliveries: list[Delivery]
    next_page_token: str


DELIVERY_FIELDS: filters.Fields = {
    "state": filters.FieldSpec(filters.enum_value(PENDING, SENT, FAILED, SKIPPED)),
    "channel": filters.FieldSpec(filters.enum_value(EMAIL, WEBHOOK, SMS, PUSH, prefix="CHANNEL_")),
    "event_type": filters.FieldSpec(filters.text_value),
    "event_id": filters.FieldSpec(filters.text_value),
    "recipient": filters.FieldSpec(filters.text_value),
    "create_time": filters.FieldSpec(filters.timestamp_value, filters.ORDERED),
}


class Repository(Protocol):
    """The notifications database, inside one transaction."""

    def add_notification(
        self, notification: Notification, now: dt.datetime, lease: Lease | None = None
    ) -> bool:
        """False when the event has its notification already; `lease`: taken (attempts 1)."""

    def claim_notifications(
        self, now: dt.datetime, lease_until: dt.datetime, owner: str, limit: int
    ) -> list[Notification]:
        """Due PENDING notifications whose lease is free, now leased to `owner` (attempts + 1)."""

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
        """Write the outcome if `owner` still holds the lease; state PENDING means retry at
        `next_time`. False when the lease was lost."""

    def contact(self, recipient: str) -> Contact | None:
        """The recipient's contact as last recorded here, if any."""

    def record_contact(self, contact: Contact, version: int, now: dt.datetime) -> None:
        """Record `contact` unless one from a `version` as late or later is recorded (0: read
        from the users service, recorded only where none is)."""

    def ensure_templates(self, defaults: Sequence[Template]) -> None: ...
    def template(self, template_id: str) -> Template | None: ...
    def list_templates(self, after: str | None, limit: int) -> list[Template]: ...
    def save_template(self, template: Template) -> None: ...

    def reserve_webhook_slot(self, owner: str, limit: int) -> bool:
        """Count one more webhook for `owner` unless it has `limit` (a conditional write)."""

    def release_webhook_slot(self, owner: str) -> None: ...
    def add_webhook(self, webhook: Webhook, secret: str, request_id: str, request_hash: str) -> bool:
        """False when the id, or the owner's request id, is taken."""

    def webhook_by_request(self, owner: str, request_id: str) -> tuple[Webhook, str, str] | None:
        """The webhook created by `request_id`, its secret and its request hash."""

    def webhook(self, webhook_id: str) -> Webhook | None: ...
    def webhooks_of(self, owner: str) -> list[Webhook]: ...
    def list_webhooks(self, owner: str | None, after: Sequence[str] | None, limit: int) -> list[Webhook]: ...
    def delete_webhook(self, webhook_id: str, now: dt.datetime) -> bool:
        """Remove it and skip its pending deliveries; False when it did not exist."""

    def reserve_push_slot(self, owner: str, limit: int) -> bool:
        """Count one more push subscription for `owner` unless it has `limit`."""

    def release_push_slot(self, owner: str) -> None: ...
    def add_push_subscription(self, subscription: PushSubscription) -> bool:
        """False when its endpoint is registered already (a concurrent create)."""

    def renew_push_subscription(self, subscription: PushSubscription) -> None:
        """Write its keys, expiry and server key (the endpoint was registered again)."""

    def push_subscription(self, subscription_id: str) -> PushSubscription | None: ...
    def push_subscription_at(self, endpoint: str) -> PushSubscription | None: ...
    def push_subscriptions_of(self, owner: str) -> list[PushSubscription]: ...
    def list_push_subscriptions(
        self, owner: str | None, after: Sequence[str] | None, limit: int
    ) -> list[PushSubscription]: ...
    def delete_push_subscription(self, subscription_id: str, now: dt.datetime) -> str | None:
        """Remove it and skip its pending pushes; its owner, or None when it did not exist."""

    def add_delivery(
        self, delivery: Delivery, content: Mapping[str, str], lease: Lease | None = None
    ) -> bool:
        """False when (event, channel, destination) already has one; `lease`: written taken
        (the delivery's `attempts` count this one)."""

    def delivery(self, delivery_id: str) -> Delivery | None: ...
    def list_deliveries(
        self, query: DeliveryQuery, after: Sequence[str] | None, limit: int
    ) -> list[Delivery]: ...
    def claim_deliveries(
        self, now: dt.datetime, lease_until: dt.datetime, owner: str, limit: int
    ) -> list[Outgoing]:
        """Due PENDING deliveries whose lease is free, now leased to `owner` (attempts + 1);
        `reclaimed` on those whose previous lease expired with no outcome recorded."""

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
        """Write the outcome if `owner` still holds the lease; None when the lease was lost."""

    def texts_refused(self, number: str) -> bool:
        """Whether `number` answered STOP (and not START since)."""

    def refuse_texts(self, number: str, refused: bool, now: dt.datetime) -> None: ...
    def texts_taken(self, number: str, since: dt.datetime, now: dt.datetime, besides: str) -> int:
        """Texts to `number` sent since `since` or being sent now, other than `besides`."""

    def defer_delivery(
        self, delivery_id: str, owner: str, *, why: str, next_time: dt.datetime, now: dt.datetime
    ) -> bool: ...
    def keep_text_failure(self, reference: str, error: str, now: dt.datetime) -> None: ...
    def text_failure(self, reference: str) -> str: ...
    def set_provider_reference(self, delivery_id: str, reference: str) -> None: ...
    def fail_sent(self, reference: str, error: str, now: dt.datetime) -> Delivery | None:
        """The SENT delivery its provider knows as `reference`, now FAILED; None if none is."""

    def publish_outcome(self, delivery: Delivery) -> None:
        """NotificationDelivered for SENT, NotificationFailed for FAILED."""


Transactions = Callable[[], AbstractContextManager[Repository]]


class _Owned(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def create_time(self) -> dt.datetime: ...


_O = TypeVar("_O", bound=_Owned)


def owned_page(
    transactions: Transactions,
    read: Callable[[Repository, str | None, Sequence[str] | None, int], list[_O]],
    owner: str | None,
    size: int,
    token: str,
) -> tuple[list[_O], str]:
    """A page of `owner`'s resources (everyone's for None), newest first, and the next token:
    `read(repo, owner, after, limit)` lists them from the position `after`."""
    limit = paging.page_size(size)
    request = [owner or "*"]
    after = paging.decode_token(token, request)
    with transactions() as repo:
        found = read(repo, owner, after, limit + 1)
    return paging.split_page(found, limit, lambda last: [last.create_time.isoformat(), last.id], request)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def record_notification(
    repo: Repository, notification: Notification, now: dt.datetime, lease: Lease | None = None
) -> Notification | None:
    """The consumer's effect: remember what to send; nothing leaves the process here. With a
    `lease`, the notification is recorded taken (its first attempt); returns it as recorded,
    or None when the event had it already."""
    recorded = replace(notification, attempts=1) if lease is not None else notification
    return recorded if repo.add_notification(recorded, now, lease) else None


def default_templates(now: dt.datetime) -> list[Template]:
    return [
        Template(templates.template_id(event_type), event_type, *templates.DEFAULTS[event_type], now)
        for event_type in templates.NOTIFIED_TYPES
    ]


class _Collision(Exception):
    """The webhook id or the request id was taken by a concurrent create."""


@dataclass
class Notifications:
    """The RPC use cases: templates (admin), webhooks (their owner), the delivery log."""

    transactions: Transactions
    address_policy: AddressPolicy
    clock: Callable[[], dt.datetime] = utcnow

    def ensure_templates(self) -> None:
        """Seed the default template of every notified type (idempotent, safe to race)."""
        with self.transactions() as repo:
            repo.ensure_templates(default_templates(self.clock()))

    # -- templates ------------------------------------------------------------------------

    def template(self, template_id: str) -> Template:
        with self.transactions() as repo:
            found = repo.template(template_id)
        if found is None:
            raise NotFound("TEMPLATE_NOT_FOUND", "templates/{template} does not exist", template=template_id)
        return found

    def list_templates(self, size: int, token: str) -> tuple[list[Template], str]:
        limit = paging.page_size(size)
        after = paging.decode_token(token, [])
        with self.transactions() as repo:
            found = repo.list_templates(after[0] if after else None, limit + 1)
        return paging.split_page(found, limit, lambda last: [last.id], [])

    def update_template(self, template_id: str, values: Mapping[str, str], paths: Sequence[str]) -> Template:
        """Write `paths` of `values` (subject, body_text, body_html); each must render."""
        current = self.template(template_id)
        changes = {path: values.get(path, "") for path in paths}
        merged = {
            "subject": current.subject,
            "body_text": current.body_text,
            "body_html": current.body_html,
            **changes,
        }
        violations = [
            FieldViolation(f"template.{path}", problem)
            for path, text in changes.items()
            for problem in templates.text_problems(current.event_type, text, subject=path == "subject")
        ]
        if not merged["body_text"].strip():
            violations.append(FieldViolation("template.body_text", "must not be empty"))
        if violations:
            raise InvalidArgument("TEMPLATE_INVALID", "the template does not render", violations=violations)
        updated = Template(
            current.id,
            current.event_type,
            merged["subject"],
            merged["body_text"],
            merged["body_html"],
            self.clock(),
        )
        with self.transactions() as repo:
            repo.save_template(updated)
        return updated

    # -- webhooks -------------------------------------------------------------------------

    def create_webhook(
        self,
        owner: str,
        url: str,
        event_types: Sequence[str],
        secret: str,
        *,
        webhook_id: str = "",
        request_id: str = "",
        check_owner: OwnerCheck,
    ) -> tuple[Webhook, str]:
        """Register a webhook for `owner`; the webhook and its signing secret. A chosen
        `webhook_id` that is taken is ALREADY_EXISTS only for a caller `check_owner` admits
        for the existing webhook; anyone else gets the answer GetWebhook gives them (AIP-133)."""
        self._check_webhook(url, event_types, secret, webhook_id, request_id)
        request_id = idempotency.canonical(request_id)
        request_hash = idempotency.fingerprint(url, sorted(set(event_types)), secret, webhook_id)
        if request_id:
            with self.transactions() as repo:
                replayed = repo.webhook_by_request(owner, request_id)
            if replayed is not None:
                return _replay(replayed, idempotency.Request(owner, request_id, request_hash))
        hook = Webhook(
            webhook_id or f"wh-{secrets.token_hex(8)}",
            owner,
            url,
            tuple(sorted(set(event_types))),
            self.clock(),
        )
        secret = secret or "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        try:
            with self.transactions() as repo:
                if not repo.reserve_webhook_slot(owner, MAX_WEBHOOKS):
                    raise ResourceExhausted(
                        "WEBHOOK_LIMIT_REACHED",
                        "a user may have at most {limit} webhooks",
                        limit=MAX_WEBHOOKS,
                    )
                if not repo.add_webhook(hook, secret, request_id, request_hash):
                    raise _Collision
        except _Collision:
            with self.transactions() as repo:
                replayed = repo.webhook_by_request(owner, request_id) if request_id else None
                taken = None if replayed is not None else repo.webhook(hook.id)
            if replayed is not None:
                return _replay(replayed, idempotency.Request(owner, request_id, request_hash))
            check_owner(taken.owner if taken else "", hook.name)
            raise AlreadyExists(
                "WEBHOOK_EXISTS", "webhooks/{webhook} already exists", webhook=hook.id
            ) from None
        return hook, secret

    def _check_webhook(
        self, url: str, event_types: Sequence[str], secret: str, webhook_id: str, request_id: str
    ) -> None:
        violations: list[FieldViolation] = []
        problem = "is required" if not url else "must be at most 2048 characters" if len(url) > 2048 else None
        problem = problem or self.address_policy(url)
        if problem:
            violations.append(FieldViolation("webhook.url", problem))
        for index, event_type in enumerate(event_types):
            if event_type not in templates.NOTIFIED_TYPES:
                violations.append(
                    FieldViolation(
                        f"webhook.event_types[{index}]",
                        f"must be one of {', '.join(templates.NOTIFIED_TYPES)}",
                    )
                )
        if secret and not _SECRET.fullmatch(secret):
            violations.append(
                FieldViolation("webhook.secret", "must be 32 to 256 visible ASCII characters, no spaces")
            )
        violations += chosen_id_problems(webhook_id, field="webhook_id")
        violations += idempotency.key_problems(request_id)
        if violations:
            raise InvalidArgument("WEBHOOK_INVALID", "the webhook is invalid", violations=violations)

    def webhook(self, webhook_id: str, check_owner: OwnerCheck) -> Webhook:
        with self.transactions() as repo:
            found = repo.webhook(webhook_id)
        check_owner(found.owner if found else "", f"webhooks/{webhook_id}")
        if found is None:
            raise NotFound("WEBHOOK_NOT_FOUND", "webhooks/{webhook} does not exist", webhook=webhook_id)
        return found

    def list_webhooks(self, owner: str | None, size: int, token: str) -> tuple[list[Webhook], str]:
        """`owner`'s webhooks, or everyone's for None; newest first."""
        return owned_page(
            self.transactions, lambda repo, *page: repo.list_webhooks(*page), owner, size, token
        )

    def delete_webhook(self, webhook_id: str, check_owner: OwnerCheck) -> None:
        found = self.webhook(webhook_id, check_owner)
        with self.transactions() as repo:
            if repo.delete_webhook(found.id, self.clock()):
                repo.release_webhook_slot(found.owner)

    # -- deliveries -----------------------------------------------------------------------

    def delivery(self, delivery_id: str, check_owner: OwnerCheck) -> Delivery:
        with self.transactions() as repo:
            found = repo.delivery(delivery_id)
        check_owner(found.recipient if found else "", f"deliveries/{delivery_id}")
        if found is None:
            raise NotFound("DELIVERY_NOT_FOUND", "deliveries/{delivery} does not exist", delivery=delivery_id)
        return found

    def list_deliveries(
        self, recipient: str | None, size: int, token: str, filter_text: str, order_by: str
    ) -> DeliveryPage:
        """Deliveries matching the filter: only `recipient`'s, or everyone's for None."""
        limit = paging.page_size(size)
        terms = filters.parse_filter(filter_text, DELIVERY_FIELDS)
        order = filters.parse_order_by(
            order_by, ["create_time", "update_time"], default=filters.Ordering("create_time", True)
        )
        request = [filter_text, order.field, order.descending, recipient or "*"]
        after = paging.decode_token(token, request)
        query = DeliveryQuery(tuple(terms), recipient, order)
        with self.transactions() as repo:
            found = repo.list_deliveries(query, after, limit + 1)

        def position(last: Delivery) -> list[str]:
            return [getattr(last, order.field).isoformat(), last.id]

        return DeliveryPage(*paging.split_page(found, limit, position, request))


def _replay(found: tuple[Webhook, str, str], request: idempotency.Request) -> tuple[Webhook, str]:
    webhook, secret, first_fingerprint = found
    idempotency.replay(first_fingerprint, request, webhook=webhook.name)
    return webhook, secret
