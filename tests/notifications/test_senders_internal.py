"""The email sender's serialisation policy writes short plain headers itself: byte for byte
what the classic policy's folding writes, and whole emails unchanged."""

from __future__ import annotations

import datetime as dt
import string
from email.policy import Compat32, compat32

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.notifications.domain import Delivery, Outgoing
from services.notifications.senders import _SMTP_LINES, email_message

_CLASSIC = compat32.clone(linesep="\r\n")


def _folded(policy: Compat32, name: str, value: str) -> str | type[Exception]:
    """The header line, or the type of the error when the policy refuses the value."""
    try:
        return policy._fold(name, value, True)
    except Exception as refused:
        return type(refused)


_NAMES = st.sampled_from(["Subject", "To", "From", "Message-ID", "X-Poly-Event-Type", "Content-Type"])


@settings(max_examples=2000, deadline=None)
@given(name=_NAMES, value=st.text(alphabet=string.printable, max_size=120))
def test_a_header_is_written_as_the_classic_policy_folds_it(name: str, value: str) -> None:
    assert _folded(_SMTP_LINES, name, value) == _folded(_CLASSIC, name, value)


@settings(max_examples=300, deadline=None)
@given(name=_NAMES, value=st.text(max_size=200))
def test_any_text_header_still_matches_the_classic_policy(name: str, value: str) -> None:
    assert _folded(_SMTP_LINES, name, value) == _folded(_CLASSIC, name, value)


def _outgoing(subject: str, text: str, html: str) -> Outgoing:
    now = dt.datetime(2026, 12, 6, tzinfo=dt.UTC)
    delivery = Delivery(
        "d1",
        "users/u1",
        "email",
        "templates/order_paid",
        "poly.events.v1.OrderPaid",
        "e1",
        "alice@example.com",
        "",
        "PENDING",
        1,
        "",
        None,
        now,
        now,
    )
    return Outgoing(delivery, {"subject": subject, "text": text, "html": html})


@pytest.mark.parametrize(
    ("subject", "text", "html"),
    [
        ("Your order is paid", "Hello,\nyour order is paid.\n", ""),
        ("Your order is paid", "Hello,\r\nplain\rand bare\nbreaks\n", "<p>paid</p>"),
        ("Bestellung bezahlt: Grüße", "Grüße\n", "<p>Grüße</p>"),
        ("A subject long enough to be folded by the classic policy at its limit of 78 chars", "x\n", ""),
    ],
    ids=["plain", "multipart-with-bare-breaks", "non-ascii", "long-subject"],
)
def test_a_whole_email_serialises_as_with_the_classic_policy(subject: str, text: str, html: str) -> None:
    message = email_message(_outgoing(subject, text, html), "Poly <noreply@poly.local>")
    assert message.as_bytes(policy=_SMTP_LINES) == message.as_bytes(policy=_CLASSIC)
    assert b"\n" not in message.as_bytes(policy=_SMTP_LINES).replace(b"\r\n", b"")
