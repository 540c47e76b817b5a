"""A local Stripe API on 127.0.0.1 for the payments service's Stripe provider, speaking
Stripe's published contract: every object it answers with is built from Stripe's own fixture
objects (``../shared/providers/stripe/fixtures3.json``, what stripe-mock serves), and every
request it receives is checked against the SDK's typed parameter definitions
(``stripe.params.*Params``): an unknown parameter, a missing required one or a value of the
wrong type is answered as Stripe would (400 invalid_request_error) and recorded in
`violations`, which the test fixture asserts empty.

It keeps state as Stripe does for what the provider uses: customers, payment methods attached
to them (Stripe's test tokens ``pm_card_visa``, ``pm_card_chargeDeclined``,
``pm_card_chargeDeclinedInsufficientFunds``), PaymentIntents with manual capture, and refunds;
and it honours ``Idempotency-Key`` (a repeat replays the first answer; the same key with other
parameters is an idempotency_error). Faults are injected per path: `stall` answers only after a
delay (the client times out after Stripe did the work), `fail` answers 500 without doing it.

Every change also makes the webhook event Stripe would send (`events`, built on the fixture
event), which `signed` turns into the body and ``Stripe-Signature`` header Stripe posts; and
the dashboard's own actions (`capture_in_dashboard`, `refund_in_dashboard`, `dispute`) change
state the way a person at Stripe would, without our service asking.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import re
import secrets
import sys
import threading
import time
import types
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import stripe.params
import typing_extensions

from tests.support.local_api import StateServer, send_json, serving

__all__ = [
    "API_KEY",
    "FIXTURES",
    "WEBHOOK_SECRET",
    "LocalStripe",
    "check_params",
    "decode_form",
    "local_stripe",
]

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "providers" / "stripe" / "fixtures3.json"
API_KEY = "sk_test_polyservice_local"
WEBHOOK_SECRET = "whsec_polyservice_local"
_REQUEST_OPTIONS = {
    "api_key",
    "stripe_version",
    "stripe_account",
    "stripe_context",
    "max_network_retries",
    "idempotency_key",
    "content_type",
    "headers",
}
_DECLINES = {
    "pm_card_chargeDeclined": "generic_decline",
    "pm_card_chargeDeclinedInsufficientFunds": "insufficient_funds",
}


# -- the SDK's parameter types ------------------------------------------------------------


def decode_form(body: str) -> dict[str, Any]:
    """Stripe's form encoding back to nested values: ``a[b][0]=x`` -> ``{"a": {"b": ["x"]}}``."""
    decoded: dict[str, Any] = {}
    for raw_key, value in parse_qsl(body, keep_blank_values=True):
        parts = re.findall(r"[^\[\]]+|\[\]", raw_key)
        target: Any = decoded
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            following = None if last else parts[index + 1]
            holder: Any = [] if following is not None and following.isdigit() else {}
            if isinstance(target, list):
                position = int(part)
                while len(target) <= position:
                    target.append(None)
                if last:
                    target[position] = value
                elif target[position] is None:
                    target[position] = holder
                target = target[position]
            else:
                if last:
                    target[part] = value
                else:
                    target = target.setdefault(part, holder)
    return decoded


def _resolve(annotation: Any, namespace: dict[str, Any]) -> Any:
    if isinstance(annotation, typing.ForwardRef):
        return _resolve(eval(annotation.__forward_arg__, namespace), namespace)  # the SDK's own annotations
    if isinstance(annotation, str):
        return _resolve(eval(annotation, namespace), namespace)
    return annotation


def _problems(annotation: Any, value: Any, where: str, namespace: dict[str, Any]) -> list[str]:
    annotation = _resolve(annotation, namespace)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.NotRequired, typing.Required):
        return _problems(args[0], value, where, namespace)
    if origin in (typing.Union, types.UnionType):
        tried = [_problems(arg, value, where, namespace) for arg in args if arg is not type(None)]
        if any(not found for found in tried):
            return []
        # The branch the value's shape matched says most: its problems lie deeper than `where`.
        deeper = [found for found in tried if all(p.startswith(f"{where}[") for p in found)]
        return min(deeper or tried, key=len)
    if origin is typing.Literal:
        return [] if value in args else [f"{where}: {value!r} is not one of {list(args)}"]
    if origin in (list, typing.List):  # noqa: UP006 - the SDK spells it typing.List
        if not isinstance(value, list):
            return [f"{where}: expected a list"]
        return [
            p for i, item in enumerate(value) for p in _problems(args[0], item, f"{where}[{i}]", namespace)
        ]
    if origin in (dict, typing.Dict) or annotation is dict:  # noqa: UP006
        if not isinstance(value, dict):
            return [f"{where}: expected a hash"]
        return [
            p
            for k, v in value.items()
            for p in _problems(args[1] if args else Any, v, f"{where}[{k}]", namespace)
        ]
    if typing_extensions.is_typeddict(annotation):
        return check_params(annotation, value, where)
    if annotation is int:
        return (
            []
            if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value)
            else [f"{where}: expected an integer"]
        )
    if annotation is bool:
        return [] if value in ("true", "false") else [f"{where}: expected true or false"]
    if annotation is float:
        return (
            []
            if isinstance(value, str) and re.fullmatch(r"-?[0-9.]+", value)
            else [f"{where}: expected a number"]
        )
    if annotation is str:
        return [] if isinstance(value, str) else [f"{where}: expected a string"]
    return []  # Any, or a type the form cannot say more about


def check_params(typed: Any, params: Any, where: str = "") -> list[str]:
    """What in `params` (decoded from a form) the SDK's TypedDict `typed` does not allow."""
    if not isinstance(params, dict):
        return [f"{where or 'params'}: expected a hash"]
    namespace = {**vars(typing), **vars(sys.modules[typed.__module__])}
    annotations = {k: v for k, v in typed.__annotations__.items() if k not in _REQUEST_OPTIONS}

    def at(name: str) -> str:
        return f"{where}[{name}]" if where else name

    problems = [f"{at(name)}: unknown parameter" for name in params if name not in annotations]
    problems += [f"{at(name)}: missing required parameter" for name in typed.__required_keys__ - set(params)]
    for name, value in params.items():
        if name in annotations:
            problems += _problems(annotations[name], value, at(name), namespace)
    return problems


# -- state -------------------------------------------------------------------------------


@dataclass
class LocalStripe:
    """The server's state, and what tests inspect and steer."""

    port: int = 0
    fixtures: dict[str, Any] = field(default_factory=dict)
    customers: dict[str, dict[str, Any]] = field(default_factory=dict)
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    intents: dict[str, dict[str, Any]] = field(default_factory=dict)
    refunds: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, Any], str]] = field(default_factory=list)
    """(method, path, params, idempotency key) of every request, in order."""
    violations: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    """The webhook events Stripe would have sent, in order."""
    next_intent_status: str = ""
    """When set, the next PaymentIntent confirmed is left in this status (e.g. processing)."""
    _answers: dict[str, tuple[str, dict[str, Any], int, bytes]] = field(default_factory=dict)
    _stalls: dict[str, float] = field(default_factory=dict)
    _failures: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stall(self, path_prefix: str, seconds: float) -> None:
        """The next request under `path_prefix` is done, but answered only after `seconds`."""
        self._stalls[path_prefix] = seconds

    def fail(self, path_prefix: str, times: int = 1) -> None:
        """The next `times` requests under `path_prefix` get 500 and change nothing."""
        self._failures[path_prefix] = times

    def object(self, kind: str, **values: Any) -> dict[str, Any]:
        """A `kind` object: Stripe's fixture of it with `values` set."""
        made = copy.deepcopy(self.fixtures[kind])
        made.update(values)
        return made

    def emit(self, event_type: str, found: dict[str, Any]) -> dict[str, Any]:
        """The event Stripe sends for a change to `found` (a copy of it as it is now)."""
        event = self.object(
            "event",
            id=_new_id("evt"),
            type=event_type,
            created=int(time.time()),
            data={"object": copy.deepcopy(found)},
            livemode=False,
            pending_webhooks=1,
            request={"id": None, "idempotency_key": None},
        )
        self.events.append(event)
        return event

    def of_type(self, event_type: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event["type"] == event_type]

    @staticmethod
    def signed(
        event: dict[str, Any], *, secret: str = WEBHOOK_SECRET, at: int | None = None
    ) -> tuple[bytes, dict[str, str]]:
        """The body and headers Stripe posts `event` with: ``Stripe-Signature: t=…,v1=…``,
        an HMAC-SHA256 over ``{t}.{body}`` with the endpoint's secret."""
        body = json.dumps(event).encode()
        stamp = int(time.time()) if at is None else at
        digest = hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
        return body, {
            "Content-Type": "application/json; charset=utf-8",
            "Stripe-Signature": f"t={stamp},v1={digest}",
        }

    def capture_in_dashboard(self, intent_id: str) -> dict[str, Any]:
        with self._lock:
            intent = self.intents[intent_id]
            intent.update(status="succeeded", amount_capturable=0, amount_received=intent["amount"])
            return self.emit("payment_intent.succeeded", intent)

    def refund_in_dashboard(self, intent_id: str, amount: int) -> dict[str, Any]:
        with self._lock:
            intent = self.intents[intent_id]
            refund = self.object(
                "refund",
                id=_new_id("re"),
                amount=amount,
                currency=intent["currency"],
                payment_intent=intent_id,
                charge=intent["latest_charge"],
                status="succeeded",
                metadata={},
            )
            self.refunds[refund["id"]] = refund
            return self.emit("refund.created", refund)

    def dispute(self, intent_id: str, *, inquiry: bool = False) -> dict[str, Any]:
        """A dispute of the intent's charge: its ``charge.dispute.created`` event, then (a
        chargeback, not an inquiry) ``charge.dispute.funds_withdrawn``, which it returns."""
        with self._lock:
            intent = self.intents[intent_id]
            dispute = self.object(
                "dispute",
                id=_new_id("du"),
                amount=intent["amount_received"],
                currency=intent["currency"],
                payment_intent=intent_id,
                charge=intent["latest_charge"],
                status="warning_needs_response" if inquiry else "needs_response",
                reason="fraudulent",
                metadata={},
            )
            opened = self.emit("charge.dispute.created", dispute)
            return opened if inquiry else self.emit("charge.dispute.funds_withdrawn", dispute)

    def dispute_won(self, withdrawn: dict[str, Any]) -> dict[str, Any]:
        """The dispute of a ``funds_withdrawn`` event won: ``charge.dispute.funds_reinstated``."""
        with self._lock:
            dispute = dict(withdrawn["data"]["object"], status="won")
            self.emit("charge.dispute.closed", dispute)
            return self.emit("charge.dispute.funds_reinstated", dispute)

    def calls(self, method: str, path_pattern: str) -> list[dict[str, Any]]:
        return [params for m, p, params, _ in self.requests if m == method and re.fullmatch(path_pattern, p)]


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def _error(status: int, kind: str, message: str, **extra: Any) -> tuple[int, dict[str, Any]]:
    return status, {"error": {"type": kind, "message": message, **extra}}


def _handle(state: LocalStripe, method: str, path: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    now = int(time.time())
    checked: Any = None
    route = (method, re.sub(r"/(cus|pm|pi|re)_[A-Za-z0-9_]+", r"/{\1}", path))
    if route == ("POST", "/v1/customers"):
        checked = stripe.params.CustomerCreateParams
    elif route == ("POST", "/v1/payment_methods/{pm}/attach"):
        checked = stripe.params.PaymentMethodAttachParams
    elif route == ("POST", "/v1/payment_intents"):
        checked = stripe.params.PaymentIntentCreateParams
    elif route == ("GET", "/v1/payment_intents/{pi}"):
        checked = stripe.params.PaymentIntentRetrieveParams
    elif route == ("POST", "/v1/payment_intents/{pi}/capture"):
        checked = stripe.params.PaymentIntentCaptureParams
    elif route == ("POST", "/v1/payment_intents/{pi}/cancel"):
        checked = stripe.params.PaymentIntentCancelParams
    elif route == ("POST", "/v1/refunds"):
        checked = stripe.params.RefundCreateParams
    elif route == ("GET", "/v1/payment_intents"):
        checked = stripe.params.PaymentIntentListParams
    elif route == ("GET", "/v1/refunds"):
        checked = stripe.params.RefundListParams
    else:
        state.violations.append(f"{method} {path}: not an endpoint the provider should call")
        return _error(404, "invalid_request_error", f"Unrecognized request URL ({method}: {path})")
    problems = check_params(checked, params)
    if problems:
        state.violations += [f"{method} {path}: {p}" for p in problems]
        return _error(400, "invalid_request_error", problems[0], param=problems[0].split(":")[0])
    segments = path.split("/")
    if route[0] == "GET" and route[1] in ("/v1/payment_intents", "/v1/refunds"):
        return 200, _listed(state, route[1], params)
    if route[1] == "/v1/customers":
        customer = state.object(
            "customer", id=_new_id("cus"), created=now, metadata=params.get("metadata", {})
        )
        state.customers[customer["id"]] = customer
        return 200, customer
    if route[1] == "/v1/payment_methods/{pm}/attach":
        token, customer_id = segments[3], params["customer"]
        if customer_id not in state.customers:
            return _error(
                400, "invalid_request_error", f"No such customer: '{customer_id}'", code="resource_missing"
            )
        if token != "pm_card_visa" and token not in _DECLINES:
            return _error(
                400, "invalid_request_error", f"No such PaymentMethod: '{token}'", code="resource_missing"
            )
        attached = state.object("payment_method", id=_new_id("pm"), customer=customer_id, created=now)
        attached["_behaviour"] = _DECLINES.get(token, "")
        state.methods[attached["id"]] = attached
        return 200, {k: v for k, v in attached.items() if not k.startswith("_")}
    if route[1] == "/v1/payment_intents":
        return _create_intent(state, params, now)
    intent = state.intents.get(segments[3]) if len(segments) > 3 else None
    if route[1].startswith("/v1/payment_intents/"):
        if intent is None:
            return _error(
                404,
                "invalid_request_error",
                f"No such payment_intent: '{segments[3]}'",
                code="resource_missing",
            )
        if route[1].endswith("/capture"):
            if intent["status"] != "requires_capture":
                return _unexpected(intent)
            intent.update(status="succeeded", amount_capturable=0, amount_received=intent["amount"])
            state.emit("payment_intent.succeeded", intent)
        elif route[1].endswith("/cancel"):
            if intent["status"] in ("succeeded", "canceled"):
                return _unexpected(intent)
            intent.update(
                status="canceled", canceled_at=now, cancellation_reason=params.get("cancellation_reason")
            )
            state.emit("payment_intent.canceled", intent)
        return 200, intent
    # refunds
    refunded_intent = state.intents.get(params.get("payment_intent", ""))
    if refunded_intent is None:
        return _error(400, "invalid_request_error", "No such payment_intent", code="resource_missing")
    amount = int(params.get("amount", refunded_intent["amount_received"]))
    already = sum(r["amount"] for r in state.refunds.values() if r["payment_intent"] == refunded_intent["id"])
    if refunded_intent["status"] != "succeeded" or amount + already > refunded_intent["amount_received"]:
        return _error(
            400, "invalid_request_error", "Refund amount exceeds the charge", code="charge_already_refunded"
        )
    refund = state.object(
        "refund",
        id=_new_id("re"),
        amount=amount,
        currency=refunded_intent["currency"],
        payment_intent=refunded_intent["id"],
        charge=refunded_intent["latest_charge"],
        created=now,
        metadata=params.get("metadata", {}),
        status="succeeded",
    )
    state.refunds[refund["id"]] = refund
    state.emit("refund.created", refund)
    return 200, refund


def _listed(state: LocalStripe, path: str, params: dict[str, Any]) -> dict[str, Any]:
    """A page of a list endpoint, newest first, as Stripe pages them (``starting_after``)."""
    if path == "/v1/payment_intents":
        created = params.get("created", {})
        found = [
            i
            for i in state.intents.values()
            if int(created.get("gte", 0)) <= i["created"] < int(created.get("lt", 2**62))
        ]
    else:
        found = [r for r in state.refunds.values() if r["payment_intent"] == params.get("payment_intent")]
    found.sort(key=lambda o: (o["created"], o["id"]), reverse=True)
    if "starting_after" in params:
        ids = [o["id"] for o in found]
        found = found[ids.index(params["starting_after"]) + 1 :] if params["starting_after"] in ids else []
    limit = int(params.get("limit", 10))
    return {"object": "list", "data": found[:limit], "has_more": len(found) > limit, "url": path}


def _unexpected(intent: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    return _error(
        400,
        "invalid_request_error",
        f"This PaymentIntent's status is {intent['status']}",
        code="payment_intent_unexpected_state",
        payment_intent=intent,
    )


def _create_intent(state: LocalStripe, params: dict[str, Any], now: int) -> tuple[int, dict[str, Any]]:
    method = state.methods.get(params.get("payment_method", ""))
    if method is None or method["customer"] != params.get("customer"):
        return _error(
            400, "invalid_request_error", "No such PaymentMethod for this customer", code="resource_missing"
        )
    amount = int(params["amount"])
    intent = state.object(
        "payment_intent",
        id=_new_id("pi"),
        amount=amount,
        currency=params["currency"],
        customer=params["customer"],
        payment_method=method["id"],
        capture_method=params.get("capture_method", "automatic"),
        confirmation_method="automatic",
        created=now,
        canceled_at=None,
        cancellation_reason=None,
        description=params.get("description"),
        metadata=params.get("metadata", {}),
        last_payment_error=None,
        latest_charge=_new_id("ch"),
        amount_received=0,
        amount_capturable=0,
    )
    intent["client_secret"] = f"{intent['id']}_secret_{secrets.token_hex(8)}"
    state.intents[intent["id"]] = intent
    decline = method["_behaviour"]
    if decline:
        error = {"type": "card_error", "code": "card_declined", "decline_code": decline}
        intent.update(status="requires_payment_method", last_payment_error=error)
        state.emit("payment_intent.payment_failed", intent)
        return _error(
            402,
            "card_error",
            "Your card was declined.",
            code="card_declined",
            decline_code=decline,
            payment_intent=intent,
        )
    if state.next_intent_status:
        intent["status"], state.next_intent_status = state.next_intent_status, ""
        return 200, intent
    intent.update(status="requires_capture", amount_capturable=amount)
    state.emit("payment_intent.amount_capturable_updated", intent)
    return 200, intent


class _Handler(BaseHTTPRequestHandler):
    server: StateServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def _serve(self) -> None:
        state = self.server.state
        split = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else split.query
        params = decode_form(body)
        key = self.headers.get("Idempotency-Key", "")
        if self.headers.get("Authorization") != f"Bearer {API_KEY}":
            self._send(*_error(401, "invalid_request_error", "Invalid API Key provided"))
            return
        with state._lock:
            state.requests.append((self.command, split.path, params, key))
            prefix = next((p for p in state._failures if split.path.startswith(p)), None)
            if prefix is not None:
                state._failures[prefix] -= 1
                if not state._failures[prefix]:
                    del state._failures[prefix]
                answer: tuple[int, Any] = _error(500, "api_error", "An unknown error occurred")
            elif key and key in state._answers:
                seen_path, seen_params, status, sent = state._answers[key]
                if (seen_path, seen_params) != (split.path, params):
                    answer = _error(
                        400,
                        "idempotency_error",
                        "Keys for idempotent requests can only be used with the same parameters",
                    )
                else:
                    self._send(status, json.loads(sent), replayed=True)
                    return
            else:
                answer = _handle(state, self.command, split.path, params)
                if key and self.command == "POST":
                    state._answers[key] = (split.path, params, answer[0], json.dumps(answer[1]).encode())
            stall = next((state._stalls.pop(p) for p in list(state._stalls) if split.path.startswith(p)), 0.0)
        if stall:
            time.sleep(stall)
        self._send(*answer)

    def _send(self, status: int, payload: Any, *, replayed: bool = False) -> None:
        headers = [("Request-Id", f"req_{secrets.token_hex(6)}")]
        send_json(self, status, payload, headers + ([("Idempotent-Replayed", "true")] if replayed else []))

    do_GET = do_POST = do_DELETE = _serve  # noqa: N815 - http.server's names


@contextmanager
def local_stripe() -> Iterator[LocalStripe]:
    """A running local Stripe API; its state, for the test to steer and inspect."""
    fixtures = json.loads(FIXTURES.read_text())["resources"]
    with serving(_Handler, lambda port: LocalStripe(port=port, fixtures=fixtures), "local-stripe") as state:
        yield state
