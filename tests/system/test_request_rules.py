"""Rules every method keeps, walked from the descriptors against the five real services.

All five run as processes started the way `poly up` starts them, with real mTLS. Every
method of every service each process serves (as its reflection lists them) is checked:

- field behaviour: an empty request from a caller the method admits is INVALID_ARGUMENT
  naming exactly the method's REQUIRED top-level fields;
- ownership (AIP-211, permission before existence): every ACCESS_OWNER method answers
  user B the same PERMISSION_DENIED NOT_OWNER, naming only the resource asked for (never
  its owner), for user A's real resource and for one that does not exist; the mutating
  ones change nothing, A and an admin still see A's, and only an admin learns NOT_FOUND
  for the one that does not exist;
- chosen ids (AIP-133): every Create taking a client-chosen id answers user B, creating
  with the id of A's resource, exactly what that resource's Get answers B, and changes
  nothing; only A and an admin learn ALREADY_EXISTS;
- the access log: a WatchOrder the client cancels is logged CANCELLED, not OK.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from google.api import field_behavior_pb2, resource_pb2
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from poly.auth.v1 import auth_service_pb2 as auth_pb
from poly.events.v1 import event_sink_pb2  # noqa: F401 - registers EventSinkService in the pool
from poly.notifications.v1 import notifications_service_pb2 as notifications_pb
from poly.notifications.v1 import notifications_service_pb2_grpc
from poly.notifications.v1 import resources_pb2 as notifications_resources
from poly.options.v1 import options_pb2
from poly.orders.v1 import orders_service_pb2 as orders_pb
from poly.orders.v1 import orders_service_pb2_grpc, resources_pb2
from poly.payments.v1 import payments_service_pb2 as payments_pb
from poly.payments.v1 import payments_service_pb2_grpc
from poly.type.v1.money_pb2 import Money
from poly.users.v1 import resources_pb2 as users_resources
from poly.users.v1 import users_service_pb2 as users_pb
from poly.users.v1 import users_service_pb2_grpc
from services.kit import config
from services.notifications.push_keys import encode
from tests.support.identity import PASSWORD, Deployment, bearer, start
from tests.support.status import refusal
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

Access = options_pb2.Access
_POOL = descriptor_pool.Default()
_READS = ("Get", "List", "Watch")


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    vapid = ec.generate_private_key(ec.SECP256R1()).private_numbers().private_value.to_bytes(32, "big")
    environ = {
        "POLY_WEBHOOK_ALLOW_PRIVATE": "true",
        "POLY_PUSH_VAPID_PRIVATE_KEY": encode(vapid),
        "POLY_PUSH_VAPID_SUBJECT": "mailto:ops@example.com",
    }
    deployment = start(tmp_path_factory.mktemp("rules"), config.SERVICES, environ)
    try:
        yield deployment
    finally:
        deployment.stop()


@pytest.fixture(scope="module")
def admin(system: Deployment) -> list[tuple[str, str]]:
    return bearer(system.create_admin())


def _served(system: Deployment) -> list[tuple[str, ServiceDescriptor]]:
    """(process, service) for every application service each process serves, from reflection."""
    found = []
    for process in config.SERVICES:
        names = ProtoReflectionDescriptorDatabase(system.channel(process)).get_services()
        found += [(process, _POOL.FindServiceByName(n)) for n in names if n.startswith("poly.")]
    return found


def _policy(method: MethodDescriptor) -> options_pb2.Policy:
    policy: options_pb2.Policy = method.GetOptions().Extensions[options_pb2.policy]
    return policy


def _behaviours(field: FieldDescriptor) -> list[int]:
    return list(field.GetOptions().Extensions[field_behavior_pb2.field_behavior])


def _call(system: Deployment, process: str, method: MethodDescriptor, request: Message, **kwargs: Any) -> Any:
    """Calls `method` on `process` (as the CLI, or `as_`), returning the response or its first
    stream message; a failed call raises grpc.RpcError."""
    channel = system.channel(process, as_=kwargs.pop("as_", "cli"))
    path = f"/{method.containing_service.full_name}/{method.name}"
    output = message_factory.GetMessageClass(method.output_type)
    if method.server_streaming:
        stream = channel.unary_stream(path, lambda m: m.SerializeToString(), output.FromString)
        call = stream(request, timeout=10, **kwargs)
        try:
            return next(iter(call))
        finally:
            call.cancel()
    return channel.unary_unary(path, lambda m: m.SerializeToString(), output.FromString)(
        request, timeout=10, **kwargs
    )


def _empty(method: MethodDescriptor) -> Message:
    return message_factory.GetMessageClass(method.input_type)()


# -- field behaviour ----------------------------------------------------------------------


def test_every_method_refuses_an_empty_request_naming_its_required_fields(
    system: Deployment, admin: list[tuple[str, str]]
) -> None:
    checked, wrong = [], {}
    for process, service in _served(system):
        for method in service.methods:
            required = [
                f.name for f in method.input_type.fields if field_behavior_pb2.REQUIRED in _behaviours(f)
            ]
            if not required:
                continue
            policy = _policy(method)
            caller: dict[str, Any] = {}
            if policy.access == Access.ACCESS_INTERNAL:
                caller["as_"] = policy.callers[0]
            elif policy.access in (Access.ACCESS_USER, Access.ACCESS_OWNER):
                caller["metadata"] = admin
            try:
                _call(system, process, method, _empty(method), **caller)
                answer: tuple[Any, ...] = ("OK",)
            except grpc.RpcError as error:
                refused = refusal(error)
                answer = (refused.code, refused.reason, sorted(refused.violations))
            checked.append(f"{process}:{method.full_name}")
            expected = (grpc.StatusCode.INVALID_ARGUMENT, "REQUIRED_FIELD_MISSING", sorted(required))
            if answer != expected:
                wrong[f"{process}:{method.full_name}"] = answer
    assert not wrong, wrong
    assert len(checked) >= 40, checked  # every service's methods, the event sink's on each process


def test_an_unauthorized_empty_request_learns_nothing_of_the_fields(system: Deployment) -> None:
    # Authorization runs first: no token is UNAUTHENTICATED, the wrong service is PERMISSION_DENIED.
    create_client = _POOL.FindMethodByName("poly.auth.v1.AuthService.CreateClient")
    with pytest.raises(grpc.RpcError) as anonymous:
        _call(system, "auth", create_client, _empty(create_client))
    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
    capture = _POOL.FindMethodByName("poly.payments.v1.PaymentsService.CapturePayment")
    with pytest.raises(grpc.RpcError) as foreign:
        _call(system, "payments", capture, _empty(capture), as_="users")
    assert foreign.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert not refusal(foreign.value).violations


# -- ownership ----------------------------------------------------------------------------


def _resource_patterns() -> dict[str, str]:
    """``{resource type: pattern}`` for every resource message of the served protos."""
    patterns: dict[str, str] = {}
    for service in ("auth", "users", "orders", "payments", "notifications"):
        file = _POOL.FindFileByName(f"poly/{service}/v1/resources.proto")
        for message in file.message_types_by_name.values():
            resource = message.GetOptions().Extensions[resource_pb2.resource]
            if resource.type:
                patterns[resource.type] = resource.pattern[0]
    return patterns


@dataclass
class Target:
    """Where a method takes its resource name, and which resource type that is."""

    path: list[str]
    """Field path of the name in the request, e.g. ``["user", "name"]``."""
    resource_type: str


def _target(method: MethodDescriptor, patterns: dict[str, str]) -> Target:
    fields = method.input_type.fields_by_name
    for name in ("name", "parent"):
        if name in fields:
            reference = fields[name].GetOptions().Extensions[resource_pb2.resource_reference]
            if reference.type:
                return Target([name], reference.type)
            child = patterns[reference.child_type]
            parent = child.rsplit("/", 2)[0]
            return Target([name], next(t for t, p in patterns.items() if p == parent))
    for field in method.input_type.fields:
        resource = (
            field.message_type.GetOptions().Extensions[resource_pb2.resource] if field.message_type else None
        )
        if resource is not None and resource.type:
            return Target([field.name, "name"], resource.type)
    raise AssertionError(f"{method.full_name}: no resource name field")


def _request(method: MethodDescriptor, target: Target, name: str) -> Message:
    """A request for `name` that is well-formed otherwise: its other required text fields
    hold a placeholder, so only who may act on `name` decides the answer."""
    request = _empty(method)
    for field in method.input_type.fields:
        required = field_behavior_pb2.REQUIRED in _behaviours(field)
        if (
            required
            and field.type == field.TYPE_STRING
            and not field.is_repeated
            and field.name != target.path[0]
        ):
            setattr(request, field.name, "placeholder")
    holder: Any = request
    for part in target.path[:-1]:
        holder = getattr(holder, part)
    setattr(holder, target.path[-1], name)
    if "update_mask" in method.input_type.fields_by_name:
        getattr(request, "update_mask").paths[:] = ["*"]  # noqa: B009 - full replacement: would wipe it
    return request


def _missing_name(pattern: str) -> str:
    return re.sub(r"\{[^}]+\}", lambda _: f"nx{uuid.uuid4().hex[:12]}", pattern)


def _shape(error: grpc.RpcError, name: str) -> tuple[Any, ...]:
    """The answer with the ids of `name` replaced, so two names' answers compare."""
    refused = refusal(error)
    ids = [part for index, part in enumerate(name.split("/")) if index % 2]

    def plain(text: str) -> str:
        for value in ids:
            text = text.replace(value, "{id}")
        return text

    metadata = {key: plain(value) for key, value in refused.metadata.items()}
    return refused.code, refused.reason, plain(refused.message), metadata


def _get_method(
    resource_type: str, owned: list[tuple[str, MethodDescriptor]]
) -> tuple[str, MethodDescriptor]:
    patterns = _resource_patterns()
    for process, method in owned:
        if method.name.startswith("Get") and _target(method, patterns).resource_type == resource_type:
            return process, method
    raise AssertionError(f"no Get method for {resource_type}")


def _owned_by(system: Deployment, admin: list[tuple[str, str]]) -> tuple[str, str, dict[str, str]]:
    """A customer (``users/{id}``), their email, and the name of one real resource of theirs per type."""
    email = f"alice-{uuid.uuid4().hex[:8]}@example.com"
    registered = system.auth().Register(
        auth_pb.RegisterRequest(email=email, password=PASSWORD, display_name="Alice"), timeout=10
    )
    access_token = system.login(email).access_token
    alice, token = registered.user, bearer(access_token)
    users = users_service_pb2_grpc.UsersServiceStub(system.channel("users"))
    eventually(
        lambda: _found(lambda: users.GetUser(users_pb.GetUserRequest(name=alice), metadata=token, timeout=10))
    )
    preferences = f"{alice}/preferences"
    users.UpdatePreferences(
        users_pb.UpdatePreferencesRequest(
            preferences=users_resources.Preferences(name=preferences, locale="en-GB"),
        ),
        metadata=token,
        timeout=10,
    )
    payments = payments_service_pb2_grpc.PaymentsServiceStub(system.channel("payments"))
    account_name = system.own_account(access_token)
    system.fund(account_name, admin, 5000)
    entries = payments.ListLedgerEntries(
        payments_pb.ListLedgerEntriesRequest(parent=account_name), metadata=admin, timeout=10
    )
    orders = orders_service_pb2_grpc.OrdersServiceStub(system.channel("orders"))
    line = resources_pb2.OrderLine(
        sku="SKU-1", quantity=1, unit_price=Money(currency_code="EUR", amount_minor=700)
    )
    order = orders.CreateOrder(
        orders_pb.CreateOrderRequest(order=resources_pb2.Order(lines=[line])), metadata=token, timeout=10
    )

    def paid() -> resources_pb2.Order | None:
        found = orders.GetOrder(orders_pb.GetOrderRequest(name=order.name), metadata=token, timeout=10)
        return found if found.state == resources_pb2.Order.STATE_PAID and found.payment else None

    payment = eventually(paid, timeout=60, what="alice's order to be paid").payment
    notifications = notifications_service_pb2_grpc.NotificationsServiceStub(system.channel("notifications"))
    webhook = notifications.CreateWebhook(
        notifications_pb.CreateWebhookRequest(
            webhook=notifications_resources.Webhook(url="http://127.0.0.1:9/hook")
        ),
        metadata=token,
        timeout=10,
    ).webhook.name
    browser = ec.generate_private_key(ec.SECP256R1()).public_key()
    keys = notifications_resources.PushSubscription.Keys(
        p256dh=encode(browser.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)),
        auth=encode(b"a" * 16),
    )
    push_subscription = notifications.CreatePushSubscription(
        notifications_pb.CreatePushSubscriptionRequest(
            push_subscription=notifications_resources.PushSubscription(
                endpoint="http://127.0.0.1:9/push/alice", keys=keys
            )
        ),
        metadata=token,
        timeout=10,
    ).name

    def delivery() -> str | None:
        found = notifications.ListDeliveries(
            notifications_pb.ListDeliveriesRequest(), metadata=token, timeout=10
        )
        return found.deliveries[0].name if found.deliveries else None

    return (
        alice,
        email,
        {
            "auth.poly.local/Identity": alice,
            "users.poly.local/User": alice,
            "users.poly.local/Preferences": preferences,
            "orders.poly.local/Order": order.name,
            "payments.poly.local/Account": account_name,
            "payments.poly.local/LedgerEntry": entries.ledger_entries[0].name,
            "payments.poly.local/Payment": payment,
            "notifications.poly.local/Webhook": webhook,
            "notifications.poly.local/PushSubscription": push_subscription,
            "notifications.poly.local/Delivery": eventually(delivery, timeout=30, what="a delivery to alice"),
        },
    )


@pytest.fixture(scope="module")
def owned_by_alice(system: Deployment, admin: list[tuple[str, str]]) -> tuple[str, str, dict[str, str]]:
    return _owned_by(system, admin)


def _found(call: Any) -> bool:
    try:
        call()
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            return False
        raise
    return True


def _as_admin(
    system: Deployment,
    admin: list[tuple[str, str]],
    method: MethodDescriptor,
    owned: list[tuple[str, MethodDescriptor]],
    name: str,
    real: str,
) -> Message:
    """The request an admin sends to `method` for `name`: a resource in the request (an
    update) is a copy of the real one, so only its name can make the call fail."""
    patterns = _resource_patterns()
    target = _target(method, patterns)
    request = _request(method, target, name)
    if len(target.path) == 2:
        process, get = _get_method(target.resource_type, owned)
        current = _call(system, process, get, _request(get, _target(get, patterns), real), metadata=admin)
        getattr(request, target.path[0]).CopyFrom(current)
        setattr(getattr(request, target.path[0]), "name", name)  # noqa: B010 - a field of any resource
    return request


def _owner_checked(system: Deployment) -> list[tuple[str, MethodDescriptor]]:
    return [
        (process, method)
        for process, service in _served(system)
        for method in service.methods
        if _policy(method).access == Access.ACCESS_OWNER
    ]


def test_every_owner_checked_method_refuses_anothers_resource_and_a_missing_one_alike(
    system: Deployment, admin: list[tuple[str, str]], owned_by_alice: tuple[str, str, dict[str, str]]
) -> None:
    owned = _owner_checked(system)
    assert len(owned) >= 15, owned
    patterns = _resource_patterns()
    alice, email, names = owned_by_alice
    _bob, bob_email = system.register()
    bob = bearer(system.login(bob_email).access_token)
    alice_token = bearer(system.login(email).access_token)
    mutated = {_target(m, patterns).resource_type for _, m in owned if not m.name.startswith(_READS)}

    def snapshot() -> dict[str, bytes]:
        taken = {}
        for resource_type in sorted(mutated):
            process, get = _get_method(resource_type, owned)
            request = _request(get, _target(get, patterns), names[resource_type])
            taken[resource_type] = _call(system, process, get, request, metadata=admin).SerializeToString(
                deterministic=True
            )
        return taken

    before = snapshot()
    different, not_found = {}, {}
    for process, method in owned:
        target = _target(method, patterns)
        real, missing = names[target.resource_type], _missing_name(patterns[target.resource_type])
        answers = []
        for name in (real, missing):
            with pytest.raises(grpc.RpcError) as refused:
                _call(system, process, method, _request(method, target, name), metadata=bob)
            found = refusal(refused.value)
            answers.append(_shape(refused.value, name))
            # Only the name asked for: never the owner, unless the name itself is alice's.
            assert found.message == f"the caller may not access {name}", (method.full_name, found)
            assert found.metadata == {"resource": name}, (method.full_name, found)
            assert alice not in found.message or name.startswith(alice), method.full_name
        expected = (grpc.StatusCode.PERMISSION_DENIED, "NOT_OWNER")
        if answers[0] != answers[1] or answers[0][:2] != expected:
            different[method.full_name] = answers
        if method.name.startswith(_READS):  # the owner and an admin still see it
            for caller in (alice_token, admin):
                assert _call(system, process, method, _request(method, target, real), metadata=caller)
        # Permission passed, existence is checked: an admin learns the made-up one is missing.
        request = _as_admin(system, admin, method, owned, missing, real)
        try:
            answer: Any = _call(system, process, method, request, metadata=admin)
        except grpc.RpcError as error:
            answer = refusal(error)
        if getattr(answer, "code", None) != grpc.StatusCode.NOT_FOUND:
            not_found[method.full_name] = answer
    assert not different, different
    assert not not_found, not_found
    assert snapshot() == before, "a refused call changed the resource"


def _chosen_id_creates(system: Deployment) -> list[tuple[str, MethodDescriptor, str, str]]:
    """(process, method, resource field, resource type) of every Create taking a client-chosen
    id: a resource field ``<x>`` beside an ``<x>_id`` field (AIP-133)."""
    found = []
    for process, service in _served(system):
        for method in service.methods:
            fields = method.input_type.fields_by_name
            for field in method.input_type.fields:
                resource = (
                    field.message_type.GetOptions().Extensions[resource_pb2.resource]
                    if field.message_type
                    else None
                )
                if (
                    method.name.startswith("Create")
                    and resource
                    and resource.type
                    and f"{field.name}_id" in fields
                ):
                    found.append((process, method, field.name, resource.type))
    return found


def _list_of(process: str, resource_type: str, system: Deployment) -> MethodDescriptor | None:
    """The List method of `process` whose response holds resources of `resource_type`."""
    for served_process, service in _served(system):
        for method in service.methods if served_process == process else ():
            held = [f.message_type for f in method.output_type.fields if f.is_repeated and f.message_type]
            types = {m.GetOptions().Extensions[resource_pb2.resource].type for m in held}
            if method.name.startswith("List") and resource_type in types:
                return method
    return None


def test_creating_with_anothers_id_answers_what_get_answers_and_changes_nothing(
    system: Deployment, admin: list[tuple[str, str]], owned_by_alice: tuple[str, str, dict[str, str]]
) -> None:
    owned, patterns = _owner_checked(system), _resource_patterns()
    _alice, email, names = owned_by_alice
    _bob, bob_email = system.register()
    bob, alice = bearer(system.login(bob_email).access_token), bearer(system.login(email).access_token)
    checked, wrong = [], {}
    for process, create, field, resource_type in _chosen_id_creates(system):
        if resource_type not in names:
            continue  # no resource of this type belongs to alice (e.g. auth clients)
        name = names[resource_type]
        get_process, get = _get_method(resource_type, owned)
        get_request = _request(get, _target(get, patterns), name)
        before = _call(system, get_process, get, get_request, metadata=admin)
        request = _empty(create)
        getattr(request, field).CopyFrom(before)  # a valid resource: only the id can make it fail
        getattr(request, field).ClearField("name")
        setattr(request, f"{field}_id", name.rsplit("/", 1)[1])
        answers = {}
        for who, caller, at, method, sent in (
            ("bob-get", bob, get_process, get, get_request),
            ("bob-create", bob, process, create, request),
            ("alice-create", alice, process, create, request),
            ("admin-create", admin, process, create, request),
        ):
            try:
                answers[who] = ("OK", _call(system, at, method, sent, metadata=caller))
            except grpc.RpcError as error:
                answers[who] = ("refused", refusal(error))
        assert answers["bob-get"][0] == "refused", (create.full_name, answers["bob-get"])
        if answers["bob-create"] != answers["bob-get"]:
            wrong[create.full_name] = (answers["bob-create"], answers["bob-get"])
        for who in ("alice-create", "admin-create"):
            outcome, found = answers[who]
            if outcome != "refused" or found.code != grpc.StatusCode.ALREADY_EXISTS:
                wrong[f"{create.full_name} as {who}"] = answers[who]
        assert _call(system, get_process, get, get_request, metadata=admin) == before, create.full_name
        listing = _list_of(process, resource_type, system)
        if listing is not None:
            listed = _call(system, process, listing, _empty(listing), metadata=bob)
            assert not any(f.is_repeated and len(getattr(listed, f.name)) for f in listing.output_type.fields)
        checked.append(resource_type)
    assert not wrong, wrong
    assert {"orders.poly.local/Order", "notifications.poly.local/Webhook"} <= set(checked), checked


# -- access log ---------------------------------------------------------------------------


def test_a_watch_the_client_cancels_is_logged_cancelled(
    system: Deployment, admin: list[tuple[str, str]]
) -> None:
    # A PAID order: its watch stays open (PAID is not terminal), so only the client ends it.
    # An unfunded order fails payment and ends its watch by itself, OK, sometimes first.
    _, email = system.register()
    buyer_token = system.login(email).access_token
    buyer = bearer(buyer_token)
    system.fund(system.own_account(buyer_token), admin, 100)  # the buyer's own, not an admin's first
    orders = orders_service_pb2_grpc.OrdersServiceStub(system.channel("orders"))
    line = resources_pb2.OrderLine(
        sku="SKU-1", quantity=1, unit_price=Money(currency_code="EUR", amount_minor=100)
    )
    order = orders.CreateOrder(
        orders_pb.CreateOrderRequest(order=resources_pb2.Order(lines=[line])), metadata=buyer, timeout=10
    )

    def paid() -> resources_pb2.Order | None:
        found = orders.GetOrder(orders_pb.GetOrderRequest(name=order.name), metadata=buyer, timeout=10)
        return found if found.state == resources_pb2.Order.STATE_PAID else None

    eventually(paid, timeout=60, what="the order to be paid")
    process = system.processes["orders"]
    seen = len(process.lines)
    watch = orders.WatchOrder(orders_pb.WatchOrderRequest(name=order.name), metadata=admin, timeout=30)
    assert next(watch).order.name == order.name
    watch.cancel()

    def logged() -> dict[str, Any] | None:
        for text in process.lines[seen:]:
            if text.startswith("{"):
                entry = json.loads(text)
                if entry.get("logger") == "poly.access" and str(entry.get("method", "")).endswith(
                    "/WatchOrder"
                ):
                    return dict(entry)
        return None

    assert eventually(logged, what="the WatchOrder access line")["code"] == "CANCELLED"
