"""What Twilio reports about text messages (`report`), verified before it is used.

Twilio signs each callback with ``X-Twilio-Signature``: base64 of an HMAC-SHA1, keyed by the
auth token, over the URL it called followed by every POST parameter sorted by name, name and
value concatenated (Twilio's documented scheme). A report whose signature does not match, or
that is for another account, is refused before anything in it is used. A status callback says
what became of a message; an inbound text of STOP (or a synonym) opts its number out of every
text, START back in (carriers and Twilio honour the same words).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl

from services.notifications.settings import TwilioSettings

__all__ = [
    "OPTED_OUT",
    "OPT_IN_WORDS",
    "OPT_OUT_WORDS",
    "ReportRefused",
    "SmsReport",
    "report",
    "twilio_signature",
]

OPTED_OUT = 21610
"""Twilio's error for a number that answered STOP: it takes no more texts from this sender."""
OPT_OUT_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT", "REVOKE"})
OPT_IN_WORDS = frozenset({"START", "UNSTOP", "YES", "OPTIN"})
_FINAL_FAILURES = ("failed", "undelivered")


def twilio_signature(auth_token: str, url: str, params: Sequence[tuple[str, str]]) -> str:
    """What Twilio puts in ``X-Twilio-Signature`` for a form POST of `params` to `url`."""
    signed = url + "".join(name + value for name, value in sorted(params))
    return base64.b64encode(hmac.new(auth_token.encode(), signed.encode(), hashlib.sha1).digest()).decode()


@dataclass(frozen=True, slots=True)
class SmsReport:
    """A verified report from Twilio."""

    message: str = ""
    """The message SID a status callback is about ("" for an inbound text)."""
    failed: str = ""
    """Why the message failed for good ("" while it is on its way or delivered)."""
    opt_out: str = ""
    """A number that opted out (answered STOP, or is refused as such)."""
    opt_in: str = ""
    """A number that opted back in (START)."""


class ReportRefused(Exception):
    """The report's signature is missing or wrong: nothing in it is used."""


def report(settings: TwilioSettings, headers: Mapping[str, str], body: bytes) -> SmsReport:
    """The report in `body` (form-encoded), once its signature checks out."""
    try:
        params = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body))
    except (UnicodeDecodeError, ValueError) as error:
        raise ReportRefused("not a form body") from error
    given = headers.get("x-twilio-signature", "")
    expected = twilio_signature(settings.auth_token, settings.callback_url, params)
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise ReportRefused("X-Twilio-Signature does not match")
    fields = dict(params)
    if fields.get("AccountSid") != settings.account_sid:
        raise ReportRefused("a report for another account")
    status = fields.get("MessageStatus", "")
    if status:  # a status callback
        failed = ""
        if status in _FINAL_FAILURES:
            failed = f"Twilio {status}: error {fields.get('ErrorCode') or 'unknown'}"
        opted_out = fields.get("To", "") if fields.get("ErrorCode") == str(OPTED_OUT) else ""
        return SmsReport(message=fields.get("MessageSid", ""), failed=failed, opt_out=opted_out)
    # "Stop.", "stop all", "Opt-out": letters only, as carriers read them.
    word = re.sub(r"[^A-Z]", "", fields.get("Body", "").upper())
    sender = fields.get("From", "")
    if word in OPT_OUT_WORDS:
        return SmsReport(opt_out=sender)
    if word in OPT_IN_WORDS:
        return SmsReport(opt_in=sender)
    return SmsReport()
