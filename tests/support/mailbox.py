"""A real SMTP server on 127.0.0.1 (aiosmtpd) that keeps every message it accepts."""

from __future__ import annotations

import email
import email.policy
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from typing import Any

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
        self.raw: list[bytes] = []
        """The DATA of each accepted message as it came (line endings included)."""
        self.secured: list[tuple[bool, bool]] = []
        """Per accepted message: whether it came over TLS, and on an authenticated session."""
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
            raw = envelope.original_content
            self.raw.append(raw if isinstance(raw, bytes) else b"")
            # session.ssl is set by STARTTLS only; a session over TLS from the start shows on its transport.
            transport = server.transport
            over_tls = transport is not None and transport.get_extra_info("ssl_object") is not None
            tls = session.ssl is not None or over_tls
            self.secured.append((tls, bool(session.authenticated)))
        return self.reply

    @property
    def messages(self) -> list[EmailMessage]:
        with self._lock:
            return list(self._messages)

    def to(self, address: str) -> list[EmailMessage]:
        """Messages whose To header names `address`."""
        return [m for m in self.messages if address in str(m.get("To", ""))]


@contextmanager
def mailbox(*, idle_timeout: float = 300.0, **server: Any) -> Iterator[Mailbox]:
    """A running mailbox; it drops a client connection idle for `idle_timeout` seconds.
    `server`: aiosmtpd's options (``ssl_context`` for TLS from the start; ``tls_context``,
    ``require_starttls``, ``authenticator``, ``auth_require_tls`` for STARTTLS and AUTH)."""
    box = Mailbox()
    box.port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=box.port, timeout=idle_timeout, **server)
    controller.start()
    try:
        yield box
    finally:
        controller.stop()
