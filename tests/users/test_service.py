"""The users service as a process beside auth: profiles from UserRegistered, Get, List with
filters and page tokens, Update with field masks and etags, soft Delete (which auth obeys),
preferences, the INTERNAL LookupContact, and every refusal the policies promise.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from sqlalchemy import create_engine, text

from poly.auth.v1 import auth_service_pb2 as auth_pb
from poly.auth.v1 import resources_pb2 as auth_resources_pb2
from poly.events.v1 import events_pb2
from poly.events.v1.events_pb2 import EventEnvelope
from poly.users.v1 import resources_pb2, users_service_pb2_grpc
from poly.users.v1 import users_service_pb2 as pb
from tests.support.identity import PASSWORD, Deployment, bearer, start
from tests.support.status import Refusal, refusal
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

User = resources_pb2.User
Preferences = resources_pb2.Preferences


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def system(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    database = {}
    if request.param == "postgresql":
        make: Callable[[], str] = request.getfixturevalue("postgres_databases")
        database = {"POLY_USERS_DATABASE_URL": make()}
    # Only auth and users run. Routes come from the contract: nothing to wait for, and the
    # events for the absent consumers simply wait in the outboxes.
    deployment = start(tmp_path_factory.mktemp("users"), ["auth", "users"], database)
    try:
        yield deployment
    finally:
        deployment.stop()


@pytest.fixture
def users(system: Deployment) -> users_service_pb2_grpc.UsersServiceStub:
    """A fresh channel per test: one test restarts users, and a channel that saw it down waits
    out gRPC's reconnect backoff (seconds, growing) before it tries again."""
    return users_service_pb2_grpc.UsersServiceStub(system.channel("users"))


@pytest.fixture(scope="module")
def admin(system: Deployment) -> list[tuple[str, str]]:
    return bearer(system.create_admin())


@dataclass(frozen=True)
class Person:
    name: str
    email: str
    auth: list[tuple[str, str]]

    @property
    def preferences(self) -> str:
        return f"{self.name}/preferences"


def _person(
    system: Deployment, users: users_service_pb2_grpc.UsersServiceStub, display_name: str = ""
) -> Person:
    """A registered, logged-in user whose profile the users service has created."""
    email = f"user-{uuid.uuid4().hex[:10]}@example.com"
    reply = system.auth().Register(
        auth_pb.RegisterRequest(email=email, password=PASSWORD, display_name=display_name), timeout=10
    )
    person = Person(reply.user, email, bearer(system.login(email).access_token))
    eventually(lambda: _get(users, person.name, person.auth), timeout=15, what=f"the profile {person.name}")
    return person


def _get(
    users: users_service_pb2_grpc.UsersServiceStub, name: str, auth: list[tuple[str, str]]
) -> User | None:
    try:
        found: User = users.GetUser(pb.GetUserRequest(name=name), metadata=auth, timeout=10)
    except grpc.RpcError as error:
        assert refusal(error).code == grpc.StatusCode.NOT_FOUND, refusal(error)
        return None
    return found


def _refused(call: Callable[..., object], request: object, **kwargs: object) -> Refusal:
    with pytest.raises(grpc.RpcError) as failed:
        call(request, timeout=10, **kwargs)
    return refusal(failed.value)


@pytest.fixture
def person(system: Deployment, users: users_service_pb2_grpc.UsersServiceStub) -> Person:
    return _person(system, users, "Ada Lovelace")


# -- the profile ---------------------------------------------------------------------------


def test_registration_creates_the_profile_with_default_preferences(
    users: users_service_pb2_grpc.UsersServiceStub, person: Person
) -> None:
    found = users.GetUser(pb.GetUserRequest(name=person.name), metadata=person.auth, timeout=10)
    assert (found.name, found.email, found.display_name) == (person.name, person.email, "Ada Lovelace")
    assert found.state == User.STATE_ACTIVE and found.etag
    assert found.create_time.seconds and not found.HasField("delete_time")
    preferences = users.GetPreferences(
        pb.GetPreferencesRequest(name=person.preferences), metadata=person.auth, timeout=10
    )
    assert preferences.name == person.preferences
    assert preferences.HasField("email_enabled") and preferences.email_enabled
    assert preferences.HasField("webhook_enabled") and preferences.webhook_enabled
    assert (list(preferences.muted_event_types), preferences.locale) == ([], "en")


def test_a_missing_user_is_not_found_for_an_admin_and_refused_to_a_user(
    users: users_service_pb2_grpc.UsersServiceStub, admin: list[tuple[str, str]], person: Person
) -> None:
    name = f"users/{uuid.uuid4()}"
    missing = pb.GetUserRequest(name=name)
    found = _refused(users.GetUser, missing, metadata=admin)
    assert (found.code, found.reason) == (grpc.StatusCode.NOT_FOUND, "USER_NOT_FOUND")
    # AIP-211: permission before existence; a user is refused whether or not it exists.
    refused = _refused(users.GetUser, missing, metadata=person.auth)
    assert (refused.code, refused.reason) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_OWNER")
    assert (refused.message, refused.metadata) == (f"the caller may not access {name}", {"resource": name})
    assert _refused(users.GetUser, missing).code == grpc.StatusCode.UNAUTHENTICATED


def test_update_writes_the_masked_fields_and_changes_the_etag(
    users: users_service_pb2_grpc.UsersServiceStub, person: Person
) -> None:
    before = users.GetUser(pb.GetUserRequest(name=person.name), metadata=person.auth, timeout=10)
    renamed = users.UpdateUser(
        pb.UpdateUserRequest(
            user=User(name=person.name, display_name="Countess", etag=before.etag, email="x@evil.example"),
            update_mask=FieldMask(paths=["display_name"]),
        ),
        metadata=person.auth,
        timeout=10,
    )
    assert (renamed.display_name, renamed.email) == ("Countess", person.email)
    assert renamed.etag != before.etag and renamed.update_time.ToDatetime() >= before.update_time.ToDatetime()
    implicit = users.UpdateUser(  # no mask: the fields that are set (the etag is only checked)
        pb.UpdateUserRequest(user=User(name=person.name, display_name="Ada", etag=renamed.etag)),
        metadata=person.auth,
        timeout=10,
    )
    assert implicit.display_name == "Ada" and implicit.etag not in (before.etag, renamed.etag)
    cleared = users.UpdateUser(
        pb.UpdateUserRequest(user=User(name=person.name), update_mask=FieldMask(paths=["*"])),
        metadata=person.auth,
        timeout=10,
    )
    assert cleared.display_name == "" and cleared.etag != implicit.etag
    stale = _refused(
        users.UpdateUser,
        pb.UpdateUserRequest(user=User(name=person.name, display_name="Late", etag=renamed.etag)),
        metadata=person.auth,
    )
    assert (stale.code, stale.reason) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    assert users.GetUser(pb.GetUserRequest(name=person.name), metadata=person.auth, timeout=10) == cleared


def test_the_mask_names_every_bad_path(
    users: users_service_pb2_grpc.UsersServiceStub, person: Person
) -> None:
    found = _refused(
        users.UpdateUser,
        pb.UpdateUserRequest(
            user=User(name=person.name, display_name="Ok"),
            update_mask=FieldMask(paths=["display_name", "etag", "email", "nickname", "state", "name"]),
        ),
        metadata=person.auth,
    )
    assert (found.code, found.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "UPDATE_MASK_INVALID")
    # Output-only, identifier and checked fields are ignored (AIP-203); an unknown one is not.
    assert sorted(found.violations) == ["update_mask.paths[3]"]
    assert "not a field" in found.violations["update_mask.paths[3]"]


def test_a_user_read_and_sent_back_whole_updates_what_changed(
    users: users_service_pb2_grpc.UsersServiceStub, person: Person
) -> None:
    """The mask names every field the resource holds, as the edge derives one from a PATCH
    body that round-trips a GET: the output-only ones and the etag are ignored."""
    read = users.GetUser(pb.GetUserRequest(name=person.name), metadata=person.auth, timeout=10)
    changed = User()
    changed.CopyFrom(read)
    changed.display_name = "Round Trip"
    paths = [field.name for field, _ in changed.ListFields()]
    assert {"name", "email", "state", "create_time", "etag"} <= set(paths)
    updated = users.UpdateUser(
        pb.UpdateUserRequest(user=changed, update_mask=FieldMask(paths=paths)),
        metadata=person.auth,
        timeout=10,
    )
    assert updated.display_name == "Round Trip"
    assert (updated.email, updated.create_time) == (read.email, read.create_time)
    assert updated.etag != read.etag


# -- bad input changes nothing -------------------------------------------------------------

_BAD_USER_UPDATES = [
    ("", "", ["display_name"], "user.name"),
    ("users/", "", ["display_name"], "user.name"),
    ("orders/{id}", "", ["display_name"], "user.name"),
    ("users/{id}/extra", "", ["display_name"], "user.name"),
    ("{name}", "x" * 64, ["display_name"], "user.display_name"),
    ("{name}", "Ada\nLovelace", ["display_name"], "user.display_name"),
    ("{name}", "tab\there", ["display_name"], "user.display_name"),
    ("{name}", "Ada\u202eecalevoL", ["display_name"], "user.display_name"),
    ("{name}", "Ad\u200ba", ["display_name"], "user.display_name"),
    ("{name}", "\ufeffAda", ["display_name"], "user.display_name"),
    ("{name}", "Ada\x9b31m", ["display_name"], "user.display_name"),
    ("{name}", "Ok", ["display_name.first"], "update_mask.paths[0]"),
    ("{name}", "Ok", ["create_time", "nickname"], "update_mask.paths[1]"),
    ("{name}", "Ok", ["*", "display_name"], "update_mask.paths[0]"),
]


@pytest.mark.parametrize(
    ("name", "display_name", "paths", "field"),
    _BAD_USER_UPDATES,
    ids=[
        "empty-name",
        "empty-id",
        "other-collection",
        "nested-name",
        "display-name-64",
        "display-name-newline",
        "display-name-tab",
        "display-name-bidi-override",
        "display-name-zero-width-space",
        "display-name-bom",
        "display-name-c1-csi",
        "nested-path",
        "output-only-ignored-unknown-named",
        "star-with-others",
    ],
)
def test_bad_user_updates_are_refused_and_change_nothing(
    users: users_service_pb2_grpc.UsersServiceStub,
    person: Person,
    name: str,
    display_name: str,
    paths: list[str],
    field: str,
) -> None:
    before = users.GetUser(pb.GetUserRequest(name=person.name), metadata=person.auth, timeout=10)
    target = name.format(name=person.name, id=person.name.removeprefix("users/"))
    found = _refused(
        users.UpdateUser,
        pb.UpdateUserRequest(
            user=User(name=target, display_name=display_name), update_mask=FieldMask(paths=paths)
        ),
        metadata=person.auth,
    )
    assert found.code == grpc.StatusCode.INVALID_ARGUMENT and list(found.violations) == [field], found
    assert users.GetUser(pb.GetUserRequest(name=person.name), metadata=person.auth, timeout=10) == before


_BAD_PREFERENCES = [
    ("", {}, ["email_enabled"], ["preferences.name"]),
    ("{user}", {}, ["email_enabled"], ["preferences.name"]),
    ("{user}/settings", {}, ["email_enabled"], ["preferences.name"]),
    ("{prefs}", {"locale": "english!"}, ["locale"], ["preferences.locale"]),
    ("{prefs}", {"locale": "en-" + "a" * 40}, ["locale"], ["preferences.locale"]),
    ("{prefs}", {"locale": "e"}, ["locale"], ["preferences.locale"]),
    (
        "{prefs}",
        {"muted_event_types": ["poly.events.v1.OrderPaid", "poly.events.v1.PaymentCaptured"]},
        ["muted_event_types"],
        ["preferences.muted_event_types[1]"],
    ),
    (
        "{prefs}",
        {"muted_event_types": ["poly.events.v1.OrderPaid", "poly.events.v1.OrderPaid"]},
        ["muted_event_types"],
        ["preferences.muted_event_types[1]"],
    ),
    (
        "{prefs}",
        {"muted_event_types": ["poly.events.v1.OrderPaid"] * 11},
        ["muted_event_types"],
        ["preferences.muted_event_types", *(f"preferences.muted_event_types[{i}]" for i in range(1, 11))],
    ),
    (
        "{prefs}",
        {"locale": "??", "muted_event_types": ["nope"]},
        ["locale", "muted_event_types"],
        ["preferences.locale", "preferences.muted_event_types[0]"],
    ),
    ("{prefs}", {}, ["update_time", "colour"], ["update_mask.paths[1]"]),
    ("{prefs}", {}, ["name", "colour"], ["update_mask.paths[1]"]),
]


@pytest.mark.parametrize(
    ("name", "values", "paths", "fields"),
    _BAD_PREFERENCES,
    ids=[
        "empty-name",
        "user-name",
        "other-singleton",
        "locale-punctuation",
        "locale-too-long",
        "locale-too-short",
        "unknown-muted-type",
        "duplicate-muted-type",
        "too-many-muted-types",
        "every-bad-field",
        "output-only-ignored-unknown-named",
        "identifier-ignored-unknown-named",
    ],
)
def test_bad_preference_updates_are_refused_and_change_nothing(
    users: users_service_pb2_grpc.UsersServiceStub,
    person: Person,
    name: str,
    values: dict[str, object],
    paths: list[str],
    fields: list[str],
) -> None:
    read = pb.GetPreferencesRequest(name=person.preferences)
    before = users.GetPreferences(read, metadata=person.auth, timeout=10)
    target = name.format(user=person.name, prefs=person.preferences)
    found = _refused(
        users.UpdatePreferences,
        pb.UpdatePreferencesRequest(
            preferences=Preferences(name=target, **values),  # type: ignore[arg-type]
            update_mask=FieldMask(paths=paths),
        ),
        metadata=person.auth,
    )
    assert found.code == grpc.StatusCode.INVALID_ARGUMENT and sorted(found.violations) == sorted(fields), (
        found
    )
    assert users.GetPreferences(read, metadata=person.auth, timeout=10) == before


def test_preferences_follow_the_mask(users: users_service_pb2_grpc.UsersServiceStub, person: Person) -> None:
    muted = ["poly.events.v1.OrderCancelled", "poly.events.v1.UserRegistered"]
    written = users.UpdatePreferences(
        pb.UpdatePreferencesRequest(
            preferences=Preferences(
                name=person.preferences, email_enabled=False, muted_event_types=muted, locale="pt-BR"
            )
        ),
        metadata=person.auth,
        timeout=10,
    )
    assert (written.email_enabled, written.webhook_enabled, written.locale) == (False, True, "pt-BR")
    assert list(written.muted_event_types) == muted
    masked = users.UpdatePreferences(  # in the mask but unset: back to the default; outside it: kept
        pb.UpdatePreferencesRequest(
            preferences=Preferences(name=person.preferences, webhook_enabled=False, locale="en-GB"),
            update_mask=FieldMask(paths=["email_enabled", "muted_event_types"]),
        ),
        metadata=person.auth,
        timeout=10,
    )
    assert (masked.email_enabled, masked.webhook_enabled, masked.locale) == (True, True, "pt-BR")
    assert list(masked.muted_event_types) == []
    assert masked.update_time.ToDatetime() >= written.update_time.ToDatetime()


# -- delete --------------------------------------------------------------------------------


DELETED_EVENTS = [
    "poly.events.v1.ContactChanged",  # the profile's creation
    "poly.events.v1.ContactChanged",  # its deletion: notifications sends nothing more
    "poly.events.v1.UserDeleted",
]


def _published(system: Deployment, user: str) -> list[EventEnvelope]:
    """The events users published about `user`, in the order they were published."""
    engine = create_engine(system.settings("users").db.url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text("SELECT envelope FROM bus_outbox WHERE aggregate_id = :user ORDER BY position"),
                {"user": user},
            ).scalars()
            return [EventEnvelope.FromString(row) for row in rows]
    finally:
        engine.dispose()


def _types(system: Deployment, user: str) -> list[str]:
    return [envelope.type for envelope in _published(system, user)]


def _contacts(system: Deployment, user: str) -> list[events_pb2.ContactChanged]:
    found = []
    for envelope in _published(system, user):
        if envelope.type == "poly.events.v1.ContactChanged":
            changed = events_pb2.ContactChanged()
            assert envelope.payload.Unpack(changed)
            found.append(changed)
    return found


def test_every_write_publishes_the_whole_contact_for_notifications(
    system: Deployment, users: users_service_pb2_grpc.UsersServiceStub, person: Person
) -> None:
    """Creation, a rename, a preferences change and the delete each publish ContactChanged
    with everything notifications needs, as of that write; a refused write publishes none."""
    current = users.GetUser(pb.GetUserRequest(name=person.name), metadata=person.auth, timeout=10)
    renamed = users.UpdateUser(
        pb.UpdateUserRequest(
            user=User(name=person.name, display_name="Ada King", etag=current.etag),
            update_mask=FieldMask(paths=["display_name"]),
        ),
        metadata=person.auth,
        timeout=10,
    )
    users.UpdatePreferences(
        pb.UpdatePreferencesRequest(
            preferences=Preferences(
                name=person.preferences,
                email_enabled=False,
                muted_event_types=["poly.events.v1.OrderCancelled"],
                locale="en-GB",
            ),
            update_mask=FieldMask(paths=["email_enabled", "muted_event_types", "locale"]),
        ),
        metadata=person.auth,
        timeout=10,
    )
    stale = _refused(
        users.DeleteUser, pb.DeleteUserRequest(name=person.name, etag=current.etag), metadata=person.auth
    )
    assert stale.code == grpc.StatusCode.ABORTED
    users.DeleteUser(
        pb.DeleteUserRequest(name=person.name, etag=renamed.etag), metadata=person.auth, timeout=10
    )

    def seen(changed: events_pb2.ContactChanged) -> tuple[object, ...]:
        return (
            changed.display_name,
            changed.email_enabled,
            changed.webhook_enabled,
            tuple(changed.muted_event_types),
            changed.locale,
            changed.deleted,
        )

    contacts = _contacts(system, person.name)
    assert {(c.user, c.email) for c in contacts} == {(person.name, person.email)}
    muted = ("poly.events.v1.OrderCancelled",)
    assert [seen(c) for c in contacts] == [
        ("Ada Lovelace", True, True, (), "en", False),
        ("Ada King", True, True, (), "en", False),
        ("Ada King", False, True, muted, "en-GB", False),
        ("Ada King", False, True, muted, "en-GB", True),
    ]


def test_delete_is_soft_once_and_disables_the_login(
    system: Deployment,
    users: users_service_pb2_grpc.UsersServiceStub,
    admin: list[tuple[str, str]],
    person: Person,
) -> None:
    current = users.GetUser(pb.GetUserRequest(name=person.name), metadata=person.auth, timeout=10)
    stale = _refused(
        users.DeleteUser, pb.DeleteUserRequest(name=person.name, etag='W/"999"'), metadata=person.auth
    )
    assert (stale.code, stale.reason) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    deleted = users.DeleteUser(
        pb.DeleteUserRequest(name=person.name, etag=current.etag), metadata=person.auth, timeout=10
    )
    assert deleted.state == User.STATE_DELETED and deleted.HasField("delete_time")
    assert deleted.etag != current.etag
    assert _types(system, person.name) == DELETED_EVENTS

    def login_refused() -> str:
        try:
            system.login(person.email)
        except grpc.RpcError as error:
            return refusal(error).reason
        return ""

    assert eventually(login_refused, timeout=15, what="auth to disable the identity") == "IDENTITY_DISABLED"
    admin_view = users.GetUser(pb.GetUserRequest(name=person.name), metadata=admin, timeout=10)
    again = users.DeleteUser(
        pb.DeleteUserRequest(name=person.name, etag=current.etag),
        metadata=admin,
        timeout=10,
    )
    assert admin_view == deleted == again
    assert _types(system, person.name) == DELETED_EVENTS  # the repeat published nothing
    gone = _refused(
        users.UpdateUser,
        pb.UpdateUserRequest(user=User(name=person.name, display_name="Back")),
        metadata=admin,
    )
    assert (gone.code, gone.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "USER_DELETED")


# -- list ----------------------------------------------------------------------------------


def _list(
    users: users_service_pb2_grpc.UsersServiceStub, auth: list[tuple[str, str]], **fields: object
) -> pb.ListUsersResponse:
    reply: pb.ListUsersResponse = users.ListUsers(pb.ListUsersRequest(**fields), metadata=auth, timeout=10)  # type: ignore[arg-type]
    return reply


def test_list_filters_orders_and_hides_the_deleted(
    system: Deployment, users: users_service_pb2_grpc.UsersServiceStub, admin: list[tuple[str, str]]
) -> None:
    tag = uuid.uuid4().hex[:6]
    kept = _person(system, users, f"kept-{tag}")
    gone = _person(system, users, f"gone-{tag}")
    users.DeleteUser(pb.DeleteUserRequest(name=gone.name), metadata=gone.auth, timeout=10)

    def names(**fields: object) -> list[str]:
        return [u.name for u in _list(users, admin, **fields).users]

    assert names(filter=f'email = "{kept.email.upper()}"') == [kept.name]
    assert names(filter=f'email = "{gone.email}"') == []
    assert names(filter=f'email = "{gone.email}"', show_deleted=True) == [gone.name]
    assert names(filter=f'display_name = "gone-{tag}" AND state = DELETED', show_deleted=True) == [gone.name]
    assert gone.name not in names(filter="state = ACTIVE", page_size=1000, show_deleted=True)
    newest = names(page_size=1000)
    assert kept.name in newest and gone.name not in newest
    created = [u.create_time.ToDatetime() for u in _list(users, admin, page_size=1000).users]
    assert created == sorted(created, reverse=True)
    emails = [u.email for u in _list(users, admin, page_size=1000, order_by="email").users]
    assert emails == sorted(emails)
    since = users.GetUser(pb.GetUserRequest(name=kept.name), metadata=admin, timeout=10).create_time
    recent = _list(users, admin, filter=f'create_time >= "{since.ToJsonString()}"', order_by="create_time")
    assert [u.name for u in recent.users] == [kept.name]  # gone is deleted and hidden


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"filter": "nickname = x"}, "filter"),
        ({"filter": "state = GONE"}, "filter"),
        ({"filter": 'create_time > "yesterday"'}, "filter"),
        ({"filter": "email > a"}, "filter"),
        ({"order_by": "state"}, "order_by"),
        ({"order_by": "email sideways"}, "order_by"),
        ({"page_size": -1}, "page_size"),
        ({"page_token": "not-a-token"}, "page_token"),
    ],
    ids=[
        "unknown-field",
        "unknown-state",
        "bad-time",
        "unordered-operator",
        "bad-order-field",
        "bad-direction",
        "negative-size",
        "forged-token",
    ],
)
def test_bad_list_requests_are_refused(
    users: users_service_pb2_grpc.UsersServiceStub,
    admin: list[tuple[str, str]],
    fields: dict[str, object],
    field: str,
) -> None:
    found = _refused(users.ListUsers, pb.ListUsersRequest(**fields), metadata=admin)  # type: ignore[arg-type]
    assert found.code == grpc.StatusCode.INVALID_ARGUMENT and list(found.violations) == [field], found


def test_a_page_token_is_bound_to_its_filters(
    system: Deployment, users: users_service_pb2_grpc.UsersServiceStub, admin: list[tuple[str, str]]
) -> None:
    _person(system, users)
    _person(system, users)
    first = _list(users, admin, page_size=1, filter="state = ACTIVE")
    assert first.next_page_token
    found = _refused(
        users.ListUsers,
        pb.ListUsersRequest(page_size=1, page_token=first.next_page_token, order_by="email"),
        metadata=admin,
    )
    assert (found.code, list(found.violations)) == (grpc.StatusCode.INVALID_ARGUMENT, ["page_token"])


@pytest.mark.parametrize("order_by", ["", "create_time", "email desc"], ids=["newest", "oldest", "email"])
def test_paging_while_users_register_has_no_duplicates_and_no_gaps(
    system: Deployment,
    users: users_service_pb2_grpc.UsersServiceStub,
    admin: list[tuple[str, str]],
    order_by: str,
) -> None:
    for _ in range(max(0, 12 - len(_list(users, admin, page_size=1000).users))):
        _person(system, users)
    existing = {u.name for u in _list(users, admin, page_size=1000, order_by=order_by).users}
    stop = threading.Event()
    registered: list[str] = []

    def register() -> None:
        while not stop.is_set() and len(registered) < 20:
            registered.append(system.register()[0])

    writer = threading.Thread(target=register)
    writer.start()
    seen: list[str] = []
    token = ""
    try:
        while True:
            page = _list(users, admin, page_size=3, order_by=order_by, page_token=token)
            seen += [u.name for u in page.users]
            token = page.next_page_token
            if not token:
                break
    finally:
        stop.set()
        writer.join(30)
    assert len(seen) == len(set(seen)), "a user was served twice"
    assert existing <= set(seen), f"gaps: {existing - set(seen)}"
    assert registered, "no user registered while paging"


# -- who may call what ---------------------------------------------------------------------


Stub = users_service_pb2_grpc.UsersServiceStub
Metadata = list[tuple[str, str]]
_ATTACKS: list[tuple[str, Callable[[Stub, Person, Metadata], object]]] = [
    ("get", lambda s, b, m: s.GetUser(pb.GetUserRequest(name=b.name), timeout=10, metadata=m)),
    (
        "update",
        lambda s, b, m: s.UpdateUser(
            pb.UpdateUserRequest(user=User(name=b.name, display_name="pwned")), timeout=10, metadata=m
        ),
    ),
    ("delete", lambda s, b, m: s.DeleteUser(pb.DeleteUserRequest(name=b.name), timeout=10, metadata=m)),
    (
        "get-preferences",
        lambda s, b, m: s.GetPreferences(
            pb.GetPreferencesRequest(name=b.preferences), timeout=10, metadata=m
        ),
    ),
    (
        "update-preferences",
        lambda s, b, m: s.UpdatePreferences(
            pb.UpdatePreferencesRequest(preferences=Preferences(name=b.preferences, email_enabled=False)),
            timeout=10,
            metadata=m,
        ),
    ),
]


@pytest.fixture(scope="module")
def victim(system: Deployment) -> Person:
    return _person(system, users_service_pb2_grpc.UsersServiceStub(system.channel("users")), "Victim")


@pytest.mark.parametrize("attack", [a for _, a in _ATTACKS], ids=[i for i, _ in _ATTACKS])
def test_a_user_cannot_touch_another_users_profile_or_preferences(
    users: users_service_pb2_grpc.UsersServiceStub,
    person: Person,
    victim: Person,
    attack: Callable[[Stub, Person, Metadata], object],
) -> None:
    before = users.GetUser(pb.GetUserRequest(name=victim.name), metadata=victim.auth, timeout=10)
    prefs = pb.GetPreferencesRequest(name=victim.preferences)
    before_prefs = users.GetPreferences(prefs, metadata=victim.auth, timeout=10)
    with pytest.raises(grpc.RpcError) as failed:
        attack(users, victim, person.auth)
    found = refusal(failed.value)  # AIP-211: the same answer as for a user that does not exist
    assert (found.code, found.reason) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_OWNER")
    assert found.metadata["resource"] in (victim.name, victim.preferences)
    assert found.message == f"the caller may not access {found.metadata['resource']}"
    assert person.name not in found.message
    assert users.GetUser(pb.GetUserRequest(name=victim.name), metadata=victim.auth, timeout=10) == before
    assert users.GetPreferences(prefs, metadata=victim.auth, timeout=10) == before_prefs


def test_only_an_admin_lists_users(
    users: users_service_pb2_grpc.UsersServiceStub, person: Person, admin: list[tuple[str, str]]
) -> None:
    found = _refused(users.ListUsers, pb.ListUsersRequest(), metadata=person.auth)
    assert (found.code, found.reason) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_MISSING")
    assert _refused(users.ListUsers, pb.ListUsersRequest()).code == grpc.StatusCode.UNAUTHENTICATED
    assert _list(users, admin, page_size=1).users


def test_lookup_contact_answers_only_the_notifications_service(
    system: Deployment, users: users_service_pb2_grpc.UsersServiceStub, person: Person
) -> None:
    users.UpdatePreferences(
        pb.UpdatePreferencesRequest(
            preferences=Preferences(name=person.preferences, webhook_enabled=False, locale=""),
            update_mask=FieldMask(paths=["webhook_enabled", "locale"]),
        ),
        metadata=person.auth,
        timeout=10,
    )
    notifications = users_service_pb2_grpc.UsersServiceStub(system.channel("users", as_="notifications"))
    contact = notifications.LookupContact(pb.LookupContactRequest(name=person.name), timeout=10)
    assert (contact.user, contact.email, contact.display_name) == (person.name, person.email, "Ada Lovelace")
    assert contact.locale == "en" and contact.state == User.STATE_ACTIVE
    assert contact.preferences.email_enabled and not contact.preferences.webhook_enabled
    missing = _refused(notifications.LookupContact, pb.LookupContactRequest(name=f"users/{uuid.uuid4()}"))
    assert (missing.code, missing.reason) == (grpc.StatusCode.NOT_FOUND, "USER_NOT_FOUND")
    for caller in ("cli", "gateway", "orders"):
        stub = users_service_pb2_grpc.UsersServiceStub(system.channel("users", as_=caller))
        found = _refused(stub.LookupContact, pb.LookupContactRequest(name=person.name), metadata=person.auth)
        assert (found.code, found.reason) == (grpc.StatusCode.PERMISSION_DENIED, "CALLER_NOT_ALLOWED"), caller


@pytest.mark.parametrize(
    ("scope", "allowed"), [("users.read", True), ("orders.read", False)], ids=["users", "orders"]
)
def test_a_machine_client_lists_and_reads_users_only_with_the_users_read_scope(
    system: Deployment,
    users: users_service_pb2_grpc.UsersServiceStub,
    admin: list[tuple[str, str]],
    victim: Person,
    scope: str,
    allowed: bool,
) -> None:
    client_id = f"reader-{uuid.uuid4().hex[:8]}"
    made = system.auth().CreateClient(
        auth_pb.CreateClientRequest(client_id=client_id, client=auth_resources_pb2.Client(scopes=[scope])),
        metadata=admin,
        timeout=10,
    )
    token = system.auth().IssueClientToken(
        auth_pb.IssueClientTokenRequest(client_id=client_id, client_secret=made.client_secret), timeout=10
    )
    machine = bearer(token.access_token)
    if allowed:
        assert victim.name in {u.name for u in _list(users, machine, page_size=1000).users}
        assert (
            users.GetUser(pb.GetUserRequest(name=victim.name), metadata=machine, timeout=10).name
            == victim.name
        )
        return
    for call, request in (
        (users.ListUsers, pb.ListUsersRequest()),
        (users.GetUser, pb.GetUserRequest(name=victim.name)),
    ):
        found = _refused(call, request, metadata=machine)
        assert (found.code, found.reason) == (grpc.StatusCode.PERMISSION_DENIED, "SCOPE_MISSING")


def test_a_registration_made_while_users_is_down_gets_its_profile_on_restart(system: Deployment) -> None:
    system.processes.pop("users").stop()
    user, email = system.register()
    system.start(["users"])
    token = bearer(system.login(email).access_token)
    restarted = users_service_pb2_grpc.UsersServiceStub(system.channel("users"))
    found = eventually(lambda: _get(restarted, user, token), timeout=30, what="the profile after the restart")
    assert (found.email, found.state) == (email, User.STATE_ACTIVE)


@pytest.mark.parametrize(
    "number",
    [
        "4915123456789",
        "+0915123456789",
        "+49 151 23456789",
        "+49151",
        "+4915123456789012",
        "+49-151-2345",
        "+\uff14\uff191512345678",  # full-width digits, which \d would match
    ],
    ids=["no-plus", "country-zero", "spaces", "too-short", "too-long", "dashes", "full-width-digits"],
)
def test_a_phone_number_that_is_not_e164_is_refused(
    users: users_service_pb2_grpc.UsersServiceStub, person: Person, number: str
) -> None:
    found = _refused(
        users.UpdateUser,
        pb.UpdateUserRequest(
            user=User(name=person.name, phone_number=number), update_mask=FieldMask(paths=["phone_number"])
        ),
        metadata=person.auth,
    )
    assert found.code == grpc.StatusCode.INVALID_ARGUMENT and list(found.violations) == ["user.phone_number"]


def test_a_phone_number_and_the_text_and_push_switches_reach_notifications(
    system: Deployment, users: users_service_pb2_grpc.UsersServiceStub, person: Person
) -> None:
    """Texts are opted into (off by default), push is on; the number and both switches go
    out with every ContactChanged, and an empty number clears it (and the opt-in)."""
    prefs = users.GetPreferences(
        pb.GetPreferencesRequest(name=person.preferences), metadata=person.auth, timeout=10
    )
    assert (prefs.sms_enabled, prefs.push_enabled) == (False, True)
    numbered = users.UpdateUser(
        pb.UpdateUserRequest(
            user=User(name=person.name, phone_number="+4915123456789"),
            update_mask=FieldMask(paths=["phone_number"]),
        ),
        metadata=person.auth,
        timeout=10,
    )
    assert numbered.phone_number == "+4915123456789"
    users.UpdatePreferences(
        pb.UpdatePreferencesRequest(
            preferences=Preferences(name=person.preferences, sms_enabled=True, push_enabled=False),
            update_mask=FieldMask(paths=["sms_enabled", "push_enabled"]),
        ),
        metadata=person.auth,
        timeout=10,
    )
    users.UpdateUser(
        pb.UpdateUserRequest(
            user=User(name=person.name, phone_number=""), update_mask=FieldMask(paths=["phone_number"])
        ),
        metadata=person.auth,
        timeout=10,
    )
    seen = [(c.phone_number, c.sms_enabled, c.push_enabled) for c in _contacts(system, person.name)]
    # Consent is the number's: another number (here, none) turns texts off again.
    assert seen[-3:] == [("+4915123456789", False, True), ("+4915123456789", True, False), ("", False, False)]
