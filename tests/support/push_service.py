"""A Web Push service on 127.0.0.1 (RFC 8030) that is also the browsers subscribed to it: the
test's stand-in for FCM or Mozilla's autopush, held to the RFCs rather than to our code.

`subscribe()` is what ``PushManager.subscribe()`` does in a browser: a fresh P-256 key pair and
16-byte auth secret, kept here, and the subscription as ``PushSubscription.toJSON()`` gives it.
Each message POSTed to a subscription's endpoint is checked as a push service and a browser
check it, and anything that does not hold is recorded in `violations` (tests assert it empty):

- RFC 8292 (VAPID): ``Authorization: vapid t=<JWT>, k=<key>``; ``k`` is the application server
  key the browser subscribed with; the JWT is ES256, signed by ``k``, its ``aud`` the endpoint's
  origin, its ``exp`` in the future and at most 24 hours away, its ``sub`` a mailto: or https:
  contact.
- RFC 8030: a ``TTL`` header of non-negative seconds; ``Urgency`` and ``Topic`` well-formed if
  present.
- RFC 8291/8188: ``Content-Encoding: aes128gcm``, and the body decrypts with the browser's
  private key and auth secret (`http_ece`, as browsers' own code does). A message that cannot
  be decrypted is a violation.

What is decrypted is kept in `messages`. A subscription can be made to answer 410 (`gone`: the
browser unsubscribed) or a series of statuses first (`answers`); an unknown endpoint is 404.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import http_ece
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.local_api import StateServer, serving

__all__ = ["Browser", "LocalPushService", "PushMessage", "local_push_service"]

_AUTHORIZATION = re.compile(r"vapid t=([A-Za-z0-9_.-]+),\s*k=([A-Za-z0-9_-]+)")
_TOPIC = re.compile(r"[A-Za-z0-9_-]{1,32}")
_SUBJECT = re.compile(r"mailto:[^@\s]+@[\w-]+(\.[\w-]+)+|https://[\w-]+(\.[\w-]+)+(:\d+)?")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Browser:
    """One subscribed browser: its keys, and the subscription it would send its server."""

    token: str
    endpoint: str
    private_key: ec.EllipticCurvePrivateKey
    auth: bytes

    @property
    def p256dh(self) -> str:
        point = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return _b64(point)

    def decrypt(self, body: bytes) -> bytes:
        """What a browser reads from an ``aes128gcm`` push message (RFC 8291/8188)."""
        return bytes(
            http_ece.decrypt(body, private_key=self.private_key, auth_secret=self.auth, version="aes128gcm")
        )

    def subscription(self) -> dict[str, Any]:
        """``PushSubscription.toJSON()``, as a browser posts it to its server."""
        return {
            "endpoint": self.endpoint,
            "expirationTime": None,
            "keys": {"p256dh": self.p256dh, "auth": _b64(self.auth)},
        }


@dataclass(frozen=True)
class PushMessage:
    token: str
    payload: dict[str, Any]
    headers: dict[str, str]


@dataclass
class LocalPushService:
    port: int = 0
    application_server_key: str = ""
    """The VAPID public key browsers subscribed with: every message must be signed by it."""
    browsers: dict[str, Browser] = field(default_factory=dict)
    messages: list[PushMessage] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    gone: set[str] = field(default_factory=set)
    answers: dict[str, list[int]] = field(default_factory=dict)
    """Statuses a subscription answers with, in turn, before it accepts messages."""
    received: int = 0
    """Requests received, accepted or not."""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def subscribe(self) -> Browser:
        token = secrets.token_urlsafe(24)
        browser = Browser(
            token,
            f"{self.origin}/push/{token}",
            ec.generate_private_key(ec.SECP256R1()),
            secrets.token_bytes(16),
        )
        with self._lock:
            self.browsers[token] = browser
        return browser

    def to(self, browser: Browser) -> list[dict[str, Any]]:
        """The payloads `browser` decrypted, in order."""
        with self._lock:
            return [m.payload for m in self.messages if m.token == browser.token]

    def receive(self, token: str, headers: dict[str, str], body: bytes) -> int:
        """One POST to ``/push/{token}``: the status to answer."""
        with self._lock:
            self.received += 1
            browser = self.browsers.get(token)
            if browser is None:
                return 404
            if token in self.gone:
                return 410
            queued = self.answers.get(token)
            if queued:
                return queued.pop(0)
        problems = self._vapid_problems(headers) + self._header_problems(headers)
        if len(body) > 4096:
            problems.append(
                f"a {len(body)}-byte message: push services take at most 4096 (RFC 8291 section 4)"
            )
        payload: dict[str, Any] | None = None
        try:
            payload = json.loads(browser.decrypt(body))
        except Exception as error:
            problems.append(f"the message does not decrypt for the browser: {type(error).__name__}: {error}")
        with self._lock:
            self.violations += problems
            if problems or payload is None:
                return 400
            self.messages.append(PushMessage(token, payload, headers))
        return 201

    def _vapid_problems(self, headers: dict[str, str]) -> list[str]:
        found = _AUTHORIZATION.fullmatch(headers.get("authorization", ""))
        if found is None:
            return [f"no VAPID Authorization header: {headers.get('authorization', '')[:20]!r}"]
        token, key = found.groups()
        if key != self.application_server_key:
            return ["k= is not the application server key the browser subscribed with"]
        public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), _unb64(key))
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(
                token,
                public,
                algorithms=["ES256"],
                audience=self.origin,
                options={"require": ["exp", "aud", "sub"]},
            )
        except jwt.PyJWTError as error:
            return [f"the VAPID JWT does not verify: {error}"]
        problems = []
        if header.get("typ", "JWT").upper() != "JWT":
            problems.append(f"JWT typ {header.get('typ')!r}")
        if int(claims["exp"]) > time.time() + 24 * 3600:
            problems.append("the VAPID JWT expires more than 24 hours from now (RFC 8292 section 2)")
        if not _SUBJECT.fullmatch(str(claims["sub"])):
            problems.append(f"the VAPID sub is not a mailto: or https: contact: {claims['sub']!r}")
        return problems

    @staticmethod
    def _header_problems(headers: dict[str, str]) -> list[str]:
        problems = []
        if not headers.get("ttl", "").isdigit():
            problems.append(f"TTL is not a number of seconds: {headers.get('ttl')!r}")
        if headers.get("content-encoding") != "aes128gcm":
            problems.append(f"Content-Encoding is {headers.get('content-encoding')!r}, not aes128gcm")
        if headers.get("urgency", "normal") not in ("very-low", "low", "normal", "high"):
            problems.append(f"Urgency {headers.get('urgency')!r}")
        if "topic" in headers and not _TOPIC.fullmatch(headers["topic"]):
            problems.append(f"Topic is not at most 32 base64url characters: {headers['topic']!r}")
        return problems


class _Handler(BaseHTTPRequestHandler):
    server: StateServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        service: LocalPushService = self.server.state
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        token = self.path.removeprefix("/push/") if self.path.startswith("/push/") else ""
        headers = {name.lower(): value for name, value in self.headers.items()}
        status = service.receive(token, headers, body)
        self.send_response(status)
        if status == 201:
            self.send_header("Location", f"{service.origin}/message/{secrets.token_urlsafe(8)}")
        self.send_header("Content-Length", "0")
        self.end_headers()


@contextmanager
def local_push_service(application_server_key: str) -> Iterator[LocalPushService]:
    with serving(
        _Handler, lambda port: LocalPushService(port, application_server_key), "local-push-service"
    ) as service:
        yield service
