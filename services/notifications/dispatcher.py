"""The dispatcher: a `Background` thread running an asyncio loop that sends what events asked for.

A consumed event's notification is written already taken by this dispatcher (`lease`) and
handed to it once the consumer's transaction commits (`take`): the next round turns the
notification into deliveries for the recipient's contact as recorded here from users'
ContactChanged events (asking the users service only for a user it has no event of yet), the
email among them again written taken and sent at once, up to `concurrency` sends in flight.
No query looks for that work. What is not handed over this way (a retry falling due, a
webhook delivery, work whose dispatcher died or that waited here until its lease nearly ran
out, what is recorded while the dispatcher stops, a backlog beyond the free sends) is claimed
(leased) by a round: the deliveries a resolve left waiting in that same round (or as soon as
a send is free), a retry this dispatcher recorded (a failed send, a postponed notification)
when it falls due, more at once after a claim that came back full, and otherwise every
`poll_seconds` (5 s: for work no wake-up announces, a lease another dispatcher left to run
out, work recorded while this one was stopped, a text held back for its number's hourly
limit); see `kit.leases.ClaimTimes`. Claiming twice a second whatever the work cost an idle
service 3.7 ms of CPU a second, a third of the five services' idle CPU.
Database work runs in worker threads (`asyncio.to_thread`); the network calls never hold a
transaction. A dispatcher that dies with work taken leaves it to its lease: the work is
claimed again once the lease runs out. A delivery whose lease outlived its dispatcher
(kill -9) may have been accepted by the SMTP server just before the crash: it is sent again
with the same Message-ID (at-least-once, deduplicable by receivers). Each such claim is
counted (`Dispatcher.metrics`, "reclaimed") and logged at warning level.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from services.kit.counters import Counters
from services.kit.leases import ClaimTimes
from services.kit.telemetry.handoff import Handoff
from services.notifications.contacts import ContactUnavailable
from services.notifications.dispatch import Dispatch, DispatchSettings
from services.notifications.domain import EMAIL, PUSH, SMS, WEBHOOK, Contact, Lease, Notification, Outgoing
from services.notifications.push import PushSender
from services.notifications.push_keys import application_server_key
from services.notifications.senders import EmailSender, Result, WebhookSender
from services.notifications.settings import NotificationsSettings
from services.notifications.sms import SmsSender

__all__ = ["Dispatcher", "dispatch_settings"]

_log = logging.getLogger("poly.notifications.dispatcher")

Lookup = Callable[[str], Contact]
"""``users/{id}`` -> its contact (blocking), or `ContactUnavailable`."""


def dispatch_settings(notify: NotificationsSettings) -> DispatchSettings:
    """Retries from the service's settings; a lease three times the longest send (SMTP,
    webhook, text or push), so a live dispatcher never loses a delivery it is sending. (A
    notification whose contact lookup outlives the lease may be taken over; only the lease
    holder's result counts.)"""
    texts_timeout = notify.twilio.timeout_seconds if notify.twilio.enabled else 0.0
    push_timeout = notify.push.timeout_seconds if notify.push.enabled else 0.0
    return DispatchSettings(
        max_attempts=notify.max_attempts,
        retry_base_seconds=notify.retry_base_seconds,
        retry_max_seconds=notify.retry_max_seconds,
        lease_seconds=3
        * max(notify.smtp.timeout_seconds, notify.webhook_timeout_seconds, texts_timeout, push_timeout),
        texts=notify.twilio.enabled,
        texts_per_hour=notify.twilio.per_recipient_per_hour,
        push_key=application_server_key(notify.push.vapid_private_key) if notify.push.enabled else "",
    )


class Dispatcher:
    def __init__(
        self,
        dispatch: Dispatch,
        lookup: Lookup,
        email: EmailSender,
        webhooks: WebhookSender,
        *,
        concurrency: int,
        poll_seconds: float = 5.0,
        texts: SmsSender | None = None,
        pushes: PushSender | None = None,
    ) -> None:
        self._dispatch = dispatch
        self._lookup = lookup
        self._email = email
        self._webhooks = webhooks
        self._texts = texts
        self._pushes = pushes
        self._concurrency = concurrency
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._taken: deque[tuple[Notification, float]] = deque()
        """Handed over by `take` (any thread), resolved by the loop; with the `time.monotonic()`
        after which the loop leaves one to a claim (its lease is about to run out)."""
        self._sendable: deque[Outgoing] = deque()
        """Deliveries written taken by a resolve, waiting for a free send (the loop's own)."""
        self._promised = 0
        """Resolves under way that may each add one to `_sendable`: with it, taken work never
        exceeds `concurrency`."""
        self._claims = ClaimTimes(poll_seconds)
        self._claim_again = True
        self._deliveries_waiting = True
        self._traces = Handoff("notifications.dispatch")

    @property
    def metrics(self) -> Counters:
        """The dispatch counters (`Dispatch.metrics`)."""
        return self._dispatch.metrics

    def lease(self) -> Lease | None:
        """A lease for a notification written taken by this dispatcher (the consumer's); None
        once it is stopping: what is recorded then is left to a claim, not to a lease."""
        return None if self._stopping.is_set() else self._dispatch.lease()

    def take(self, notification: Notification) -> None:
        """Resolve `notification`, committed taken by this dispatcher (`lease`), in the next
        round and in its event's trace (safe from any thread)."""
        self._traces.remember(notification.event_id)
        # A copy that waited until its lease nearly ran out is left to whoever claims it then.
        usable_until = time.monotonic() + self._dispatch.settings.lease_seconds / 2
        self._taken.append((notification, usable_until))
        self._wake()

    def _wake(self) -> None:
        loop, wakeup = self._loop, self._wakeup
        if loop is not None and wakeup is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nothing to wake
                loop.call_soon_threadsafe(wakeup.set)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="notifications-dispatcher", daemon=True)
        self._thread.start()
        self._ready.wait(5.0)

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        await self._webhooks.open()
        if self._texts is not None:
            await self._texts.open()
        if self._pushes is not None:
            await self._pushes.open()
        self._ready.set()
        try:
            while not self._stopping.is_set():
                self._wakeup.clear()
                try:
                    await self._round()
                except Exception:  # noqa: BLE001 - a database hiccup must not kill the dispatcher
                    _log.exception("dispatch round failed; retrying")
                    self._claims.failed()
                until_claim = 0.0 if self._claim_again else self._claims.seconds_left()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), until_claim)
            if self._in_flight:
                # Sends already started finish and record their outcome; their leases would
                # otherwise hold them until expiry.
                await asyncio.wait(self._in_flight, timeout=4.0)
        finally:
            await self._webhooks.close()
            await self._email.close()
            if self._texts is not None:
                await self._texts.close()
            if self._pushes is not None:
                await self._pushes.close()

    async def _round(self) -> None:
        claiming = self._claim_again or self._claims.due()
        if claiming:
            self._claims.claiming()
            self._claim_again = False
        now = time.monotonic()
        handed = [self._taken.popleft() for _ in range(min(len(self._taken), self._concurrency))]
        notifications = [notification for notification, usable_until in handed if usable_until > now]
        if claiming:
            try:
                claimed = await asyncio.to_thread(self._dispatch.claim_notifications, self._concurrency)
            except Exception:  # noqa: BLE001 - what was handed over still goes; the claim runs again
                _log.exception("claiming notifications failed; retrying")
                self._claims.failed()
                claimed = []
            self._claim_again = len(claimed) >= self._concurrency  # a full batch may have left more
            notifications += claimed
        if notifications:
            resolved = await asyncio.gather(
                *(self._resolve(n) for n in notifications), return_exceptions=True
            )
            for failure in (r for r in resolved if isinstance(r, BaseException)):
                _log.error("resolving a notification failed; it is retried", exc_info=failure)
        self._start_sendable()
        free = self._concurrency - len(self._in_flight)
        if claiming and free <= 0:
            self._deliveries_waiting = True  # claimed once a send is free (`_finished`)
        if free > 0 and (claiming or self._deliveries_waiting):
            claimed_deliveries = await asyncio.to_thread(self._dispatch.claim_deliveries, free)
            self._deliveries_waiting = len(claimed_deliveries) >= free
            for outgoing in claimed_deliveries:
                self._start(outgoing)
        if self._taken and self._wakeup is not None:
            self._wakeup.set()  # more was handed over than one round resolves

    def _claim_by(self, when: dt.datetime | None) -> None:
        """Claim when `when` (the dispatch clock's time of a retry just recorded) comes; on the
        loop only."""
        if when is None:
            return
        left = max(0.0, (when - self._dispatch.clock()).total_seconds())
        if self._claims.retry_at(time.monotonic() + left) and self._wakeup is not None:
            self._wakeup.set()  # the loop's wait was for a later claim

    def _start_sendable(self) -> None:
        while self._sendable and len(self._in_flight) < self._concurrency:
            self._start(self._sendable.popleft())

    def _start(self, outgoing: Outgoing) -> None:
        task = asyncio.create_task(self._deliver(outgoing))
        self._in_flight.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        # A free send matters only to work waiting for one; the rest waits for its claim.
        if (self._sendable or self._deliveries_waiting) and self._wakeup is not None:
            self._wakeup.set()

    async def _resolve(self, notification: Notification) -> None:
        with self._traces.resumed(notification.event_id, "resolve notification"):
            await self._resolve_traced(notification)

    async def _resolve_traced(self, notification: Notification) -> None:
        # Its email is taken and sent at once only if a send is free for it.
        take = len(self._in_flight) + len(self._sendable) + self._promised < self._concurrency
        self._promised += take
        try:
            resolved = await asyncio.to_thread(self._dispatch.resolve_recorded, notification, take=take)
            if resolved is None:  # no contact recorded here yet: the users service has it
                try:
                    contact = await asyncio.to_thread(self._lookup, notification.recipient)
                except ContactUnavailable as unavailable:
                    _log.info(
                        "contact not available yet",
                        extra={"event_id": notification.event_id, "error": str(unavailable)},
                    )
                    retry = await asyncio.to_thread(self._dispatch.postpone, notification, str(unavailable))
                    self._claim_by(retry)
                    return
                resolved = await asyncio.to_thread(self._dispatch.resolve, notification, contact, take=take)
        finally:
            self._promised -= take
        self._sendable.extend(resolved.taken)
        if resolved.waiting:
            self._deliveries_waiting = True
        self._start_sendable()

    async def _deliver(self, outgoing: Outgoing) -> None:
        delivery = outgoing.delivery
        attributes = {
            "poly.resource.name": delivery.name,
            "poly.channel": delivery.channel,
            "poly.event.type": delivery.event_type,
        }
        with self._traces.resumed(
            delivery.event_id, f"send {delivery.channel.lower()}", attributes=attributes
        ):
            await self._deliver_traced(outgoing)

    async def _deliver_traced(self, outgoing: Outgoing) -> None:
        delivery = outgoing.delivery
        try:
            if delivery.channel == WEBHOOK and not outgoing.secret:
                await asyncio.to_thread(self._dispatch.skipped, outgoing, "webhook deleted")
                return
            if delivery.channel == PUSH:
                target = await asyncio.to_thread(self._dispatch.push_target, outgoing)
                if target is None:
                    return  # SKIPPED: its subscription is no longer there for its recipient
                outgoing = target
            facts = {"delivery": delivery.name, "channel": delivery.channel, "attempt": delivery.attempts}
            if delivery.channel == SMS and (
                held := await asyncio.to_thread(self._dispatch.text_held, outgoing)
            ):
                _log.info("text held back", extra={**facts, "why": held})  # waiting, or SKIPPED
                return
            result = await self._send(outgoing)
            if result.sent:
                await asyncio.to_thread(self._dispatch.sent, outgoing, result.reference)
                _log.info("delivery sent", extra=facts)
            elif result.gone:
                await asyncio.to_thread(self._dispatch.gone, outgoing, result.error)
                _log.warning(
                    "delivery refused: the destination is gone", extra={**facts, "error": result.error}
                )
            else:
                settled = await asyncio.to_thread(
                    self._dispatch.failed, outgoing, result.error, permanent=result.permanent
                )
                self._claim_by(settled.next_attempt_time if settled is not None else None)
                # Only a failure has an error to show (retried later unless permanent).
                _log.warning(
                    "delivery failed", extra={**facts, "error": result.error, "permanent": result.permanent}
                )
        except Exception:  # noqa: BLE001 - one delivery's failure; its lease expires and it is retried
            _log.exception("delivery failed unexpectedly", extra={"delivery": delivery.name})

    async def _send(self, outgoing: Outgoing) -> Result:
        if outgoing.delivery.attempts > self._dispatch.settings.max_attempts:
            return Result("gave up: the dispatcher stopped during earlier attempts", permanent=True)
        channel = outgoing.delivery.channel
        senders: dict[str, EmailSender | WebhookSender | SmsSender | PushSender | None] = {
            EMAIL: self._email,
            SMS: self._texts,
            PUSH: self._pushes,
            WEBHOOK: self._webhooks,
        }
        sender = senders.get(channel)
        if sender is None:
            return Result(f"{channel.lower()} is not configured here", permanent=True)
        try:
            async with asyncio.timeout(self._dispatch.settings.lease_seconds / 2):
                return await sender.send(outgoing)
        except TimeoutError:
            return Result("timed out")
