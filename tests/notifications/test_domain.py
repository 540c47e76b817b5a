"""Rules of notifications without a process: the address policy, templates, planning, backoff."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.kit.domain_errors import InvalidArgument
from services.notifications import addresses, senders, templates
from services.notifications.dispatch import plan_deliveries
from services.notifications.domain import (
    Contact,
    Notification,
    Notifications,
    PushSubscription,
    Repository,
    Template,
    Webhook,
)
from tests.support.notifications import verify

NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
PAID = "poly.events.v1.OrderPaid"


@contextmanager
def _no_database() -> Iterator[Repository]:
    raise AssertionError("a refused webhook never reaches the database")
    yield  # pragma: no cover


def _anyone(_owner: str, _resource: str) -> None:
    """An owner check that admits every caller: validation refuses before it matters."""


def _public(_host: str) -> list[str]:
    return ["93.184.215.14"]


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/hook",
        "https://10.0.0.1/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://100.64.0.1/hook",
        "https://224.0.0.1/hook",
        "https://0.0.0.0/hook",
        "http://example.com/hook",
        "https://user:pw@example.com/hook",
        "ftp://example.com/hook",
        "not a url",
        " https://example.com/hook",
        "https://example.com/hook\n",
        "https://exa\tmple.com/hook",
        "https://\u00e9xample.com/hook",
        "https://example.com/h\u202eook",
    ],
    ids=[
        "loopback",
        "private",
        "metadata",
        "ipv6-loopback",
        "mapped-loopback",
        "shared",
        "multicast",
        "unspecified",
        "plain-http",
        "credentials",
        "ftp",
        "garbage",
        "leading-space",
        "trailing-newline",
        "inner-tab",
        "non-ascii-host",
        "bidi-path",
    ],
)
def test_unsafe_webhook_urls_are_refused(url: str) -> None:
    assert addresses.url_problem(url, allow_private=False, resolve=_public) is not None


def test_a_name_resolving_to_a_private_address_is_refused() -> None:
    problem = addresses.url_problem(
        "https://intranet.example.com/x", allow_private=False, resolve=lambda _h: ["10.1.2.3"]
    )
    assert problem is not None and "private" in problem
    assert addresses.url_problem("https://example.com/x", allow_private=False, resolve=_public) is None
    assert addresses.url_problem("http://127.0.0.1:8080/x", allow_private=True) is None


@pytest.mark.parametrize(
    "url",
    ["https://127.0.0.1/h", "https://10.0.0.1/h", "https://169.254.169.254/h", "http://example.com/h"],
    ids=["loopback", "private", "metadata", "http"],
)
def test_create_webhook_refuses_unsafe_urls_with_a_violation(url: str) -> None:
    notifications = Notifications(_no_database, addresses.url_policy(allow_private=False))
    with pytest.raises(InvalidArgument) as refused:
        notifications.create_webhook("users/u1", url, [], "", check_owner=_anyone)
    assert [v.field for v in refused.value.violations] == ["webhook.url"]


@pytest.mark.parametrize(
    ("text", "subject", "fine"),
    [
        ("Paid $amount for $order", False, True),
        ("Costs $$5, ${display_name}", True, True),
        ("Hello $nobody", False, False),
        ("Reason $reason", False, False),  # OrderPaid has no reason
        ("two\nlines", True, False),
        ("x" * 201, True, False),
        ("lone $", False, False),
        ("Paid \u202e$order", True, False),
        ("Paid\x1b[2J $order", True, False),
        ("Paid \u2067$order\u2069", False, False),
        ("Paid $order\x00", False, False),
    ],
    ids=[
        "known",
        "escaped-dollar",
        "unknown",
        "other-type",
        "multi-line-subject",
        "long-subject",
        "bare-dollar",
        "bidi-subject",
        "escape-subject",
        "bidi-body",
        "nul-body",
    ],
)
def test_template_text_problems(text: str, subject: bool, fine: bool) -> None:
    assert (templates.text_problems(PAID, text, subject=subject) == []) == fine


def test_rendering_escapes_html_and_flattens_the_subject() -> None:
    rendered = templates.render("Order $order", "Order $order", "<p>$order</p>", {"order": "a<b>\r\nBcc: x"})
    assert rendered.subject == "Order a<b> Bcc: x"
    assert rendered.html == "<p>a&lt;b&gt;\r\nBcc: x</p>"
    assert rendered.text == "Order a<b>\r\nBcc: x"


def test_every_default_template_renders_with_known_placeholders() -> None:
    for event_type, (subject, text, html) in templates.DEFAULTS.items():
        assert templates.text_problems(event_type, subject, subject=True) == []
        assert templates.text_problems(event_type, text) == templates.text_problems(event_type, html) == []


def _plan(contact: Contact, hooks: list[Webhook]) -> list[tuple[str, str, str]]:
    notification = Notification(
        "e1", PAID, "users/u1", {"order": "o1", "amount": "1.00 EUR", "payment": "p"}, {}, NOW
    )
    template = Template("order-paid", PAID, *templates.DEFAULTS[PAID], NOW)
    ids = iter(str(i) for i in range(100))
    planned = plan_deliveries(notification, contact, template, hooks, now=NOW, new_id=lambda: next(ids))
    return [(d.channel, d.state, d.last_error) for d, _ in planned]


HOOKS = [
    Webhook("w1", "users/u1", "https://a.example/x", (), NOW),
    Webhook("w2", "users/u1", "https://b.example/x", ("poly.events.v1.OrderCancelled",), NOW),
]


@pytest.mark.parametrize(
    ("contact", "expected"),
    [
        (
            Contact("users/u1", "u@x.io", "U", deleted=False),
            [("EMAIL", "PENDING", ""), ("WEBHOOK", "PENDING", "")],
        ),
        (
            Contact("users/u1", "u@x.io", "U", deleted=True),
            [("EMAIL", "SKIPPED", "user deleted"), ("WEBHOOK", "SKIPPED", "user deleted")],
        ),
        (
            Contact("users/u1", "u@x.io", "U", deleted=False, muted=(PAID,)),
            [("EMAIL", "SKIPPED", "event type muted"), ("WEBHOOK", "SKIPPED", "event type muted")],
        ),
        (
            Contact("users/u1", "u@x.io", "U", deleted=False, email_enabled=False),
            [("EMAIL", "SKIPPED", "email disabled"), ("WEBHOOK", "PENDING", "")],
        ),
        (
            Contact("users/u1", "u@x.io", "U", deleted=False, webhook_enabled=False),
            [("EMAIL", "PENDING", ""), ("WEBHOOK", "SKIPPED", "webhook disabled")],
        ),
    ],
    ids=["active", "deleted", "muted", "email-off", "webhook-off"],
)
def test_planning_follows_preferences_and_webhook_event_types(
    contact: Contact, expected: list[tuple[str, str, str]]
) -> None:
    assert _plan(contact, HOOKS) == expected


def test_a_signature_verifies_as_standard_webhooks_receivers_check_it() -> None:
    secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    stamp = int(dt.datetime.now(dt.UTC).timestamp())
    body = b'{"type":"x"}'
    headers = {
        "webhook-id": "d1",
        "webhook-timestamp": str(stamp),
        "webhook-signature": senders.sign(secret, "d1", stamp, body),
    }
    assert verify(secret, headers, body)
    assert not verify(secret, headers, body + b" ")
    assert not verify(secret, {**headers, "webhook-timestamp": str(stamp - 3600)}, body)


@given(subject=st.text(max_size=400), text=st.text(max_size=4000))
def test_a_push_carries_the_subject_and_text_within_one_encrypted_record(subject: str, text: str) -> None:
    values = {"order": subject, "amount": text}
    notification = Notification("e1", PAID, "users/u1", values, {}, NOW)
    template = Template("order-paid", PAID, "$order", "$amount", "", NOW)
    subscription = PushSubscription("ps-1", "users/u1", "https://push.example/x", "k", "a", None, NOW, "key")
    contact = Contact("users/u1", "u@x.io", "U", deleted=False)
    planned = plan_deliveries(
        notification, contact, template, [], now=NOW, new_id=lambda: "d1", subscriptions=[subscription]
    )
    (payload,) = [content["payload"] for delivery, content in planned if delivery.channel == "PUSH"]
    assert len(payload.encode()) <= 3800
    message = json.loads(payload)
    assert (message["delivery"], message["type"]) == ("deliveries/d1", PAID)
    rendered = templates.render(
        "$order", "$amount", "", {**values, "display_name": "U", "email": "u@x.io", "user": "users/u1"}
    )
    assert rendered.subject.startswith(message["title"]) and rendered.text.startswith(message["body"])
