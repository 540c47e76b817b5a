"""The authorization code flow over HTTP through a running edge, as a browser and an app's back
end meet it: auth as a process, the JSON edge in front. Discovery names the endpoints; the
sign-in page is HTML with its headers; its form's post redirects back with a code; the token
endpoint takes form posts (public clients by client_id, confidential ones by HTTP Basic) and
answers in OAuth's JSON; the tokens work at userinfo and at the other services' methods; and
nothing secret reaches a log.
"""

from __future__ import annotations

import base64
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from poly.auth.v1 import auth_service_pb2 as pb
from poly.auth.v1 import resources_pb2
from tests.support.edge import edge_answers
from tests.support.http import Answer, http_call, raw_exchange
from tests.support.identity import PASSWORD, Deployment, bearer, start
from tests.support.pkce import pkce
from tests.support.processes import Process
from tests.support.sign_in_page import form_of
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

REDIRECT = "https://app.example.com/callback"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@dataclass
class Edge:
    deployment: Deployment
    port: int
    process: Process
    admin: str

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def call(
        self, method: str, path: str, *, raw: bytes | None = None, headers: dict[str, str] | None = None
    ) -> Answer:
        return http_call(self.port, method, path, raw=raw, headers=headers)

    def client(self, client_type: int, client_id: str) -> str:
        """A new app client; its secret ("" for a public one)."""
        created = self.deployment.auth().CreateClient(
            pb.CreateClientRequest(
                client_id=client_id,
                client=resources_pb2.Client(
                    display_name="Photo App",
                    client_type=client_type,
                    redirect_uris=[REDIRECT],
                    grant_types=["authorization_code", "refresh_token"],
                ),
            ),
            metadata=bearer(self.admin),
            timeout=10,
        )
        return str(created.client_secret)


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    deployment = start(tmp_path_factory.mktemp("oauth"), ["auth"])
    process = Process.module("gateway", deployment.environ)
    try:
        port = deployment.settings("gateway").server.port
        eventually(lambda: edge_answers(f"http://127.0.0.1:{port}"), timeout=30, what="the edge")
        yield Edge(deployment, port, process, deployment.create_admin())
    finally:
        process.stop()
        deployment.stop()


def _authorize_path(client_id: str, challenge: str, **extra: str) -> str:
    query = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "scope": "openid email",
        "state": "xyz",
        "nonce": "n1",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        **extra,
    }
    return "/oauth2/authorize?" + urllib.parse.urlencode(query)


def _sign_in(edge: Edge, client_id: str, email: str) -> tuple[dict[str, str], str, list[str]]:
    """The redirect's parameters after signing in through the page, the verifier, and the
    secrets the browser held (the cookie and the form token)."""
    verifier, challenge = pkce()
    path = _authorize_path(client_id, challenge, ui_locales="en")  # an unknown parameter: ignored
    page = edge.call("GET", path)
    assert page.status == 200, page.body
    assert page.headers["Content-Type"].startswith("text/html")
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    cookie = page.headers["Set-Cookie"].split(";", 1)[0]
    action, token = form_of(page.body.decode())
    form = urllib.parse.urlencode(
        {"csrf_token": token, "email": email, "password": PASSWORD, "decision": "allow"}
    )
    posted = edge.call(
        "POST",
        action,
        raw=form.encode(),
        headers={**FORM, "Cookie": cookie, "Origin": edge.origin, "Sec-Fetch-Site": "same-origin"},
    )
    assert posted.status == 303, posted.body
    location = posted.headers["Location"]
    assert location.startswith(REDIRECT + "?")
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query)), verifier, [cookie, token]


def _token(edge: Edge, fields: dict[str, str], headers: dict[str, str] | None = None) -> Answer:
    return edge.call(
        "POST",
        "/oauth2/token",
        raw=urllib.parse.urlencode(fields).encode(),
        headers={**FORM, **(headers or {})},
    )


def test_discovery_names_the_authorization_code_flow(edge: Edge) -> None:
    answer = edge.call("GET", "/.well-known/openid-configuration")
    document: dict[str, Any] = answer.json()
    issuer = document["issuer"]
    assert document["authorization_endpoint"] == f"{issuer}/oauth2/authorize"
    assert document["token_endpoint"] == f"{issuer}/oauth2/token"
    assert document["userinfo_endpoint"] == f"{issuer}/oauth2/userinfo"
    assert document["response_types_supported"] == ["code"]
    assert document["code_challenge_methods_supported"] == ["S256"]
    assert document["authorization_response_iss_parameter_supported"] is True
    assert "none" in document["token_endpoint_auth_methods_supported"]


def test_a_browser_signs_in_and_the_app_uses_its_tokens(edge: Edge) -> None:
    edge.client(resources_pb2.Client.CLIENT_TYPE_PUBLIC, "photo-web")
    user, email = edge.deployment.register()
    answer, verifier, held = _sign_in(edge, "photo-web", email)
    assert answer["state"] == "xyz" and answer["iss"] == edge.deployment.settings("auth").auth.issuer
    fields = {
        "grant_type": "authorization_code",
        "code": answer["code"],
        "redirect_uri": REDIRECT,
        "client_id": "photo-web",
        "code_verifier": verifier,
    }
    exchanged = _token(edge, fields)
    assert exchanged.status == 200, exchanged.body
    assert exchanged.headers["Cache-Control"] == "no-store"
    tokens = exchanged.json()
    assert set(tokens) >= {"access_token", "id_token", "refresh_token", "expires_in", "scope"}

    access = {"Authorization": f"Bearer {tokens['access_token']}"}
    info = edge.call("GET", "/oauth2/userinfo", headers=access)
    assert (info.status, info.json()) == (200, {"sub": user, "email": email, "email_verified": False})
    identity = edge.call("GET", f"/v1/{user}:getIdentity", headers=access)
    assert identity.status == 200 and identity.json()["email"] == email
    refused = edge.call("GET", "/oauth2/userinfo", headers={"Authorization": f"Bearer {tokens['id_token']}"})
    assert refused.status == 401  # an ID token is no access token

    again = _token(edge, fields)
    assert (again.status, again.json()["error"]) == (400, "invalid_grant")
    # The code was used twice: it leaked, so the session its first use opened is revoked.
    assert edge.call("GET", "/oauth2/userinfo", headers=access).status == 401

    logged = edge.process.output() + "".join(p.output() for p in edge.deployment.processes.values())
    for secret in [PASSWORD, verifier, answer["code"], tokens["refresh_token"], *held]:
        assert secret not in logged, "a credential was logged"


def test_a_confidential_app_authenticates_with_http_basic_through_the_edge(edge: Edge) -> None:
    secret = edge.client(resources_pb2.Client.CLIENT_TYPE_CONFIDENTIAL, "photo-server")
    _, email = edge.deployment.register()
    answer, verifier, _ = _sign_in(edge, "photo-server", email)
    fields = {
        "grant_type": "authorization_code",
        "code": answer["code"],
        "redirect_uri": REDIRECT,
        "code_verifier": verifier,
    }
    wrong = base64.b64encode(b"photo-server:not-the-secret").decode()
    refused = _token(edge, fields, {"Authorization": f"Basic {wrong}"})
    assert (refused.status, refused.json()["error"]) == (401, "invalid_client")
    assert refused.headers["WWW-Authenticate"]

    answer, verifier, _ = _sign_in(edge, "photo-server", email)
    fields = {**fields, "code": answer["code"], "code_verifier": verifier}
    basic = base64.b64encode(f"photo-server:{secret}".encode()).decode()
    exchanged = _token(edge, fields, {"Authorization": f"Basic {basic}"})
    assert exchanged.status == 200, exchanged.body
    renewed = _token(
        edge,
        {"grant_type": "refresh_token", "refresh_token": exchanged.json()["refresh_token"]},
        {"Authorization": f"Basic {basic}"},
    )
    assert renewed.status == 200 and renewed.json()["refresh_token"] != exchanged.json()["refresh_token"]


def test_a_bad_request_is_an_error_page_or_goes_back_to_the_app(edge: Edge) -> None:
    page = edge.call("GET", _authorize_path("no-such-app", pkce()[1]))
    assert page.status == 400 and page.headers["Content-Type"].startswith("text/html")
    assert "Location" not in page.headers

    edge.client(resources_pb2.Client.CLIENT_TYPE_PUBLIC, "photo-plain")
    back = edge.call("GET", _authorize_path("photo-plain", "a" * 43, code_challenge_method="plain"))
    assert back.status == 302
    assert "error=invalid_request" in back.headers["Location"] and back.headers["Location"].startswith(
        REDIRECT
    )

    forged = edge.call(
        "POST",
        _authorize_path("photo-plain", pkce()[1]),
        raw=b"csrf_token=x&email=a%40b.c&password=p&decision=allow",
        headers={**FORM, "Origin": "https://evil.example"},
    )
    assert forged.status == 403 and "Location" not in forged.headers

    wrong_type = edge.call(
        "POST",
        "/oauth2/token",
        raw=b'{"grant_type":"authorization_code"}',
        headers={"Content-Type": "application/json"},
    )
    assert wrong_type.status == 400 and wrong_type.json()["error"] == "invalid_request"


def test_the_form_s_cookie_is_found_among_cookie_fields_sent_apart(edge: Edge) -> None:
    """HTTP/2 browsers send their cookies as separate ``cookie`` fields (RFC 9113 8.2.3), and
    the edge forwards each: the page's cookie may be in any of them."""
    edge.client(resources_pb2.Client.CLIENT_TYPE_PUBLIC, "photo-crumbs")
    page = edge.call("GET", _authorize_path("photo-crumbs", pkce()[1]))
    cookie = page.headers["Set-Cookie"].split(";", 1)[0]
    action, token = form_of(page.body.decode())
    form = urllib.parse.urlencode({"csrf_token": token, "decision": "deny"}).encode()
    request = (
        f"POST {action} HTTP/1.1\r\nHost: 127.0.0.1:{edge.port}\r\n"
        f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(form)}\r\n"
        f"Origin: {edge.origin}\r\nCookie: theme=dark\r\nCookie: {cookie}\r\nCookie: lang=en\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + form
    answer = raw_exchange(edge.port, request)
    assert answer.startswith(b"HTTP/1.1 303"), answer[:400]
    assert b"error=access_denied" in answer  # Cancel, accepted as the page's own post
