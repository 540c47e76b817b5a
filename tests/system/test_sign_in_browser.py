"""Signing in to an app through the sign-in page, in a real browser (issue 24): Debian's headless
Chromium, driven by selenium, with JavaScript turned off (the page must work without it).

Auth runs as a process with the JSON edge in front, its issuer ``http://localhost:P1``. A test
client app (a small server of the test's at ``http://127.0.0.1:P2``, registered as a public
client with a loopback redirect URI) shows a "Sign in with Poly" link carrying a PKCE challenge
and a state; the person follows it, fills in the page and is sent back to the app's callback,
where the app checks the state and issuer and exchanges the code for tokens that the services
accept. Also in the browser: a wrong password shown on the page, Cancel, and another site's
page posting the sign-in form (refused: it is of another origin, so its Origin and
Sec-Fetch-Site give it away, even where the browser sends the cookie along).
"""

from __future__ import annotations

import base64
import html
import json
import secrets
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from poly.auth.v1 import auth_service_pb2 as pb
from poly.auth.v1 import resources_pb2
from tests.support.browser import chromium, require_chromium
from tests.support.edge import edge_answers
from tests.support.http import http_call
from tests.support.identity import PASSWORD, Deployment, bearer, start
from tests.support.pkce import pkce
from tests.support.processes import Process
from tests.support.waiting import eventually

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CLIENT_ID = "photo-app"
WAIT = 20.0


@pytest.fixture(scope="module", autouse=True)
def binaries() -> tuple[Path, Path]:
    """Chromium and its driver, looked for before the system starts."""
    return require_chromium()


@dataclass
class ClientApp:
    """A web app signing its users in with the authorization code flow, as its back end does:
    a PKCE verifier and state per sign-in, checked and exchanged at its callback."""

    edge_port: int
    issuer: str
    port: int = 0
    pending: dict[str, str] = field(default_factory=dict)
    """state -> code verifier of sign-ins started."""
    signed_in: list[dict[str, Any]] = field(default_factory=list)
    """The token responses of sign-ins completed."""
    refused: list[dict[str, str]] = field(default_factory=list)
    """The parameters of callbacks that brought no code."""

    @property
    def redirect_uri(self) -> str:
        return f"http://127.0.0.1:{self.port}/callback"

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def login_link(self) -> str:
        verifier, challenge = pkce()
        state = secrets.token_urlsafe(16)
        self.pending[state] = verifier
        query = {
            "response_type": "code",
            "client_id": CLIENT_ID,
            "redirect_uri": self.redirect_uri,
            "scope": "openid email",
            "state": state,
            "nonce": secrets.token_urlsafe(12),
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        return f"{self.issuer}/oauth2/authorize?" + urllib.parse.urlencode(query)

    def callback(self, query: dict[str, str]) -> str:
        verifier = self.pending.pop(query.get("state", ""), None)
        if verifier is None or query.get("iss") != self.issuer or "code" not in query:
            self.refused.append(query)
            return f"<p id=result>not signed in: {html.escape(query.get('error', 'bad callback'))}</p>"
        form = urllib.parse.urlencode(
            {
                "grant_type": "authorization_code",
                "code": query["code"],
                "redirect_uri": self.redirect_uri,
                "client_id": CLIENT_ID,
                "code_verifier": verifier,
            }
        ).encode()
        answer = http_call(
            self.edge_port,
            "POST",
            "/oauth2/token",
            raw=form,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        tokens = answer.json()
        if answer.status != 200:
            self.refused.append({"error": tokens.get("error", "")})
            return "<p id=result>not signed in: the exchange failed</p>"
        self.signed_in.append(tokens)
        return "<p id=result>signed in</p>"

    def forged_form(self, email: str) -> str:
        """Another site's page posting the sign-in form in its visitor's browser."""
        action = html.escape(self.login_link())
        return (
            f'<form id=forged method=post action="{action}">'
            f'<input name=email value="{html.escape(email)}"><input name=password value="{PASSWORD}">'
            '<input name=csrf_token value="guessed"><input name=decision value=allow>'
            "<button id=go type=submit>win a prize</button></form>"
        )


def _serve(app: ClientApp) -> ThreadingHTTPServer:
    class _Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path, _, query = self.path.partition("?")
            if path == "/":
                link = html.escape(app.login_link())
                body = (
                    f'<!doctype html><title>Photo App</title><a id=login href="{link}">Sign in with Poly</a>'
                )
            elif path == "/callback":
                body = app.callback(dict(urllib.parse.parse_qsl(query)))
            elif path == "/prize":
                body = app.forged_form(urllib.parse.parse_qs(query)["email"][0])
            else:
                self.send_error(404)
                return
            encoded = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(encoded)))
            self.end_headers()
            self.wfile.write(encoded)

        def log_message(self, *args: Any) -> None:
            """Quiet: the test reports what the app saw."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    app.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@dataclass
class System:
    deployment: Deployment
    app: ClientApp
    edge: Process


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    deployment = start(tmp_path_factory.mktemp("sign-in"), ["auth"])
    edge = Process.module("gateway", deployment.environ)
    server = None
    try:
        port = deployment.settings("gateway").server.port
        eventually(lambda: edge_answers(f"http://127.0.0.1:{port}"), timeout=30, what="the edge")
        app = ClientApp(port, deployment.settings("auth").auth.issuer)
        server = _serve(app)
        admin = deployment.create_admin()
        deployment.auth().CreateClient(
            pb.CreateClientRequest(
                client_id=CLIENT_ID,
                client=resources_pb2.Client(
                    display_name="Photo App",
                    client_type=resources_pb2.Client.CLIENT_TYPE_PUBLIC,
                    redirect_uris=["http://127.0.0.1/callback"],  # any port: a loopback listener
                ),
            ),
            metadata=bearer(admin),
            timeout=10,
        )
        yield System(deployment, app, edge)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        edge.stop()
        deployment.stop()


@pytest.fixture
def browser(binaries: tuple[Path, Path], tmp_path: Path) -> Iterator[webdriver.Chrome]:
    """Headless Chromium with a fresh profile and JavaScript turned off."""
    with chromium(tmp_path, javascript=False) as driver:
        yield driver


def _sign_in_page(driver: webdriver.Chrome, app: ClientApp) -> None:
    """From the app's page, through its login link, to the sign-in page."""
    driver.get(app.url())
    driver.find_element(By.ID, "login").click()
    WebDriverWait(driver, WAIT).until(lambda d: d.title == "Sign in to Photo App")


def _fill(driver: webdriver.Chrome, email: str, password: str, button: str = "allow") -> None:
    # Found by their labels, as a screen reader announces them.
    for label, value in (("Email", email), ("Password", password)):
        target = driver.find_element(By.XPATH, f"//label[normalize-space()='{label}']").get_attribute("for")
        field = driver.find_element(By.ID, str(target))
        field.clear()
        field.send_keys(value)
    driver.find_element(By.CSS_SELECTOR, f"button[value={button}]").click()


def _result(driver: webdriver.Chrome) -> str:
    WebDriverWait(driver, WAIT).until(
        lambda d: d.current_url.startswith("http://127.0.0.1") and d.find_elements(By.ID, "result")
    )
    return str(driver.find_element(By.ID, "result").text)


def test_a_person_signs_in_to_the_app_in_a_browser_without_javascript(
    system: System, browser: webdriver.Chrome
) -> None:
    user, email = system.deployment.register()
    _sign_in_page(browser, system.app)
    text = browser.find_element(By.TAG_NAME, "main").text
    assert "Photo App will be able to" in text and "see your email address" in text

    _fill(browser, email, "not-the-password-at-all")
    problem = WebDriverWait(browser, WAIT).until(lambda d: d.find_elements(By.CSS_SELECTOR, "[role=alert]"))
    assert problem[0].text == "The email or password is wrong."
    assert browser.find_element(By.ID, "email").get_attribute("value") == email  # kept for the retry

    _fill(browser, email, PASSWORD)
    assert _result(browser) == "signed in", system.app.refused
    tokens = system.app.signed_in[-1]
    info = http_call(
        system.app.edge_port,
        "GET",
        "/oauth2/userinfo",
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
    )
    assert (info.status, info.json()["sub"], info.json()["email"]) == (200, user, email)
    identity = http_call(
        system.app.edge_port,
        "GET",
        f"/v1/{user}:getIdentity",
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
    )
    assert identity.status == 200, identity.body
    assert (
        "id_token" in tokens
        and json.loads(base64.urlsafe_b64decode(tokens["id_token"].split(".")[1] + "=="))["aud"] == CLIENT_ID
    )


def test_cancel_takes_the_person_back_to_the_app_with_access_denied(
    system: System, browser: webdriver.Chrome
) -> None:
    _sign_in_page(browser, system.app)
    browser.find_element(By.CSS_SELECTOR, "button[value=deny]").click()
    assert _result(browser) == "not signed in: access_denied"


def test_another_site_cannot_post_the_sign_in_form_in_the_person_s_browser(
    system: System, browser: webdriver.Chrome
) -> None:
    _, email = system.deployment.register()
    _sign_in_page(browser, system.app)  # the browser holds the page's cookie now
    signed_in = len(system.app.signed_in)
    # The same host under another name is another site to the browser (localhost vs 127.0.0.1).
    browser.get(system.app.url(f"/prize?email={urllib.parse.quote(email)}").replace("127.0.0.1", "localhost"))
    browser.find_element(By.ID, "go").click()
    WebDriverWait(browser, WAIT).until(lambda d: "/oauth2/authorize" in d.current_url)
    assert "This sign-in link does not work" in browser.title
    assert "another site" in browser.find_element(By.CSS_SELECTOR, "[role=alert]").text
    assert len(system.app.signed_in) == signed_in
