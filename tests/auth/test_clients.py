"""OAuth clients over the real store, without a server: what a client may be created with,
its secret stored hashed, and the client-credentials grant (scopes, never roles; the same
answer for a wrong secret and an unknown client; throttled like logins); clients for apps:
public or confidential, their exact redirect URIs and their grants."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.auth.clients import Registration
from services.auth.domain import AUTHORIZATION_CODE, CLIENT_CREDENTIALS, CONFIDENTIAL, PUBLIC, REFRESH_TOKEN
from services.auth.redirects import redirect_uri_problem
from services.kit.domain_errors import (
    AlreadyExists,
    DomainError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
)
from tests.auth.local import ADDRESS, SETTINGS, LocalAuth

SECRET = "s" * 32


def test_a_client_gets_an_id_and_a_secret_when_it_names_neither(local: LocalAuth) -> None:
    client, secret = local.clients.create_client("", "Reports", ["orders.read", "orders.read"], "")
    assert client.client_id.startswith("client-") and len(secret) >= 32
    assert client.scopes == ("orders.read",)
    assert local.clients.client(client.client_id) == client
    with local.auth_store.transaction() as repo:
        stored = repo.client(client.client_id)
    assert stored is not None and secret not in stored[1]
    assert local.clients.hasher.verify(stored[1], secret)


INVALID = {
    "id-upper-case": ("Reports", "", ["orders.read"], "", ["client_id"]),
    "unknown-scope": ("reports", "", ["orders.write"], "", ["client.scopes"]),
    "short-secret": ("reports", "", [], "s" * 31, ["client.secret"]),
    "long-secret": ("reports", "", [], "s" * 257, ["client.secret"]),
    "bidi-name": ("reports", "Rep\u202eorts", [], "", ["client.display_name"]),
    "all-at-once": (
        "Reports",
        "\x00",
        ["root"],
        "short",
        ["client_id", "client.display_name", "client.scopes", "client.secret"],
    ),
}


@pytest.mark.parametrize(
    ("client_id", "name", "scopes", "secret", "fields"), INVALID.values(), ids=INVALID.keys()
)
def test_an_invalid_client_is_refused_naming_each_field(
    local: LocalAuth, client_id: str, name: str, scopes: list[str], secret: str, fields: list[str]
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        local.clients.create_client(client_id, name, scopes, secret)
    assert refused.value.reason == "CLIENT_INVALID"
    assert [v.field for v in refused.value.violations] == fields


def test_a_client_id_is_taken_once_and_free_again_after_delete(local: LocalAuth) -> None:
    local.clients.create_client("reports", "", [], SECRET)
    with pytest.raises(AlreadyExists) as taken:
        local.clients.create_client("reports", "", [], "")
    assert (taken.value.reason, taken.value.metadata) == ("CLIENT_EXISTS", {"client": "reports"})
    local.clients.delete_client("reports")
    local.clients.delete_client("reports")  # deleting what is gone is no error
    with pytest.raises(NotFound) as missing:
        local.clients.client("reports")
    assert missing.value.reason == "CLIENT_NOT_FOUND"
    assert local.clients.create_client("reports", "", [], "")[0].client_id == "reports"


def test_clients_are_listed_newest_first_in_pages(local: LocalAuth) -> None:
    for name in ("first", "second", "third"):
        local.clients.create_client(name, "", [], "")
        local.clock.advance(1)
    page, token = local.clients.list_clients(2, "")
    rest, end = local.clients.list_clients(2, token)
    assert [c.client_id for c in page + rest] == ["third", "second", "first"]
    assert end == ""


def test_a_client_token_carries_the_scopes_asked_for_and_no_role(local: LocalAuth) -> None:
    local.clients.create_client("reports", "", ["orders.read", "payments.read"], SECRET)
    every = local.clients.client_token("reports", SECRET, "", ADDRESS)
    assert every.scope == "orders.read payments.read" and every.refresh_token == ""
    assert every.expires_in == SETTINGS.access_token_seconds
    narrowed = local.clients.client_token("reports", SECRET, "payments.read payments.read", ADDRESS)
    principal = local.verifier.verify(narrowed.access_token)
    assert (principal.subject, principal.client_id) == ("clients/reports", "reports")
    assert (principal.scopes, principal.roles) == (frozenset({"payments.read"}), frozenset())
    with pytest.raises(InvalidArgument) as refused:
        local.clients.client_token("reports", SECRET, "orders.read orders.fulfill", ADDRESS)
    assert refused.value.reason == "SCOPE_NOT_ALLOWED"
    assert refused.value.metadata["problem"] == "not granted to this client: orders.fulfill"


def test_a_wrong_secret_and_an_unknown_client_get_the_same_answer(local: LocalAuth) -> None:
    local.clients.create_client("reports", "", [], SECRET)
    with pytest.raises(Unauthenticated) as wrong:
        local.clients.client_token("reports", "w" * 32, "", ADDRESS)
    with pytest.raises(Unauthenticated) as unknown:
        local.clients.client_token("nobody", SECRET, "", ADDRESS)
    assert (wrong.value.reason, wrong.value.message) == (unknown.value.reason, unknown.value.message)
    assert wrong.value.reason == "INVALID_CLIENT"


def test_client_tokens_are_throttled_per_client_like_logins(local: LocalAuth) -> None:
    local.clients.create_client("reports", "", [], SECRET)
    limit = SETTINGS.login_failures_per_account

    def answer(secret: str, address: str) -> str:
        try:
            local.clients.client_token("reports", secret, "", address)
        except DomainError as refused:
            return refused.reason
        return "OK"

    assert answer(SECRET, ADDRESS) == "OK"  # a success does not count
    assert [answer("w" * 32, f"198.51.100.{n}") for n in range(limit)] == ["INVALID_CLIENT"] * limit
    assert answer(SECRET, ADDRESS) == "LOGIN_THROTTLED"
    with pytest.raises(ResourceExhausted) as locked:
        local.clients.client_token("reports", SECRET, "", "203.0.113.1")
    assert locked.value.retry_after_seconds == SETTINGS.login_window_seconds
    local.clock.advance(SETTINGS.login_window_seconds)
    assert answer(SECRET, ADDRESS) == "OK"


# -- clients for apps (authorization code) -------------------------------------------------

APP = "https://app.example.com/callback"


def test_a_public_app_client_has_no_secret_and_signs_users_in_by_code(local: LocalAuth) -> None:
    native = ("com.example.app:/callback", "http://127.0.0.1/callback")
    client, secret = local.clients.create_client(
        "phone-app", "Phone", [], "", Registration(PUBLIC, native, first_party=True)
    )
    assert secret == ""
    assert (client.client_type, client.grant_types) == (PUBLIC, (AUTHORIZATION_CODE, REFRESH_TOKEN))
    assert (client.redirect_uris, client.first_party) == (native, True)
    assert local.clients.client("phone-app") == client


@pytest.mark.parametrize("secret", ["", SECRET], ids=["no-secret", "a-secret"])
def test_a_client_without_the_client_credentials_grant_gets_no_token(local: LocalAuth, secret: str) -> None:
    """A public client has no secret to check: neither nothing nor something opens it. A
    confidential web app may not use client credentials either, unless registered for them."""
    local.clients.create_client("phone-app", "", ["orders.read"], "", Registration(PUBLIC, (APP,)))
    local.clients.create_client(
        "web-app", "", ["orders.read"], SECRET, Registration(CONFIDENTIAL, (APP,), (AUTHORIZATION_CODE,))
    )
    for client_id in ("phone-app", "web-app"):
        with pytest.raises(Unauthenticated) as refused:
            local.clients.client_token(client_id, secret, "", ADDRESS)
        assert refused.value.reason == "INVALID_CLIENT"


REGISTRATIONS = {
    "http-not-loopback": (
        Registration(PUBLIC, ("http://app.example.com/cb",)),
        "",
        ["client.redirect_uris[0]"],
    ),
    "localhost": (Registration(PUBLIC, ("http://localhost:8080/cb",)), "", ["client.redirect_uris[0]"]),
    "fragment": (Registration(PUBLIC, (APP + "#done",)), "", ["client.redirect_uris[0]"]),
    "wildcard": (Registration(PUBLIC, ("https://*.example.com/cb",)), "", ["client.redirect_uris[0]"]),
    "javascript": (Registration(PUBLIC, ("javascript:alert(1)//",)), "", ["client.redirect_uris[0]"]),
    "short-app-scheme": (Registration(PUBLIC, ("myapp:/cb",)), "", ["client.redirect_uris[0]"]),
    "credentials": (
        Registration(PUBLIC, ("https://u:p@app.example.com/cb",)),
        "",
        ["client.redirect_uris[0]"],
    ),
    "repeated": (Registration(PUBLIC, (APP, APP)), "", ["client.redirect_uris"]),
    "too-many": (Registration(PUBLIC, tuple(f"{APP}/{n}" for n in range(11))), "", ["client.redirect_uris"]),
    "public-client-credentials": (
        Registration(PUBLIC, (APP,), (AUTHORIZATION_CODE, CLIENT_CREDENTIALS)),
        "",
        ["client.grant_types"],
    ),
    "code-without-redirect": (Registration(PUBLIC), "", ["client.redirect_uris"]),
    "redirect-without-code": (Registration(CONFIDENTIAL, (APP,)), "", ["client.redirect_uris"]),
    "refresh-without-code": (
        Registration(CONFIDENTIAL, (), (CLIENT_CREDENTIALS, REFRESH_TOKEN)),
        "",
        ["client.grant_types"],
    ),
    "unknown-grant": (Registration(CONFIDENTIAL, (), ("password",)), "", ["client.grant_types"]),
    "public-with-secret": (Registration(PUBLIC, (APP,)), SECRET, ["client.secret"]),
    "unknown-type": (Registration("7", (APP,), (AUTHORIZATION_CODE,)), "", ["client.client_type"]),
}


@pytest.mark.parametrize(
    ("registration", "secret", "fields"), REGISTRATIONS.values(), ids=REGISTRATIONS.keys()
)
def test_an_app_client_that_could_be_abused_is_refused_naming_the_field(
    local: LocalAuth, registration: Registration, secret: str, fields: list[str]
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        local.clients.create_client("my-app", "", [], secret, registration)
    assert [v.field for v in refused.value.violations] == fields


_URIS = st.one_of(
    st.text(max_size=100),
    st.from_regex(
        r"(https?|HTTPS|[a-z]{1,6}(\.[a-z]{1,6}){0,2}|javascript|data):"
        r"(//[^/#?]{0,30})?[/?#\w*@:.%\\<>\[\] -]{0,40}",
        fullmatch=True,
    ),
)
_LOOPBACK_HOSTS = ("http://127.0.0.1", "http://[::1]")


@given(_URIS)
def test_an_accepted_redirect_uri_is_one_of_the_three_safe_kinds(uri: str) -> None:
    """Checked without a URL parser: a browser and Python must read the same host from it."""
    if redirect_uri_problem(uri) is not None:
        return
    assert not set(uri) & set('#*\\<>"` {}|^'), "no fragment, wildcard or character outside RFC 3986"
    if uri.startswith("https://"):
        authority = uri[len("https://") :].split("/", 1)[0].split("?", 1)[0]
        assert re.fullmatch(r"[a-z0-9.-]+(:[0-9]{1,5})?", authority), "a plain lower-case host, no % or @"
        assert authority.split(":")[0] != "localhost"
    elif uri.startswith("http://"):
        assert uri.startswith(_LOOPBACK_HOSTS)
        assert uri[len(next(h for h in _LOOPBACK_HOSTS if uri.startswith(h))) :][:1] in ("", ":", "/", "?")
    else:
        scheme, _, rest = uri.partition(":")
        assert (
            "." in scheme and scheme == scheme.lower() and rest.startswith("/") and not rest.startswith("//")
        )


@pytest.mark.parametrize(
    "uri",
    [
        APP,
        "https://app.example.com:8443/cb?tenant=a",
        "http://127.0.0.1/cb",
        "http://127.0.0.1:51004/cb",
        "http://[::1]/cb",
        "com.example.app:/oauth2redirect/example-provider",
        "https://xn--bcher-kva.example/cb",
    ],
)
def test_redirect_uris_of_web_and_native_apps_are_accepted(uri: str) -> None:
    assert redirect_uri_problem(uri) is None


@pytest.mark.parametrize(
    "uri",
    [
        "https://evil.com\\good.com/cb",
        "https://%65vil.com/cb",
        "https://good.com/<script>",
        'https://good.com/"onload=',
        "http://[::1%25eth0]/cb",
        "http://[::1]x/cb",
        "https://[v1.x]/cb",
        "https://good.com:0/cb",
        "http://127.0.0.2/cb",
        "http://127.0.0.1.evil.com/cb",
        "http://[::ffff:127.0.0.1]/cb",
        "https://localhost/cb",
        "HTTPS://app.example.com/cb",
        "Com.Example.App:/cb",
        "https:/evil.com",
        "vbscript:msgbox",
        "com.example.app://callback",
    ],
)
def test_redirect_uris_that_parsers_read_differently_are_refused(uri: str) -> None:
    """Each is read with another host by some parser (a browser's, Python's), names a
    loopback the docs do not, or is not compared as written."""
    assert redirect_uri_problem(uri) is not None
