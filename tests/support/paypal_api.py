"""A local PayPal REST API on 127.0.0.1 for the payments service's PayPal provider, held to
PayPal's published contract: every request it receives and every answer it sends is validated
against PayPal's own OpenAPI 3 specifications (``../shared/providers/paypal/``: Orders v2,
Payments v2, Webhooks v1) with `openapi_schema_validator`'s OAS 3.0 validators (request bodies
as written by a client, answers as read by one; header and path parameters too). What does
not fit is answered 400 (a request) and recorded in `violations`, which tests assert empty;
error answers are built from the specification's own issue names and descriptions.

State: OAuth 2.0 client-credentials tokens (``/v1/oauth2/token``, which the specifications
leave out: checked by hand), orders paid from a vaulted PayPal wallet (vault ids ``vault_ok``
and ``vault_cannot_pay``), their authorizations, captures and refunds, ``PayPal-Request-Id``
replays, and webhook events signed so that ``verify-webhook-signature`` answers SUCCESS only
for the exact event, transmission and webhook id that were signed. `stall` and `fail` inject
faults as in `tests.support.stripe_api`; `revoke_tokens` makes every issued token expire.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests.support.local_api import StateServer, send_json, serving
from tests.support.openapi_contract import Contract

__all__ = [
    "CLIENT_ID",
    "CLIENT_SECRET",
    "SPECS",
    "WEBHOOK_ID",
    "LocalPayPal",
    "local_paypal",
]

SPECS = Path(__file__).resolve().parents[3] / "shared" / "providers" / "paypal"
CLIENT_ID, CLIENT_SECRET = "polyservice-local-client", "polyservice-local-secret"
WEBHOOK_ID = "WH0POLYSERVICE0LOCAL"
CERT_URL = "https://api.paypal.com/v1/notifications/certs/CERT-360caa42-fca2a594-1d93a270"
_SIGNING_KEY = secrets.token_bytes(32)
"""Stands in for PayPal's private key: only this server can make a signature it verifies."""


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _new_id(length: int = 17) -> str:
    return secrets.token_hex(length)[:length].upper()


@dataclass
class LocalPayPal:
    """The server's state, and what tests inspect and steer."""

    port: int = 0
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    authorizations: dict[str, dict[str, Any]] = field(default_factory=dict)
    captures: dict[str, dict[str, Any]] = field(default_factory=dict)
    refunds: dict[str, dict[str, Any]] = field(default_factory=dict)
    tokens_issued: int = 0
    requests: list[tuple[str, str, Any, str]] = field(default_factory=list)
    """(method, path, body, PayPal-Request-Id) of every API request, in order."""
    violations: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    contracts: list[Contract] = field(default_factory=list)
    _tokens: set[str] = field(default_factory=set)
    _answers: dict[str, tuple[str, Any, int, Any]] = field(default_factory=dict)
    _stalls: dict[str, float] = field(default_factory=dict)
    _failures: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stall(self, path_prefix: str, seconds: float) -> None:
        self._stalls[path_prefix] = seconds

    def fail(self, path_prefix: str, times: int = 1) -> None:
        self._failures[path_prefix] = times

    def revoke_tokens(self) -> None:
        """Every token issued so far stops working (401), as an expired one does."""
        self._tokens.clear()

    def contract(self, path: str) -> Contract | None:
        return next(
            (c for c in self.contracts if c.operation("GET", path) or c.operation("POST", path)), None
        )

    def calls(self, method: str, path_pattern: str) -> list[Any]:
        return [body for m, p, body, _ in self.requests if m == method and re.fullmatch(path_pattern, p)]

    # -- webhooks -----------------------------------------------------------------------

    def emit(self, event_type: str, resource: dict[str, Any]) -> dict[str, Any]:
        event = {
            "id": f"WH-{_new_id(8)}-{_new_id(16)}",
            "create_time": _now(),
            "resource_type": event_type.split(".")[1].lower(),
            "event_type": event_type,
            "summary": f"{event_type} happened",
            "resource": copy.deepcopy(resource),
            "event_version": "1.0",
            "resource_version": "2.0",
            "links": [],
        }
        self.events.append(event)
        return event

    def of_type(self, event_type: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event["event_type"] == event_type]

    @staticmethod
    def signed(
        event: dict[str, Any], *, webhook_id: str = WEBHOOK_ID, at: dt.datetime | None = None
    ) -> tuple[bytes, dict[str, str]]:
        """The body and headers PayPal posts `event` with."""
        body = json.dumps(event).encode()
        transmission_id = f"{_new_id(8)}-{_new_id(4)}-11f0-{_new_id(4)}-{_new_id(12)}".lower()
        stamp = (at or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
        return body, {
            "Content-Type": "application/json",
            "PAYPAL-AUTH-ALGO": "SHA256withRSA",
            "PAYPAL-CERT-URL": CERT_URL,
            "PAYPAL-TRANSMISSION-ID": transmission_id,
            "PAYPAL-TRANSMISSION-SIG": _signature(transmission_id, stamp, webhook_id, event),
            "PAYPAL-TRANSMISSION-TIME": stamp,
        }

    def refund_in_dashboard(self, capture_id: str, amount: str) -> dict[str, Any]:
        with self._lock:
            capture = self.captures[capture_id]
            refund = _refund(
                capture_id, {"currency_code": capture["amount"]["currency_code"], "value": amount}, ""
            )
            self.refunds[refund["id"]] = refund
            whole = float(amount) >= float(capture["amount"]["value"]) - 1e-9
            capture["status"] = "REFUNDED" if whole else "PARTIALLY_REFUNDED"
            return self.emit("PAYMENT.CAPTURE.REFUNDED", refund)

    def capture_in_dashboard(self, authorization_id: str) -> dict[str, Any]:
        with self._lock:
            capture = _capture(self.authorizations[authorization_id])
            self.captures[capture["id"]] = capture
            self.authorizations[authorization_id]["status"] = "CAPTURED"
            return self.emit("PAYMENT.CAPTURE.COMPLETED", capture)


def _signature(transmission_id: str, stamp: str, webhook_id: str, event: Any) -> str:
    """PayPal's scheme's shape (id | time | webhook id | CRC32 of the event), keyed by this
    server's secret instead of PayPal's RSA key: it verifies only what it signed."""
    canonical = json.dumps(event, sort_keys=True, separators=(",", ":")).encode()
    message = f"{transmission_id}|{stamp}|{webhook_id}|{zlib.crc32(canonical)}".encode()
    # Hex, not PayPal's base64: the specification's pattern wants a word character first.
    return hmac.new(_SIGNING_KEY, message, hashlib.sha256).hexdigest()


def _link(href: str, rel: str, method: str = "GET") -> dict[str, str]:
    return {"href": href, "rel": rel, "method": method}


def _capture(authorization: dict[str, Any]) -> dict[str, Any]:
    capture_id = _new_id()
    return {
        "id": capture_id,
        "status": "COMPLETED",
        "amount": dict(authorization["amount"]),
        "custom_id": authorization.get("custom_id", ""),
        "final_capture": True,
        "seller_protection": {"status": "ELIGIBLE", "dispute_categories": ["ITEM_NOT_RECEIVED"]},
        "supplementary_data": {"related_ids": {"authorization_id": authorization["id"]}},
        "create_time": _now(),
        "update_time": _now(),
        "links": [
            _link(f"https://api.paypal.com/v2/payments/captures/{capture_id}", "self"),
            _link(f"https://api.paypal.com/v2/payments/authorizations/{authorization['id']}", "up"),
        ],
    }


def _refund(capture_id: str, amount: dict[str, str], custom_id: str) -> dict[str, Any]:
    refund_id = _new_id()
    refund = {
        "id": refund_id,
        "status": "COMPLETED",
        "amount": amount,
        "create_time": _now(),
        "update_time": _now(),
        "links": [
            _link(f"https://api.paypal.com/v2/payments/refunds/{refund_id}", "self"),
            _link(f"https://api.paypal.com/v2/payments/captures/{capture_id}", "up"),
        ],
    }
    if custom_id:
        refund["custom_id"] = custom_id
    return refund


_UNPROCESSABLE = (
    "The requested action could not be performed, semantically incorrect, or failed business validation."
)


def _unprocessable(contract: Contract, schema: str, issue: str) -> tuple[int, dict[str, Any]]:
    return 422, {
        "name": "UNPROCESSABLE_ENTITY",
        "message": _UNPROCESSABLE,
        "debug_id": _new_id(13).lower(),
        "details": [contract.issue(schema, issue)],
        "links": [],
    }


def _not_found() -> tuple[int, dict[str, Any]]:
    return 404, {
        "name": "RESOURCE_NOT_FOUND",
        "message": "The specified resource does not exist.",
        "debug_id": _new_id(13).lower(),
        "details": [{"issue": "INVALID_RESOURCE_ID", "description": "Specified resource ID does not exist."}],
        "links": [],
    }


def _handle(state: LocalPayPal, method: str, path: str, body: Any) -> tuple[int, Any]:
    orders, payments, _ = state.contracts
    segments = path.strip("/").split("/")
    if (method, path) == ("POST", "/v2/checkout/orders"):
        unit = body["purchase_units"][0]
        vault = body.get("payment_source", {}).get("paypal", {}).get("vault_id", "")
        if vault not in ("vault_ok", "vault_cannot_pay"):
            return 422, {
                "name": "UNPROCESSABLE_ENTITY",
                "message": _UNPROCESSABLE,
                "debug_id": _new_id(13).lower(),
                "details": [{"issue": "INVALID_RESOURCE_ID", "description": "No such vault id"}],
                "links": [],
            }
        order_id = _new_id()
        order = {
            "id": order_id,
            "intent": body["intent"],
            "status": "APPROVED",
            "payment_source": {
                "paypal": {"email_address": "payer@example.com", "account_id": "QYR5Z8XDVJNXQ"}
            },
            "purchase_units": [{**unit, "payee": {"merchant_id": "7KNGBPH2U58GQ"}}],
            "create_time": _now(),
            "links": [_link(f"https://api.paypal.com/v2/checkout/orders/{order_id}", "self")],
            "_vault": vault,
        }
        state.orders[order_id] = order
        return 201, {k: v for k, v in order.items() if not k.startswith("_")}
    if (
        method == "POST"
        and len(segments) == 5
        and segments[:3] == ["v2", "checkout", "orders"]
        and segments[4] == "authorize"
    ):
        order = state.orders.get(segments[3])
        if order is None:
            return _not_found()
        if order["status"] != "APPROVED":
            return _unprocessable(orders, "orders.authorize-422", "ORDER_COMPLETED_OR_VOIDED")
        if order["_vault"] == "vault_cannot_pay":
            return _unprocessable(orders, "orders.authorize-422", "PAYER_CANNOT_PAY")
        unit = order["purchase_units"][0]
        authorization_id = _new_id()
        authorization = {
            "id": authorization_id,
            "status": "CREATED",
            "amount": dict(unit["amount"]),
            "custom_id": unit.get("custom_id", ""),
            "seller_protection": {"status": "ELIGIBLE", "dispute_categories": ["ITEM_NOT_RECEIVED"]},
            "expiration_time": (dt.datetime.now(dt.UTC) + dt.timedelta(days=29)).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
            "create_time": _now(),
            "update_time": _now(),
            "links": [_link(f"https://api.paypal.com/v2/payments/authorizations/{authorization_id}", "self")],
        }
        state.authorizations[authorization_id] = authorization
        order["status"] = "COMPLETED"
        unit["payments"] = {"authorizations": [authorization]}
        state.emit("PAYMENT.AUTHORIZATION.CREATED", authorization)
        return 201, {k: v for k, v in order.items() if not k.startswith("_")}
    if segments[:3] == ["v2", "payments", "authorizations"] and len(segments) >= 4:
        authorization = state.authorizations.get(segments[3])
        if authorization is None:
            return _not_found()
        if method == "GET":
            return 200, authorization
        if segments[4] == "capture":
            if authorization["status"] == "VOIDED":
                return _unprocessable(payments, "422", "AUTHORIZATION_VOIDED")
            if authorization["status"] == "CAPTURED":
                return _unprocessable(payments, "422", "AUTHORIZATION_ALREADY_CAPTURED")
            capture = _capture(authorization)
            state.captures[capture["id"]] = capture
            authorization["status"] = "CAPTURED"
            state.emit("PAYMENT.CAPTURE.COMPLETED", capture)
            return 201, capture
        if segments[4] == "void":
            if authorization["status"] == "VOIDED":
                return _unprocessable(payments, "authorizations.void-422", "PREVIOUSLY_VOIDED")
            if authorization["status"] == "CAPTURED":
                return _unprocessable(payments, "authorizations.void-422", "PREVIOUSLY_CAPTURED")
            authorization["status"] = "VOIDED"
            state.emit("PAYMENT.AUTHORIZATION.VOIDED", authorization)
            return 204, None
    if method == "GET" and segments[:3] == ["v2", "payments", "captures"] and len(segments) == 4:
        capture = state.captures.get(segments[3])
        return (200, capture) if capture is not None else _not_found()
    if method == "POST" and segments[:3] == ["v2", "payments", "captures"] and segments[-1] == "refund":
        capture = state.captures.get(segments[3])
        if capture is None:
            return _not_found()
        currency = capture["amount"]["currency_code"]
        asked = (body or {}).get("amount") or capture["amount"]
        if asked["currency_code"] != currency:
            return _unprocessable(payments, "captures.refund-422", "REFUND_CAPTURE_CURRENCY_MISMATCH")
        already = sum(
            float(r["amount"]["value"])
            for r in state.refunds.values()
            if r["links"][1]["href"].endswith(segments[3])
        )
        if float(asked["value"]) + already > float(capture["amount"]["value"]) + 1e-9:
            return _unprocessable(payments, "captures.refund-422", "REFUND_AMOUNT_EXCEEDED")
        refund = _refund(segments[3], dict(asked), (body or {}).get("custom_id", ""))
        state.refunds[refund["id"]] = refund
        whole = float(asked["value"]) + already >= float(capture["amount"]["value"]) - 1e-9
        capture["status"] = "REFUNDED" if whole else "PARTIALLY_REFUNDED"
        state.emit("PAYMENT.CAPTURE.REFUNDED", refund)
        return 201, refund
    if (method, path) == ("POST", "/v1/notifications/verify-webhook-signature"):
        expected = _signature(
            body["transmission_id"], body["transmission_time"], body["webhook_id"], body["webhook_event"]
        )
        genuine = (
            hmac.compare_digest(expected, body["transmission_sig"])
            and body["auth_algo"] == "SHA256withRSA"
            and body["cert_url"].startswith("https://api.paypal.com/v1/notifications/certs/")
            and body["webhook_id"] == WEBHOOK_ID
        )
        return 200, {"verification_status": "SUCCESS" if genuine else "FAILURE"}
    state.violations.append(f"{method} {path}: not an endpoint the provider should call")
    return _not_found()


class _Handler(BaseHTTPRequestHandler):
    server: StateServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def _serve(self) -> None:
        state = self.server.state
        path = urlsplit(self.path).path
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {name.lower(): value for name, value in self.headers.items()}
        if path == "/v1/oauth2/token":
            self._token(headers, raw)
            return
        if headers.get("authorization", "").removeprefix("Bearer ") not in state._tokens:
            self._send(
                401, {"error": "invalid_token", "error_description": "Token signature verification failed"}
            )
            return
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
            state.violations.append(f"{self.command} {path}: a body that is not JSON")
        contract = state.contract(path)
        problems = (
            contract.request_problems(self.command, path, headers, body)
            if contract
            else [f"{path}: no such API"]
        )
        request_id = headers.get("paypal-request-id", "")
        with state._lock:
            state.requests.append((self.command, path, body, request_id))
            if problems:
                state.violations += problems
                self._send(
                    400,
                    {
                        "name": "INVALID_REQUEST",
                        "message": "Request is not well-formed, syntactically incorrect, or violates schema.",
                        "debug_id": _new_id(13).lower(),
                        "details": [
                            {
                                "field": "/",
                                "issue": "INVALID_PARAMETER_SYNTAX",
                                "description": problems[0][:200],
                            }
                        ],
                        "links": [],
                    },
                )
                return
            prefix = next((p for p in state._failures if path.startswith(p)), None)
            if prefix is not None:
                state._failures[prefix] -= 1
                if not state._failures[prefix]:
                    del state._failures[prefix]
                self._send(
                    500,
                    {
                        "name": "INTERNAL_SERVER_ERROR",
                        "message": "An internal server error occurred.",
                        "debug_id": _new_id(13).lower(),
                        "links": [],
                    },
                )
                return
            if request_id and request_id in state._answers:
                seen_path, seen_body, status, sent = state._answers[request_id]
                if (seen_path, seen_body) != (path, body):
                    state.violations.append(f"PayPal-Request-Id {request_id} reused for another request")
                self._send(status, sent)
                return
            status, answer = _handle(state, self.command, path, body)
            if request_id:
                state._answers[request_id] = (path, body, status, answer)
            assert contract is not None
            state.violations += contract.answer_problems(self.command, path, status, answer)
            stall = next((state._stalls.pop(p) for p in list(state._stalls) if path.startswith(p)), 0.0)
        if stall:
            time.sleep(stall)
        self._send(status, answer)

    def _token(self, headers: dict[str, str], raw: bytes) -> None:
        state = self.server.state
        expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        form = dict(parse_qsl(raw.decode()))
        if headers.get("authorization") != expected or form.get("grant_type") != "client_credentials":
            self._send(401, {"error": "invalid_client", "error_description": "Client Authentication failed"})
            return
        token = f"A21AA{secrets.token_urlsafe(48)}"
        with state._lock:
            state._tokens.add(token)
            state.tokens_issued += 1
        self._send(
            200,
            {
                "scope": "https://uri.paypal.com/services/payments/payment",
                "access_token": token,
                "token_type": "Bearer",
                "app_id": "APP-80W284485P519543T",
                "expires_in": 32400,
                "nonce": _new_id(20),
            },
        )

    def _send(self, status: int, payload: Any) -> None:
        send_json(self, status, payload, [("Paypal-Debug-Id", _new_id(13).lower())])

    do_GET = do_POST = do_PATCH = _serve  # noqa: N815 - http.server's names


@contextmanager
def local_paypal() -> Iterator[LocalPayPal]:
    """A running local PayPal API; its state, for the test to steer and inspect."""
    contracts = [
        Contract(SPECS / "checkout_orders_v2.json"),
        Contract(SPECS / "payments_payment_v2.json"),
        Contract(SPECS / "notifications_webhooks_v1.json"),
    ]
    with serving(_Handler, lambda port: LocalPayPal(port=port, contracts=contracts), "local-paypal") as state:
        yield state
