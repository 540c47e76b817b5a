"""The auth service as a process: accounts, sessions, throttling, clients, roles, keys.

Failed logins are sent with the gateway's certificate and a per-test ``x-forwarded-for``,
so each test's failures count against its own client address.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import jwt
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy import create_engine, text

from poly.auth.v1 import auth_service_pb2 as pb
from poly.auth.v1 import resources_pb2
from services.auth import keys
from tests.support.identity import PASSWORD, Deployment, auth_alone, bearer, signed_by_a_new_key
from tests.support.processes import run_module

pytestmark = pytest.mark.slow

LIMITS = {
    "POLY_AUTH_LOGIN_FAILURES_PER_ACCOUNT": "3",
    "POLY_AUTH_LOGIN_FAILURES_PER_ADDRESS": "5",
    "POLY_AUTH_LOGIN_WINDOW_SECONDS": "600",
    "POLY_AUTH_JWKS_MIN_REFRESH_SECONDS": "0.3",
}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def system(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with auth_alone(request, tmp_path_factory.mktemp("auth"), LIMITS) as deployment:
        yield deployment


@pytest.fixture(scope="module")
def admin(system: Deployment) -> str:
    """An admin's access token; the admin is created with `poly admin create`."""
    return system.create_admin()


def _error(error: grpc.RpcError) -> tuple[grpc.StatusCode, str, list[object]]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    reason, extra = "", []
    for detail in status.details if status else []:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.RetryInfo, error_details_pb2.BadRequest):
            message = kind()
            if detail.Unpack(message):
                if isinstance(message, error_details_pb2.ErrorInfo):
                    reason = message.reason
                else:
                    extra.append(message)
    return error.code(), reason, extra


def _refused(call: object, request: object, **kwargs: object) -> tuple[grpc.StatusCode, str, list[object]]:
    with pytest.raises(grpc.RpcError) as failed:
        call(request, timeout=10, **kwargs)  # type: ignore[operator]
    return _error(failed.value)


def _from(address: str) -> list[tuple[str, str]]:
    return [("x-forwarded-for", address)]


def _address() -> str:
    return f"203.0.113.{uuid.uuid4().int % 250 + 1}-{uuid.uuid4().hex[:6]}"


def test_register_normalises_the_email_and_refuses_a_second_account(system: Deployment) -> None:
    email = f"Mixed.{uuid.uuid4().hex[:8]}@Example.COM "
    reply = system.auth().Register(
        pb.RegisterRequest(email=email, password=PASSWORD, display_name="M"), timeout=10
    )
    assert reply.identity.email == email.strip().lower()
    assert reply.user == reply.identity.name and reply.user.startswith("users/")
    assert reply.identity.state == resources_pb2.Identity.STATE_ACTIVE
    again = pb.RegisterRequest(email=email.strip().upper(), password=PASSWORD)
    assert _refused(system.auth().Register, again)[:2] == (grpc.StatusCode.ALREADY_EXISTS, "EMAIL_TAKEN")


@pytest.mark.parametrize(
    "password",
    ["short-one", "password1234", "qwertyqwerty", "aaaaaaaaaaaaaaaa"],
    ids=["short", "common+digits", "repeated", "one-char"],
)
def test_weak_passwords_are_refused_with_a_field_violation(system: Deployment, password: str) -> None:
    request = pb.RegisterRequest(email=f"{uuid.uuid4().hex[:8]}@example.com", password=password)
    code, reason, extra = _refused(system.auth().Register, request)
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "REGISTRATION_INVALID")
    [violations] = extra
    assert [v.field for v in violations.field_violations] == ["password"]  # type: ignore[attr-defined]


def test_registration_publishes_user_registered_in_the_same_transaction(system: Deployment) -> None:
    user, _email = system.register()
    database = system.settings("auth").db.url
    engine = create_engine(database)
    try:
        with engine.connect() as connection:
            types = connection.execute(
                text("SELECT event_type FROM bus_outbox WHERE aggregate_id = :user"), {"user": user}
            ).scalars()
            assert list(types) == ["poly.events.v1.UserRegistered"]
    finally:
        engine.dispose()


def test_login_issues_an_eddsa_jwt_with_the_promised_claims(system: Deployment) -> None:
    user, email = system.register()
    tokens = system.login(email)
    assert tokens.token_type == "Bearer" and tokens.expires_in == 900 and len(tokens.refresh_token) >= 43
    header = jwt.get_unverified_header(tokens.access_token)
    assert header["alg"] == "EdDSA" and header["kid"]
    claims = jwt.decode(tokens.access_token, options={"verify_signature": False})
    edge = f"http://localhost:{system.environ['POLY_GATEWAY_PORT']}"  # the issuer follows the edge's port
    assert claims["sub"] == user and claims["aud"] == "poly" and claims["iss"] == edge
    assert claims["exp"] - claims["iat"] == 900 and claims["jti"] and claims["roles"] == []
    assert "scope" in claims and claims["sid"]


def test_unknown_email_and_wrong_password_get_the_same_answer(system: Deployment) -> None:
    _user, email = system.register()
    gateway = system.auth(as_="gateway")
    wrong = _refused(
        gateway.Login, pb.LoginRequest(email=email, password="not-the-password"), metadata=_from(_address())
    )
    unknown = _refused(
        gateway.Login, pb.LoginRequest(email=f"nobody-{email}", password=PASSWORD), metadata=_from(_address())
    )
    assert wrong == unknown == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_CREDENTIALS", [])


def test_the_account_is_throttled_after_repeated_failures_even_for_the_right_password(
    system: Deployment,
) -> None:
    _user, email = system.register()
    gateway = system.auth(as_="gateway")
    for _ in range(3):  # the limit, each from its own address
        code, _, _ = _refused(
            gateway.Login,
            pb.LoginRequest(email=email, password="wrong-password!"),
            metadata=_from(_address()),
        )
        assert code == grpc.StatusCode.UNAUTHENTICATED
    code, reason, extra = _refused(
        gateway.Login, pb.LoginRequest(email=email, password="wrong-password!"), metadata=_from(_address())
    )
    assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "LOGIN_THROTTLED")
    [retry] = extra
    assert 0 < retry.retry_delay.seconds <= 600  # type: ignore[attr-defined]
    correct = _refused(
        gateway.Login, pb.LoginRequest(email=email, password=PASSWORD), metadata=_from(_address())
    )
    assert correct[:2] == (grpc.StatusCode.RESOURCE_EXHAUSTED, "LOGIN_THROTTLED")


def test_an_address_is_throttled_across_accounts(system: Deployment) -> None:
    address = _address()
    gateway = system.auth(as_="gateway")
    for _ in range(5):
        request = pb.LoginRequest(email=f"{uuid.uuid4().hex[:8]}@example.com", password="wrong-password!")
        assert _refused(gateway.Login, request, metadata=_from(address))[0] == grpc.StatusCode.UNAUTHENTICATED
    _user, email = system.register()
    refused = _refused(
        gateway.Login, pb.LoginRequest(email=email, password=PASSWORD), metadata=_from(address)
    )
    assert refused[:2] == (grpc.StatusCode.RESOURCE_EXHAUSTED, "LOGIN_THROTTLED")
    assert gateway.Login(
        pb.LoginRequest(email=email, password=PASSWORD), metadata=_from(_address()), timeout=10
    )


def test_a_refresh_token_is_rotated_and_a_second_use_revokes_the_family(system: Deployment) -> None:
    _user, email = system.register()
    first = system.login(email)
    auth = system.auth()
    second = auth.RefreshToken(pb.RefreshTokenRequest(refresh_token=first.refresh_token), timeout=10)
    assert second.refresh_token != first.refresh_token and second.access_token != first.access_token
    # The old token shows up again: a thief or the victim, either way the family dies.
    reused = _refused(auth.RefreshToken, pb.RefreshTokenRequest(refresh_token=first.refresh_token))
    assert reused[:2] == (grpc.StatusCode.UNAUTHENTICATED, "REFRESH_TOKEN_REUSED")
    after = _refused(auth.RefreshToken, pb.RefreshTokenRequest(refresh_token=second.refresh_token))
    assert after[:2] == (grpc.StatusCode.UNAUTHENTICATED, "REFRESH_TOKEN_REVOKED")
    introspect = system.auth(as_="gateway").IntrospectToken
    assert not introspect(pb.IntrospectTokenRequest(token=second.access_token), timeout=10).active


def test_logout_revokes_the_family(system: Deployment) -> None:
    user, email = system.register()
    tokens = system.login(email)
    introspect = system.auth(as_="gateway").IntrospectToken
    info = introspect(pb.IntrospectTokenRequest(token=tokens.access_token), timeout=10)
    assert info.active and info.subject == user and info.audience == ["poly"]
    system.auth().Logout(pb.LogoutRequest(refresh_token=tokens.refresh_token), timeout=10)
    refused = _refused(system.auth().RefreshToken, pb.RefreshTokenRequest(refresh_token=tokens.refresh_token))
    assert refused[:2] == (grpc.StatusCode.UNAUTHENTICATED, "REFRESH_TOKEN_REVOKED")
    assert not introspect(pb.IntrospectTokenRequest(token=tokens.access_token), timeout=10).active
    system.auth().Logout(pb.LogoutRequest(refresh_token="never-issued"), timeout=10)  # idempotent


def test_introspection_is_internal(system: Deployment) -> None:
    refused = _refused(system.auth().IntrospectToken, pb.IntrospectTokenRequest(token="x"))
    assert refused[:2] == (grpc.StatusCode.PERMISSION_DENIED, "CALLER_NOT_ALLOWED")


def test_a_user_reads_their_own_identity_but_not_anothers(system: Deployment, admin: str) -> None:
    alice, alice_email = system.register()
    bob, _ = system.register()
    token = bearer(system.login(alice_email).access_token)
    assert (
        system.auth().GetIdentity(pb.GetIdentityRequest(name=alice), metadata=token, timeout=10).name == alice
    )
    # AIP-211: permission before existence, so another's identity and a missing one get the
    # same PERMISSION_DENIED; only an admin learns that users/nobody does not exist.
    refused = _refused(system.auth().GetIdentity, pb.GetIdentityRequest(name=bob), metadata=token)
    assert refused[:2] == (grpc.StatusCode.PERMISSION_DENIED, "NOT_OWNER")
    missing = _refused(system.auth().GetIdentity, pb.GetIdentityRequest(name="users/nobody"), metadata=token)
    assert missing[:2] == refused[:2]
    as_admin = _refused(
        system.auth().GetIdentity, pb.GetIdentityRequest(name="users/nobody"), metadata=bearer(admin)
    )
    assert as_admin[:2] == (grpc.StatusCode.NOT_FOUND, "IDENTITY_NOT_FOUND")


def test_a_user_cannot_call_admin_methods(system: Deployment) -> None:
    user, email = system.register()
    token = bearer(system.login(email).access_token)
    grant = pb.GrantRoleRequest(name=user, role="admin")
    assert _refused(system.auth().GrantRole, grant, metadata=token)[:2] == (
        grpc.StatusCode.PERMISSION_DENIED,
        "ROLE_MISSING",
    )
    assert (
        _refused(
            system.auth().CreateClient, pb.CreateClientRequest(client=resources_pb2.Client()), metadata=token
        )[1]
        == "ROLE_MISSING"
    )


def test_an_admin_grants_and_revokes_roles(system: Deployment, admin: str) -> None:
    user, email = system.register()
    granted = system.auth().GrantRole(
        pb.GrantRoleRequest(name=user, role="support"), metadata=bearer(admin), timeout=10
    )
    assert list(granted.roles) == ["support"]
    claims = jwt.decode(system.login(email).access_token, options={"verify_signature": False})
    assert claims["roles"] == ["support"]
    revoked = system.auth().RevokeRole(
        pb.RevokeRoleRequest(name=user, role="support"), metadata=bearer(admin), timeout=10
    )
    assert list(revoked.roles) == []


def test_the_last_admin_keeps_the_role(system: Deployment, admin: str) -> None:
    subject = jwt.decode(admin, options={"verify_signature": False})["sub"]
    refused = _refused(
        system.auth().RevokeRole, pb.RevokeRoleRequest(name=subject, role="admin"), metadata=bearer(admin)
    )
    assert refused[:2] == (grpc.StatusCode.FAILED_PRECONDITION, "LAST_ADMIN")


def test_machine_clients_get_scoped_tokens(system: Deployment, admin: str) -> None:
    client_id = f"reporting-{uuid.uuid4().hex[:6]}"
    created = system.auth().CreateClient(
        pb.CreateClientRequest(
            client_id=client_id, client=resources_pb2.Client(scopes=["orders.read", "users.read"])
        ),
        metadata=bearer(admin),
        timeout=10,
    )
    assert created.client.name == f"clients/{client_id}" and len(created.client_secret) >= 32
    fetched = system.auth().GetClient(
        pb.GetClientRequest(name=created.client.name), metadata=bearer(admin), timeout=10
    )
    assert not fetched.secret and list(fetched.scopes) == ["orders.read", "users.read"]
    gateway = system.auth(as_="gateway")
    issued = gateway.IssueClientToken(
        pb.IssueClientTokenRequest(
            client_id=client_id, client_secret=created.client_secret, scope="orders.read"
        ),
        metadata=_from(_address()),
        timeout=10,
    )
    claims = jwt.decode(issued.access_token, options={"verify_signature": False})
    assert (
        claims["sub"] == f"clients/{client_id}"
        and claims["scope"] == "orders.read"
        and not issued.refresh_token
    )
    wrong = pb.IssueClientTokenRequest(client_id=client_id, client_secret="x" * 40)
    assert _refused(gateway.IssueClientToken, wrong, metadata=_from(_address()))[1] == "INVALID_CLIENT"
    greedy = pb.IssueClientTokenRequest(
        client_id=client_id, client_secret=created.client_secret, scope="payments.fund"
    )
    assert _refused(gateway.IssueClientToken, greedy, metadata=_from(_address()))[:2] == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "SCOPE_NOT_ALLOWED",
    )
    again = pb.CreateClientRequest(client_id=client_id, client=resources_pb2.Client())
    assert _refused(system.auth().CreateClient, again, metadata=bearer(admin))[:2] == (
        grpc.StatusCode.ALREADY_EXISTS,
        "CLIENT_EXISTS",
    )
    unknown_scope = pb.CreateClientRequest(client=resources_pb2.Client(scopes=["root"]))
    assert _refused(system.auth().CreateClient, unknown_scope, metadata=bearer(admin))[1] == "CLIENT_INVALID"


def test_an_app_client_is_registered_public_with_its_redirect_uris(system: Deployment, admin: str) -> None:
    client_id = f"phone-{uuid.uuid4().hex[:6]}"
    given = resources_pb2.Client(
        client_type=resources_pb2.Client.CLIENT_TYPE_PUBLIC,
        redirect_uris=["com.example.app:/callback", "http://127.0.0.1/callback"],
        first_party=True,
    )
    created = system.auth().CreateClient(
        pb.CreateClientRequest(client_id=client_id, client=given), metadata=bearer(admin), timeout=10
    )
    assert created.client_secret == ""
    fetched = system.auth().GetClient(
        pb.GetClientRequest(name=created.client.name), metadata=bearer(admin), timeout=10
    )
    assert fetched.client_type == resources_pb2.Client.CLIENT_TYPE_PUBLIC
    assert list(fetched.grant_types) == ["authorization_code", "refresh_token"]
    assert list(fetched.redirect_uris) == list(given.redirect_uris) and fetched.first_party
    gateway = system.auth(as_="gateway")
    guessed = pb.IssueClientTokenRequest(client_id=client_id, client_secret="x" * 40)
    assert _refused(gateway.IssueClientToken, guessed, metadata=_from(_address()))[1] == "INVALID_CLIENT"
    bad = resources_pb2.Client(
        client_type=resources_pb2.Client.CLIENT_TYPE_PUBLIC, redirect_uris=["http://evil.example/cb"]
    )
    refused = _refused(system.auth().CreateClient, pb.CreateClientRequest(client=bad), metadata=bearer(admin))
    assert refused[:2] == (grpc.StatusCode.INVALID_ARGUMENT, "CLIENT_INVALID")


def test_identities_page_without_duplicates_or_gaps(system: Deployment, admin: str) -> None:
    for _ in range(5):
        system.register()
    seen: list[str] = []
    token = ""
    while True:
        page = system.auth().ListIdentities(
            pb.ListIdentitiesRequest(
                page_size=2, page_token=token, filter="state = ACTIVE", order_by="email"
            ),
            metadata=bearer(admin),
            timeout=10,
        )
        seen += [identity.email for identity in page.identities]
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == len(set(seen)) >= 6 and seen == sorted(seen)
    mismatch = pb.ListIdentitiesRequest(
        page_size=2, page_token=page.next_page_token or "eyJwIjpbXSwiaCI6IngifQ"
    )
    assert _refused(system.auth().ListIdentities, mismatch, metadata=bearer(admin))[1] == "PAGE_TOKEN_INVALID"


def test_jwks_and_discovery_document(system: Deployment) -> None:
    jwks = system.auth().GetJwks(pb.GetJwksRequest(), timeout=10)
    assert jwks.keys and all(
        k.kty == "OKP" and k.crv == "Ed25519" and k.alg == "EdDSA" and k.x for k in jwks.keys
    )
    document = system.auth().GetOpenIdConfiguration(pb.GetOpenIdConfigurationRequest(), timeout=10)
    edge = f"http://localhost:{system.environ['POLY_GATEWAY_PORT']}"
    assert document.issuer == edge
    assert document.jwks_uri == f"{edge}/.well-known/jwks.json"
    assert "client_credentials" in document.grant_types_supported
    assert list(document.id_token_signing_alg_values_supported) == ["EdDSA"]


def _until_refused(
    call: object, request: object, metadata: list[tuple[str, str]]
) -> tuple[grpc.StatusCode, str]:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            call(request, metadata=metadata, timeout=10)  # type: ignore[operator]
        except grpc.RpcError as error:
            return _error(error)[:2]
        time.sleep(0.2)
    raise AssertionError("the token was never refused")


def test_tokens_survive_one_rotation_and_not_two(system: Deployment) -> None:
    user, email = system.register()
    before = bearer(system.login(email).access_token)
    rotated = run_module("services.cli", system.environ, "keys", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    assert "signing" in rotated.stdout and "published" in rotated.stdout
    assert len(system.auth().GetJwks(pb.GetJwksRequest(), timeout=10).keys) == 2
    get = system.auth().GetIdentity
    assert get(pb.GetIdentityRequest(name=user), metadata=before, timeout=10).name == user
    after = bearer(signed_by_a_new_key(system, email, before))
    assert get(pb.GetIdentityRequest(name=user), metadata=after, timeout=10).name == user
    assert run_module("services.cli", system.environ, "keys", "rotate").returncode == 0
    assert _until_refused(get, pb.GetIdentityRequest(name=user), before) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "TOKEN_KEY_UNKNOWN",
    )
    assert get(pb.GetIdentityRequest(name=user), metadata=after, timeout=10).name == user


def test_the_key_encryption_key_must_open_the_stored_keys(system: Deployment, tmp_path: Path) -> None:
    wrong = tmp_path / "other.key"
    keys.ensure_key_encryption_key(wrong)
    environ = {
        **system.environ,
        "POLY_AUTH_KEY_ENCRYPTION_KEY_FILE": str(wrong),
        "POLY_AUTH_PORT": "0",
        "POLY_AUTH_METRICS_PORT": "0",  # beside the running auth: neither of its ports
    }
    result = run_module("services.auth", environ)
    assert result.returncode == 1
    assert "does not open with the configured key-encryption key" in result.stderr
