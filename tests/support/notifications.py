"""Real receivers for the notifications service's tests: an SMTP server and a webhook endpoint.

`Mailbox` is an aiosmtpd server on 127.0.0.1 that keeps every accepted message and can be told
to answer a recipient with SMTP errors (``451`` for a while, ``550`` for good). `WebhookReceiver`
is an aiohttp server on 127.0.0.1 that verifies each request's Standard-Webhooks signature
with the secret registered for its path and answers with the statuses it was told to.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiohttp import web
from aiosmtpd.controller import Controller
from google.protobuf.message import Message

from poly.events.v1 import event_sink_pb2, event_sink_pb2_grpc
from poly.events.v1.events_pb2 import EventEnvelope
from tests.support.env import free_port
from tests.support.identity import Deployment

__all__ = ["Mailbox", "WebhookCall", "WebhookReceiver", "sink_order_event", "verify"]


class _Handler:
    def __init__(self, mailbox: Mailbox) -> None:
        self._mailbox = mailbox

    async def handle_RCPT(  # noqa: N802 - aiosmtpd hook name
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        refusal = self._mailbox.take_failure(address, "RCPT")
        if refusal:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        for address in envelope.rcpt_tos:
            refusal = self._mailbox.take_failure(address, "DATA")
            if refusal:
                return refusal
        parsed = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        with self._mailbox.lock:
            self._mailbox.messages.append(parsed)
        return "250 Message accepted for delivery"


class Mailbox:
    def __init__(self) -> None:
        self.port = free_port()
        self.messages: list[EmailMessage] = []
        self.lock = threading.Lock()
        self._failures: dict[tuple[str, str], list[str]] = {}
        self._controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port)

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()

    def fail(self, address: str, reply: str, *, times: int, stage: str = "DATA") -> None:
        """Answer `address` with `reply` (e.g. ``"451 4.3.0 try later"``) the next `times` times."""
        with self.lock:
            self._failures[(address.lower(), stage)] = [reply] * times

    def take_failure(self, address: str, stage: str) -> str | None:
        with self.lock:
            pending = self._failures.get((address.lower(), stage))
            return pending.pop(0) if pending else None

    def to(self, address: str) -> list[EmailMessage]:
        with self.lock:
            return [m for m in self.messages if m["To"] == address]


@dataclass
class WebhookCall:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def verify(secret: str, headers: dict[str, str], body: bytes, *, tolerance: float = 300) -> bool:
    """Standard Webhooks verification, as a receiver would do it."""
    message_id, stamp = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "0")
    if abs(time.time() - int(stamp)) > tolerance:
        return False
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = base64.b64encode(
        hmac.new(key, f"{message_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    )
    given = [s.split(",", 1)[1] for s in headers.get("webhook-signature", "").split() if s.startswith("v1,")]
    return any(hmac.compare_digest(expected.decode(), g) for g in given)


@dataclass
class WebhookReceiver:
    port: int = field(default_factory=free_port)
    calls: list[WebhookCall] = field(default_factory=list)
    secrets: dict[str, str] = field(default_factory=dict)
    statuses: dict[str, list[int]] = field(default_factory=dict)
    holds: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def answer(self, path: str, *statuses: int) -> None:
        """Reply to the next requests on `path` with `statuses`, then 204."""
        with self.lock:
            self.statuses[path] = list(statuses)

    def hold(self, path: str, seconds: float) -> None:
        """Keep the next request on `path` waiting `seconds` before answering."""
        with self.lock:
            self.holds[path] = seconds

    def on(self, path: str) -> list[WebhookCall]:
        with self.lock:
            return [c for c in self.calls if c.path == path]

    async def _handle(self, request: web.Request) -> web.Response:
        path = request.match_info["path"]
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        with self.lock:
            secret = self.secrets.get(path, "")
            self.calls.append(
                WebhookCall(path, headers, body, bool(secret) and verify(secret, headers, body))
            )
            pending = self.statuses.get(path)
            status = pending.pop(0) if pending else 204
            held = self.holds.pop(path, 0.0)
        if held:
            await asyncio.sleep(held)  # a slow receiver: the sender is left waiting
        return web.Response(status=status)

    def start(self) -> None:
        ready = threading.Event()

        async def serve() -> None:
            app = web.Application()
            app.router.add_post("/{path}", self._handle)
            self._runner = web.AppRunner(app)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
            ready.set()

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(serve(), self._loop)
        assert ready.wait(10), "the webhook receiver did not start"

    def stop(self) -> None:
        if self._loop is None:
            return
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)


def sink_order_event(
    deployment: Deployment, payload: Message, event_id: str | None = None
) -> tuple[str, int]:
    """Push an orders event (it has an ``order``) into the notifications sink over mTLS with the
    orders certificate, as the orders relay does; its id and the sink's outcome."""
    envelope = EventEnvelope(
        id=event_id or str(uuid.uuid4()),
        type=payload.DESCRIPTOR.full_name,
        aggregate_id=payload.order,
        sequence=1,
        source="orders",
        schema_version=1,
    )
    envelope.occur_time.FromDatetime(dt.datetime.now(dt.UTC))
    envelope.payload.Pack(payload)
    stub = event_sink_pb2_grpc.EventSinkServiceStub(deployment.channel("notifications", as_="orders"))
    reply = stub.PushEvent(event_sink_pb2.PushEventRequest(event=envelope), timeout=10)
    return envelope.id, reply.outcome
