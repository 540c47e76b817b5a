"""The notifications service's own settings: where email goes, how deliveries are retried.

`read` takes them from the environment with the kit's `config.Reader` (so their problems are
reported with the kit's, together); `kit.app.run` calls it and hands the result to the
service's `wire` as ``context.service_settings``. The README's configuration table documents
each variable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email.utils import getaddresses
from pathlib import Path
from typing import TYPE_CHECKING

from services.kit.text import is_e164
from services.kit.urls import is_https_or_loopback

if TYPE_CHECKING:  # types only: the domain imports these settings, and knows no kit config
    from services.kit.config import Reader, Settings

__all__ = ["NotificationsSettings", "PushSettings", "SmtpSettings", "TwilioSettings", "read"]


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    """Where the notifications service sends email."""

    host: str = "localhost"
    port: int = 1025
    security: str = "none"
    """``none`` (plain SMTP), ``starttls`` (upgrade after connecting) or ``tls`` (implicit TLS)."""
    username: str = ""
    password: str = field(default="", repr=False)
    sender: str = "Polyservice <no-reply@poly.local>"
    timeout_seconds: float = 10.0
    ca_file: Path | None = None
    """CA bundle that verifies the SMTP server's certificate; None means the system store."""


@dataclass(frozen=True, slots=True)
class TwilioSettings:
    """Where text messages go: Twilio's Messages API. Unset account: no texts are sent."""

    account_sid: str = ""
    auth_token: str = field(default="", repr=False)
    """Signs Twilio's callbacks too (`X-Twilio-Signature`): never logged."""
    sender: str = ""
    """The From number (E.164), or a Messaging Service (``MG…``) that picks one."""
    callback_url: str = ""
    """The public URL of the edge's ``/v1/channels/sms/events``: Twilio signs with it."""
    api_base: str = "https://api.twilio.com"
    timeout_seconds: float = 10.0
    per_recipient_per_hour: int = 5
    """Texts one number may get in an hour; more wait (a runaway loop, or an attack, costs
    money and annoys people)."""

    @property
    def enabled(self) -> bool:
        return bool(self.account_sid)


@dataclass(frozen=True, slots=True)
class PushSettings:
    """How Web Push messages are sent. Unset key: no pushes are sent, and no subscription can
    be registered."""

    vapid_private_key: str = field(default="", repr=False)
    """The VAPID signing key (`push_keys.vapid_private_key` reads it): never logged."""
    subject: str = ""
    """The VAPID ``sub`` claim: a ``mailto:`` or ``https:`` contact for push services."""
    ttl_seconds: int = 86400
    """How long a push service keeps a message for a browser that is offline (RFC 8030 TTL)."""
    timeout_seconds: float = 10.0

    @property
    def enabled(self) -> bool:
        return bool(self.vapid_private_key)


@dataclass(frozen=True, slots=True)
class NotificationsSettings:
    """How notifications are delivered and retried."""

    smtp: SmtpSettings = SmtpSettings()
    max_attempts: int = 8
    retry_base_seconds: float = 2.0
    """Delay before the second attempt; it doubles per attempt (with jitter) up to the maximum."""
    retry_max_seconds: float = 600.0
    webhook_timeout_seconds: float = 5.0
    webhook_allow_private: bool = False
    """Allow webhook URLs on loopback and private networks, and plain http (development only:
    otherwise any user could make the service call internal addresses)."""
    concurrency: int = 32
    """Deliveries in flight at once."""
    twilio: TwilioSettings = TwilioSettings()
    push: PushSettings = PushSettings()


def read(env: Reader, settings: Settings | None = None) -> NotificationsSettings:
    smtp = SmtpSettings(
        host=env.text("POLY_SMTP_HOST", "localhost"),
        port=env.integer("POLY_SMTP_PORT", 1025, low=1, high=65535),
        security=env.text("POLY_SMTP_SECURITY", "none").lower(),
        username=env.secret("POLY_SMTP_USERNAME"),
        password=env.secret("POLY_SMTP_PASSWORD"),
        sender=env.text("POLY_SMTP_FROM", "Polyservice <no-reply@poly.local>"),
        timeout_seconds=env.number("POLY_SMTP_TIMEOUT_SECONDS", 10.0, low=0.1, high=300.0),
        ca_file=Path(ca) if (ca := env.optional("POLY_SMTP_CA_FILE")) else None,
    )
    if smtp.security not in ("none", "starttls", "tls"):
        env.problems.append(f"POLY_SMTP_SECURITY: expected none, starttls or tls, got {smtp.security!r}")
    if bool(smtp.username) != bool(smtp.password):
        env.problems.append("POLY_SMTP_USERNAME and POLY_SMTP_PASSWORD: set both or neither")
    if (problem := _sender_problem(smtp.sender)) is not None:
        env.problems.append(f"POLY_SMTP_FROM: {problem}")
    return NotificationsSettings(
        smtp=smtp,
        max_attempts=env.integer("POLY_NOTIFICATIONS_MAX_ATTEMPTS", 8, low=1, high=100),
        retry_base_seconds=env.number("POLY_NOTIFICATIONS_RETRY_BASE_SECONDS", 2.0, low=0.01, high=3600.0),
        retry_max_seconds=env.number("POLY_NOTIFICATIONS_RETRY_MAX_SECONDS", 600.0, low=0.01, high=86400.0),
        webhook_timeout_seconds=env.number("POLY_WEBHOOK_TIMEOUT_SECONDS", 5.0, low=0.1, high=120.0),
        webhook_allow_private=env.flag("POLY_WEBHOOK_ALLOW_PRIVATE", False),
        concurrency=env.integer("POLY_NOTIFICATIONS_CONCURRENCY", 32, low=1, high=1000),
        twilio=_twilio(env),
        push=_push(env),
    )


_SERVICE_SID = re.compile(r"MG[0-9a-fA-F]{32}")


def _twilio(env: Reader) -> TwilioSettings:
    twilio = TwilioSettings(
        account_sid=env.optional("POLY_TWILIO_ACCOUNT_SID"),
        auth_token=env.secret("POLY_TWILIO_AUTH_TOKEN"),
        sender=env.optional("POLY_TWILIO_FROM"),
        callback_url=env.optional("POLY_TWILIO_CALLBACK_URL"),
        api_base=env.text("POLY_TWILIO_API_BASE", "https://api.twilio.com").rstrip("/"),
        timeout_seconds=env.number("POLY_TWILIO_TIMEOUT_SECONDS", 10.0, low=0.1, high=120.0),
        per_recipient_per_hour=env.integer("POLY_SMS_PER_RECIPIENT_PER_HOUR", 5, low=1, high=1000),
    )
    if not twilio.enabled:
        return twilio
    if not re.fullmatch(r"AC[0-9a-fA-F]{32}", twilio.account_sid):
        env.problems.append("POLY_TWILIO_ACCOUNT_SID: expected AC followed by 32 hex digits")
    if not twilio.auth_token:
        env.problems.append("POLY_TWILIO_AUTH_TOKEN: required with POLY_TWILIO_ACCOUNT_SID")
    if not (is_e164(twilio.sender) or _SERVICE_SID.fullmatch(twilio.sender)):
        env.problems.append("POLY_TWILIO_FROM: expected an E.164 number or a Messaging Service SID (MG…)")
    for name, url, public in (
        ("POLY_TWILIO_CALLBACK_URL", twilio.callback_url, True),
        ("POLY_TWILIO_API_BASE", twilio.api_base, False),
    ):
        if not is_https_or_loopback(url):
            what = "the public https URL of the edge's /v1/channels/sms/events" if public else "an https URL"
            env.problems.append(f"{name}: expected {what} (http only to this host), got {url!r}")
    return twilio


def _push(env: Reader) -> PushSettings:
    push = PushSettings(
        vapid_private_key=env.secret("POLY_PUSH_VAPID_PRIVATE_KEY"),
        subject=env.optional("POLY_PUSH_VAPID_SUBJECT"),
        ttl_seconds=env.integer("POLY_PUSH_TTL_SECONDS", 86400, low=0, high=28 * 86400),
        timeout_seconds=env.number("POLY_PUSH_TIMEOUT_SECONDS", 10.0, low=0.1, high=120.0),
    )
    if not push.enabled:
        return push
    # Only now: the launcher reads every service's settings and loads no cryptography for them.
    from services.notifications.push_keys import subject_problem, vapid_private_key  # noqa: PLC0415

    try:
        vapid_private_key(push.vapid_private_key)
    except ValueError:  # its text is a secret: never quoted
        env.problems.append(
            "POLY_PUSH_VAPID_PRIVATE_KEY: expected a P-256 private key, as base64url of its 32 bytes or PEM"
        )
    if (problem := subject_problem(push.subject)) is not None:
        env.problems.append(f"POLY_PUSH_VAPID_SUBJECT: {problem}")
    return push


HEADER_BREAKS = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029]")
"""Control characters and line breaks (Unicode's too): none belongs in an email header."""


def _sender_problem(sender: str) -> str | None:
    """Why `sender` is not one From address (``Name <user@example.com>`` or a bare address):
    a display name with an unquoted comma would otherwise lose the address at send time."""
    found = getaddresses([sender])
    shown = repr(sender)
    if HEADER_BREAKS.search(sender):
        return f"a control character or line break in {shown}"
    if len(found) != 1 or "@" not in found[0][1] or " " in found[0][1]:
        return f"expected one address like 'Name <user@example.com>' (quote a name with a comma), got {shown}"
    return None
