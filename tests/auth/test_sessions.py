"""Sessions over the real store, without a server: a refresh token is used at most once,
a reused one revokes its whole family, logout and disabling end sessions, and introspection
reports a token inactive as soon as its session ends."""

from __future__ import annotations

import pytest

from services.auth.accounts import disable_identity
from services.auth.domain import DISABLED, TokenSet
from services.auth.sessions import hash_token
from services.kit.authn import Principal
from services.kit.domain_errors import Unauthenticated
from tests.auth.local import SETTINGS, LocalAuth


def _refused(local: LocalAuth, refresh_token: str) -> str:
    with pytest.raises(Unauthenticated) as refused:
        local.sessions.refresh(refresh_token)
    return refused.value.reason


def _active(local: LocalAuth, tokens: TokenSet) -> Principal | None:
    return local.sessions.introspect(tokens.access_token, local.verifier.verify)


def test_a_refresh_rotates_the_token_within_the_same_session(local: LocalAuth) -> None:
    first = local.login(local.register())
    second = local.sessions.refresh(first.refresh_token)
    third = local.sessions.refresh(second.refresh_token)
    assert len({first.refresh_token, second.refresh_token, third.refresh_token}) == 3
    sessions = {local.verifier.verify(t.access_token).session for t in (first, second, third)}
    assert len(sessions) == 1 and "" not in sessions
    assert (third.expires_in, third.refresh_expires_in) == (
        SETTINGS.access_token_seconds,
        SETTINGS.refresh_token_seconds,
    )


def test_refresh_tokens_are_stored_only_as_their_sha256(local: LocalAuth) -> None:
    tokens = local.login(local.register())
    stored = local.stored_refresh_hashes()
    assert hash_token(tokens.refresh_token) in stored
    assert tokens.refresh_token not in stored


def test_a_reused_refresh_token_revokes_its_whole_family(local: LocalAuth) -> None:
    identity = local.register()
    stolen = local.login(identity)
    other_session = local.login(identity)
    rotated = local.sessions.refresh(stolen.refresh_token)

    assert _refused(local, stolen.refresh_token) == "REFRESH_TOKEN_REUSED"
    assert _refused(local, rotated.refresh_token) == "REFRESH_TOKEN_REVOKED"  # both holders log in again
    assert _refused(local, stolen.refresh_token) == "REFRESH_TOKEN_REVOKED"
    assert _active(local, rotated) is None
    assert _active(local, other_session) is not None
    assert local.sessions.refresh(other_session.refresh_token).access_token


def test_logout_revokes_the_family_and_ignores_an_unknown_token(local: LocalAuth) -> None:
    identity = local.register()
    tokens = local.login(identity)
    rotated = local.sessions.refresh(tokens.refresh_token)
    local.sessions.logout("not-a-token-anyone-was-given")
    assert _active(local, rotated) is not None

    local.sessions.logout(tokens.refresh_token)  # an earlier token of the family ends it too
    assert _refused(local, rotated.refresh_token) == "REFRESH_TOKEN_REVOKED"
    assert _active(local, rotated) is None


def test_a_refresh_token_expires(local: LocalAuth) -> None:
    tokens = local.login(local.register())
    local.clock.advance(SETTINGS.refresh_token_seconds - 1)
    fresh = local.sessions.refresh(tokens.refresh_token)
    local.clock.advance(SETTINGS.refresh_token_seconds)
    assert _refused(local, fresh.refresh_token) == "REFRESH_TOKEN_EXPIRED"


@pytest.mark.parametrize("token", ["", "x", "a" * 43], ids=["empty", "short", "never-issued"])
def test_a_token_never_issued_is_invalid(local: LocalAuth, token: str) -> None:
    assert _refused(local, token) == "REFRESH_TOKEN_INVALID"


def test_disabling_an_identity_ends_every_session(local: LocalAuth) -> None:
    identity = local.register()
    sessions = [local.login(identity), local.login(identity)]
    with local.auth_store.transaction() as repo:
        disable_identity(repo, identity.id, local.clock())
        disable_identity(repo, "no-such-user", local.clock())  # unknown: nothing happens
    assert [_refused(local, s.refresh_token) for s in sessions] == ["REFRESH_TOKEN_REVOKED"] * 2
    assert [_active(local, s) for s in sessions] == [None, None]
    assert local.accounts.identity(identity.id).state == DISABLED


def test_a_disabled_identity_gets_no_new_token_even_from_a_live_session(local: LocalAuth) -> None:
    identity = local.register()
    tokens = local.login(identity)
    with local.auth_store.transaction() as repo:
        repo.set_state(identity.id, DISABLED, local.clock())  # without revoking its sessions
    assert _refused(local, tokens.refresh_token) == "REFRESH_TOKEN_INVALID"


def test_introspection_reports_what_the_verifier_makes_of_a_live_token(local: LocalAuth) -> None:
    identity = local.register(roles=["support"])
    tokens = local.login(identity)
    principal = _active(local, tokens)
    assert principal is not None
    assert (principal.subject, principal.roles) == (identity.name, frozenset({"support"}))
    assert local.sessions.session_active(principal.session)
    assert not local.sessions.session_active("no-such-session")
    assert local.sessions.introspect("not.a.jwt", local.verifier.verify) is None


def test_a_token_without_a_session_is_introspected_by_its_signature_alone(local: LocalAuth) -> None:
    _client, secret = local.clients.create_client("reporting", "", ["orders.read"], "")
    tokens = local.clients.client_token("reporting", secret, "", "192.0.2.9")
    principal = _active(local, tokens)
    assert principal is not None and principal.session == "" and principal.client_id == "reporting"
