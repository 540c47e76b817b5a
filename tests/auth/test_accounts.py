"""Accounts over the real store, without a server: registration (a taken email, the limit
per address, the event), role changes and the last admin, lookups and list queries.
What Register accepts as an email or a display name is in `test_registration_rules.py`."""

from __future__ import annotations

import pytest

from services.auth import passwords
from services.auth.accounts import Accounts, disable_identity
from services.auth.domain import ACTIVE, Identity
from services.kit.domain_errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from tests.auth.local import ADDRESS, PASSWORD, SETTINGS, LocalAuth


class _CountingHasher(passwords.Argon2Hasher):
    """The real hasher, counting the hashes it makes."""

    hashes = 0

    def hash(self, secret: str) -> str:
        self.hashes += 1
        return super().hash(secret)


def test_register_normalises_the_email_and_publishes_user_registered(local: LocalAuth) -> None:
    identity = local.accounts.register("  Ada@Example.COM ", PASSWORD, "Ada", address=ADDRESS)
    assert (identity.email, identity.state, identity.roles) == ("ada@example.com", ACTIVE, ())
    assert local.accounts.identity(identity.id) == identity
    assert local.published() == ["UserRegistered"]


def test_a_taken_email_is_refused_before_any_password_is_hashed(local: LocalAuth) -> None:
    hasher = _CountingHasher(SETTINGS)
    accounts = Accounts(
        local.accounts.transactions, hasher, local.throttle, passwords.password_problem, local.clock
    )
    accounts.register("ada@example.com", PASSWORD, address=ADDRESS)
    assert hasher.hashes == 1
    with pytest.raises(AlreadyExists) as taken:
        accounts.register("ADA@example.com", "another-password-entirely", address=ADDRESS)
    assert taken.value.reason == "EMAIL_TAKEN"
    assert hasher.hashes == 1
    assert local.published() == ["UserRegistered"]


def test_registrations_are_limited_per_address_taken_emails_included(local: LocalAuth) -> None:
    limit = SETTINGS.registrations_per_address
    first = local.register(address=ADDRESS)
    for _ in range(limit - 2):
        local.register(address=ADDRESS)
    with pytest.raises(AlreadyExists):
        local.accounts.register(first.email, PASSWORD, address=ADDRESS)
    with pytest.raises(ResourceExhausted) as throttled:
        local.register(address=ADDRESS)
    assert throttled.value.reason == "REGISTRATION_THROTTLED"
    assert throttled.value.retry_after_seconds == SETTINGS.login_window_seconds
    assert local.counted(f"registration:{ADDRESS}") == limit
    assert local.register(address="198.51.100.3").id  # another address
    assert local.register().id  # an operator's (`poly admin create`): no address, no limit
    local.clock.advance(SETTINGS.login_window_seconds)
    assert local.register(address=ADDRESS).id


def test_an_invalid_registration_does_not_count(local: LocalAuth) -> None:
    for _ in range(SETTINGS.registrations_per_address + 1):
        with pytest.raises(InvalidArgument):
            local.accounts.register("not an email", "short", address=ADDRESS)
    assert local.counted(f"registration:{ADDRESS}") == 0


def test_roles_are_granted_and_revoked_once(local: LocalAuth) -> None:
    identity = local.register()
    local.clock.advance(5)
    granted = local.accounts.change_role(identity.id, "support", grant=True)
    assert granted.roles == ("support",) and granted.update_time == local.clock()
    local.clock.advance(5)
    again = local.accounts.change_role(identity.id, "support", grant=True)
    assert again == granted  # nothing changed, not even the update time
    both = local.accounts.change_role(identity.id, "billing", grant=True)
    assert both.roles == ("billing", "support")
    revoked = local.accounts.change_role(identity.id, "support", grant=False)
    assert revoked.roles == ("billing",)
    assert local.accounts.change_role(identity.id, "support", grant=False) == revoked


def test_the_last_active_admin_keeps_the_role(local: LocalAuth) -> None:
    root = local.register(roles=["admin"])
    with pytest.raises(FailedPrecondition) as refused:
        local.accounts.change_role(root.id, "admin", grant=False)
    assert refused.value.reason == "LAST_ADMIN"

    disabled = local.register(roles=["admin"])
    with local.auth_store.transaction() as repo:
        disable_identity(repo, disabled.id, local.clock())
    with pytest.raises(FailedPrecondition):  # a disabled admin is no admin
        local.accounts.change_role(root.id, "admin", grant=False)

    deputy = local.register(roles=["admin"])
    assert local.accounts.change_role(root.id, "admin", grant=False).roles == ()
    with pytest.raises(FailedPrecondition):
        local.accounts.change_role(deputy.id, "admin", grant=False)


ROLES = {
    "one-letter": "a",
    "upper-case": "Admin",
    "leading-digit": "1st",
    "leading-hyphen": "-ops",
    "space": "on call",
    "trailing-newline": "admin\n",
    "over-32": "a" * 33,
    "non-ascii": "\u0430dmin",
}


@pytest.mark.parametrize("role", ROLES.values(), ids=ROLES.keys())
def test_a_role_name_outside_the_pattern_is_refused(local: LocalAuth, role: str) -> None:
    identity = local.register()
    with pytest.raises(InvalidArgument) as refused:
        local.accounts.change_role(identity.id, role, grant=True)
    assert refused.value.reason == "ROLE_INVALID"
    assert [v.field for v in refused.value.violations] == ["role"]


def test_an_unknown_identity_is_not_found(local: LocalAuth) -> None:
    with pytest.raises(NotFound) as read:
        local.accounts.identity("no-such-user")
    with pytest.raises(NotFound) as changed:
        local.accounts.change_role("no-such-user", "support", grant=True)
    for missing in (read.value, changed.value):
        assert (missing.reason, missing.metadata) == ("IDENTITY_NOT_FOUND", {"user": "no-such-user"})


def _emails(identities: list[Identity]) -> list[str]:
    return [i.email for i in identities]


def test_identities_are_listed_by_filter_and_order(local: LocalAuth) -> None:
    names = ["carol", "ada", "bob"]
    made = {}
    for name in names:
        made[name] = local.accounts.register(f"{name}@example.com", PASSWORD, address=None)
        local.clock.advance(1)
    local.accounts.change_role(made["bob"].id, "admin", grant=True)
    with local.auth_store.transaction() as repo:
        disable_identity(repo, made["carol"].id, local.clock())

    def listed(filter_text: str = "", order_by: str = "") -> list[str]:
        return _emails(local.accounts.list_identities(10, "", filter_text, order_by).identities)

    assert listed() == ["bob@example.com", "ada@example.com", "carol@example.com"]
    assert listed(order_by="  EMAIL ") == ["ada@example.com", "bob@example.com", "carol@example.com"]
    assert listed(order_by="create_time asc") == ["carol@example.com", "ada@example.com", "bob@example.com"]
    assert listed('roles:"admin"') == ["bob@example.com"]
    assert listed("state = STATE_DISABLED") == ["carol@example.com"]
    assert listed('email = "ADA@example.com" AND state = ACTIVE') == ["ada@example.com"]
    first = local.accounts.list_identities(2, "", "", "email")
    rest = local.accounts.list_identities(2, first.next_page_token, "", "email")
    assert (_emails(first.identities), _emails(rest.identities)) == (
        ["ada@example.com", "bob@example.com"],
        ["carol@example.com"],
    )
    assert rest.next_page_token == ""


BAD_QUERIES = {
    "unknown-field": ('name = "ada"', "", "filter", "FILTER_INVALID"),
    "or": ("state = ACTIVE OR state = DISABLED", "", "filter", "FILTER_INVALID"),
    "unknown-state": ("state = DELETED", "", "filter", "FILTER_INVALID"),
    "unknown-order": ("", "display_name", "order_by", "ORDER_BY_INVALID"),
    "two-orders": ("", "email, create_time", "order_by", "ORDER_BY_INVALID"),
}


@pytest.mark.parametrize(
    ("filter_text", "order_by", "field", "reason"), BAD_QUERIES.values(), ids=BAD_QUERIES.keys()
)
def test_a_list_query_outside_the_subset_is_refused_naming_its_field(
    local: LocalAuth, filter_text: str, order_by: str, field: str, reason: str
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        local.accounts.list_identities(10, "", filter_text, order_by)
    assert refused.value.reason == reason
    assert [v.field for v in refused.value.violations] == [field]
