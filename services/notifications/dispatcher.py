"""The dispatcher: a `Background` thread running an asyncio loop that sends what events asked for.

Each round it claims due notifications (leased), reads each recipient's contact from the
users service and turns the notification into deliveries; then it claims due deliveries, up
to `concurrency` in flight, and sends them (SMTP or webhook), recording each outcome. Database
work runs in worker threads (`asyncio.to_thread`); the network calls never hold a transaction.
A round runs when woken (an event was recorded, a send finished) or every `poll_seconds`.
A delivery whose lease outlived its dispatcher (kill -9) is claimed again once the lease
expires; one accepted by the SMTP server just before such a crash is sent again with the same
Message-ID (at-least-once, deduplicable by receivers). Each such claim is counted
(`Dispatcher.metrics`, "reclaimed") and logged at warning level.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable

from services.kit.counters import Counters
from services.kit.telemetry.handoff import Handoff
from services.notifications.contacts import ContactUnavailable
from services.notifications.dispatch import Dispatch, DispatchSettings
from services.notifications.domain import EMAIL, Contact, Notification, Outgoing
from services.notifications.senders import EmailSender, Result, WebhookSender
from services.notifications.settings import NotificationsSettings

__all__ = ["Dispatcher", "dispatch_settings"]

_log = logging.getLogger("poly.notifications.dispatcher")

Lookup = Callable[[str], Contact]
"""``users/{id}`` -> its contact (blocking), or `ContactUnavailable`."""


def dispatch_settings(notify: NotificationsSettings) -> DispatchSettings:
    """Retries from the service's settings; a lease three times the longest send (SMTP or
    webhook), so a live dispatcher never loses a delivery it is sending. (A notification whose
    contact lookup outlives the lease may be taken over; only the lease holder's result counts.)"""
    return DispatchSettings(
        max_attempts=notify.max_attempts,
        retry_base_seconds=notify.retry_base_seconds,
        retry_max_seconds=notify.retry_max_seconds,
        lease_seconds=3 * max(notify.smtp.timeout_seconds, notify.webhook_timeout_seconds),
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
        poll_seconds: float = 0.5,
    ) -> None:
        self._dispatch = dispatch
        self._lookup = lookup
        self._email = email
        self._webhooks = webhooks
        self._concurrency = concurrency
        self._poll_seconds = poll_seconds
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._traces = Handoff("notifications.dispatch")

    @property
    def metrics(self) -> Counters:
        """The dispatch counters (`Dispatch.metrics`)."""
        return self._dispatch.metrics

    def wake(self, event_id: str = "") -> None:
        """Run a round soon (safe from any thread); what is sent for `event_id` joins the
        trace running now (the event's consumer)."""
        if event_id:
            self._traces.remember(event_id)
        loop, wakeup = self._loop, self._wakeup
        if loop is not None and wakeup is not None and not loop.is_closed():
            loop.call_soon_threadsafe(wakeup.set)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="notifications-dispatcher", daemon=True)
        self._thread.start()
        self._ready.wait(5.0)

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        await self._webhooks.open()
        self._ready.set()
        try:
            while not self._stopping.is_set():
                self._wakeup.clear()
                try:
                    await self._round()
                except Exception:  # noqa: BLE001 - a database hiccup must not kill the dispatcher
                    _log.exception("dispatch round failed; retrying")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), self._poll_seconds)
            if self._in_flight:
                # Sends already started finish and record their outcome; their leases would
                # otherwise hold them until expiry.
                await asyncio.wait(self._in_flight, timeout=4.0)
        finally:
            await self._webhooks.close()
            await self._email.close()

    async def _round(self) -> None:
        notifications = await asyncio.to_thread(self._dispatch.claim_notifications, self._concurrency)
        if notifications:
            await asyncio.gather(*(self._resolve(n) for n in notifications))
        free = self._concurrency - len(self._in_flight)
        if free <= 0:
            return
        for outgoing in await asyncio.to_thread(self._dispatch.claim_deliveries, free):
            task = asyncio.create_task(self._deliver(outgoing))
            self._in_flight.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if self._wakeup is not None:
            self._wakeup.set()

    async def _resolve(self, notification: Notification) -> None:
        with self._traces.resumed(notification.event_id, "resolve notification"):
            await self._resolve_traced(notification)

    async def _resolve_traced(self, notification: Notification) -> None:
        try:
            contact = await asyncio.to_thread(self._lookup, notification.recipient)
        except ContactUnavailable as unavailable:
            _log.info(
                "contact not available yet",
                extra={"event_id": notification.event_id, "error": str(unavailable)},
            )
            await asyncio.to_thread(self._dispatch.postpone, notification, str(unavailable))
            return
        await asyncio.to_thread(self._dispatch.resolve, notification, contact)

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
            if delivery.channel != EMAIL and not outgoing.secret:
                await asyncio.to_thread(self._dispatch.skipped, outgoing, "webhook deleted")
                return
            result = await self._send(outgoing)
            facts = {"delivery": delivery.name, "channel": delivery.channel, "attempt": delivery.attempts}
            if result.sent:
                await asyncio.to_thread(self._dispatch.sent, outgoing)
                _log.info("delivery sent", extra=facts)
            else:
                await asyncio.to_thread(
                    self._dispatch.failed, outgoing, result.error, permanent=result.permanent
                )
                # Only a failure has an error to show (retried later unless permanent).
                _log.warning(
                    "delivery failed", extra={**facts, "error": result.error, "permanent": result.permanent}
                )
        except Exception:  # noqa: BLE001 - one delivery's failure; its lease expires and it is retried
            _log.exception("delivery failed unexpectedly", extra={"delivery": delivery.name})

    async def _send(self, outgoing: Outgoing) -> Result:
        if outgoing.delivery.attempts > self._dispatch.settings.max_attempts:
            return Result("gave up: the dispatcher stopped during earlier attempts", permanent=True)
        sender = self._email if outgoing.delivery.channel == EMAIL else self._webhooks
        try:
            async with asyncio.timeout(self._dispatch.settings.lease_seconds / 2):
                return await sender.send(outgoing)
        except TimeoutError:
            return Result("timed out")
