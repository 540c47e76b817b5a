"""Web Push, on a real database (SQLite and PostgreSQL), a real SMTP server and a local push
service that is also the subscribed browsers (`tests.support.push_service`): every message must
carry a VAPID signature that verifies per RFC 8292 and decrypt with the browser's keys per
RFC 8291, or the test fails. Registering subscriptions (their checks, the per-user limit, one
endpoint per user, who may see or remove one) runs on the same databases.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.kit.domain_errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from services.notifications import events, store
from services.notifications.addresses import url_policy
from services.notifications.dispatch import Dispatch
from services.notifications.dispatcher import Dispatcher, dispatch_settings
from services.notifications.domain import EMAIL, FAILED, PENDING, PUSH, SENT, SKIPPED, Contact
from services.notifications.push import PushSender
from services.notifications.push_keys import application_server_key, decode, encode
from services.notifications.senders import EmailSender, WebhookSender
from services.notifications.settings import NotificationsSettings, PushSettings, SmtpSettings
from services.notifications.subscriptions import MAX_PUSH_SUBSCRIPTIONS, PushSubscriptions
from tests.support.mailbox import Mailbox, mailbox
from tests.support.notifications_db import NotificationsDatabase
from tests.support.push_service import Browser, LocalPushService, local_push_service

pytestmark = pytest.mark.slow

VAPID_KEY = ec.generate_private_key(ec.SECP256R1())
VAPID_TEXT = encode(VAPID_KEY.private_numbers().private_value.to_bytes(32, "big"))
SERVER_KEY = application_server_key(VAPID_KEY)


def _settings(
    *, allow_private: bool = True, key: str = VAPID_TEXT, port: int = 1025
) -> NotificationsSettings:
    return NotificationsSettings(
        smtp=SmtpSettings(host="127.0.0.1", port=port),
        max_attempts=4,
        retry_base_seconds=0.05,
        retry_max_seconds=0.1,
        webhook_allow_private=allow_private,
        push=PushSettings(key, "mailto:ops@example.com", ttl_seconds=3600, timeout_seconds=5),
    )


def _refuse(user: str) -> Callable[[str, str], None]:
    """`authz.require_owner` for a caller who is `user` and not an admin."""

    def check(owner: str, resource: str) -> None:
        if owner != user:
            raise PermissionDenied("PERMISSION_DENIED", "no access to {resource}", resource=resource)

    return check


@pytest.fixture
def push_service() -> Iterator[LocalPushService]:
    with local_push_service(SERVER_KEY) as service:
        yield service
        assert service.violations == [], "messages a push service or browser would refuse"


def _subscriptions(notifications: NotificationsDatabase, *, allow_private: bool = True) -> PushSubscriptions:
    return PushSubscriptions(
        notifications.store.transaction, url_policy(allow_private=allow_private), SERVER_KEY
    )


def _register(pushes: PushSubscriptions, user: str, browser: Browser) -> str:
    given = browser.subscription()
    return pushes.create(user, given["endpoint"], given["keys"]["p256dh"], given["keys"]["auth"], None).name


class _Pushing:
    """A dispatcher that pushes through `push_service`, for contacts kept in `contacts`."""

    def __init__(
        self, notifications: NotificationsDatabase, box: Mailbox, settings: NotificationsSettings
    ) -> None:
        self.contacts: dict[str, Contact] = {}
        self.dispatcher = Dispatcher(
            Dispatch(notifications.store.transaction, dispatch_settings(settings)),
            lambda user: self.contacts[user],
            EmailSender(settings.smtp),
            WebhookSender(settings),
            concurrency=8,
            poll_seconds=0.05,
            pushes=PushSender(settings),
        )
        self.handlers = events.handlers(
            lambda connection: store.SqlRepository(connection, notifications.outbox),
            lease=self.dispatcher.lease,
            on_commit=self.dispatcher.take,
        )
        self.notifications = notifications
        self.subscriptions = _subscriptions(notifications, allow_private=settings.webhook_allow_private)

    def notify(self, user: str, *, push_enabled: bool = True) -> list[Any]:
        """One OrderPaid for `user`, once its deliveries settle: its push deliveries."""
        self.contacts[user] = Contact(
            user,
            f"{user.removeprefix('users/')}@example.com",
            "Ada",
            deleted=False,
            push_enabled=push_enabled,
        )
        event_id = self.notifications.record(self.handlers, user)
        deadline = time.monotonic() + 15
        found: list[Any] = []
        while time.monotonic() < deadline:
            found = [row for row in self.notifications.rows(store.DeliveryRow) if row.event_id == event_id]
            if found and all(row.state != PENDING for row in found):
                return [row for row in found if row.channel == PUSH]
            time.sleep(0.05)
        raise AssertionError(f"the deliveries of {event_id} never settled: {found}")


@pytest.fixture
def pushing(notifications: NotificationsDatabase, request: pytest.FixtureRequest) -> Iterator[_Pushing]:
    allow_private = getattr(request, "param", True)
    with mailbox() as box:
        made = _Pushing(notifications, box, _settings(allow_private=allow_private, port=box.port))
        made.dispatcher.start()
        try:
            yield made
        finally:
            made.dispatcher.stop()


# -- sending -------------------------------------------------------------------------------


def test_a_notification_is_pushed_encrypted_and_signed_to_each_subscription(
    pushing: _Pushing, push_service: LocalPushService
) -> None:
    phone, laptop = push_service.subscribe(), push_service.subscribe()
    names = {_register(pushing.subscriptions, "users/p1", b) for b in (phone, laptop)}
    pushed = pushing.notify("users/p1")
    assert {row.destination for row in pushed} == names
    assert all(row.state == SENT and row.template for row in pushed)
    for browser in (phone, laptop):
        (payload,) = push_service.to(browser)
        assert payload["title"].startswith("Payment received"), "the email's subject line"
        assert payload["type"] == "poly.events.v1.OrderPaid"
        assert payload["delivery"] in {f"deliveries/{row.id}" for row in pushed}
        assert payload["body"]
    headers = push_service.messages[0].headers
    assert (headers["ttl"], headers["urgency"]) == ("3600", "normal")
    assert len(headers["topic"]) == 32


def test_a_user_who_turned_pushes_off_is_not_pushed(
    pushing: _Pushing, push_service: LocalPushService
) -> None:
    _register(pushing.subscriptions, "users/p2", push_service.subscribe())
    (skipped,) = pushing.notify("users/p2", push_enabled=False)
    assert (skipped.state, skipped.last_error) == (SKIPPED, "push disabled")
    assert push_service.received == 0


@pytest.mark.parametrize("status", [404, 410])
def test_a_subscription_its_push_service_no_longer_knows_is_removed(
    pushing: _Pushing, push_service: LocalPushService, status: int
) -> None:
    browser = push_service.subscribe()
    name = _register(pushing.subscriptions, "users/p3", browser)
    if status == 410:
        push_service.gone.add(browser.token)
    else:
        del push_service.browsers[browser.token]
    (failed,) = pushing.notify("users/p3")
    assert (failed.state, failed.last_error) == (FAILED, f"push subscription gone (HTTP {status})")
    assert pushing.subscriptions.list("users/p3", 0, "")[0] == []
    with pytest.raises(NotFound):  # as an admin asks: nobody may see it, it is gone
        pushing.subscriptions.get(name.removeprefix("pushSubscriptions/"), lambda owner, resource: None)
    assert pushing.notify("users/p3") == [], "nothing is planned for a removed subscription"
    assert push_service.received == 1
    assert _quota(pushing.notifications)["users/p3"] == 0, "its place is free again"


def test_a_push_service_that_fails_for_a_while_is_asked_again(
    pushing: _Pushing, push_service: LocalPushService
) -> None:
    browser = push_service.subscribe()
    _register(pushing.subscriptions, "users/p4", browser)
    push_service.answers[browser.token] = [503, 429]
    (sent,) = pushing.notify("users/p4")
    assert (sent.state, sent.attempts) == (SENT, 3)
    assert len(push_service.to(browser)) == 1


def test_a_push_refused_for_good_fails_at_once(pushing: _Pushing, push_service: LocalPushService) -> None:
    browser = push_service.subscribe()
    _register(pushing.subscriptions, "users/p5", browser)
    push_service.answers[browser.token] = [403]  # subscribed with another application server key
    (failed,) = pushing.notify("users/p5")
    assert (failed.state, failed.attempts, failed.last_error) == (FAILED, 1, "push service HTTP 403")


@pytest.mark.parametrize("pushing", [False], indirect=True, ids=["private-addresses-refused"])
def test_an_endpoint_that_turned_private_is_not_called(
    pushing: _Pushing, push_service: LocalPushService, notifications: NotificationsDatabase
) -> None:
    """Registered while its name looked public, resolving to loopback at send time (DNS
    rebinding): refused then, and the push service hears nothing."""
    keys = push_service.subscribe().subscription()["keys"]
    trusting = _subscriptions(notifications, allow_private=True)
    endpoint = f"https://localhost:{push_service.port}/push/x"
    trusting.create("users/p6", endpoint, keys["p256dh"], keys["auth"], None)
    (refused,) = pushing.notify("users/p6")
    assert refused.state == FAILED
    assert (
        refused.last_error == "address refused: host 'localhost' is a loopback, private or reserved address"
    )
    assert push_service.received == 0


def test_removing_a_subscription_skips_its_pending_pushes(
    notifications: NotificationsDatabase, push_service: LocalPushService
) -> None:
    """No dispatcher runs: the push stays pending until its subscription is removed."""
    pushes = _subscriptions(notifications)
    browser = push_service.subscribe()
    name = _register(pushes, "users/p7", browser)
    dispatch = Dispatch(notifications.store.transaction, dispatch_settings(_settings()))
    handlers = events.handlers(lambda connection: store.SqlRepository(connection, notifications.outbox))
    event_id = notifications.record(handlers, "users/p7")
    (notification,) = dispatch.claim_notifications(10)
    contact = Contact("users/p7", "p7@example.com", "Ada", deleted=False)
    dispatch.resolve(notification, contact)
    pushes.delete(name.removeprefix("pushSubscriptions/"), _refuse("users/p7"))
    rows = {r.channel: r for r in notifications.rows(store.DeliveryRow) if r.event_id == event_id}
    assert (rows[PUSH].state, rows[PUSH].last_error) == (SKIPPED, "push subscription removed")
    assert rows[EMAIL].state == PENDING


def test_a_push_whose_subscription_moved_since_it_was_claimed_is_not_sent(
    notifications: NotificationsDatabase, push_service: LocalPushService
) -> None:
    """Claimed for users/p9, then the browser is registered by users/p10: p9's push would
    reach p10's browser. The subscription is read again just before sending."""
    pushes = _subscriptions(notifications)
    browser = push_service.subscribe()
    _register(pushes, "users/p9", browser)
    dispatch = Dispatch(notifications.store.transaction, dispatch_settings(_settings()))
    handlers = events.handlers(lambda connection: store.SqlRepository(connection, notifications.outbox))
    event_id = notifications.record(handlers, "users/p9")
    (notification,) = dispatch.claim_notifications(10)
    dispatch.resolve(notification, Contact("users/p9", "p9@example.com", "Ada", deleted=False))
    (claimed,) = [o for o in dispatch.claim_deliveries(10) if o.delivery.channel == PUSH]
    _register(pushes, "users/p10", browser)
    assert dispatch.push_target(claimed) is None
    (row,) = [
        r for r in notifications.rows(store.DeliveryRow) if r.event_id == event_id and r.channel == PUSH
    ]
    assert row.state == SKIPPED


def test_the_browser_side_decrypts_rfc_8291s_own_example() -> None:
    """The local push service reads messages as browsers do: RFC 8291 section 5's message,
    with the keys of its Appendix A, decrypts to its plaintext. (So a message our sender made
    that decrypts there is RFC 8291 encryption, not merely what one library agrees with.)"""
    browser = Browser(
        "rfc",
        "https://push.example.net/push/JzLQ3raZJfFBR0aqvOMsLrt54w4rJUsV",
        ec.derive_private_key(
            int.from_bytes(decode("q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94"), "big"), ec.SECP256R1()
        ),
        decode("BTBZMqHH6r4Tts7J_aSIgg"),
    )
    assert browser.p256dh == (
        "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"
    )
    message = decode(
        "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEq"
        "KK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN"
    )
    assert browser.decrypt(message) == b"When I grow up, I want to be a watermelon"


# -- registering ---------------------------------------------------------------------------


def _violations(call: Callable[[], object]) -> list[str]:
    with pytest.raises(InvalidArgument) as refused:
        call()
    return [v.field for v in refused.value.violations]


def _point_off_the_curve() -> str:
    point = bytearray(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    point[-1] ^= 1
    return encode(bytes(point))


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"endpoint": ""}, "endpoint"),
        ({"endpoint": "https://push.example.com/" + "a" * 2048}, "endpoint"),
        ({"endpoint": "ftp://push.example.com/x"}, "endpoint"),
        ({"p256dh": "not base64!"}, "keys.p256dh"),
        ({"p256dh": encode(b"\x04" + b"\x01" * 64)}, "keys.p256dh"),
        ({"p256dh": _point_off_the_curve()}, "keys.p256dh"),
        ({"p256dh": encode(b"\x02" + b"\x01" * 32)}, "keys.p256dh"),
        ({"auth": encode(b"x" * 15)}, "keys.auth"),
        ({"auth": ""}, "keys.auth"),
        ({"expiration": 1000}, "expiration_time"),
        ({"expiration": -5}, "expiration_time"),
    ],
    ids=[
        "no-endpoint",
        "long-endpoint",
        "not-http",
        "p256dh-not-base64",
        "p256dh-not-a-point",
        "p256dh-off-the-curve",
        "p256dh-compressed",
        "auth-15-bytes",
        "no-auth",
        "expired",
        "negative-expiry",
    ],
)
def test_unusable_subscriptions_are_refused_with_the_field(
    notifications: NotificationsDatabase, push_service: LocalPushService, change: dict[str, Any], field: str
) -> None:
    given = push_service.subscribe().subscription()
    values = {
        "endpoint": given["endpoint"],
        "p256dh": given["keys"]["p256dh"],
        "auth": given["keys"]["auth"],
        "expiration": None,
        **change,
    }
    pushes = _subscriptions(notifications)
    found = _violations(
        lambda: pushes.create(
            "users/r1", values["endpoint"], values["p256dh"], values["auth"], values["expiration"]
        )
    )
    assert found == [f"push_subscription.{field}"]


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://127.0.0.1/push/x",
        "https://169.254.169.254/latest",
        "https://[::1]/p",
        "http://push.example.com/x",
    ],
    ids=["loopback", "metadata", "ipv6-loopback", "plain-http"],
)
def test_endpoints_on_private_addresses_or_plain_http_are_refused(
    notifications: NotificationsDatabase, push_service: LocalPushService, endpoint: str
) -> None:
    keys = push_service.subscribe().subscription()["keys"]
    pushes = _subscriptions(notifications, allow_private=False)
    found = _violations(lambda: pushes.create("users/r2", endpoint, keys["p256dh"], keys["auth"], None))
    assert found == ["push_subscription.endpoint"]


def test_an_endpoint_no_vapid_signature_can_name_is_refused(
    notifications: NotificationsDatabase, push_service: LocalPushService
) -> None:
    keys = push_service.subscribe().subscription()["keys"]
    pushes = _subscriptions(notifications)  # loopback allowed: only the origin is wrong
    found = _violations(
        lambda: pushes.create("users/r12", "https://[::1]:8443/x", keys["p256dh"], keys["auth"], None)
    )
    assert found == ["push_subscription.endpoint"]


def test_registering_an_endpoint_again_renews_it_and_another_user_takes_it_over(
    notifications: NotificationsDatabase, push_service: LocalPushService
) -> None:
    pushes = _subscriptions(notifications)
    browser = push_service.subscribe()
    first = _register(pushes, "users/r3", browser)
    assert _register(pushes, "users/r3", browser) == first
    assert len(pushes.list("users/r3", 0, "")[0]) == 1
    taken = _register(pushes, "users/r4", browser)  # someone else signed in on that browser
    assert taken != first
    assert pushes.list("users/r3", 0, "")[0] == []
    (moved,) = pushes.list("users/r4", 0, "")[0]
    assert (moved.name, moved.owner) == (taken, "users/r4")
    assert browser.subscription()["keys"]["auth"] not in repr(moved), "the secret is not in its repr"
    assert _quota(notifications) == {"users/r3": 0, "users/r4": 1}


def test_knowing_an_endpoint_without_its_auth_secret_takes_nothing(
    notifications: NotificationsDatabase, push_service: LocalPushService
) -> None:
    pushes = _subscriptions(notifications)
    browser = push_service.subscribe()
    name = _register(pushes, "users/r9", browser)
    attacker = push_service.subscribe().subscription()["keys"]  # keys of the attacker's own
    with pytest.raises(PermissionDenied):
        pushes.create("users/r10", browser.endpoint, attacker["p256dh"], attacker["auth"], None)
    assert [s.name for s in pushes.list("users/r9", 0, "")[0]] == [name]
    assert pushes.list("users/r10", 0, "")[0] == []


def test_stale_subscriptions_make_room_when_their_user_registers_another(
    notifications: NotificationsDatabase, push_service: LocalPushService
) -> None:
    """Made for a VAPID key since replaced, they would fail forever: the next registration of
    their user removes them, so they never fill the limit."""
    old_key = application_server_key(ec.generate_private_key(ec.SECP256R1()))
    before = PushSubscriptions(notifications.store.transaction, url_policy(allow_private=True), old_key)
    for _ in range(MAX_PUSH_SUBSCRIPTIONS):
        _register(before, "users/r11", push_service.subscribe())
    pushes = _subscriptions(notifications)
    name = _register(pushes, "users/r11", push_service.subscribe())
    assert [s.name for s in pushes.list("users/r11", 0, "")[0]] == [name]
    assert _quota(notifications)["users/r11"] == 1


def _quota(notifications: NotificationsDatabase) -> dict[str, int]:
    return {row.owner: row.used for row in notifications.rows(store.PushQuotaRow)}


def test_a_user_has_at_most_the_limit_of_subscriptions(
    notifications: NotificationsDatabase, push_service: LocalPushService
) -> None:
    pushes = _subscriptions(notifications)
    names = [_register(pushes, "users/r5", push_service.subscribe()) for _ in range(MAX_PUSH_SUBSCRIPTIONS)]
    with pytest.raises(ResourceExhausted):
        _register(pushes, "users/r5", push_service.subscribe())
    pushes.delete(names[0].removeprefix("pushSubscriptions/"), _refuse("users/r5"))
    _register(pushes, "users/r5", push_service.subscribe())
    assert len(pushes.list("users/r5", 1000, "")[0]) == MAX_PUSH_SUBSCRIPTIONS


def test_another_users_subscription_is_refused_like_a_missing_one(
    notifications: NotificationsDatabase, push_service: LocalPushService
) -> None:
    pushes = _subscriptions(notifications)
    name = _register(pushes, "users/r6", push_service.subscribe())
    subscription_id = name.removeprefix("pushSubscriptions/")
    for call in (pushes.get, pushes.delete):
        with pytest.raises(PermissionDenied):
            call(subscription_id, _refuse("users/r7"))
        with pytest.raises(PermissionDenied):
            call("ps-missing", _refuse("users/r7"))
    assert pushes.get(subscription_id, _refuse("users/r6")).owner == "users/r6"


def test_without_a_vapid_key_nothing_can_be_registered(
    notifications: NotificationsDatabase, push_service: LocalPushService
) -> None:
    pushes = PushSubscriptions(notifications.store.transaction, url_policy(allow_private=True), "")
    with pytest.raises(FailedPrecondition):
        pushes.config()
    with pytest.raises(FailedPrecondition):
        _register(pushes, "users/r8", push_service.subscribe())
    assert pushes.list(None, 0, "")[0] == []


def test_an_expired_subscription_is_not_pushed(pushing: _Pushing, push_service: LocalPushService) -> None:
    browser = push_service.subscribe()
    given = browser.subscription()
    soon = int((dt.datetime.now(dt.UTC) + dt.timedelta(milliseconds=300)).timestamp() * 1000)
    pushing.subscriptions.create(
        "users/p8", given["endpoint"], given["keys"]["p256dh"], given["keys"]["auth"], soon
    )
    time.sleep(0.4)  # the browser's expirationTime passes
    assert pushing.notify("users/p8") == []
    assert push_service.received == 0
