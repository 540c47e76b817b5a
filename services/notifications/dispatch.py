"""The dispatcher's rules: plan a notification's deliveries, claim work, record outcomes.

A notification becomes one email to the recipient's address, a text to their number and a push
to each of their push subscriptions where those channels are configured, and one POST per
webhook that wants its type, each SKIPPED (with the reason as `last_error`) when the user is
deleted, the type is muted or the channel disabled. Retries back off exponentially with jitter;
a permanent error or the last attempt ends in FAILED. Only the holder of a claim's lease records
its outcome, and a SENT or FAILED outcome publishes its event in the same transaction. A
delivery claimed again after its lease expired with no outcome recorded (its dispatcher died
mid-send) is counted (``metrics``, "reclaimed") and logged: it may be sent twice. Network calls
are the caller's (`dispatcher.Dispatcher`); this module holds no I/O.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from services.kit.backoff import backoff_seconds
from services.kit.counters import Counters
from services.kit.domain_errors import NotFound
from services.notifications import templates
from services.notifications.domain import (
    ABANDONED,
    EMAIL,
    FAILED,
    PENDING,
    PUSH,
    RESOLVED,
    SENT,
    SKIPPED,
    SMS,
    WEBHOOK,
    Contact,
    Delivery,
    Lease,
    Notification,
    Outgoing,
    PushSubscription,
    Repository,
    Template,
    Transactions,
    Webhook,
    utcnow,
)

__all__ = ["Dispatch", "DispatchSettings", "Resolved", "plan_deliveries"]

_log = logging.getLogger("poly.notifications.dispatch")

PUSH_TITLE_LIMIT, PUSH_TEXT_LIMIT = 150, 500
"""Characters of the email's subject and text a push carries."""
PUSH_PAYLOAD_BYTES = 3800
"""One encrypted push record holds 3,993 bytes of plaintext (RFC 8291); the rest is margin."""


def plan_deliveries(
    notification: Notification,
    contact: Contact,
    template: Template,
    webhooks: Sequence[Webhook],
    *,
    now: dt.datetime,
    new_id: Callable[[], str],
    texts: bool = False,
    texts_refused: bool = False,
    subscriptions: Sequence[PushSubscription] = (),
) -> list[tuple[Delivery, dict[str, str]]]:
    """The deliveries of one notification with what each sends: an email to the contact, a
    text (where `texts` are sent, carrying the email's subject) to their mobile number, a push
    (the subject and the start of the text) to each of their usable push `subscriptions`, and a
    POST to each webhook wanting the type, SKIPPED where preferences or state rule it out
    (`texts_refused`: the number answered STOP)."""
    event_type = notification.event_type
    blocked = "user deleted" if contact.deleted else "event type muted" if event_type in contact.muted else ""

    def delivery(channel: str, destination: str, webhook: str, skip: str) -> Delivery:
        return Delivery(
            id=new_id(),
            recipient=notification.recipient,
            channel=channel,
            template=template.name if channel != WEBHOOK else "",
            event_type=event_type,
            event_id=notification.event_id,
            destination=destination,
            webhook=webhook,
            state=SKIPPED if skip else PENDING,
            attempts=0,
            last_error=skip,
            next_attempt_time=None if skip else now,
            create_time=now,
            update_time=now,
        )

    planned: list[tuple[Delivery, dict[str, str]]] = []
    if contact.email:
        values = {
            **notification.variables,
            "display_name": contact.display_name or contact.email,
            "email": contact.email,
            "user": contact.user,
        }
        rendered = templates.render(template.subject, template.body_text, template.body_html, values)
        skip = blocked or ("email disabled" if not contact.email_enabled else "")
        content = {"subject": rendered.subject, "text": rendered.text, "html": rendered.html}
        planned.append((delivery(EMAIL, contact.email, "", skip), content))
        if texts and contact.phone_number:
            why = (
                "texts disabled"
                if not contact.sms_enabled
                else "the number answered STOP"
                if texts_refused
                else ""
            )
            planned.append(
                (delivery(SMS, contact.phone_number, "", blocked or why), {"text": rendered.subject})
            )
        for subscription in subscriptions:
            made = delivery(
                PUSH, subscription.name, "", blocked or ("push disabled" if not contact.push_enabled else "")
            )
            facts = {"type": event_type, "id": notification.event_id, "delivery": made.name}
            planned.append((made, {"payload": _push_payload(rendered.subject, rendered.text, facts)}))
    for hook in (h for h in webhooks if h.wants(event_type)):
        skip = blocked or ("webhook disabled" if not contact.webhook_enabled else "")
        made = delivery(WEBHOOK, hook.url, hook.name, skip)
        body = {
            "type": event_type,
            "id": notification.event_id,
            "timestamp": notification.occur_time.isoformat().replace("+00:00", "Z"),
            "data": notification.data,
        }
        planned.append((made, {"body": json.dumps(body, separators=(",", ":"), sort_keys=True)}))
    return planned


def _push_payload(title: str, body: str, facts: dict[str, str]) -> str:
    """The JSON a push carries, cut to fit one encrypted record (escaped characters included)."""
    title, body = title[:PUSH_TITLE_LIMIT], body[:PUSH_TEXT_LIMIT]
    while True:
        payload = json.dumps(
            {"title": title, "body": body, **facts}, separators=(",", ":"), ensure_ascii=False
        )
        if len(payload.encode()) <= PUSH_PAYLOAD_BYTES or not (title or body):
            return payload
        title, body = title[: len(title) * 3 // 4], body[: len(body) // 2]


@dataclass(frozen=True, slots=True)
class Resolved:
    """A notification's deliveries, once resolved."""

    taken: list[Outgoing]
    """Written taken by this dispatcher: to send now."""
    waiting: int
    """Pending for a claim (webhooks, or all when nothing was taken)."""


@dataclass(frozen=True, slots=True)
class DispatchSettings:
    max_attempts: int = 8
    retry_base_seconds: float = 2.0
    retry_max_seconds: float = 600.0
    lease_seconds: float = 30.0
    texts: bool = False
    """Whether text messages are sent (a provider is configured)."""
    texts_per_hour: int = 5
    """Texts one number may get in an hour."""
    push_key: str = ""
    """The VAPID public key pushes are signed with; "" where no pushes are sent."""


@dataclass
class Dispatch:
    """The dispatcher's side of the domain: claim work, turn notifications into deliveries,
    record outcomes. The network calls in between belong to the caller."""

    transactions: Transactions
    settings: DispatchSettings
    owner: str = field(default_factory=lambda: f"dispatcher-{uuid.uuid4().hex[:12]}")
    clock: Callable[[], dt.datetime] = utcnow
    new_id: Callable[[], str] = lambda: str(uuid.uuid4())
    rng: random.Random = field(default_factory=random.Random)
    metrics: Counters = field(default_factory=Counters)
    """Per channel: reclaimed (a delivery claimed again after its lease expired with no
    outcome recorded, so it may be sent twice)."""

    def _lease(self) -> tuple[dt.datetime, dt.datetime]:
        now = self.clock()
        return now, now + dt.timedelta(seconds=self.settings.lease_seconds)

    def lease(self) -> Lease:
        """A lease of this dispatcher's from now, for work written already taken."""
        return Lease(self.owner, self._lease()[1])

    def claim_notifications(self, limit: int) -> list[Notification]:
        now, until = self._lease()
        with self.transactions() as repo:
            return repo.claim_notifications(now, until, self.owner, limit)

    def resolve_recorded(self, notification: Notification, *, take: bool = False) -> Resolved | None:
        """`resolve` for the recipient's contact as recorded here (from ContactChanged); None
        when none is: read it from the users service and `resolve` with it."""
        return self._resolve(notification, None, take)

    def resolve(self, notification: Notification, contact: Contact, *, take: bool = False) -> Resolved:
        """Create the notification's deliveries (none if another dispatcher took it over, or it
        was resolved already). With `take`, the emails among them are written taken by this
        dispatcher and returned to be sent now; the others wait for a claim. `contact` (read
        from the users service) is recorded unless an event's copy is."""
        resolved = self._resolve(notification, contact, take)
        assert resolved is not None  # only a missing recorded contact gives None
        return resolved

    def _resolve(self, notification: Notification, contact: Contact | None, take: bool) -> Resolved | None:
        now = self.clock()
        with self.transactions() as repo:
            if contact is None:
                contact = repo.contact(notification.recipient)
                if contact is None:
                    return None
            else:
                repo.record_contact(contact, 0, now)
            # The settling write comes first: it decides who resolves, and locks the row.
            if not repo.settle_notification(
                notification.event_id, self.owner, state=RESOLVED, error="", next_time=None, now=now
            ):
                return Resolved([], 0)
            template = repo.template(templates.template_id(notification.event_type))
            if template is None:
                raise NotFound(
                    "TEMPLATE_NOT_FOUND", "no template for {event_type}", event_type=notification.event_type
                )
            hooks = repo.webhooks_of(notification.recipient)
            texts = self.settings.texts
            refused = texts and bool(contact.phone_number) and repo.texts_refused(contact.phone_number)
            subscriptions = [
                s
                for s in repo.push_subscriptions_of(notification.recipient)
                if s.usable(now, self.settings.push_key)
            ]
            planned = plan_deliveries(
                notification,
                contact,
                template,
                hooks,
                now=now,
                new_id=self.new_id,
                texts=texts,
                texts_refused=refused,
                subscriptions=subscriptions,
            )
            lease = self.lease()
            taken: list[Outgoing] = []
            waiting = 0
            for planned_delivery, content in planned:
                if take and planned_delivery.channel == EMAIL and planned_delivery.state == PENDING:
                    first = replace(planned_delivery, attempts=1)  # taken: this is its first attempt
                    if repo.add_delivery(first, content, lease):
                        taken.append(Outgoing(first, content))
                elif repo.add_delivery(planned_delivery, content) and planned_delivery.state == PENDING:
                    waiting += 1
            return Resolved(taken, waiting)

    def postpone(self, notification: Notification, error: str) -> dt.datetime | None:
        """The contact could not be read: retry later, or give up after the last attempt; when
        it is tried again (None: never, or another dispatcher has it now)."""
        now = self.clock()
        exhausted = notification.attempts >= self.settings.max_attempts
        delay = self._delay(notification.attempts)
        next_time = None if exhausted else now + dt.timedelta(seconds=delay)
        with self.transactions() as repo:
            settled = repo.settle_notification(
                notification.event_id,
                self.owner,
                state=ABANDONED if exhausted else PENDING,
                error=error[:500],
                next_time=next_time,
                now=now,
            )
        return next_time if settled else None

    def claim_deliveries(self, limit: int) -> list[Outgoing]:
        now, until = self._lease()
        with self.transactions() as repo:
            claimed = repo.claim_deliveries(now, until, self.owner, limit)
        for outgoing in claimed:
            if outgoing.reclaimed:
                self._reclaimed(outgoing.delivery)
        return claimed

    def _reclaimed(self, delivery: Delivery) -> None:
        self.metrics.add("reclaimed", delivery.channel)
        _log.warning(
            "delivery claimed again after its lease expired with no outcome recorded; it may be "
            "sent twice (with the same Message-ID or webhook-id)",
            extra={
                "delivery": delivery.name,
                "channel": delivery.channel,
                "event_id": delivery.event_id,
                "attempt": delivery.attempts,
            },
        )

    def sent(self, outgoing: Outgoing, reference: str = "") -> Delivery | None:
        """SENT; `reference` is what the channel's provider calls it (a text's message SID)."""
        return self._settle(outgoing.delivery, SENT, "", None, reference=reference)

    def text_held(self, outgoing: Outgoing) -> str:
        """Why the text may not go now ("" when it may): its number answered STOP since it
        was planned (it is SKIPPED), or had its hour's texts (it waits, its attempt not
        counted, `DispatchSettings.texts_per_hour`)."""
        number, now = outgoing.delivery.destination, self.clock()
        with self.transactions() as repo:
            refused = repo.texts_refused(number)
            if not refused:
                taken = repo.texts_taken(number, now - dt.timedelta(hours=1), now, outgoing.delivery.id)
                if taken < self.settings.texts_per_hour:
                    return ""
                why = f"held back: {self.settings.texts_per_hour} texts to this number in the last hour"
                later = now + dt.timedelta(minutes=5)
                repo.defer_delivery(outgoing.delivery.id, self.owner, why=why, next_time=later, now=now)
                return why
        self.skipped(outgoing, "the number answered STOP")
        return "the number answered STOP"

    def push_target(self, outgoing: Outgoing) -> Outgoing | None:
        """The push with its subscription as it is now, just before it goes; None (and the
        push SKIPPED) when the subscription was removed, moved to another user, expired or
        made for a replaced VAPID key since the push was planned."""
        subscription_id = outgoing.delivery.destination.removeprefix("pushSubscriptions/")
        now = self.clock()
        with self.transactions() as repo:
            found = repo.push_subscription(subscription_id)
        if found is not None and found.owner == outgoing.delivery.recipient:
            if found.usable(now, self.settings.push_key):
                return replace(outgoing, subscription=found)
            self.skipped(outgoing, "push subscription expired or made for a replaced VAPID key")
            return None
        self.skipped(outgoing, "push subscription removed")
        return None

    def gone(self, outgoing: Outgoing, error: str) -> Delivery | None:
        """The destination is gone for good: FAILED, and nothing more goes there. A number that
        opted out gets no more texts until it answers START; a push subscription its push
        service no longer knows is removed (its other pending pushes SKIPPED)."""
        delivery, subscription = outgoing.delivery, outgoing.subscription

        def shut(repo: Repository) -> None:  # in the settling transaction: one outcome
            if delivery.channel == SMS:
                repo.refuse_texts(delivery.destination, True, self.clock())
            if delivery.channel == PUSH and subscription is not None:
                owner = repo.delete_push_subscription(subscription.id, self.clock())
                if owner is not None:
                    repo.release_push_slot(owner)

        return self._settle(delivery, FAILED, error, None, then=shut)

    def skipped(self, outgoing: Outgoing, why: str) -> Delivery | None:
        return self._settle(outgoing.delivery, SKIPPED, why, None)

    def failed(self, outgoing: Outgoing, error: str, *, permanent: bool) -> Delivery | None:
        attempts = outgoing.delivery.attempts
        if permanent or attempts >= self.settings.max_attempts:
            return self._settle(outgoing.delivery, FAILED, error, None)
        next_time = self.clock() + dt.timedelta(seconds=self._delay(attempts))
        return self._settle(outgoing.delivery, PENDING, error, next_time)

    def _delay(self, attempts: int) -> float:
        return backoff_seconds(
            attempts,
            base=self.settings.retry_base_seconds,
            maximum=self.settings.retry_max_seconds,
            rng=self.rng,
        )

    def _settle(
        self,
        delivery: Delivery,
        state: str,
        error: str,
        next_time: dt.datetime | None,
        *,
        reference: str = "",
        then: Callable[[Repository], None] | None = None,
    ) -> Delivery | None:
        """Record the outcome if this dispatcher still holds the lease, and then run `then` in
        the same transaction."""
        with self.transactions() as repo:
            settled = repo.settle_delivery(
                delivery.id, self.owner, state=state, error=error[:500], next_time=next_time, now=self.clock()
            )
            if settled is not None and then is not None:
                then(repo)
            if settled is not None and reference:
                repo.set_provider_reference(delivery.id, reference)
                # Its failure may have been reported already (`texts.TextReports`).
                if failure := repo.text_failure(reference):
                    failed = repo.fail_sent(reference, failure, self.clock())
                    if failed is not None:
                        repo.publish_outcome(failed)
            if settled is not None and state in (SENT, FAILED):
                repo.publish_outcome(settled)
            return settled
