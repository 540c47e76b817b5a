"""The development mailbox `poly up` runs: a real SMTP server on localhost that keeps mail.

Every message the notifications service sends lands as an ``.eml`` file in
``$POLY_HOME/mail/`` and as one line in `poly up`'s output, so a fresh checkout shows
its emails without a mail server. It runs only when SMTP points at this machine without
TLS or credentials (the defaults); real deployments set ``POLY_SMTP_*`` and get none.
"""

from __future__ import annotations

import email
import email.policy
import itertools
from collections.abc import Callable
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from services.notifications.settings import SmtpSettings

__all__ = ["DevMailbox", "wanted"]

_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}


def wanted(smtp: SmtpSettings) -> bool:
    """True when SMTP is the development default: this machine, plain, no credentials."""
    return smtp.host in _LOCAL_HOSTS and smtp.security == "none" and not smtp.username


class _Keeper:
    def __init__(self, directory: Path, announce: Callable[[str], None]) -> None:
        self._directory = directory
        self._announce = announce
        self._numbers = itertools.count(1)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802 - aiosmtpd hook
        content = envelope.content if isinstance(envelope.content, bytes) else b""
        parsed = email.message_from_bytes(content, policy=email.policy.default)
        path = self._directory / f"{next(self._numbers):05d}.eml"
        path.write_bytes(content)
        self._announce(f"to {', '.join(envelope.rcpt_tos)}  {parsed.get('Subject', '')!s}  -> {path}")
        return "250 Message accepted for delivery"


class DevMailbox:
    """An aiosmtpd server on `host`:`port` writing each message into `directory`."""

    def __init__(self, directory: Path, host: str, port: int, announce: Callable[[str], None]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._controller = Controller(_Keeper(directory, announce), hostname=host, port=port)

    def start(self) -> None:
        """Raises OSError when the port is taken (another mailbox, or a real server)."""
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()
