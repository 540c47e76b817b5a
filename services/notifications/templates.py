"""Email templates: the event types notified, their placeholders, defaults, and rendering.

Placeholders are `string.Template` ones (``$order``, ``${amount}``; ``$$`` is a dollar sign).
Each event type offers the common contact placeholders plus those taken from its payload;
a template may use no others. Values are HTML-escaped in the HTML body and flattened to one
line in the subject, so no value can inject markup or a header.
"""

from __future__ import annotations

import html
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from string import Template as _Text

from services.kit.text import VISIBLE_TEXT_RULE, has_hidden

__all__ = [
    "COMMON_VARIABLES",
    "DEFAULTS",
    "EVENT_VARIABLES",
    "MAX_BODY_CHARS",
    "MAX_SUBJECT_CHARS",
    "NOTIFIED_TYPES",
    "Rendered",
    "render",
    "template_id",
    "text_problems",
]

USER_REGISTERED = "poly.events.v1.UserRegistered"
ORDER_PAID = "poly.events.v1.OrderPaid"
ORDER_PAYMENT_FAILED = "poly.events.v1.OrderPaymentFailed"
ORDER_CANCELLED = "poly.events.v1.OrderCancelled"

NOTIFIED_TYPES: tuple[str, ...] = (USER_REGISTERED, ORDER_PAID, ORDER_PAYMENT_FAILED, ORDER_CANCELLED)
"""Event types that notify their user, in the order templates are listed."""

COMMON_VARIABLES: tuple[str, ...] = ("display_name", "email", "user")
"""From the recipient's contact: salutation name (falls back to the email), address, users/{id}."""

EVENT_VARIABLES: Mapping[str, tuple[str, ...]] = {
    USER_REGISTERED: (),
    ORDER_PAID: ("order", "payment", "amount"),
    ORDER_PAYMENT_FAILED: ("order", "payment", "reason"),
    ORDER_CANCELLED: ("order", "payment", "reason"),
}
"""Placeholders each event type fills from its payload (`order` is the order's ID)."""

MAX_SUBJECT_CHARS = 200
MAX_BODY_CHARS = 100_000

_IDS = {
    USER_REGISTERED: "user-registered",
    ORDER_PAID: "order-paid",
    ORDER_PAYMENT_FAILED: "order-payment-failed",
    ORDER_CANCELLED: "order-cancelled",
}


def template_id(event_type: str) -> str:
    """The ``{template}`` of the template rendering `event_type`, e.g. ``order-paid``."""
    return _IDS[event_type]


@dataclass(frozen=True, slots=True)
class Rendered:
    subject: str
    text: str
    html: str


_FOOTER_TEXT = "\n\n-- \nPolyservice. Change what we send you in your notification preferences.\n"
_FOOTER_HTML = (
    '<p style="color:#666;font-size:12px">'
    "Polyservice. Change what we send you in your notification preferences.</p>"
)


def _page(title: str, body: str) -> str:
    return (
        '<!doctype html><html><body style="font-family:sans-serif;line-height:1.5">'
        f'<h1 style="font-size:20px">{title}</h1>{body}{_FOOTER_HTML}</body></html>'
    )


DEFAULTS: Mapping[str, tuple[str, str, str]] = {
    USER_REGISTERED: (
        "Welcome to Polyservice, $display_name",
        "Hello $display_name,\n\nYour account $email is ready. Welcome aboard!" + _FOOTER_TEXT,
        _page("Welcome, $display_name", "<p>Your account <b>$email</b> is ready. Welcome aboard!</p>"),
    ),
    ORDER_PAID: (
        "Payment received for order $order",
        "Hello $display_name,\n\nWe received your payment of $amount for order $order. "
        "We will let you know when it ships." + _FOOTER_TEXT,
        _page(
            "Payment received",
            "<p>Hello $display_name,</p><p>We received your payment of <b>$amount</b> for order "
            "<b>$order</b>. We will let you know when it ships.</p>",
        ),
    ),
    ORDER_PAYMENT_FAILED: (
        "Payment failed for order $order",
        "Hello $display_name,\n\nThe payment for order $order did not go through ($reason). "
        "Please check your account balance and order again." + _FOOTER_TEXT,
        _page(
            "Payment failed",
            "<p>Hello $display_name,</p><p>The payment for order <b>$order</b> did not go through "
            "(<code>$reason</code>). Please check your account balance and order again.</p>",
        ),
    ),
    ORDER_CANCELLED: (
        "Order $order cancelled",
        "Hello $display_name,\n\nOrder $order was cancelled. Any amount held or paid for it is "
        "returned to your account." + _FOOTER_TEXT,
        _page(
            "Order cancelled",
            "<p>Hello $display_name,</p><p>Order <b>$order</b> was cancelled. Any amount held or "
            "paid for it is returned to your account.</p>",
        ),
    ),
}
"""(subject, body_text, body_html) each template starts with."""


_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_BODY_RULE = "must not contain control characters (other than tab and line breaks) or bidi controls"


def _hidden_in_body(char: str) -> bool:
    """A character a body may not hold: a control other than tab and line breaks, or a bidi
    control (which can make text read differently from what it is). Other format characters
    stay allowed: emoji sequences need the zero-width joiner."""
    return (unicodedata.category(char) == "Cc" and char not in "\t\n\r") or char in _BIDI_CONTROLS


def text_problems(event_type: str, text: str, *, subject: bool = False) -> list[str]:
    """What is wrong with one template text for `event_type` (empty if it renders)."""
    problems: list[str] = []
    limit = MAX_SUBJECT_CHARS if subject else MAX_BODY_CHARS
    if len(text) > limit:
        problems.append(f"must be at most {limit} characters")
    if subject and ("\n" in text or "\r" in text):
        problems.append("must be a single line")
    elif subject and has_hidden(text):
        problems.append(VISIBLE_TEXT_RULE)
    elif not subject and any(_hidden_in_body(c) for c in text):
        problems.append(_BODY_RULE)
    parsed = _Text(text)
    if not parsed.is_valid():
        problems.append("has a '$' that starts no placeholder; write $$ for a dollar sign")
        return problems
    known = {*COMMON_VARIABLES, *EVENT_VARIABLES.get(event_type, ())}
    unknown = sorted(set(parsed.get_identifiers()) - known)
    if unknown:
        problems.append(
            f"uses unknown placeholders {', '.join('$' + u for u in unknown)}; "
            f"known: {', '.join('$' + k for k in sorted(known))}"
        )
    return problems


def render(subject: str, body_text: str, body_html: str, values: Mapping[str, str]) -> Rendered:
    """The email for `values`; an unfilled placeholder stays as written, never fails."""
    one_line = {k: " ".join(v.split()) for k, v in values.items()}
    escaped = {k: html.escape(v) for k, v in values.items()}
    return Rendered(
        subject=_Text(subject).safe_substitute(one_line)[:MAX_SUBJECT_CHARS],
        text=_Text(body_text).safe_substitute(values),
        html=_Text(body_html).safe_substitute(escaped) if body_html else "",
    )
