"""A local Twilio Messages API on 127.0.0.1, held to Twilio's published OpenAPI document for
API v2010 (``../shared/providers/twilio/twilio_api_v2010.json``): every message it is asked to
create is validated against the document's request schema, every message it answers with is
the document's own example, filled in, and validated against its response schema (the document
declares only the 201; error answers take Twilio's documented shape: code, message, more_info,
status). What does not fit is recorded in `violations`, which tests assert empty.

State: messages by SID; numbers that answered STOP (a send to one is error 21610, as Twilio
refuses it). It also makes Twilio's callbacks: `status` (a message's status changed) and
`inbound` (a text from a number), form-encoded and signed with ``X-Twilio-Signature`` by
Twilio's own SDK (`twilio.request_validator.RequestValidator`), to post wherever the test sends
them.
"""

from __future__ import annotations

import base64
import copy
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from twilio.request_validator import RequestValidator

from tests.support.local_api import StateServer, send_json, serving
from tests.support.openapi_contract import Contract

__all__ = ["ACCOUNT_SID", "AUTH_TOKEN", "SENDER", "LocalTwilio", "local_twilio"]

SPEC = Path(__file__).resolve().parents[3] / "shared" / "providers" / "twilio" / "twilio_api_v2010.json"
ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "polyservice-local-twilio-token"
SENDER = "+15005550006"
_MESSAGES = "/2010-04-01/Accounts/{AccountSid}/Messages.json"


@dataclass
class LocalTwilio:
    port: int = 0
    contract: Contract | None = None
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)
    refused: set[str] = field(default_factory=set)
    """Numbers that answered STOP: sends to them are error 21610."""
    violations: list[str] = field(default_factory=list)
    failures: int = 0
    """The next this many sends get 500."""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def to(self, number: str) -> list[dict[str, Any]]:
        return [m for m in self.messages.values() if m["to"] == number]

    @staticmethod
    def signed(url: str, params: dict[str, str]) -> tuple[bytes, dict[str, str]]:
        """A callback to `url`, as Twilio posts it: the form body and its headers."""
        signature = RequestValidator(AUTH_TOKEN).compute_signature(url, params)
        return urlencode(params).encode(), {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": signature,
        }

    def status(self, url: str, sid: str, status: str, error_code: str = "") -> tuple[bytes, dict[str, str]]:
        """The status callback of message `sid` becoming `status`."""
        message = self.messages[sid]
        message["status"] = status
        params = {
            "AccountSid": ACCOUNT_SID,
            "MessageSid": sid,
            "SmsSid": sid,
            "MessageStatus": status,
            "SmsStatus": status,
            "To": message["to"],
            "From": message["from"],
            "ApiVersion": "2010-04-01",
        }
        if error_code:
            params["ErrorCode"] = error_code
        return self.signed(url, params)

    def inbound(self, url: str, sender: str, body: str) -> tuple[bytes, dict[str, str]]:
        """A text `sender` sent to our number; STOP and START change what it accepts."""
        word = body.strip().upper()
        if word in ("STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"):
            self.refused.add(sender)
        elif word in ("START", "UNSTOP", "YES"):
            self.refused.discard(sender)
        params = {
            "AccountSid": ACCOUNT_SID,
            "MessageSid": "SM" + secrets.token_hex(16),
            "From": sender,
            "To": SENDER,
            "Body": body,
            "NumMedia": "0",
            "SmsStatus": "received",
            "ApiVersion": "2010-04-01",
        }
        return self.signed(url, params)

    def _create(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        assert self.contract is not None
        to = form.get("To", "")
        if to in self.refused:
            return 400, _error(21610, "Attempt to send to unsubscribed recipient")
        example = self.contract.document["paths"][_MESSAGES]["post"]["responses"]["201"]["content"][
            "application/json"
        ]["examples"]["create"]["value"]
        sid = "SM" + secrets.token_hex(16)
        now = formatdate(usegmt=True).replace("GMT", "+0000")
        message = copy.deepcopy(example)
        message.update(
            sid=sid,
            account_sid=ACCOUNT_SID,
            to=to,
            body=form.get("Body", ""),
            status="queued",
            date_created=now,
            date_updated=now,
            date_sent=None,
            direction="outbound-api",
            error_code=None,
            error_message=None,
            uri=f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{sid}.json",
        )
        message["from"] = form.get("From") or SENDER
        message["messaging_service_sid"] = form.get("MessagingServiceSid") or None
        message["subresource_uris"] = {
            "media": f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{sid}/Media.json"
        }
        self.messages[sid] = message
        return 201, message


def _error(code: int, message: str, status: int = 400) -> dict[str, Any]:
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


class _Handler(BaseHTTPRequestHandler):
    server: StateServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def do_POST(self) -> None:
        state = self.server.state
        path = urlsplit(self.path).path
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        form = dict(parse_qsl(raw.decode(), keep_blank_values=True))
        credentials = base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
        if self.headers.get("Authorization") != f"Basic {credentials}":
            self._send(401, _error(20003, "Authenticate", 401))
            return
        assert state.contract is not None
        with state._lock:
            if path != f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json":
                state.violations.append(f"POST {path}: not an endpoint the sender should call")
                self._send(404, _error(20404, "The requested resource was not found", 404))
                return
            problems = state.contract.request_problems(
                "POST", path, {k.lower(): v for k, v in self.headers.items()}, form
            )
            if problems:
                state.violations += problems
                self._send(400, _error(21601, problems[0][:200]))
                return
            if state.failures:
                state.failures -= 1
                self._send(500, _error(20500, "Internal Server Error", 500))
                return
            status, answer = state._create(form)
            if status == 201:
                state.violations += state.contract.answer_problems("POST", path, status, answer)
        self._send(status, answer)

    def _send(self, status: int, payload: Any) -> None:
        send_json(self, status, payload)


@contextmanager
def local_twilio() -> Iterator[LocalTwilio]:
    """A running local Twilio Messages API; its state, for the test to steer and inspect."""
    with serving(
        _Handler, lambda port: LocalTwilio(port=port, contract=Contract(SPEC)), "local-twilio"
    ) as state:
        yield state
