"""Web Push messages (RFC 8030), encrypted to the subscription's keys (RFC 8291, aes128gcm) by
`pywebpush` and signed with the deployment's VAPID key (RFC 8292) by its `py_vapid`; posted with
aiohttp through the address guard the webhooks use, one pooled client in the dispatcher's loop.

Each message carries ``TTL`` (how long the push service keeps it for an offline browser),
``Urgency: normal`` and ``Topic`` (the delivery, so a retry replaces an undelivered earlier copy
at the push service rather than adding one). The push service's answer sorts the outcome: 201
is sent; 404 and 410 say the subscription is gone (it is removed); 408, 429 and 5xx are worth
retrying, and so is 401 (the operator's VAPID key to fix); other 4xx are final (403: the
subscription was made for another key; 413: too large).
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
from py_vapid import Vapid02, VapidException
from pywebpush import WebPusher, WebPushException

from services.notifications.addresses import url_problem
from services.notifications.domain import Outgoing
from services.notifications.push_keys import origin, vapid_private_key
from services.notifications.senders import Result, guarded_session, post_status
from services.notifications.settings import NotificationsSettings

__all__ = ["PushSender"]

_VAPID_LIFETIME_SECONDS = 12 * 3600
"""RFC 8292 allows at most 24 hours; half leaves room for clocks that disagree."""
_RETRIED = {401, 408, 429}


class PushSender:
    """Sends a delivery's push to its subscription; open it inside the event loop."""

    def __init__(self, settings: NotificationsSettings) -> None:
        self._settings = settings.push
        self._vapid = Vapid02(vapid_private_key(settings.push.vapid_private_key))
        self._allow_private = settings.webhook_allow_private
        self._limit = settings.concurrency
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        # Push services move: a cached answer lives five minutes, each fresh one is vetted again.
        self._session = guarded_session(
            allow_private=self._allow_private,
            limit=self._limit,
            timeout_seconds=self._settings.timeout_seconds,
            dns_ttl_seconds=300,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def send(self, outgoing: Outgoing) -> Result:
        assert self._session is not None, "open() the sender first"
        subscription = outgoing.subscription
        if subscription is None:
            return Result("push subscription removed", permanent=True)
        endpoint = subscription.endpoint
        problem = await asyncio.to_thread(url_problem, endpoint, allow_private=self._allow_private)
        if problem:
            return Result(f"address refused: {problem}", permanent=True)
        try:
            pusher = WebPusher(
                {"endpoint": endpoint, "keys": {"p256dh": subscription.p256dh, "auth": subscription.auth}}
            )
            body = pusher.encode(outgoing.content["payload"].encode(), "aes128gcm")["body"]
        except (WebPushException, ValueError) as error:
            return Result(f"push not encrypted: {type(error).__name__}", permanent=True)
        audience = origin(endpoint)
        if audience is None:  # refused at registration: only a row written otherwise has one
            return Result("push not signed: the endpoint has no origin to sign for", permanent=True)
        try:
            headers = self._vapid_headers(audience)
        except VapidException as error:  # a claim the signer refuses: the operator's to fix
            return Result(f"push not signed: {error}", permanent=True)
        headers.update(
            {
                "TTL": str(self._settings.ttl_seconds),
                "Urgency": "normal",
                "Topic": outgoing.delivery.id.replace("-", "")[:32],
                "Content-Encoding": "aes128gcm",
                "Content-Type": "application/octet-stream",
            }
        )
        return await self._post(endpoint, body, headers)

    async def _post(self, endpoint: str, body: bytes, headers: dict[str, str]) -> Result:
        assert self._session is not None, "open() the sender first"
        status = await post_status(self._session, endpoint, body, headers, what="push service")
        if isinstance(status, Result):
            return status
        if status in (200, 201, 202):
            return Result()
        if status in (404, 410):
            return Result(f"push subscription gone (HTTP {status})", permanent=True, gone=True)
        return Result(f"push service HTTP {status}", permanent=not (status in _RETRIED or status >= 500))

    def _vapid_headers(self, audience: str) -> dict[str, str]:
        """``Authorization: vapid t=<JWT>, k=<public key>`` for the push service at `audience`."""
        claims = {
            "aud": audience,
            "sub": self._settings.subject,
            "exp": int(time.time()) + _VAPID_LIFETIME_SECONDS,
        }
        return dict(self._vapid.sign(claims))
