"""Text messages through Twilio's Messages API, in plain HTTP with aiohttp like the webhooks:
one pooled client in the dispatcher's loop (what Twilio reports back: `sms_reports`).

``POST /2010-04-01/Accounts/{sid}/Messages.json`` (form: To, From or MessagingServiceSid,
Body, StatusCallback) with the account's basic credentials. Twilio's answer sorts the outcome:
201 is sent (its message SID kept with the delivery), 429 and 5xx are worth retrying, 21610
(the number answered STOP) and other 4xx are final.
"""

from __future__ import annotations

import aiohttp

from services.notifications.domain import Outgoing
from services.notifications.senders import Result
from services.notifications.settings import TwilioSettings
from services.notifications.sms_reports import OPTED_OUT

__all__ = ["SmsSender"]


class SmsSender:
    """Sends a delivery's text through Twilio; open it inside the event loop."""

    def __init__(self, settings: TwilioSettings) -> None:
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._settings.timeout_seconds),
            headers={
                "Authorization": aiohttp.encode_basic_auth(
                    self._settings.account_sid, self._settings.auth_token
                )
            },
            trust_env=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def send(self, outgoing: Outgoing) -> Result:
        assert self._session is not None, "open() the sender first"
        settings = self._settings
        form = {"To": outgoing.delivery.destination, "Body": outgoing.content["text"]}
        form["MessagingServiceSid" if settings.sender.startswith("MG") else "From"] = settings.sender
        if settings.callback_url:
            form["StatusCallback"] = settings.callback_url
        url = f"{settings.api_base}/2010-04-01/Accounts/{settings.account_sid}/Messages.json"
        try:
            async with self._session.post(url, data=form, allow_redirects=False) as response:
                status = response.status
                try:
                    answer = await response.json(content_type=None)
                except (ValueError, aiohttp.ClientError):
                    answer = {}
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            # Asked again later: Twilio takes no idempotency key, so a text whose answer was
            # lost after Twilio made it can go twice (rare; the delivery log shows both).
            return Result(f"Twilio {type(error).__name__}")
        answer = answer if isinstance(answer, dict) else {}
        if status == 201:  # created, even if its answer cannot be read: never sent again
            return Result(reference=str(answer.get("sid", "")))
        code = answer.get("code")
        if status == 429 or status >= 500:
            return Result(f"Twilio HTTP {status}")
        if status in (401, 403):  # the operator's to fix: kept, and asked again later
            return Result(f"Twilio refused the credentials (HTTP {status})")
        return Result(f"Twilio HTTP {status}: error {code}", permanent=True, gone=code == OPTED_OUT)
