"""The authorization code flow (`services.auth.oauth`, `authorize`, `forms`, `pages`) over the
real store: a browser's visit to the sign-in page, its posted form, the redirect back with a
code, and the app's exchange at the token endpoint, with each attack on it performed."""

from __future__ import annotations

import base64
import html
import json
import re
import urllib.parse
from typing import Any

import jwt
import pytest

from services.auth.authorize import Browser, PostedForm
from services.auth.clients import Registration
from services.auth.codes import CODE_SECONDS
from services.auth.domain import AUTHORIZATION_CODE, CONFIDENTIAL, PUBLIC, REFRESH_TOKEN, Client, Identity
from services.auth.oauth import AuthorizationRequest, Reply
from services.auth.signin import SignIn
from services.kit.config import AuthSettings
from services.kit.domain_errors import FailedPrecondition, Unauthenticated
from tests.auth.local import ADDRESS, PASSWORD, LocalAuth
from tests.support.pkce import pkce

ISSUER = AuthSettings().issuer
REDIRECT = "https://app.example.com/callback"
FORM = "application/x-www-form-urlencoded"
SAME_ORIGIN = {"origin": ISSUER, "fetch_site": "same-origin"}


def _app(
    local: LocalAuth,
    *,
    client_type: str = PUBLIC,
    first_party: bool = False,
    redirect_uris: tuple[str, ...] = (REDIRECT,),
    name: str = "Photo App",
) -> tuple[Client, str]:
    registration = Registration(
        client_type=client_type,
        redirect_uris=redirect_uris,
        grant_types=(AUTHORIZATION_CODE, REFRESH_TOKEN),
        first_party=first_party,
    )
    return local.clients.create_client("", name, [], "", registration)


def _request(client: Client, challenge: str, **changes: str) -> AuthorizationRequest:
    fields = {
        "response_type": "code",
        "client_id": client.client_id,
        "redirect_uri": REDIRECT,
        "scope": "openid email",
        "state": "s-123 &=?",
        "nonce": "n-456",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    return AuthorizationRequest(**{**fields, **changes})


def _header(reply: Reply, name: str) -> str:
    return next((value for key, value in reply.headers if key == name), "")


def _page_token(reply: Reply) -> str:
    found = re.search(r'name="csrf_token" value="([^"]*)"', reply.body.decode())
    assert found, reply.body
    return html.unescape(found[1])


def _post(
    local: LocalAuth,
    request: AuthorizationRequest,
    fields: dict[str, str],
    *,
    cookie: str,
    origin: str = ISSUER,
    fetch_site: str = "same-origin",
) -> Reply:
    browser = Browser(address=ADDRESS, cookie=cookie, origin=origin, fetch_site=fetch_site)
    return local.authorize(request, browser, PostedForm(urllib.parse.urlencode(fields).encode(), FORM))


def _visit(local: LocalAuth, request: AuthorizationRequest) -> tuple[Reply, str, str]:
    """The sign-in page, the cookie it set (as the browser sends it back) and its form's token."""
    page = local.authorize(request, Browser(address=ADDRESS), None)
    assert page.status == 200, page.body
    cookie = _header(page, "set-cookie").split(";", 1)[0]
    return page, cookie, _page_token(page)


def _sign_in(
    local: LocalAuth, request: AuthorizationRequest, identity: Identity, *, password: str = PASSWORD
) -> Reply:
    _, cookie, token = _visit(local, request)
    fields = {"csrf_token": token, "email": identity.email, "password": password, "decision": "allow"}
    return _post(local, request, fields, cookie=cookie)


def _redirected(reply: Reply) -> dict[str, str]:
    """The parameters of the redirect back to the app (it must go to `REDIRECT`)."""
    location = reply.location
    assert location.startswith(REDIRECT + "?"), (reply.status, location, reply.body)
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))


def _exchange(local: LocalAuth, authorization: str = "", **fields: str) -> tuple[int, dict[str, Any]]:
    reply = local.oauth.token(urllib.parse.urlencode(fields).encode(), FORM, authorization)
    assert reply.content_type == "application/json"
    assert _header(reply, "cache-control") == "no-store"
    return reply.status, json.loads(reply.body)


def _code_exchange(
    local: LocalAuth, client: Client, code: str, verifier: str, /, **changes: str
) -> tuple[int, dict[str, Any]]:
    fields = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "client_id": client.client_id,
        "code_verifier": verifier,
    }
    return _exchange(local, **{**fields, **changes})


def _flow(local: LocalAuth, client: Client, identity: Identity) -> tuple[str, str]:
    """A code for `identity` signed in to `client`, and its verifier."""
    verifier, challenge = pkce()
    answer = _redirected(_sign_in(local, _request(client, challenge), identity))
    return answer["code"], verifier


# -- the whole flow --------------------------------------------------------------------------


def test_a_person_signs_in_and_the_app_gets_tokens_the_services_accept(local: LocalAuth) -> None:
    client, _ = _app(local)
    identity = local.register()
    verifier, challenge = pkce()
    request = _request(client, challenge)

    page, cookie, token = _visit(local, request)
    text = page.body.decode()
    assert "Photo App" in text and "Sign in and allow" in text and "will be able to" in text
    policy = _header(page, "content-security-policy")
    assert "frame-ancestors 'none'" in policy and "default-src 'none'" in policy
    assert "form-action 'self' https://app.example.com" in policy
    assert _header(page, "cache-control") == "no-store"
    assert _header(page, "referrer-policy") == "same-origin"
    assert "HttpOnly" in _header(page, "set-cookie") and "SameSite=Lax" in _header(page, "set-cookie")

    fields = {"csrf_token": token, "email": identity.email, "password": PASSWORD, "decision": "allow"}
    reply = _post(local, request, fields, cookie=cookie)
    assert reply.status == 303
    answer = _redirected(reply)
    assert answer["state"] == "s-123 &=?" and answer["iss"] == ISSUER
    assert set(answer) == {"code", "state", "iss"}

    status, tokens = _code_exchange(local, client, answer["code"], verifier)
    assert status == 200, tokens
    assert tokens["token_type"] == "Bearer" and tokens["scope"] == "openid email"
    assert tokens["refresh_token"] and tokens["expires_in"] == 900
    caller = local.verifier.verify(tokens["access_token"])
    assert caller.subject == identity.name and caller.client_id == client.client_id and not caller.is_client

    public = jwt.PyJWK(local.ring.jwks()["keys"][0])
    claims = jwt.decode(
        tokens["id_token"], public, algorithms=["EdDSA"], audience=client.client_id, issuer=ISSUER
    )
    assert claims["sub"] == identity.name and claims["nonce"] == "n-456" and claims["email"] == identity.email
    assert claims["azp"] == client.client_id and claims["auth_time"] <= claims["iat"]
    with pytest.raises(Unauthenticated):
        local.verifier.verify(tokens["id_token"])  # an ID token is no access token


def test_a_first_party_app_skips_the_consent_and_the_refresh_token_rotates_for_it_alone(
    local: LocalAuth,
) -> None:
    client, _ = _app(local, first_party=True)
    other, _ = _app(local, name="Other App")
    identity = local.register()
    verifier, challenge = pkce()
    page, _, _ = _visit(local, _request(client, challenge, scope="openid"))
    assert "will be able to" not in page.body.decode() and ">Sign in<" in page.body.decode()
    code = _redirected(_sign_in(local, _request(client, challenge, scope="openid"), identity))["code"]
    _, tokens = _code_exchange(local, client, code, verifier)
    assert "id_token" in tokens and tokens["scope"] == "openid"

    status, renewed = _exchange(
        local, grant_type="refresh_token", refresh_token=tokens["refresh_token"], client_id=client.client_id
    )
    assert status == 200 and renewed["refresh_token"] != tokens["refresh_token"]
    assert local.verifier.verify(renewed["access_token"]).client_id == client.client_id

    # Another app presenting it: refused, and the session is revoked as for a stolen token.
    status, refused = _exchange(
        local, grant_type="refresh_token", refresh_token=renewed["refresh_token"], client_id=other.client_id
    )
    assert (status, refused["error"]) == (400, "invalid_grant")
    with pytest.raises(Unauthenticated):
        local.sessions.refresh(renewed["refresh_token"], client_id=client.client_id)
    # Nor does the password login's endpoint refresh an app's session.
    _, again = _code_exchange(local, client, *_flow(local, client, identity))
    with pytest.raises(Unauthenticated):
        local.sessions.refresh(again["refresh_token"])


def test_a_confidential_app_authenticates_at_the_token_endpoint(local: LocalAuth) -> None:
    client, secret = _app(local, client_type=CONFIDENTIAL)
    identity = local.register()

    def exchanged(password: str | None) -> tuple[int, dict[str, Any]]:
        code, verifier = _flow(local, client, identity)
        if password is None:  # no secret at all
            return _code_exchange(local, client, code, verifier)
        basic = "Basic " + base64.b64encode(f"{client.client_id}:{password}".encode()).decode()
        fields = {"code": code, "redirect_uri": REDIRECT, "code_verifier": verifier}
        return _exchange(local, basic, grant_type="authorization_code", **fields)

    assert exchanged(None)[0] == 401 and exchanged(None)[1]["error"] == "invalid_client"
    assert exchanged("wrong")[1]["error"] == "invalid_client"
    status, tokens = exchanged(secret)
    assert status == 200 and tokens["access_token"]
    code, verifier = _flow(local, client, identity)
    status, tokens = _code_exchange(local, client, code, verifier, client_secret=secret)
    assert status == 200 and secret not in json.dumps(tokens)


# -- the code: one client, one redirect URI, one verifier, once, briefly ----------------------


def test_a_wrong_verifier_is_refused_and_uses_the_code_up(local: LocalAuth) -> None:
    client, _ = _app(local)
    code, verifier = _flow(local, client, local.register())
    status, refused = _code_exchange(local, client, code, pkce()[0])
    assert (status, refused["error"]) == (400, "invalid_grant")
    status, refused = _code_exchange(local, client, code, verifier)
    assert (status, refused["error"]) == (400, "invalid_grant")


@pytest.mark.parametrize(
    "changes",
    [
        {"code_verifier": ""},
        {"code_verifier": "short"},
        {"redirect_uri": "https://app.example.com/other"},
        {"redirect_uri": ""},
        {"code": "not-a-code"},
    ],
    ids=["no-verifier", "malformed-verifier", "other-redirect", "no-redirect", "unknown-code"],
)
def test_a_code_exchange_that_does_not_match_its_request_is_refused(
    local: LocalAuth, changes: dict[str, str]
) -> None:
    client, _ = _app(local)
    code, verifier = _flow(local, client, local.register())
    status, refused = _code_exchange(local, client, code, verifier, **changes)
    assert status == 400 and refused["error"] in ("invalid_grant", "invalid_request")
    assert "access_token" not in refused


def test_a_reused_code_is_refused_and_revokes_what_its_first_use_got(local: LocalAuth) -> None:
    client, _ = _app(local)
    code, verifier = _flow(local, client, local.register())
    _, tokens = _code_exchange(local, client, code, verifier)
    status, refused = _code_exchange(local, client, code, verifier)
    assert (status, refused["error"]) == (400, "invalid_grant")
    status, refused = _exchange(
        local, grant_type="refresh_token", refresh_token=tokens["refresh_token"], client_id=client.client_id
    )
    assert (status, refused["error"]) == (400, "invalid_grant")
    assert local.sessions.introspect(tokens["access_token"], local.verifier.verify) is None


def test_a_code_is_refused_to_another_client_and_after_it_expires(local: LocalAuth) -> None:
    client, _ = _app(local)
    thief, _ = _app(local, name="Thief")
    identity = local.register()
    code, verifier = _flow(local, client, identity)
    status, refused = _code_exchange(local, thief, code, verifier)
    assert (status, refused["error"]) == (400, "invalid_grant")
    assert _code_exchange(local, client, code, verifier)[0] == 400  # used up by the attempt

    code, verifier = _flow(local, client, identity)
    local.clock.advance(CODE_SECONDS + 1)
    assert _code_exchange(local, client, code, verifier)[1]["error"] == "invalid_grant"


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"grant_type=authorization_code&code=a&code=b", FORM),
        (b'{"grant_type": "authorization_code"}', "application/json"),
        (b"grant_type=password&username=a&password=b", FORM),
        (b"\xff\xfe", FORM),
    ],
    ids=["repeated-parameter", "json", "password-grant", "not-text"],
)
def test_a_malformed_token_request_is_refused_in_oauth_terms(
    local: LocalAuth, body: bytes, content_type: str
) -> None:
    reply = local.oauth.token(body, content_type, "")
    assert reply.status == 400
    assert json.loads(reply.body)["error"] in ("invalid_request", "unsupported_grant_type")


# -- the authorization request --------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"state": ""}, "invalid_request"),
        ({"code_challenge": ""}, "invalid_request"),
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge_method": ""}, "invalid_request"),
        ({"code_challenge": "too-short"}, "invalid_request"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"scope": "openid orders.read"}, "invalid_scope"),
        ({"prompt": "none"}, "login_required"),
    ],
    ids=[
        "no-state",
        "no-challenge",
        "plain",
        "no-method",
        "short-challenge",
        "implicit",
        "scope",
        "prompt-none",
    ],
)
def test_a_bad_request_from_a_known_app_goes_back_to_it_with_the_error(
    local: LocalAuth, changes: dict[str, str], error: str
) -> None:
    client, _ = _app(local)
    reply = local.authorize(_request(client, pkce()[1], **changes), Browser(address=ADDRESS), None)
    answer = _redirected(reply)
    assert answer["error"] == error and answer["iss"] == ISSUER and "code" not in answer
    assert answer.get("state", "") == changes.get("state", "s-123 &=?")


@pytest.mark.parametrize(
    "redirect_uri",
    [
        "https://evil.example/callback",
        "https://app.example.com/callback/../../evil",
        "https://app.example.com/callback?next=https://evil.example",
        "https://app.example.com.evil.example/callback",
        "https://app.example.com@evil.example/callback",
        "https://APP.example.com/callback",
        "https://app.example.com/callback#frag",
        "http://app.example.com/callback",
        "https://app.example.com\\@evil.example/callback",
        "//evil.example/callback",
        "javascript:alert(1)",
    ],
)
def test_an_unregistered_redirect_uri_gets_an_error_page_and_no_redirect(
    local: LocalAuth, redirect_uri: str
) -> None:
    client, _ = _app(local)
    reply = local.authorize(
        _request(client, pkce()[1], redirect_uri=redirect_uri), Browser(address=ADDRESS), None
    )
    assert reply.status == 400 and not reply.location
    assert reply.content_type.startswith("text/html")
    assert "does not work" in reply.body.decode() and "<script" not in reply.body.decode()


def test_an_unknown_client_or_a_machine_client_gets_an_error_page(local: LocalAuth) -> None:
    machine, _ = local.clients.create_client("", "Batch", ["orders.read"], "")
    for client_id in ("no-such-client", machine.client_id, ""):
        request = AuthorizationRequest(
            response_type="code",
            client_id=client_id,
            redirect_uri=REDIRECT,
            state="s",
            code_challenge=pkce()[1],
        )
        reply = local.authorize(request, Browser(address=ADDRESS), None)
        assert reply.status == 400 and not reply.location


def test_a_loopback_redirect_may_name_any_port_and_one_registered_uri_may_be_left_out(
    local: LocalAuth,
) -> None:
    client, _ = _app(local, redirect_uris=("http://127.0.0.1/callback",))
    identity = local.register()
    verifier, challenge = pkce()
    request = _request(client, challenge, redirect_uri="http://127.0.0.1:51234/callback")
    _, cookie, token = _visit(local, request)
    fields = {"csrf_token": token, "email": identity.email, "password": PASSWORD, "decision": "allow"}
    location = _post(local, request, fields, cookie=cookie).location
    assert location.startswith("http://127.0.0.1:51234/callback?code=")
    code = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))["code"]
    status, _ = _code_exchange(local, client, code, verifier, redirect_uri="http://127.0.0.1:51234/callback")
    assert status == 200
    wrong_path = _request(client, challenge, redirect_uri="http://127.0.0.1:51234/other")
    assert not local.authorize(wrong_path, Browser(address=ADDRESS), None).location

    web, _ = _app(local)
    request = _request(web, challenge, redirect_uri="")
    code = _redirected(_sign_in(local, request, identity))["code"]
    status, _ = _code_exchange(local, web, code, verifier, redirect_uri="")
    assert status == 200


def test_the_page_escapes_what_others_wrote(local: LocalAuth) -> None:
    client, _ = _app(local, name='Evil <script>alert(1)</script> "app"')
    page, _, _ = _visit(local, _request(client, pkce()[1], state='"><script>alert(2)</script>'))
    text = page.body.decode()
    assert "<script" not in text and "&lt;script&gt;alert(1)" in text


# -- the form --------------------------------------------------------------------------------


def test_cancel_sends_access_denied_back(local: LocalAuth) -> None:
    client, _ = _app(local)
    request = _request(client, pkce()[1])
    _, cookie, token = _visit(local, request)
    answer = _redirected(_post(local, request, {"csrf_token": token, "decision": "deny"}, cookie=cookie))
    assert answer["error"] == "access_denied" and "code" not in answer


@pytest.mark.parametrize(
    ("forgery", "fix"),
    [
        ("no-cookie", {"cookie": ""}),
        ("other-cookie", {"cookie": "poly-signin=" + "A" * 43}),
        ("no-token", {"token": ""}),
        ("other-origin", {"origin": "https://evil.example"}),
        ("null-origin", {"origin": "null"}),
        ("cross-site", {"fetch_site": "cross-site"}),
        ("same-site", {"fetch_site": "same-site"}),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_a_forged_post_of_the_form_is_refused(local: LocalAuth, forgery: str, fix: dict[str, str]) -> None:
    client, _ = _app(local)
    identity = local.register()
    request = _request(client, pkce()[1])
    _, cookie, token = _visit(local, request)
    fields = {
        "csrf_token": fix.get("token", token),
        "email": identity.email,
        "password": PASSWORD,
        "decision": "allow",
    }
    reply = _post(
        local,
        request,
        fields,
        cookie=fix.get("cookie", cookie),
        origin=fix.get("origin", ISSUER),
        fetch_site=fix.get("fetch_site", "same-origin"),
    )
    assert reply.status == 403 and not reply.location, forgery
    assert local.counted(f"account:{identity.email}") == 0  # the password was not even tried


def test_a_form_posted_without_origin_headers_still_needs_its_cookie_and_token(local: LocalAuth) -> None:
    client, _ = _app(local)
    identity = local.register()
    request = _request(client, pkce()[1])
    _, cookie, token = _visit(local, request)
    fields = {"csrf_token": token, "email": identity.email, "password": PASSWORD, "decision": "allow"}
    assert _post(local, request, fields, cookie=cookie, origin="", fetch_site="").status == 303


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"email=a&email=b", FORM),
        (b"email=a&extra=1", FORM),
        (b'{"email": "a"}', "application/json"),
        (b"\xff", FORM),
    ],
    ids=["repeated", "unknown-field", "json", "not-utf8"],
)
def test_a_form_that_is_not_the_page_s_gets_an_error_page(
    local: LocalAuth, body: bytes, content_type: str
) -> None:
    client, _ = _app(local)
    request = _request(client, pkce()[1])
    _, cookie, _ = _visit(local, request)
    browser = Browser(address=ADDRESS, cookie=cookie, **SAME_ORIGIN)
    reply = local.authorize(request, browser, PostedForm(body, content_type))
    assert reply.status == 400 and not reply.location


def test_a_wrong_password_shows_the_page_again_and_the_login_limits_apply(local: LocalAuth) -> None:
    client, _ = _app(local)
    identity = local.register()
    request = _request(client, pkce()[1])
    statuses = []
    for _ in range(4):
        reply = _sign_in(local, request, identity, password="not-the-password-at-all")
        statuses.append(reply.status)
        text = reply.body.decode()
        assert not reply.location and "not-the-password" not in text
        assert f'value="{identity.email}"' in text and 'role="alert"' in text
    assert statuses == [401, 401, 401, 429]  # three failures per account in the test settings
    assert "Too many sign-in attempts" in text
    assert _sign_in(local, request, identity).status == 429  # even with the right password now


def test_a_disabled_account_cannot_sign_in(local: LocalAuth) -> None:
    client, _ = _app(local)
    identity = local.register()
    with local.auth_store.transaction() as repo:
        repo.set_state(identity.id, "DISABLED", local.clock())
    reply = _sign_in(local, _request(client, pkce()[1]), identity)
    assert reply.status == 403 and "disabled" in reply.body.decode() and not reply.location


# -- a machine client at the same token endpoint ----------------------------------------------


def test_a_machine_client_gets_its_token_at_the_token_endpoint(local: LocalAuth) -> None:
    machine, secret = local.clients.create_client("", "Batch", ["orders.read", "payments.read"], "")
    basic = "Basic " + base64.b64encode(f"{machine.client_id}:{secret}".encode()).decode()
    status, tokens = _exchange(local, basic, grant_type="client_credentials", scope="orders.read")
    assert status == 200 and tokens["scope"] == "orders.read" and "refresh_token" not in tokens
    caller = local.verifier.verify(tokens["access_token"])
    assert caller.is_client and caller.scopes == {"orders.read"}
    status, tokens = _exchange(
        local, grant_type="client_credentials", client_id=machine.client_id, client_secret=secret
    )
    assert status == 200 and tokens["scope"] == "orders.read payments.read"

    status, refused = _exchange(local, basic, grant_type="client_credentials", scope="payments.refund")
    assert (status, refused["error"]) == (400, "invalid_scope")
    wrong = "Basic " + base64.b64encode(f"{machine.client_id}:{secret}x".encode()).decode()
    status, refused = _exchange(local, wrong, grant_type="client_credentials")
    assert (status, refused["error"]) == (401, "invalid_client")
    app, _ = _app(local)
    status, refused = _exchange(local, grant_type="client_credentials", client_id=app.client_id)
    assert (status, refused["error"]) == (401, "invalid_client")
    assert local.counted(f"client:{machine.client_id}") == 1  # the throttling of client tokens applies


def test_with_the_password_grant_off_login_is_refused_and_the_page_still_signs_in(local: LocalAuth) -> None:
    identity = local.register()
    closed = SignIn(
        local.signin.transactions, local.signin.hasher, local.signin.throttle, local.sessions, False
    )
    with pytest.raises(FailedPrecondition) as refused:
        closed.login(identity.email, PASSWORD, ADDRESS)
    assert refused.value.reason == "PASSWORD_GRANT_DISABLED"
    assert local.counted(f"account:{identity.email}") == 0
    assert closed.authenticate(identity.email, PASSWORD, ADDRESS) == identity


@pytest.mark.parametrize(
    "changes",
    [
        {"client_id": 'photo"app'},
        {"response_type": "code\\"},
        {"redirect_uri": "https://app.example.com/caf\u00e9"},
    ],
    ids=["quote-in-client-id", "backslash-in-response-type", "non-ascii-redirect"],
)
def test_values_authlib_cannot_quote_in_an_error_get_an_error_page(
    local: LocalAuth, changes: dict[str, str]
) -> None:
    client, _ = _app(local)
    reply = local.authorize(_request(client, pkce()[1], **changes), Browser(address=ADDRESS), None)
    assert reply.status == 400 and not reply.location and "characters it may not" in reply.body.decode()


# -- found by attacking it ---------------------------------------------------------------------


def test_guessing_a_confidential_app_s_secret_at_the_token_endpoint_is_throttled(local: LocalAuth) -> None:
    client, secret = _app(local, client_type=CONFIDENTIAL)
    statuses = []
    for guess in range(4):
        basic = "Basic " + base64.b64encode(f"{client.client_id}:guess-{guess}".encode()).decode()
        reply = local.oauth.token(b"grant_type=refresh_token&refresh_token=x", FORM, basic, ADDRESS)
        statuses.append(reply.status)
    assert statuses == [401, 401, 401, 429]  # three failures per client in the test settings
    assert _header(reply, "retry-after").isdigit()
    assert local.counted(f"client:{client.client_id}") == 3
    right = "Basic " + base64.b64encode(f"{client.client_id}:{secret}".encode()).decode()
    assert local.oauth.token(b"grant_type=refresh_token&refresh_token=x", FORM, right, ADDRESS).status == 429


@pytest.mark.parametrize(
    ("authorization", "body"),
    [
        ("Basic /w==", b"grant_type=authorization_code&code=x"),
        ("Basic " + base64.b64encode(b"no-colon").decode(), b"grant_type=authorization_code&code=x"),
        ("Bearer abc", b"grant_type=authorization_code&code=x"),
        ("", b"grant_type=authorization_code&code=x&client_id=a%00b&code_verifier=" + b"v" * 43),
        ("", b"grant_type=client_credentials&client_id=a%00b&client_secret=s"),
    ],
    ids=["basic-not-utf8", "basic-no-colon", "another-scheme", "nul-in-client-id", "nul-machine-client"],
)
def test_unreadable_client_credentials_are_invalid_client(
    local: LocalAuth, authorization: str, body: bytes
) -> None:
    reply = local.oauth.token(body, FORM, authorization, ADDRESS)
    assert reply.status in (400, 401) and json.loads(reply.body)["error"] in (
        "invalid_client",
        "invalid_grant",
    )


def test_a_failed_basic_authentication_does_not_fall_back_to_a_public_client(local: LocalAuth) -> None:
    confidential, _ = _app(local, client_type=CONFIDENTIAL)
    public, _ = _app(local)
    code, verifier = _flow(local, public, local.register())
    basic = "Basic " + base64.b64encode(f"{confidential.client_id}:wrong".encode()).decode()
    status, refused = _exchange(
        local,
        basic,
        grant_type="authorization_code",
        code=code,
        redirect_uri=REDIRECT,
        client_id=public.client_id,
        code_verifier=verifier,
    )
    assert (status, refused["error"]) == (401, "invalid_client")


@pytest.mark.parametrize(
    "changes",
    [{"nonce": "n" * 256}, {"nonce": "a\x00b"}, {"state": "s" * 1025}, {"state": "caf\u00e9"}],
    ids=["long-nonce", "nul-in-nonce", "long-state", "non-ascii-state"],
)
def test_a_state_or_nonce_that_cannot_be_kept_goes_back_as_invalid_request(
    local: LocalAuth, changes: dict[str, str]
) -> None:
    client, _ = _app(local)
    reply = local.authorize(_request(client, pkce()[1], **changes), Browser(address=ADDRESS), None)
    assert _redirected(reply)["error"] == "invalid_request"


@pytest.mark.parametrize("email", ["a\x00b@example.com", "x" * 400 + "@example.com"], ids=["nul", "long"])
def test_an_email_no_account_can_have_is_a_wrong_email_on_the_page(local: LocalAuth, email: str) -> None:
    client, _ = _app(local)
    request = _request(client, pkce()[1])
    _, cookie, token = _visit(local, request)
    reply = _post(
        local,
        request,
        {"csrf_token": token, "email": email, "password": "p", "decision": "allow"},
        cookie=cookie,
    )
    assert reply.status == 401 and "wrong" in reply.body.decode()


def test_a_refresh_asking_beyond_the_grant_is_refused_and_keeps_the_session(local: LocalAuth) -> None:
    client, _ = _app(local)
    code, verifier = _flow(local, client, local.register())
    _, tokens = _code_exchange(local, client, code, verifier)
    refresh = {"grant_type": "refresh_token", "client_id": client.client_id}
    status, refused = _exchange(
        local, **refresh, refresh_token=tokens["refresh_token"], scope="openid orders.read"
    )
    assert (status, refused["error"]) == (400, "invalid_scope")
    status, narrowed = _exchange(local, **refresh, refresh_token=tokens["refresh_token"], scope="openid")
    assert status == 200 and narrowed["scope"] == "openid"  # the same token still worked
    assert local.verifier.verify(narrowed["access_token"]).scopes == {"openid"}
    status, again = _exchange(local, **refresh, refresh_token=narrowed["refresh_token"])
    assert status == 200 and again["scope"] == "openid email"  # the session keeps its grant


def test_a_code_presented_again_while_its_first_exchange_runs_gets_that_exchange_nothing(
    local: LocalAuth,
) -> None:
    client, _ = _app(local)
    identity = local.register()
    code, _ = _flow(local, client, identity)
    codes = local.oauth.codes
    grant = codes.claim(code, client.client_id)  # the first exchange, past its claim
    assert grant is not None
    assert codes.claim(code, client.client_id) is None  # the second use, meanwhile
    assert codes.redeem(code, grant, refresh=True, first_party=False) is None
    with local.auth_store.transaction() as repo:
        assert not repo.flag_code_reused("not-a-code-hash")  # an unknown code names no session


def test_a_second_sign_in_open_in_another_tab_still_posts(local: LocalAuth) -> None:
    client, _ = _app(local)
    identity = local.register()
    first = _request(client, pkce()[1])
    _, cookie, first_token = _visit(local, first)
    # The browser sends the Lax cookie along with the cross-site arrival of the second tab.
    second = local.authorize(
        _request(client, pkce()[1], state="tab-2"), Browser(address=ADDRESS, cookie=cookie), None
    )
    assert _header(second, "set-cookie") == ""  # the cookie is kept, not replaced
    fields = {"csrf_token": first_token, "email": identity.email, "password": PASSWORD, "decision": "allow"}
    assert _post(local, first, fields, cookie=cookie).status == 303
    fields["csrf_token"] = _page_token(second)
    assert _post(local, _request(client, pkce()[1], state="tab-2"), fields, cookie=cookie).status == 303


def test_only_a_first_party_app_s_tokens_carry_the_person_s_roles(local: LocalAuth) -> None:
    admin = local.register(roles=["admin"])
    for first_party, roles in ((True, {"admin"}), (False, set())):
        client, _ = _app(local, first_party=first_party)
        _, tokens = _code_exchange(local, client, *_flow(local, client, admin))
        assert local.verifier.verify(tokens["access_token"]).roles == roles
        _, renewed = _exchange(
            local,
            grant_type="refresh_token",
            refresh_token=tokens["refresh_token"],
            client_id=client.client_id,
        )
        assert local.verifier.verify(renewed["access_token"]).roles == roles
    assert "never with your roles" in _visit(local, _request(client, pkce()[1]))[0].body.decode()


def test_deleting_an_app_ends_its_sessions(local: LocalAuth) -> None:
    client, _ = _app(local)
    _, tokens = _code_exchange(local, client, *_flow(local, client, local.register()))
    local.clients.delete_client(client.client_id)
    with pytest.raises(Unauthenticated):
        local.sessions.refresh(tokens["refresh_token"], client_id=client.client_id)
