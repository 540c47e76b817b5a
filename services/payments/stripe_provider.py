"""Stripe as the payments service's outside provider (`providers.PaymentProvider`), through
Stripe's own SDK: a payment is a PaymentIntent confirmed off-session with manual capture (the
saga's authorize -> capture), voided by cancelling it, refunded by Refunds.

Every call that moves money carries an idempotency key from `providers.keys`: Stripe answers a
repeat within 24 hours with its first answer, so a retried saga step never charges twice.
Errors map as Stripe documents them: a CardError is a decline (its ``decline_code``); a
connection failure, a timeout, 429 and 5xx are `ProviderUnavailable`; a bad key is too (the
operator's to fix; nobody's payment should be declined for it), and is logged as an error.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

import stripe

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
from services.payments.settings import StripeSettings

__all__ = ["StripeProvider"]

_log = logging.getLogger(__name__)

_UNAVAILABLE = (stripe.APIConnectionError, stripe.RateLimitError, stripe.APIError)
_TOLERANCE_SECONDS = 300
"""How old a webhook's signed timestamp may be (Stripe's own default): an older one is a replay."""
# What each event Stripe sends means here; any other type is recorded and ignored.
_KINDS = {
    "payment_intent.amount_capturable_updated": "AUTHORIZED",
    "payment_intent.payment_failed": "FAILED",
    "payment_intent.succeeded": "CAPTURED",
    "payment_intent.canceled": "VOIDED",
    "refund.created": "REFUNDED",
    "refund.failed": "REFUND_FAILED",
    # Money moves on a dispute when Stripe withdraws it (not at an inquiry, which takes none)
    # and when it reinstates it (the dispute was won).
    "charge.dispute.funds_withdrawn": "DISPUTED",
    "charge.dispute.funds_reinstated": "REINSTATED",
}
_METHOD = re.compile(r"pm_[A-Za-z0-9_]{1,250}")
"""A PaymentMethod id (Stripe's test tokens, ``pm_card_visa``, have underscores)."""
_MISCONFIGURED = (stripe.AuthenticationError, stripe.PermissionError, stripe.IdempotencyError)


def _error_body(error: stripe.StripeError) -> dict[str, Any]:
    """The ``error`` object of Stripe's answer (empty when there was none)."""
    body = error.json_body if isinstance(error.json_body, dict) else {}
    found = body.get("error")
    return found if isinstance(found, dict) else {}


def _reason(error: stripe.StripeError) -> str:
    """Stripe's most specific code for the error, as an UPPER_SNAKE reason."""
    body = _error_body(error)
    code = body.get("decline_code") or body.get("code") or error.code or "STRIPE_ERROR"
    return str(code).upper()[:63]


def _unavailable(error: stripe.StripeError) -> ProviderUnavailable:
    """Not a decline: a key Stripe refuses is the operator's to fix; an idempotency conflict
    (a key asked with other parameters, or still in flight) must never become one either."""
    if isinstance(error, (stripe.AuthenticationError, stripe.PermissionError)):
        _log.error(
            "stripe refused the API key", extra={"status": error.http_status, "reason": _reason(error)}
        )
    elif isinstance(error, stripe.IdempotencyError):
        _log.error("stripe refused an idempotency key", extra={"status": error.http_status})
    return ProviderUnavailable(f"stripe: {type(error).__name__} ({error.http_status})")


class StripeProvider:
    """`providers.PaymentProvider` over a `stripe.StripeClient`."""

    name = "stripe"

    def __init__(self, settings: StripeSettings) -> None:
        self._webhook_secret = settings.webhook_secret
        self._client = stripe.StripeClient(
            settings.api_key,
            base_addresses={"api": settings.api_base},
            http_client=stripe.RequestsClient(timeout=settings.timeout_seconds),
            max_network_retries=0,  # retried by the saga and the worker, with the same keys
        )

    def attach(self, account: Account, method: str) -> tuple[str, str]:
        if not _METHOD.fullmatch(method):  # refused before Stripe is asked (nor a customer made)
            raise ProviderRefused("PAYMENT_METHOD_MALFORMED", "a Stripe PaymentMethod id is pm_…")
        try:
            customer = account.provider_customer
            if not customer:
                made = self._client.v1.customers.create(
                    params={"metadata": {"account": account.id, "owner": account.owner}},
                    options={"idempotency_key": keys.customer(account)},
                )
                customer = made.id
            attached = self._client.v1.payment_methods.attach(method, params={"customer": customer})
        except _UNAVAILABLE + _MISCONFIGURED as error:
            raise _unavailable(error) from error
        except stripe.StripeError as error:
            raise ProviderRefused(_reason(error), str(error.user_message or "")) from error
        return attached.id, customer

    def authorize(self, charge: Charge) -> Authorization:
        payment = charge.payment
        params: stripe.params.PaymentIntentCreateParams = {
            "amount": payment.amount,
            "currency": payment.currency.lower(),
            "customer": charge.customer,
            "payment_method": charge.payment_method,
            "capture_method": "manual",
            "confirm": True,
            "off_session": True,
            "description": payment.order,
            "metadata": {"payment": payment.id, "order": payment.order, "owner": payment.owner},
        }
        try:
            intent = self._client.v1.payment_intents.create(
                params=params, options={"idempotency_key": keys.authorize(payment)}
            )
        except stripe.CardError as declined:
            refused = _error_body(declined).get("payment_intent")
            reference = refused.get("id", "") if isinstance(refused, dict) else ""
            return Authorization(str(reference), _reason(declined))
        except _UNAVAILABLE + _MISCONFIGURED as error:
            raise _unavailable(error) from error
        except stripe.StripeError as error:
            raise ProviderRefused(_reason(error)) from error
        if intent.status == "requires_capture":
            return Authorization(intent.id)
        if intent.status == "processing":  # not decided yet: asked again (same key), or its event
            raise ProviderUnavailable("stripe: the authorization is still processing")
        # Off-session and confirmed, anything else is not a hold: requires_action (the bank
        # wants the customer present), requires_payment_method.
        return Authorization(intent.id, f"STRIPE_{intent.status.upper()}")

    def _intent(self, reference: str) -> stripe.PaymentIntent:
        """The PaymentIntent as Stripe has it now (after a refusal: was it done already?)."""
        try:
            return self._client.v1.payment_intents.retrieve(reference)
        except _UNAVAILABLE + _MISCONFIGURED as error:
            raise _unavailable(error) from error

    def capture(self, payment: Payment) -> str:
        try:
            intent = self._client.v1.payment_intents.capture(
                payment.provider_reference, options={"idempotency_key": keys.capture(payment)}
            )
        except _UNAVAILABLE + _MISCONFIGURED as error:
            raise _unavailable(error) from error
        except stripe.StripeError as error:
            # Captured already (from the dashboard, or a webhook we have not recorded): done.
            intent = self._intent(payment.provider_reference)
            if intent.status != "succeeded":
                raise ProviderRefused(_reason(error)) from error
        charge = intent.latest_charge
        return charge if isinstance(charge, str) else (charge.id if charge is not None else "")

    def void(self, payment: Payment) -> None:
        try:
            self._client.v1.payment_intents.cancel(
                payment.provider_reference,
                params={"cancellation_reason": "abandoned"},
                options={"idempotency_key": keys.void(payment)},
            )
        except _UNAVAILABLE + _MISCONFIGURED as error:
            raise _unavailable(error) from error
        except stripe.StripeError as error:
            if self._intent(payment.provider_reference).status != "canceled":
                raise ProviderRefused(_reason(error)) from error

    def refund(self, payment: Payment, amount: int, request: str) -> str:
        try:
            refund = self._client.v1.refunds.create(
                params={
                    "payment_intent": payment.provider_reference,
                    "amount": amount,
                    "metadata": {"payment": payment.id, "order": payment.order},
                },
                options={"idempotency_key": keys.refund(payment, request)},
            )
        except _UNAVAILABLE + _MISCONFIGURED as error:
            raise _unavailable(error) from error
        except stripe.StripeError as error:
            raise ProviderRefused(_reason(error)) from error
        return refund.id

    def look_up(self, payment: Payment) -> Held | None:
        """`reconcile.Findings`: the PaymentIntent and the sum of its refunds."""
        try:
            intent = self._client.v1.payment_intents.retrieve(payment.provider_reference)
            refunds = self._client.v1.refunds.list(
                params={"payment_intent": payment.provider_reference, "limit": 100}
            )
            refunded = sum(
                r.amount for r in refunds.auto_paging_iter() if r.status in ("succeeded", "pending")
            )
        except stripe.InvalidRequestError as error:
            if error.http_status == 404:
                return None
            raise ProviderRefused(_reason(error)) from error
        except _UNAVAILABLE + _MISCONFIGURED as error:
            raise _unavailable(error) from error
        return _held(intent, refunded)

    def held_between(self, since: dt.datetime, until: dt.datetime) -> Iterable[Held]:
        """`reconcile.Findings`: every PaymentIntent created in the range."""
        params: stripe.params.PaymentIntentListParams = {
            "created": {"gte": int(since.timestamp()), "lt": int(until.timestamp())},
            "limit": 100,
        }
        try:
            listed = self._client.v1.payment_intents.list(params=params)
            return [_held(intent, None) for intent in listed.auto_paging_iter()]
        except _UNAVAILABLE + _MISCONFIGURED as error:
            raise _unavailable(error) from error

    def verify_event(self, headers: Mapping[str, str], body: bytes) -> ProviderEvent:
        signature = headers.get("stripe-signature", "")
        try:
            stripe.WebhookSignature.verify_header(body, signature, self._webhook_secret, _TOLERANCE_SECONDS)
        except stripe.SignatureVerificationError as error:
            raise EventRefused(str(error)) from error
        try:
            event = json.loads(body)
            found = event["data"]["object"]
            if not isinstance(found, dict) or not isinstance(event["id"], str):
                raise TypeError("not an event")
            return _event(event["id"], str(event["type"]), _KINDS.get(event["type"], ""), found)
        except (ValueError, KeyError, TypeError) as error:  # signed, yet not an event: refuse it whole
            raise EventRefused(
                f"a signed body that is not a Stripe event ({type(error).__name__})"
            ) from error


def _mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _minor(value: object) -> int:
    """An amount in minor units as Stripe sends it: a whole number, else refused as malformed."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("an amount that is not a whole number of minor units")
    return value


def _event(event_id: str, event_type: str, kind: str, found: dict[str, Any]) -> ProviderEvent:
    """The parts of a Stripe event's object the use cases act on."""
    metadata = _mapping(found.get("metadata"))
    if found.get("object") == "payment_intent":
        error = _mapping(found.get("last_payment_error"))
        reason = str(error.get("decline_code") or error.get("code") or "").upper()
        charge = found.get("latest_charge")
        return ProviderEvent(
            event_id,
            event_type,
            kind,
            reference=str(found.get("id", "")),
            payment=str(metadata.get("payment", "")),
            amount=_minor(found.get("amount_received")),
            movement=charge if isinstance(charge, str) else "",
            reason=reason[:63],
        )
    if found.get("object") in ("refund", "dispute"):
        # A refund created already failed or cancelled moved nothing; refund.failed says so.
        moved = kind != "REFUNDED" or found.get("status") not in ("failed", "canceled")
        return ProviderEvent(
            event_id,
            event_type,
            kind if moved else "",
            reference=str(found.get("payment_intent") or ""),
            payment=str(metadata.get("payment", "")),
            amount=_minor(found.get("amount")),
            movement=str(found.get("id", "")),
            reason=str(found.get("reason") or "").upper()[:63],
        )
    return ProviderEvent(event_id, event_type)


_HELD_STATES = {
    "requires_capture": "AUTHORIZED",
    "succeeded": "CAPTURED",
    "canceled": "VOIDED",
    "processing": "PENDING",
}
"""A PaymentIntent's status in the ledger's words (any other: nothing held, FAILED)."""


def _held(intent: Any, refunded: int | None) -> Held:
    metadata = intent.metadata.to_dict() if intent.metadata is not None else {}
    return Held(
        str(intent.id),
        str(metadata.get("payment", "")),
        _HELD_STATES.get(str(intent.status), "FAILED"),
        int(intent.amount_received or 0),
        refunded,
    )
