"""The authorization endpoint as a person's browser meets it: the request checked (`oauth`), the
sign-in page shown (`pages`), its form's post verified (`forms`), the person signed in as a
login is (`signin`, with its throttling), and the browser sent back to the app.

A GET shows the page. A POST is the page's form: refused without its cookie and token or from
another site; Cancel sends ``access_denied`` back to the app; a wrong email or password shows
the page again with the problem (401), too many attempts say when to try again (429), a
disabled account says so (403). Nothing remembers a sign-in: each authorization asks again.
The page also offers the outside providers configured to sign in through (`federated`): the
form's post sends the person there, and `returned` takes them back to the app.
"""

from __future__ import annotations

import dataclasses
import urllib.parse
from dataclasses import dataclass

from services.auth.federated import FederatedSignIn, FederationRefused
from services.auth.forms import FormGuard
from services.auth.oauth import AuthorizationRequest, OAuthServer, Refused, Reply
from services.auth.pages import ErrorPage, SignInPage, error_page, sign_in_page
from services.auth.signin import SignIn
from services.kit.domain_errors import DomainError, PermissionDenied, ResourceExhausted, Unauthenticated

__all__ = ["Authorize", "Browser", "PostedForm", "ProviderReturn"]

_FORM_TYPE = "application/x-www-form-urlencoded"
_FIELDS = frozenset({"csrf_token", "email", "password", "decision", "provider"})


@dataclass(frozen=True, slots=True)
class Browser:
    """What the request tells of the browser that sent it."""

    address: str
    cookie: str = ""
    origin: str = ""
    fetch_site: str = ""
    host: str = ""
    """The host the edge was asked for."""


@dataclass(frozen=True, slots=True)
class PostedForm:
    body: bytes
    content_type: str


@dataclass(frozen=True, slots=True)
class ProviderReturn:
    """What an outside provider sends the person back with (OAuth 2.1 4.1.2, RFC 9207)."""

    state: str
    code: str = ""
    issuer: str = ""
    error: str = ""


@dataclass
class Authorize:
    oauth: OAuthServer
    signin: SignIn
    guard: FormGuard
    federated: FederatedSignIn | None = None
    """Outside providers people may sign in through instead (none when None)."""

    def __call__(self, request: AuthorizationRequest, browser: Browser, form: PostedForm | None) -> Reply:
        checked = self.oauth.check(request)
        if isinstance(checked, Refused):
            return error_page(ErrorPage(checked.description))
        if isinstance(checked, Reply):
            return checked
        client, redirect_uri = checked
        page = SignInPage(
            app_name=client.display_name or client.client_id,
            third_party=not client.first_party,
            action="/oauth2/authorize?" + request.query(),
            token="",
            redirect_uri=redirect_uri,
            providers=tuple(self.federated.upstreams) if self.federated else (),
            provider_urls=self._provider_urls(),
        )
        if form is None:
            return self._page(page, browser)
        return self._posted(request, browser, form, page)

    def _posted(
        self, request: AuthorizationRequest, browser: Browser, form: PostedForm, page: SignInPage
    ) -> Reply:
        fields = _fields(form)
        if fields is None:
            return error_page(ErrorPage("The form could not be read. Start the sign-in again from the app."))
        problem = self.guard.problem(
            cookie_header=browser.cookie,
            token=fields.get("csrf_token", ""),
            origin=browser.origin,
            fetch_site=browser.fetch_site,
            host=browser.host,
        )
        if problem:
            return error_page(ErrorPage(problem, status=403))
        if fields.get("decision") == "deny":
            return self._answer(self.oauth.approve(request, None, posted=True))
        if fields.get("provider"):
            return self._elsewhere(fields["provider"], request, browser)
        email = fields.get("email", "")
        try:
            identity = self.signin.authenticate(email, fields.get("password", ""), browser.address)
        except DomainError as error:
            problem, status = _refusal(error)
            return self._page(dataclasses.replace(page, email=email, problem=problem, status=status), browser)
        return self._answer(self.oauth.approve(request, identity, posted=True))

    def _provider_urls(self) -> tuple[str, ...]:
        upstreams = self.federated.upstreams.values() if self.federated else ()
        return tuple(url for upstream in upstreams for url in upstream.form_targets())

    def _elsewhere(self, alias: str, request: AuthorizationRequest, browser: Browser) -> Reply:
        """The redirect to provider `alias` of a person who chose to sign in there."""
        binding = self.guard.binding(browser.cookie)
        if self.federated is None or binding is None:  # the form's check found the cookie
            return error_page(ErrorPage("There is no such way to sign in here."))
        try:
            location = self.federated.start(alias, request.query(), binding)
        except FederationRefused as refused:
            return error_page(ErrorPage(str(refused), status=503))
        return Reply(303, (("location", location), ("cache-control", "no-store")))

    def returned(self, answer: ProviderReturn, browser: Browser) -> Reply:
        """The person back from an outside provider: sent on to the app with a code (or
        ``access_denied`` if they turned the provider down), or told why not."""
        binding = self.guard.binding(browser.cookie)
        if self.federated is None or binding is None:
            return error_page(
                ErrorPage("This sign-in was started in another browser. Start again from the app.")
            )
        try:
            query, identity = self.federated.complete(
                state=answer.state,
                code=answer.code,
                issuer=answer.issuer,
                error=answer.error,
                binding=binding,
            )
        except FederationRefused as refused:
            return error_page(ErrorPage(str(refused), status=403))
        request = AuthorizationRequest(**dict(urllib.parse.parse_qsl(query)))
        return self._answer(self.oauth.approve(request, identity, posted=True))

    def _page(self, page: SignInPage, browser: Browser) -> Reply:
        binding = self.guard.binding(browser.cookie)
        set_cookie = ""
        if binding is None:
            binding, set_cookie = self.guard.new_binding()
        return sign_in_page(dataclasses.replace(page, token=self.guard.token(binding)), set_cookie=set_cookie)

    @staticmethod
    def _answer(answer: Reply | Refused) -> Reply:
        return error_page(ErrorPage(answer.description)) if isinstance(answer, Refused) else answer


def _refusal(error: DomainError) -> tuple[str, int]:
    """What the page says about a sign-in that failed, and its status."""
    if isinstance(error, Unauthenticated):
        return "The email or password is wrong.", 401
    if isinstance(error, ResourceExhausted):
        return "Too many sign-in attempts. Wait a few minutes, then try again.", 429
    if isinstance(error, PermissionDenied):
        return "This account is disabled.", 403
    return "Signing in failed. Please try again.", 400


def _fields(form: PostedForm) -> dict[str, str] | None:
    """The posted form's fields, or None when it is not a form this page sends."""
    if form.content_type.split(";", 1)[0].strip().lower() != _FORM_TYPE or len(form.body) > 8192:
        return None
    try:
        pairs = urllib.parse.parse_qsl(
            form.body.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=bool(form.body),
            max_num_fields=16,
        )
    except (UnicodeDecodeError, ValueError):
        return None
    fields = dict(pairs)
    if len(fields) < len(pairs) or not set(fields) <= _FIELDS:
        return None
    return fields
