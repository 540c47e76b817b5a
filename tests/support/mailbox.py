"""A real SMTP server on 127.0.0.1 (aiosmtpd) that keeps every message it accepts."""

from __future__ import annotations

import email
import email.policy
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.support.env import free_port

__all__ = ["Mailbox", "mailbox"]


class Mailbox:
    """Accepted messages, parsed; ``reply`` is what the server answers to DATA ("250 OK")."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._messages: list[EmailMessage] = []
        self.peers: list[object] = []
        """The client address of each accepted message (one per connection it came on)."""
        self.port = 0
        self.reply = "250 Message accepted for delivery"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802 - aiosmtpd hook name
        if not self.reply.startswith("250"):
            return self.reply
        content = envelope.content if isinstance(envelope.content, bytes) else b""
        parsed = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        with self._lock:
            self._messages.append(parsed)
            self.peers.append(session.peer)
        return self.reply

    @property
    def messages(self) -> list[EmailMessage]:
        with self._lock:
            return list(self._messages)

    def to(self, address: str) -> list[EmailMessage]:
        """Messages whose To header names `address`."""
        return [m for m in self.messages if address in str(m.get("To", ""))]


@contextmanager
def mailbox(*, idle_timeout: float = 300.0) -> Iterator[Mailbox]:
    """A running mailbox; it drops a client connection idle for `idle_timeout` seconds."""
    box = Mailbox()
    box.port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=box.port, timeout=idle_timeout)
    controller.start()
    try:
        yield box
    finally:
        controller.stop()
