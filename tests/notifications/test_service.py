"""The notifications service as a process, with auth and users, a real SMTP server and a real
webhook receiver on 127.0.0.1.

Order events come from no orders service: the test pushes real envelopes into the
notifications EventSink over mTLS with the orders certificate, as the orders relay would.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf import field_mask_pb2
from sqlalchemy import create_engine, text

from poly.events.v1 import event_sink_pb2, events_pb2
from poly.notifications.v1 import notifications_service_pb2 as pb
from poly.notifications.v1 import notifications_service_pb2_grpc, resources_pb2
from poly.type.v1 import money_pb2
from poly.users.v1 import resources_pb2 as users_resources
from poly.users.v1 import users_service_pb2 as users_pb
from poly.users.v1 import users_service_pb2_grpc
from tests.support.identity import Deployment, bearer, start
from tests.support.notifications import Mailbox, WebhookReceiver, sink_order_event
from tests.support.status import Refusal, refusal
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

Delivery = resources_pb2.Delivery
ORDER_PAID = "poly.events.v1.OrderPaid"
ORDER_CANCELLED = "poly.events.v1.OrderCancelled"
ORDER_PAYMENT_FAILED = "poly.events.v1.OrderPaymentFailed"
USER_REGISTERED = "poly.events.v1.UserRegistered"
OrderEvent = events_pb2.OrderPaid | events_pb2.OrderCancelled | events_pb2.OrderPaymentFailed


@dataclass
class System:
    deployment: Deployment
    mailbox: Mailbox
    receiver: WebhookReceiver
    admin: list[tuple[str, str]]

    @property
    def notifications(self) -> notifications_service_pb2_grpc.NotificationsServiceStub:
        return notifications_service_pb2_grpc.NotificationsServiceStub(
            self.deployment.channel("notifications")
        )

    @property
    def users(self) -> users_service_pb2_grpc.UsersServiceStub:
        return users_service_pb2_grpc.UsersServiceStub(self.deployment.channel("users"))


@dataclass
class User:
    name: str
    email: str
    metadata: list[tuple[str, str]]


def _retried(call: Callable[[], str]) -> str | None:
    """`call`'s result, or None after an INTERNAL error: auth's Login sometimes fails with SQLite
    "database is locked" (reported to the lead), which is not what these tests are about."""
    try:
        return call()
    except grpc.RpcError as error:
        if isinstance(error, grpc.Call) and error.code() == grpc.StatusCode.INTERNAL:
            return None
        raise


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def system(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """The store under test is notifications' own (the parameter); auth and users run on
    PostgreSQL whenever it is available, as in production."""
    database: dict[str, str] = {}
    if request.param == "postgresql" or os.environ.get("POLY_TEST_POSTGRES_URL"):
        make: Callable[[], str] = request.getfixturevalue("postgres_databases")
        database = {"POLY_AUTH_DATABASE_URL": make(), "POLY_USERS_DATABASE_URL": make()}
    if request.param == "postgresql":
        database["POLY_NOTIFICATIONS_DATABASE_URL"] = make()
    mailbox, receiver = Mailbox(), WebhookReceiver()
    mailbox.start()
    receiver.start()
    environ = {
        "POLY_SMTP_PORT": str(mailbox.port),
        "POLY_WEBHOOK_ALLOW_PRIVATE": "true",
        "POLY_NOTIFICATIONS_RETRY_BASE_SECONDS": "0.05",
        "POLY_NOTIFICATIONS_RETRY_MAX_SECONDS": "0.2",
        "POLY_NOTIFICATIONS_MAX_ATTEMPTS": "4",
        # Short sends make a short dispatcher lease (three times the longest send): 4.5 s.
        "POLY_SMTP_TIMEOUT_SECONDS": "1.5",
        "POLY_WEBHOOK_TIMEOUT_SECONDS": "1.5",
        **database,
    }
    try:
        deployment = start(
            tmp_path_factory.mktemp("notifications"), ["auth", "users", "notifications"], environ
        )
        try:
            admin = eventually(lambda: _retried(deployment.create_admin), what="an admin token")
            yield System(deployment, mailbox, receiver, bearer(admin))
        finally:
            deployment.stop()
    finally:
        receiver.stop()
        mailbox.stop()


def _user(system: System) -> User:
    """A registered user whose profile exists and whose welcome email has gone out."""
    name, email = system.deployment.register()
    token = eventually(lambda: _retried(lambda: system.deployment.login(email).access_token), what="a token")
    eventually(lambda: system.mailbox.to(email), what=f"the welcome email to {email}")
    return User(name, email, bearer(token))


def _push(system: System, payload: OrderEvent, event_id: str | None = None) -> tuple[str, int]:
    """Push an orders event into the notifications sink as the orders relay does; its id and outcome."""
    return sink_order_event(system.deployment, payload, event_id)


def _deliveries(system: System, user: User, event_id: str, count: int = 1) -> list[Delivery]:
    """The user's deliveries of `event_id` once `count` exist and none is PENDING, by channel."""

    def probe() -> list[Delivery] | None:
        reply = system.notifications.ListDeliveries(
            pb.ListDeliveriesRequest(filter=f'event_id = "{event_id}"'), metadata=user.metadata, timeout=10
        )
        found = list(reply.deliveries)
        done = len(found) >= count and all(d.state != Delivery.STATE_PENDING for d in found)
        return found if done else None

    return sorted(
        eventually(probe, what=f"{count} settled deliveries of {event_id}"), key=lambda d: d.channel
    )


def _mails(system: System, user: User, event_id: str) -> list[object]:
    return [m for m in system.mailbox.to(user.email) if m["X-Poly-Event-Id"] == event_id]


def _webhook(system: System, user: User, *, event_types: tuple[str, ...] = ()) -> str:
    """Register a webhook on a fresh receiver path; the path."""
    path = f"hook-{uuid.uuid4().hex[:10]}"
    created = system.notifications.CreateWebhook(
        pb.CreateWebhookRequest(
            webhook=resources_pb2.Webhook(url=system.receiver.url(path), event_types=event_types)
        ),
        metadata=user.metadata,
        timeout=10,
    )
    assert created.signing_secret.startswith("whsec_")
    system.receiver.secrets[path] = created.signing_secret
    return path


def _paid(user: User, order: str = "") -> events_pb2.OrderPaid:
    return events_pb2.OrderPaid(
        order=order or f"orders/{uuid.uuid4().hex[:12]}",
        owner=user.name,
        payment="payments/p1",
        amount=money_pb2.Money(currency_code="EUR", amount_minor=1234),
    )


def _refused(
    call: Callable[..., object], request: object, metadata: list[tuple[str, str]]
) -> tuple[object, ...]:
    with pytest.raises(grpc.RpcError) as failed:
        call(request, metadata=metadata, timeout=10)
    found = refusal(failed.value)
    return found.code, found.reason, found.violations


# -- email and webhooks ------------------------------------------------------------------


def test_registration_sends_exactly_one_welcome_email(system: System) -> None:
    user = _user(system)
    [email] = system.mailbox.to(user.email)
    assert email["X-Poly-Event-Type"] == USER_REGISTERED
    [delivery] = _deliveries(system, user, email["X-Poly-Event-Id"])
    assert (delivery.state, delivery.attempts, delivery.channel) == (
        Delivery.STATE_SENT,
        1,
        resources_pb2.CHANNEL_EMAIL,
    )
    assert delivery.destination == user.email and delivery.template == "templates/user-registered"
    assert email["Message-ID"] == f"<{delivery.name.removeprefix('deliveries/')}@poly.local>"
    assert email["X-Poly-Delivery"] == delivery.name
    assert email.is_multipart()
    assert {part.get_content_type() for part in email.iter_parts()} == {"text/plain", "text/html"}
    assert user.email in email.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert len(system.mailbox.to(user.email)) == 1


def test_order_paid_sends_an_email_and_a_signed_webhook_once(system: System) -> None:
    user = _user(system)
    path = _webhook(system, user)
    payload = _paid(user)
    event_id, outcome = _push(system, payload)
    assert outcome == event_sink_pb2.PushEventResponse.OUTCOME_APPLIED
    email, hook = _deliveries(system, user, event_id, 2)
    assert (email.state, hook.state) == (Delivery.STATE_SENT, Delivery.STATE_SENT)
    assert hook.destination == system.receiver.url(path) and hook.webhook.startswith("webhooks/")

    [call] = system.receiver.on(path)
    assert call.verified, "the signature and timestamp verify with the secret returned at creation"
    assert call.headers["webhook-id"] == hook.name.removeprefix("deliveries/")
    assert call.json["type"] == ORDER_PAID and call.json["id"] == event_id
    assert call.json["data"]["amount"] == {"currency_code": "EUR", "amount_minor": "1234"}
    assert call.json["timestamp"].endswith("Z")
    [mail] = system.mailbox.to(user.email)[1:]
    assert mail["X-Poly-Event-Id"] == event_id
    assert "12.34 EUR" in mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert mail["Subject"] == f"Payment received for order {payload.order.removeprefix('orders/')}"

    # The relay delivers at least once: a redelivered envelope changes nothing.
    assert _push(system, payload, event_id)[1] == event_sink_pb2.PushEventResponse.OUTCOME_DUPLICATE
    assert len(_deliveries(system, user, event_id, 2)) == 2
    assert len(system.receiver.on(path)) == 1
    assert len(_mails(system, user, event_id)) == 1


def test_values_are_html_escaped_in_the_html_body(system: System) -> None:
    user = _user(system)
    event_id, _ = _push(
        system,
        events_pb2.OrderCancelled(order="orders/x<b>1", owner=user.name, reason="<script>alert(1)</script>"),
    )
    _deliveries(system, user, event_id)
    [mail] = system.mailbox.to(user.email)[1:]
    html = mail.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "x&lt;b&gt;1" in html and "x<b>1" not in html


def test_temporary_failures_are_retried_and_recorded(system: System) -> None:
    user = _user(system)
    path = _webhook(system, user)
    system.mailbox.fail(user.email, "451 4.3.0 try again later", times=2)
    system.receiver.answer(path, 503)
    event_id, _ = _push(system, _paid(user))
    email, hook = _deliveries(system, user, event_id, 2)
    assert (email.state, email.attempts, email.last_error) == (Delivery.STATE_SENT, 3, "SMTP 451")
    assert (hook.state, hook.attempts, hook.last_error) == (Delivery.STATE_SENT, 2, "HTTP 503")
    assert len(system.receiver.on(path)) == 2
    assert len(_mails(system, user, event_id)) == 1


def test_permanent_failures_fail_at_once(system: System) -> None:
    user = _user(system)
    path = _webhook(system, user)
    system.mailbox.fail(user.email, "550 5.1.1 mailbox unavailable", times=1, stage="RCPT")
    system.receiver.answer(path, 410)
    event_id, _ = _push(system, _paid(user))
    email, hook = _deliveries(system, user, event_id, 2)
    assert (email.state, email.attempts, email.last_error) == (Delivery.STATE_FAILED, 1, "SMTP 550")
    assert (hook.state, hook.attempts, hook.last_error) == (Delivery.STATE_FAILED, 1, "HTTP 410")
    failed = system.notifications.ListDeliveries(
        pb.ListDeliveriesRequest(filter="state = FAILED"), metadata=user.metadata, timeout=10
    )
    assert {d.name for d in failed.deliveries} == {email.name, hook.name}


def test_retries_end_after_max_attempts(system: System) -> None:
    user = _user(system)
    path = _webhook(system, user, event_types=(ORDER_PAYMENT_FAILED,))
    system.receiver.answer(path, 503, 503, 503, 503, 503)
    event_id, _ = _push(
        system, events_pb2.OrderPaymentFailed(order="orders/f", owner=user.name, reason="INSUFFICIENT_FUNDS")
    )
    _, hook = _deliveries(system, user, event_id, 2)
    assert (hook.state, hook.attempts, hook.last_error) == (Delivery.STATE_FAILED, 4, "HTTP 503")
    assert not hook.HasField("next_attempt_time")


def _contact_version(system: System, user: User) -> int:
    """The version of `user`'s contact as notifications recorded it (0: none, or read from
    users directly); each ContactChanged it applies raises it."""
    engine = create_engine(system.deployment.settings("notifications").db.url)
    try:
        with engine.connect() as connection:
            found = connection.execute(
                text("SELECT version FROM contact WHERE recipient = :user"), {"user": user.name}
            ).scalar()
    finally:
        engine.dispose()
    return int(found or 0)


def _changing_contact(system: System, user: User, change: Callable[[], object]) -> None:
    """Run `change` (a write at the users service) and wait until notifications has applied
    the ContactChanged it publishes: preferences reach notifications as events."""
    before = _contact_version(system, user)
    change()
    eventually(lambda: _contact_version(system, user) > before or None, what="the contact change")


def _set_preferences(
    system: System, user: User, preferences: users_resources.Preferences, paths: list[str]
) -> None:
    preferences.name = f"{user.name}/preferences"
    request = users_pb.UpdatePreferencesRequest(
        preferences=preferences, update_mask=field_mask_pb2.FieldMask(paths=paths)
    )
    _changing_contact(
        system, user, lambda: system.users.UpdatePreferences(request, metadata=user.metadata, timeout=10)
    )


def test_a_muted_event_type_is_skipped_and_nothing_is_sent(system: System) -> None:
    user = _user(system)
    path = _webhook(system, user)
    muted = users_resources.Preferences(muted_event_types=[ORDER_CANCELLED])
    _set_preferences(system, user, muted, ["muted_event_types"])
    event_id, _ = _push(system, events_pb2.OrderCancelled(order="orders/m", owner=user.name))
    email, hook = _deliveries(system, user, event_id, 2)
    assert {(d.state, d.last_error) for d in (email, hook)} == {(Delivery.STATE_SKIPPED, "event type muted")}
    assert system.receiver.on(path) == []
    assert _mails(system, user, event_id) == []


def test_a_deleted_user_is_sent_nothing(system: System) -> None:
    user = _user(system)
    path = _webhook(system, user)
    profile = system.users.GetUser(
        users_pb.GetUserRequest(name=user.name), metadata=user.metadata, timeout=10
    )
    request = users_pb.DeleteUserRequest(name=user.name, etag=profile.etag)
    _changing_contact(
        system, user, lambda: system.users.DeleteUser(request, metadata=user.metadata, timeout=10)
    )
    event_id, _ = _push(system, _paid(user))
    email, hook = _deliveries(system, user, event_id, 2)
    assert {(d.state, d.last_error) for d in (email, hook)} == {(Delivery.STATE_SKIPPED, "user deleted")}
    assert system.receiver.on(path) == []
    assert _mails(system, user, event_id) == []


def test_a_disabled_channel_is_skipped_while_the_other_is_sent(system: System) -> None:
    user = _user(system)
    path = _webhook(system, user)
    _set_preferences(system, user, users_resources.Preferences(email_enabled=False), ["email_enabled"])
    event_id, _ = _push(system, _paid(user))
    email, hook = _deliveries(system, user, event_id, 2)
    assert (email.state, email.last_error) == (Delivery.STATE_SKIPPED, "email disabled")
    assert hook.state == Delivery.STATE_SENT and len(system.receiver.on(path)) == 1
    assert _mails(system, user, event_id) == []


def test_webhook_event_types_filter_what_it_receives(system: System) -> None:
    user = _user(system)
    path = _webhook(system, user, event_types=(ORDER_CANCELLED,))
    paid_id, _ = _push(system, _paid(user))
    cancelled_id, _ = _push(system, events_pb2.OrderCancelled(order="orders/c", owner=user.name))
    assert len(_deliveries(system, user, paid_id)) == 1
    assert len(_deliveries(system, user, cancelled_id, 2)) == 2
    assert [c.json["type"] for c in system.receiver.on(path)] == [ORDER_CANCELLED]


# -- webhooks ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("webhook", "field"),
    [
        (resources_pb2.Webhook(url=""), "webhook.url"),
        (resources_pb2.Webhook(url="ftp://example.com/x"), "webhook.url"),
        (resources_pb2.Webhook(url="https://example.com/" + "x" * 2048), "webhook.url"),
        (
            resources_pb2.Webhook(url="http://127.0.0.1:9/x", event_types=["poly.events.v1.OrderCreated"]),
            "webhook.event_types[0]",
        ),
        (resources_pb2.Webhook(url="http://127.0.0.1:9/x", secret="too-short"), "webhook.secret"),
        (resources_pb2.Webhook(url="http://127.0.0.1:9/x", secret=" " + "s" * 40), "webhook.secret"),
        (resources_pb2.Webhook(url="http://127.0.0.1:9/x", secret="s" * 40 + "\n"), "webhook.secret"),
        (resources_pb2.Webhook(url=" http://127.0.0.1:9/x"), "webhook.url"),
        (resources_pb2.Webhook(url="http://127.0.0.1:9/x\r\n"), "webhook.url"),
    ],
    ids=[
        "empty-url",
        "ftp",
        "oversized-url",
        "unknown-event-type",
        "short-secret",
        "padded-secret",
        "secret-with-newline",
        "padded-url",
        "url-with-line-break",
    ],
)
def test_bad_webhooks_are_refused_with_a_violation(
    system: System, webhook: resources_pb2.Webhook, field: str
) -> None:
    user = _user(system)
    code, reason, violations = _refused(
        system.notifications.CreateWebhook, pb.CreateWebhookRequest(webhook=webhook), user.metadata
    )
    # A missing url breaks the contract's REQUIRED rule (checked by the kit), the rest the domain's.
    expected = "REQUIRED_FIELD_MISSING" if not webhook.url else "WEBHOOK_INVALID"
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, expected)
    assert field in violations  # type: ignore[operator]
    assert system.notifications.ListWebhooks(pb.ListWebhooksRequest(), metadata=user.metadata).webhooks == []


def test_create_webhook_is_idempotent_and_limited(system: System) -> None:
    user = _user(system)
    key = str(uuid.uuid4())
    request = pb.CreateWebhookRequest(
        webhook=resources_pb2.Webhook(url=system.receiver.url("idem")), request_id=key
    )
    first = system.notifications.CreateWebhook(request, metadata=user.metadata, timeout=10)
    again = system.notifications.CreateWebhook(request, metadata=user.metadata, timeout=10)
    assert again == first, "a replay returns the first result, secret included"
    other = pb.CreateWebhookRequest(
        webhook=resources_pb2.Webhook(url=system.receiver.url("other")), request_id=key
    )
    with pytest.raises(grpc.RpcError) as failed:
        system.notifications.CreateWebhook(other, metadata=user.metadata, timeout=10)
    reused = refusal(failed.value)
    assert (reused.code, reused.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "REQUEST_ID_REUSED")
    assert reused.metadata == {"request_id": key, "webhook": first.webhook.name}, "names what the id made"
    for _ in range(9):
        _webhook(system, user)
    code, reason, _ = _refused(
        system.notifications.CreateWebhook,
        pb.CreateWebhookRequest(webhook=resources_pb2.Webhook(url=system.receiver.url("eleventh"))),
        user.metadata,
    )
    assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "WEBHOOK_LIMIT_REACHED")
    listed = system.notifications.ListWebhooks(pb.ListWebhooksRequest(page_size=4), metadata=user.metadata)
    names = [w.name for w in listed.webhooks]
    while listed.next_page_token:
        listed = system.notifications.ListWebhooks(
            pb.ListWebhooksRequest(page_size=4, page_token=listed.next_page_token), metadata=user.metadata
        )
        names += [w.name for w in listed.webhooks]
    assert len(names) == len(set(names)) == 10
    system.notifications.DeleteWebhook(
        pb.DeleteWebhookRequest(name=first.webhook.name), metadata=user.metadata
    )
    system.notifications.CreateWebhook(
        pb.CreateWebhookRequest(webhook=resources_pb2.Webhook(url=system.receiver.url("tenth-again"))),
        metadata=user.metadata,
        timeout=10,
    )


def test_a_taken_webhook_id_is_already_exists_only_for_its_owner(system: System) -> None:
    # AIP-133: a caller who may not see the webhook learns what GetWebhook tells them.
    owner, intruder = _user(system), _user(system)
    webhook_id = f"taken-{uuid.uuid4().hex[:8]}"
    create = pb.CreateWebhookRequest(
        webhook=resources_pb2.Webhook(url=system.receiver.url("taken")), webhook_id=webhook_id
    )
    first = system.notifications.CreateWebhook(create, metadata=owner.metadata, timeout=10).webhook
    get = pb.GetWebhookRequest(name=first.name)

    def answer(call: Callable[..., object], request: object, metadata: list[tuple[str, str]]) -> Refusal:
        with pytest.raises(grpc.RpcError) as failed:
            call(request, metadata=metadata, timeout=10)
        return refusal(failed.value)

    expected = answer(system.notifications.GetWebhook, get, intruder.metadata)
    assert (expected.code, expected.reason) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_OWNER")
    assert answer(system.notifications.CreateWebhook, create, intruder.metadata) == expected
    for caller in (owner.metadata, system.admin):
        assert _refused(system.notifications.CreateWebhook, create, caller)[:2] == (
            grpc.StatusCode.ALREADY_EXISTS,
            "WEBHOOK_EXISTS",
        )
    assert system.notifications.GetWebhook(get, metadata=owner.metadata, timeout=10) == first
    listed = system.notifications.ListWebhooks(pb.ListWebhooksRequest(), metadata=intruder.metadata)
    assert list(listed.webhooks) == []


# -- access --------------------------------------------------------------------------------


def test_another_users_delivery_and_webhook_are_refused(system: System) -> None:
    owner, intruder = _user(system), _user(system)
    path = _webhook(system, owner)
    event_id, _ = _push(system, _paid(owner))
    deliveries = _deliveries(system, owner, event_id, 2)
    webhook = deliveries[1].webhook
    # AIP-211: permission before existence, so another's resource and a missing one get the
    # same PERMISSION_DENIED, naming only the name asked for.
    for call, request in [
        (system.notifications.GetDelivery, pb.GetDeliveryRequest(name=deliveries[0].name)),
        (system.notifications.GetWebhook, pb.GetWebhookRequest(name=webhook)),
        (system.notifications.DeleteWebhook, pb.DeleteWebhookRequest(name=webhook)),
        (system.notifications.GetDelivery, pb.GetDeliveryRequest(name="deliveries/does-not-exist")),
        (system.notifications.GetWebhook, pb.GetWebhookRequest(name="webhooks/does-not-exist")),
        (system.notifications.DeleteWebhook, pb.DeleteWebhookRequest(name="webhooks/does-not-exist")),
    ]:
        with pytest.raises(grpc.RpcError) as failed:
            call(request, metadata=intruder.metadata, timeout=10)
        found = refusal(failed.value)
        assert (found.code, found.reason) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_OWNER"), request
        assert found.message == f"the caller may not access {request.name}", request
        assert found.metadata == {"resource": request.name} and owner.name not in found.message, request
    for call, request in [
        (system.notifications.GetDelivery, pb.GetDeliveryRequest(name="deliveries/does-not-exist")),
        (system.notifications.GetWebhook, pb.GetWebhookRequest(name="webhooks/does-not-exist")),
    ]:
        assert _refused(call, request, system.admin)[0] == grpc.StatusCode.NOT_FOUND, request
    found = system.notifications.GetWebhook(pb.GetWebhookRequest(name=webhook), metadata=owner.metadata)
    assert found.url.endswith(path)
    seen = system.notifications.ListDeliveries(
        pb.ListDeliveriesRequest(page_size=1000), metadata=intruder.metadata
    )
    assert {d.recipient for d in seen.deliveries} == {intruder.name}
    everyone = system.notifications.ListDeliveries(
        pb.ListDeliveriesRequest(filter=f'event_id = "{event_id}"'), metadata=system.admin
    )
    assert len(everyone.deliveries) == 2
    assert system.notifications.GetDelivery(
        pb.GetDeliveryRequest(name=deliveries[0].name), metadata=system.admin
    )


def test_templates_are_for_admins_only(system: System) -> None:
    user = _user(system)
    update = pb.UpdateTemplateRequest(
        template=resources_pb2.Template(name="templates/order-paid", subject="Hi")
    )
    for call, request in [
        (system.notifications.UpdateTemplate, update),
        (system.notifications.GetTemplate, pb.GetTemplateRequest(name="templates/order-paid")),
        (system.notifications.ListTemplates, pb.ListTemplatesRequest()),
    ]:
        assert _refused(call, request, user.metadata)[:2] == (
            grpc.StatusCode.PERMISSION_DENIED,
            "ROLE_MISSING",
        )


# -- templates -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "mask", "field"),
    [
        (resources_pb2.Template(body_text="Hello $nobody"), [], "template.body_text"),
        (resources_pb2.Template(body_html="<p>$amount</p>"), [], "template.body_html"),
        (resources_pb2.Template(subject="x" * 201), [], "template.subject"),
        (resources_pb2.Template(subject="two\nlines"), [], "template.subject"),
        (resources_pb2.Template(subject="costs $5"), [], "template.subject"),
        (resources_pb2.Template(), ["body_text"], "template.body_text"),
        (resources_pb2.Template(subject="ok"), ["event_type", "colour"], "update_mask.paths[1]"),
    ],
    ids=[
        "unknown-placeholder",
        "placeholder-of-another-type",
        "long-subject",
        "multi-line-subject",
        "bare-dollar",
        "empty-body",
        "output-only-ignored-unknown-named",
    ],
)
def test_template_updates_that_do_not_render_are_refused(
    system: System, template: resources_pb2.Template, mask: list[str], field: str
) -> None:
    template.name = "templates/order-cancelled"
    before = system.notifications.GetTemplate(
        pb.GetTemplateRequest(name=template.name), metadata=system.admin
    )
    request = pb.UpdateTemplateRequest(template=template, update_mask=field_mask_pb2.FieldMask(paths=mask))
    code, _, violations = _refused(system.notifications.UpdateTemplate, request, system.admin)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and field in violations  # type: ignore[operator]
    assert (
        system.notifications.GetTemplate(pb.GetTemplateRequest(name=template.name), metadata=system.admin)
        == before
    )


def test_an_updated_template_renders_the_next_email(system: System) -> None:
    listed = system.notifications.ListTemplates(pb.ListTemplatesRequest(), metadata=system.admin)
    assert [t.name for t in listed.templates] == [
        "templates/order-cancelled",
        "templates/order-paid",
        "templates/order-payment-failed",
        "templates/user-registered",
    ]
    name = "templates/order-payment-failed"
    before = system.notifications.GetTemplate(pb.GetTemplateRequest(name=name), metadata=system.admin)
    update = pb.UpdateTemplateRequest(
        template=resources_pb2.Template(name=name, subject="Order $order: $reason, $display_name"),
        update_mask=field_mask_pb2.FieldMask(paths=["subject"]),
    )
    try:
        updated = system.notifications.UpdateTemplate(update, metadata=system.admin, timeout=10)
        assert updated.body_text == before.body_text and updated.event_type == ORDER_PAYMENT_FAILED
        user = _user(system)
        event_id, _ = _push(
            system,
            events_pb2.OrderPaymentFailed(order="orders/t1", owner=user.name, reason="INSUFFICIENT_FUNDS"),
        )
        _deliveries(system, user, event_id)
        [mail] = system.mailbox.to(user.email)[1:]
        assert mail["Subject"] == f"Order t1: INSUFFICIENT_FUNDS, {user.email}"
    finally:
        restore = pb.UpdateTemplateRequest(template=before, update_mask=field_mask_pb2.FieldMask(paths=["*"]))
        system.notifications.UpdateTemplate(restore, metadata=system.admin, timeout=10)


# -- restarts ------------------------------------------------------------------------------


def test_a_delivery_in_flight_when_the_dispatcher_is_killed_is_sent_after_its_lease(system: System) -> None:
    user = _user(system)
    path = _webhook(system, user)
    system.receiver.hold(path, 5.0)
    event_id, _ = _push(system, _paid(user))
    eventually(lambda: system.receiver.on(path), what="the first, held, webhook request")
    system.deployment.processes["notifications"].popen.kill()  # kill -9 while the POST is in flight
    system.deployment.processes.pop("notifications").stop()
    system.deployment.start(["notifications"])
    _, hook = _deliveries(system, user, event_id, 2)
    assert hook.state == Delivery.STATE_SENT and hook.attempts == 2
    calls = system.receiver.on(path)
    assert len(calls) == 2 and calls[0].headers["webhook-id"] == calls[1].headers["webhook-id"], (
        "at least once: the resend carries the same webhook-id, so the receiver can deduplicate"
    )
    restarted = system.deployment.processes["notifications"]
    warning = restarted.wait_for_line(lambda line: "lease expired" in line and hook.name in line)
    assert '"level": "warning"' in warning, "the resend is visible: logged (and counted) as a reclaim"
    # The email may have been accepted just before the kill but not yet recorded; sent again,
    # it is the same message (one Message-ID), which is what receivers deduplicate on.
    assert len({m["Message-ID"] for m in system.mailbox.to(user.email)[1:]}) == 1
