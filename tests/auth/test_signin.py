"""Sign-in over the real store, without a server: the same answer for a wrong password and
an unknown email, failures throttled per account and per address, a success forgetting the
account's failures only, and a disabled account refused without counting."""

from __future__ import annotations

import dataclasses

import pytest

from services.auth import passwords
from services.auth.accounts import disable_identity
from services.auth.domain import Identity
from services.kit.domain_errors import DomainError, PermissionDenied, ResourceExhausted, Unauthenticated
from tests.auth.local import ADDRESS, PASSWORD, SETTINGS, LocalAuth


def _answer(local: LocalAuth, email: str, password: str, address: str = ADDRESS) -> str:
    """OK, or the reason of the refusal."""
    try:
        local.signin.login(email, password, address)
    except DomainError as refused:
        return refused.reason
    return "OK"


def _fail(local: LocalAuth, identity: Identity, times: int, address: str = ADDRESS) -> list[str]:
    return [_answer(local, identity.email, "not-the-password!", address) for _ in range(times)]


def test_login_normalises_the_email_and_starts_a_session(local: LocalAuth) -> None:
    identity = local.register(roles=["support"])
    tokens = local.signin.login(f"  {identity.email.upper()} ", PASSWORD, ADDRESS)
    principal = local.verifier.verify(tokens.access_token)
    assert (principal.subject, principal.roles, principal.scopes) == (
        identity.name,
        frozenset({"support"}),
        frozenset(),
    )
    assert principal.session and tokens.refresh_token and tokens.scope == ""


def test_a_wrong_password_and_an_unknown_email_get_the_same_answer(local: LocalAuth) -> None:
    identity = local.register()
    with pytest.raises(Unauthenticated) as wrong:
        local.signin.login(identity.email, "not-the-password!", ADDRESS)
    with pytest.raises(Unauthenticated) as unknown:
        local.signin.login("nobody@example.com", PASSWORD, ADDRESS)
    assert (wrong.value.reason, wrong.value.message) == (unknown.value.reason, unknown.value.message)
    assert wrong.value.reason == "INVALID_CREDENTIALS"
    assert local.counted("account:nobody@example.com") == 1


def test_failures_lock_the_account_even_for_the_right_password(local: LocalAuth) -> None:
    identity = local.register()
    limit = SETTINGS.login_failures_per_account
    assert _fail(local, identity, limit, "198.51.100.1") == ["INVALID_CREDENTIALS"] * limit
    with pytest.raises(ResourceExhausted) as locked:
        local.signin.login(identity.email, PASSWORD, "198.51.100.2")  # another address too
    assert locked.value.reason == "LOGIN_THROTTLED"
    assert locked.value.retry_after_seconds == SETTINGS.login_window_seconds
    local.clock.advance(SETTINGS.login_window_seconds)
    assert _answer(local, identity.email, PASSWORD) == "OK"


def test_a_success_forgets_the_accounts_failures_but_not_the_addresss(local: LocalAuth) -> None:
    ada, bob = local.register(), local.register()
    per_account, per_address = SETTINGS.login_failures_per_account, SETTINGS.login_failures_per_address
    assert _fail(local, ada, per_account - 1) == ["INVALID_CREDENTIALS"] * (per_account - 1)
    assert _answer(local, ada.email, PASSWORD) == "OK"
    assert local.counted(f"account:{ada.email}") == 0
    assert _fail(local, ada, per_account - 1) == ["INVALID_CREDENTIALS"] * (per_account - 1)
    # The address keeps every failure, whichever account they were for.
    spent = 2 * (per_account - 1)
    assert local.counted(f"address:{ADDRESS}") == spent
    assert _fail(local, bob, per_address - spent) == ["INVALID_CREDENTIALS"] * (per_address - spent)
    assert _answer(local, bob.email, PASSWORD) == "LOGIN_THROTTLED"
    assert _answer(local, bob.email, PASSWORD, "198.51.100.7") == "OK"


def test_a_disabled_account_is_refused_after_its_password_and_does_not_count(local: LocalAuth) -> None:
    identity = local.register()
    with local.auth_store.transaction() as repo:
        disable_identity(repo, identity.id, local.clock())
    for _ in range(SETTINGS.login_failures_per_account + 1):
        with pytest.raises(PermissionDenied) as refused:
            local.signin.login(identity.email, PASSWORD, ADDRESS)
        assert refused.value.reason == "IDENTITY_DISABLED"
    assert local.counted(f"account:{identity.email}") == 0
    assert _fail(local, identity, 1) == ["INVALID_CREDENTIALS"]  # a wrong password still counts


def test_a_hash_with_other_costs_is_replaced_at_the_next_login(local: LocalAuth) -> None:
    identity = local.register()
    older = passwords.Argon2Hasher(dataclasses.replace(SETTINGS, argon2_time_cost=2))
    with local.auth_store.transaction() as repo:
        repo.set_password_hash(identity.id, older.hash(PASSWORD))
    assert local.signin.hasher.needs_rehash(_stored_hash(local, identity))
    assert _answer(local, identity.email, PASSWORD) == "OK"
    rehashed = _stored_hash(local, identity)
    assert not local.signin.hasher.needs_rehash(rehashed)
    assert local.signin.hasher.verify(rehashed, PASSWORD)


def _stored_hash(local: LocalAuth, identity: Identity) -> str:
    with local.auth_store.transaction() as repo:
        found = repo.credentials(identity.email)
    assert found is not None
    return found[1]
