"""PayPal as the payments service's outside provider (`providers.PaymentProvider`), over its
REST API (Orders v2 and Payments v2, as PayPal publishes them in OpenAPI): a payment is an
order created with intent AUTHORIZE from the customer's vaulted PayPal wallet, then
authorized; capture, void and refund act on that authorization and its capture.

Calls carry an OAuth 2.0 access token from the client-credentials grant, kept until shortly
before it expires (one refresh at a time; a 401 drops it and asks once more), and every call
that moves money a ``PayPal-Request-Id`` from `providers.keys`: PayPal answers a repeat with
its first answer. Webhook events are verified by PayPal's own postback API
(``verify-webhook-signature``) with the transmission headers PayPal signed, and refused when
their transmission time is more than five minutes off.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import threading
import time
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

import requests

from services.kit.money import minor_unit_digits
from services.payments.providers import (
    Authorization,
    Charge,
    EventRefused,
    ProviderEvent,
    ProviderRefused,
    ProviderUnavailable,
    keys,
)
from services.payments.reconcile import Held
from services.payments.records import Account, Payment
from services.payments.settings import PayPalSettings

__all__ = ["SIGNATURE_HEADERS", "PayPalProvider", "amount_value", "minor_units"]

_log = logging.getLogger(__name__)

SIGNATURE_HEADERS = (
    "paypal-auth-algo",
    "paypal-cert-url",
    "paypal-transmission-id",
    "paypal-transmission-sig",
    "paypal-transmission-time",
)
"""The headers PayPal signs a webhook with; the edge forwards them (`forwarded_headers`)."""
_TOLERANCE = dt.timedelta(minutes=5)
_TOKEN_MARGIN_SECONDS = 60.0
"""A token is renewed this long before PayPal says it expires."""
# What each event PayPal sends means here; any other type is recorded and ignored.
_KINDS = {
    "PAYMENT.AUTHORIZATION.CREATED": "AUTHORIZED",
    "PAYMENT.AUTHORIZATION.VOIDED": "VOIDED",
    "PAYMENT.CAPTURE.COMPLETED": "CAPTURED",
    "PAYMENT.CAPTURE.REFUNDED": "REFUNDED",
    # PayPal holds the disputed amount when a dispute opens, and releases it when one is
    # resolved in the merchant's favour.
    "CUSTOMER.DISPUTE.CREATED": "DISPUTED",
    "CUSTOMER.DISPUTE.RESOLVED": "REINSTATED",
}
_VAULT_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_AUTHORIZATION_STATES = {
    "CREATED": "AUTHORIZED",
    "PENDING": "AUTHORIZED",
    "CAPTURED": "CAPTURED",
    "PARTIALLY_CAPTURED": "CAPTURED",
    "VOIDED": "VOIDED",
    "EXPIRED": "VOIDED",
    "DENIED": "FAILED",
}


def amount_value(amount: int, currency: str) -> str:
    """Minor units as PayPal's decimal string: 2500 EUR -> "25.00", 2500 JPY -> "2500"."""
    digits = minor_unit_digits(currency)
    return f"{Decimal(amount).scaleb(-digits):.{digits}f}"


def minor_units(value: str, currency: str) -> int:
    """PayPal's decimal string back to minor units (exact: a fraction below them is refused)."""
    scaled = Decimal(value).scaleb(minor_unit_digits(currency))
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{value} {currency} is not a whole number of minor units")
    return int(scaled)


class _Answer:
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = body

    @property
    def issue(self) -> str:
        """PayPal's most specific name for an error: its first detail's ``issue``, else its name."""
        details = self.body.get("details")
        if isinstance(details, list) and details and isinstance(details[0], dict) and details[0].get("issue"):
            return str(details[0]["issue"]).upper()[:63]
        return str(self.body.get("name") or f"PAYPAL_HTTP_{self.status}").upper()[:63]


class PayPalProvider:
    """`providers.PaymentProvider` over PayPal's REST API."""

    name = "paypal"

    def __init__(self, settings: PayPalSettings) -> None:
        self._settings = settings
        self._session = requests.Session()
        self._token = ""
        self._token_until = 0.0
        self._token_lock = threading.Lock()

    # -- transport ----------------------------------------------------------------------

    def _access_token(self, *, renew: bool = False) -> str:
        with self._token_lock:
            if renew or not self._token or time.monotonic() >= self._token_until:
                try:
                    answer = self._session.post(
                        f"{self._settings.api_base}/v1/oauth2/token",
                        data={"grant_type": "client_credentials"},
                        auth=(self._settings.client_id, self._settings.client_secret),
                        headers={"Accept": "application/json"},
                        timeout=self._settings.timeout_seconds,
                    )
                except requests.RequestException as error:
                    raise ProviderUnavailable(f"paypal: token: {type(error).__name__}") from error
                if answer.status_code != 200:
                    # A refused client id or secret is the operator's to fix: unavailable, logged.
                    _log.error("paypal refused the client credentials", extra={"status": answer.status_code})
                    raise ProviderUnavailable(f"paypal: token: HTTP {answer.status_code}")
                granted = answer.json()
                self._token = str(granted["access_token"])
                lifetime = float(granted.get("expires_in", 300))
                self._token_until = time.monotonic() + max(0.0, lifetime - _TOKEN_MARGIN_SECONDS)
            return self._token

    def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, request_id: str = ""
    ) -> _Answer:
        """One API call; 5xx, 429 and no answer are `ProviderUnavailable`, other answers returned."""
        headers = {"Content-Type": "application/json", "Prefer": "return=representation"}
        if request_id:
            headers["PayPal-Request-Id"] = request_id
        for attempt in (1, 2):
            headers["Authorization"] = f"Bearer {self._access_token(renew=attempt == 2)}"
            try:
                answer = self._session.request(
                    method,
                    f"{self._settings.api_base}{path}",
                    data=None if body is None else json.dumps(body),
                    headers=headers,
                    timeout=self._settings.timeout_seconds,
                )
            except requests.RequestException as error:
                raise ProviderUnavailable(f"paypal: {type(error).__name__}") from error
            if answer.status_code == 401 and attempt == 1:
                continue  # the token expired early (revoked, a clock jump): a new one, once
            if answer.status_code == 429 or answer.status_code >= 500:
                raise ProviderUnavailable(f"paypal: HTTP {answer.status_code}")
            if answer.status_code == 401:
                _log.error("paypal refused a fresh access token", extra={"status": 401})
                raise ProviderUnavailable("paypal: HTTP 401")
            try:
                parsed = answer.json() if answer.content else {}
            except ValueError as error:
                raise ProviderUnavailable("paypal: an answer that is not JSON") from error
            return _Answer(answer.status_code, parsed if isinstance(parsed, dict) else {})
        raise AssertionError("unreachable")

    # -- the provider -------------------------------------------------------------------

    def attach(self, account: Account, method: str) -> tuple[str, str]:
        """A PayPal vault payment token (its id, from PayPal's vault setup flow) needs nothing
        more to be reusable; PayPal checks it when the first order uses it."""
        if not _VAULT_ID.fullmatch(method):
            raise ProviderRefused("PAYMENT_METHOD_MALFORMED", "a PayPal vault id is letters, digits, - and _")
        return method, account.provider_customer

    def authorize(self, charge: Charge) -> Authorization:
        payment = charge.payment
        unit = {
            "reference_id": payment.id,
            "custom_id": payment.id,
            "description": payment.order,
            "amount": {
                "currency_code": payment.currency,
                "value": amount_value(payment.amount, payment.currency),
            },
        }
        order = {
            "intent": "AUTHORIZE",
            "purchase_units": [unit],
            "payment_source": {"paypal": {"vault_id": charge.payment_method}},
        }
        created = self._call("POST", "/v2/checkout/orders", order, request_id=keys.authorize(payment))
        if created.status not in (200, 201):
            return Authorization("", created.issue)
        found = _authorization_of(created.body)
        if found is None:  # created (and approved by the vaulted wallet): authorize it now
            asked = self._call(
                "POST",
                f"/v2/checkout/orders/{created.body.get('id', '')}/authorize",
                {},
                request_id=f"{keys.authorize(payment)}-order",
            )
            if asked.status not in (200, 201):
                return Authorization("", asked.issue)
            found = _authorization_of(asked.body)
        if found is None:
            raise ProviderRefused("PAYPAL_NO_AUTHORIZATION", "the order carries no authorization")
        status = str(found.get("status", ""))
        if status in ("CREATED", "CAPTURED", "PARTIALLY_CAPTURED"):
            return Authorization(str(found["id"]))
        return Authorization(str(found.get("id", "")), f"PAYPAL_{status or 'DENIED'}")

    def capture(self, payment: Payment) -> str:
        answer = self._call(
            "POST",
            f"/v2/payments/authorizations/{payment.provider_reference}/capture",
            {"final_capture": True, "invoice_id": payment.id},
            request_id=keys.capture(payment),
        )
        if answer.status not in (200, 201) or answer.body.get("status") in ("DECLINED", "FAILED"):
            raise ProviderRefused(
                answer.issue if answer.status >= 400 else f"PAYPAL_{answer.body.get('status')}"
            )
        return str(answer.body.get("id", ""))

    def void(self, payment: Payment) -> None:
        answer = self._call("POST", f"/v2/payments/authorizations/{payment.provider_reference}/void")
        if answer.status in (200, 204):
            return
        found = self._call("GET", f"/v2/payments/authorizations/{payment.provider_reference}")
        if found.body.get("status") != "VOIDED":  # voided before: done
            raise ProviderRefused(answer.issue)

    def refund(self, payment: Payment, amount: int, request: str) -> str:
        answer = self._call(
            "POST",
            f"/v2/payments/captures/{payment.provider_capture}/refund",
            {
                "amount": {
                    "currency_code": payment.currency,
                    "value": amount_value(amount, payment.currency),
                },
                "custom_id": payment.id,
            },
            request_id=keys.refund(payment, request),
        )
        if answer.status not in (200, 201) or answer.body.get("status") in ("CANCELLED", "FAILED"):
            raise ProviderRefused(
                answer.issue if answer.status >= 400 else f"PAYPAL_{answer.body.get('status')}"
            )
        return str(answer.body.get("id", ""))

    def look_up(self, payment: Payment) -> Held | None:
        """`reconcile.Findings`: the authorization, and its capture's amount and refund status
        (PayPal's capture says whether it was refunded in full, not how much in part)."""
        found = self._call("GET", f"/v2/payments/authorizations/{payment.provider_reference}")
        if found.status == 404:
            return None
        if found.status != 200:
            raise ProviderRefused(found.issue)
        state = _AUTHORIZATION_STATES.get(str(found.body.get("status")), "FAILED")
        captured, refunded = 0, None
        if payment.provider_capture:
            capture = self._call("GET", f"/v2/payments/captures/{payment.provider_capture}")
            if capture.status == 200:
                money = capture.body.get("amount") or {}
                captured = minor_units(
                    str(money.get("value", "0")), str(money.get("currency_code", payment.currency))
                )
                status = capture.body.get("status")
                refunded = captured if status == "REFUNDED" else 0 if status == "COMPLETED" else None
        return Held(
            payment.provider_reference, str(found.body.get("custom_id", "")), state, captured, refunded
        )

    def held_between(self, since: dt.datetime, until: dt.datetime) -> Iterable[Held] | None:
        """None: the APIs used here (Orders, Payments) cannot list authorizations by time."""
        return None

    def verify_event(self, headers: Mapping[str, str], body: bytes) -> ProviderEvent:
        signed = {name: headers.get(name, "") for name in SIGNATURE_HEADERS}
        if not all(signed.values()):
            raise EventRefused("PayPal's transmission headers are missing")
        try:
            sent_at = dt.datetime.fromisoformat(signed["paypal-transmission-time"].replace("Z", "+00:00"))
            event = json.loads(body)
        except ValueError as error:
            raise EventRefused(f"unreadable transmission time or body ({type(error).__name__})") from error
        if sent_at.tzinfo is None or abs(dt.datetime.now(dt.UTC) - sent_at) > _TOLERANCE:
            raise EventRefused("the transmission time is more than five minutes off")
        if not isinstance(event, dict):
            raise EventRefused("the body is not an event")
        check = {
            "auth_algo": signed["paypal-auth-algo"],
            "cert_url": signed["paypal-cert-url"],
            "transmission_id": signed["paypal-transmission-id"],
            "transmission_sig": signed["paypal-transmission-sig"],
            "transmission_time": signed["paypal-transmission-time"],
            "webhook_id": self._settings.webhook_id,
            "webhook_event": event,
        }
        verdict = self._call("POST", "/v1/notifications/verify-webhook-signature", check)
        if verdict.status != 200 or verdict.body.get("verification_status") != "SUCCESS":
            raise EventRefused("PayPal did not verify the signature")
        try:
            return _event(event)
        except (KeyError, TypeError, ValueError) as error:
            raise EventRefused(
                f"a verified body that is not a PayPal event ({type(error).__name__})"
            ) from error


def _authorization_of(order: dict[str, Any]) -> dict[str, Any] | None:
    """The first authorization of the order's first purchase unit, if it has one."""
    for unit in order.get("purchase_units") or []:
        for found in ((unit or {}).get("payments") or {}).get("authorizations") or []:
            if isinstance(found, dict) and found.get("id"):
                return found
    return None


def _up_link(resource: dict[str, Any]) -> str:
    """The id at the end of a resource's ``up`` link (a refund's capture, a capture's authorization)."""
    for link in resource.get("links") or []:
        if isinstance(link, dict) and link.get("rel") == "up":
            return str(link.get("href", "")).rstrip("/").rsplit("/", 1)[-1]
    return ""


def _event(event: dict[str, Any]) -> ProviderEvent:
    event_id, event_type = str(event["id"]), str(event["event_type"])
    kind = _KINDS.get(event_type, "")
    resource = event["resource"]
    if not isinstance(resource, dict):
        raise TypeError("resource is not an object")
    ours = str(resource.get("custom_id") or "")
    money = resource.get("amount") or resource.get("dispute_amount") or {}
    currency, value = str(money.get("currency_code", "")), str(money.get("value", "0"))
    amount = minor_units(value, currency) if currency else 0
    if event_type.startswith("PAYMENT.AUTHORIZATION."):
        return ProviderEvent(event_id, event_type, kind, reference=str(resource["id"]), payment=ours)
    if event_type == "PAYMENT.CAPTURE.COMPLETED":
        related = ((resource.get("supplementary_data") or {}).get("related_ids") or {}).get(
            "authorization_id"
        )
        reference = str(related or _up_link(resource))
        return ProviderEvent(
            event_id,
            event_type,
            kind,
            reference=reference,
            payment=ours,
            amount=amount,
            movement=str(resource["id"]),
        )
    if event_type == "PAYMENT.CAPTURE.REFUNDED":
        # The refund's capture: how a refund made in PayPal's dashboard finds the payment.
        return ProviderEvent(
            event_id,
            event_type,
            kind,
            reference=_up_link(resource),
            payment=ours,
            amount=amount,
            movement=str(resource["id"]),
        )
    if event_type.startswith("CUSTOMER.DISPUTE."):
        disputed = resource.get("disputed_transactions") or [{}]
        capture = str((disputed[0] or {}).get("seller_transaction_id", ""))
        if event_type == "CUSTOMER.DISPUTE.RESOLVED":  # money comes back only if the merchant won
            outcome = (resource.get("dispute_outcome") or {}).get("outcome_code")
            kind = kind if outcome == "RESOLVED_SELLER_FAVOUR" else ""
        return ProviderEvent(
            event_id,
            event_type,
            kind,
            reference=capture,
            amount=amount,
            movement=str(resource.get("dispute_id", "")),
        )
    return ProviderEvent(event_id, event_type)
