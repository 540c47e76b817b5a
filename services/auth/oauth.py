"""The authorization code flow over HTTP (OAuth 2.1, RFC 7636 PKCE, OpenID Connect Core 3.1),
by authlib's authorization server.

authlib reads the requests and writes the answers the RFCs describe: which errors go back to
the client's redirect URI and which may not (an unknown client or redirect URI), client
authentication at the token endpoint (``none`` for public clients, ``client_secret_basic``
and ``client_secret_post``), the code's binding to its client and redirect URI, the PKCE
check, ID tokens' nonce. It is given our clients (`_AppClient`), codes (`codes.Codes`),
sessions (`sessions.Sessions`) and keys (`tokens.JwtMinter.id_token`), and narrowed where
OAuth 2.1 and current guidance are stricter than RFC 6749:

- PKCE with S256 from every client, public or confidential: authlib's `CodeChallenge` also
  accepts ``plain`` and a request without a challenge;
- ``state`` is required (the client's defence against a forged redirect);
- every answer redirected to a client names this issuer (RFC 9207 ``iss``), so a client
  talking to several providers knows which one answered;
- a token request naming a parameter twice is refused (RFC 6749 3.2).

The client-credentials grant is answered here too, by `clients.Clients.client_token` (its
throttling and scope rules), so a machine client's OAuth library finds it at the discovered
token endpoint.
"""

from __future__ import annotations

import base64
import json
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from authlib.common.urls import add_params_to_uri
from authlib.oauth2.rfc6749 import AuthorizationServer, ClientMixin, OAuth2Request
from authlib.oauth2.rfc6749.errors import InvalidRequestError, InvalidScopeError, OAuth2Error
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant, RefreshTokenGrant
from authlib.oauth2.rfc6749.requests import OAuth2Payload
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core.grants import OpenIDCode

from services.auth.clients import Clients
from services.auth.codes import Codes
from services.auth.domain import (
    AUTHORIZATION_CODE,
    CLIENT_CREDENTIALS,
    PUBLIC,
    REFRESH_TOKEN,
    Client,
    Clock,
    Grant,
    Identity,
    TokenSet,
    Transactions,
    utc_now,
)
from services.auth.redirects import redirect_uri_matches
from services.auth.sessions import Sessions
from services.auth.tokens import JwtMinter
from services.kit.domain_errors import DomainError, InvalidArgument, ResourceExhausted
from services.kit.names import chosen_id_problems

__all__ = [
    "USER_SCOPES",
    "AuthorizationRequest",
    "OAuthServer",
    "Refused",
    "Reply",
]

USER_SCOPES: tuple[str, ...] = ("openid", "email")
"""What an app may ask of a person: who they are, and their email address. Its access token then
acts as that person (their roles apply)."""
_DEFAULT_SCOPE = "openid"
_SECRET_METHODS = ["client_secret_basic", "client_secret_post"]
_ALL_METHODS = [*_SECRET_METHODS, "none"]
_DESCRIBABLE = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*", re.ASCII)
"""What an error description may hold (RFC 6749 5.2): authlib raises ValueError, rather than
answer, when one it writes would quote a request's value with anything else."""
_QUOTED = ("response_type", "client_id", "redirect_uri")
"""The parameters authlib quotes in its error descriptions."""


@dataclass(frozen=True, slots=True)
class Reply:
    """An HTTP answer: status, headers (names lower-case) and body."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    content_type: str = ""

    @property
    def location(self) -> str:
        return next((value for name, value in self.headers if name == "location"), "")


@dataclass(frozen=True, slots=True)
class Refused:
    """An authorization request that cannot be answered to its client (no known client, or no
    redirect URI registered to it): the person is shown why instead (RFC 6749 4.1.2.1)."""

    description: str


@dataclass(frozen=True, slots=True)
class AuthorizationRequest:
    """An authorization request's parameters (RFC 6749 4.1.1 and its extensions), as given."""

    response_type: str = ""
    client_id: str = ""
    redirect_uri: str = ""
    scope: str = ""
    state: str = ""
    nonce: str = ""
    code_challenge: str = ""
    code_challenge_method: str = ""
    prompt: str = ""

    def parameters(self) -> dict[str, str]:
        """The given (non-empty) parameters, by their OAuth names."""
        return {name: value for name, value in _fields(self) if value}

    def query(self) -> str:
        """The request again as a query string: where the sign-in form posts back to."""
        return urllib.parse.urlencode(self.parameters(), quote_via=urllib.parse.quote)


def _fields(request: AuthorizationRequest) -> list[tuple[str, str]]:
    return [(name, getattr(request, name)) for name in AuthorizationRequest.__dataclass_fields__]


class _Payload(OAuth2Payload):
    def __init__(self, data: Mapping[str, str], datalist: Mapping[str, list[str]] | None = None) -> None:
        self._data = dict(data)
        self._datalist = dict(datalist or {key: [value] for key, value in data.items()})

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> dict[str, list[str]]:
        return self._datalist


class _Request(OAuth2Request):
    """What authlib reads of a request: its method, parameters (query or form) and headers."""

    def __init__(
        self,
        method: str,
        uri: str,
        *,
        query: Mapping[str, str] | None = None,
        form: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(method, uri, headers=dict(headers or {}))
        self._args = dict(query or {})
        self._form = dict(form or {})
        self.payload = _Payload(self._form if method == "POST" and form is not None else self._args)
        self.issued: TokenSet | None = None
        self.identity: Identity | None = None
        self.verified_client: tuple[str, str] | None = None
        """``(client id, method)`` of a client whose secret was checked (`OAuthServer.token`)."""

    @property
    def args(self) -> dict[str, str]:
        return self._args

    @property
    def form(self) -> dict[str, str]:
        return self._form


class _AppClient(ClientMixin):
    """A registered client, as authlib asks about it."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def get_client_id(self) -> str:
        return self.client.client_id

    def get_default_redirect_uri(self) -> str | None:
        # Only an unambiguous one: a client with several must say which (OAuth 2.1 2.3.1).
        uris = self.client.redirect_uris
        return uris[0] if len(uris) == 1 else None

    def get_allowed_scope(self, scope: str | None) -> str | None:
        if not scope:
            return _DEFAULT_SCOPE
        asked = set(scope.split())
        return " ".join(name for name in USER_SCOPES if name in asked) if asked <= set(USER_SCOPES) else None

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri_matches(self.client.redirect_uris, redirect_uri)

    def check_client_secret(self, client_secret: str) -> bool:
        return False  # secrets are checked, under the client-token limits, before authlib runs

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.client.client_type == PUBLIC:
            return method == "none"
        return method in _SECRET_METHODS

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and AUTHORIZATION_CODE in self.client.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.client.grant_types


@dataclass(frozen=True, slots=True)
class _Code:
    """A claimed authorization code, as authlib asks about it."""

    code: str
    grant: Grant

    def get_redirect_uri(self) -> str:
        return self.grant.redirect_uri

    def get_scope(self) -> str:
        return self.grant.scope


@dataclass(frozen=True, slots=True)
class _Refreshed:
    """A rotated refresh token, as authlib asks about it: the tokens are already issued."""

    tokens: TokenSet

    def check_client(self, client: _AppClient) -> bool:
        return True  # `Sessions.refresh` refused any other client's token

    def get_scope(self) -> str:
        return self.tokens.scope


def _token_dict(tokens: TokenSet) -> dict[str, Any]:
    issued: dict[str, Any] = {
        "access_token": tokens.access_token,
        "token_type": "Bearer",
        "expires_in": tokens.expires_in,
        "scope": tokens.scope,
    }
    if tokens.refresh_token:
        issued["refresh_token"] = tokens.refresh_token
    return issued


class _S256Challenge(CodeChallenge):
    """PKCE required of every client, with S256 only (OAuth 2.1 4.1.1, RFC 9700 2.1.1)."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]  # noqa: RUF012 - authlib's name
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("code_challenge is required (PKCE, S256).")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("code_challenge_method must be S256; plain is refused.")
        super().validate_code_challenge(grant, redirect_uri)

    def get_authorization_code_challenge(self, authorization_code: _Code) -> str:
        return authorization_code.grant.code_challenge

    def get_authorization_code_challenge_method(self, authorization_code: _Code) -> str:
        return "S256"


_VISIBLE = re.compile(r"[\x20-\x7e]*", re.ASCII)
"""RFC 6749 Appendix A's VSCHAR, what ``state`` and ``nonce`` may hold."""
_STATE_MAX, _NONCE_MAX = 1024, 255


def _check_state_and_nonce(grant: Any, redirect_uri: str) -> None:
    """``state`` is required; it and ``nonce`` (kept with the code) are bounded, visible ASCII."""
    data = grant.request.payload.data
    state, nonce = data.get("state", ""), data.get("nonce", "")
    if not state:
        raise InvalidRequestError("state is required.")
    if len(state) > _STATE_MAX or not _VISIBLE.fullmatch(state):
        raise InvalidRequestError(f"state must be at most {_STATE_MAX} visible ASCII characters.")
    if len(nonce) > _NONCE_MAX or not _VISIBLE.fullmatch(nonce):
        raise InvalidRequestError(f"nonce must be at most {_NONCE_MAX} visible ASCII characters.")


@dataclass
class OAuthServer:
    """The authorization and token endpoints of the authorization code flow."""

    transactions: Transactions
    codes: Codes
    sessions: Sessions
    clients: Clients
    minter: JwtMinter
    issuer: str
    clock: Clock = utc_now
    _server: AuthorizationServer = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._server = _authorization_server(self)

    # -- what authlib's grants call back ---------------------------------------------------

    def app_client(self, client_id: str) -> _AppClient | None:
        if not client_id or chosen_id_problems(client_id, field="client_id"):
            return None  # not an id a client can have: no query (PostgreSQL refuses a NUL in one)
        with self.transactions() as repo:
            found = repo.client(client_id)
        if found is None or AUTHORIZATION_CODE not in found[0].grant_types:
            return None
        return _AppClient(found[0])

    # -- the authorization endpoint ---------------------------------------------------------

    def check(self, request: AuthorizationRequest) -> tuple[Client, str] | Reply | Refused:
        """The client and redirect URI of a valid authorization request, or the answer to an
        invalid one: a redirect back to the client with the error when the client and redirect
        URI are known (RFC 6749 4.1.2.1), else what to tell the person."""
        refused = _unquotable(request)
        if refused:
            return refused
        oauth_request = self._authorization_request(request)
        try:
            grant = self._server.get_consent_grant(oauth_request, end_user=None)
        except OAuth2Error as error:
            return self._error(oauth_request, error)
        if request.prompt and "none" in request.prompt.split():
            # Nothing remembers a sign-in here, so a request that may not show one fails.
            return self._redirect(grant.redirect_uri, [("error", "login_required"), ("state", request.state)])
        return grant.client.client, grant.redirect_uri

    def approve(
        self, request: AuthorizationRequest, identity: Identity | None, *, posted: bool
    ) -> Reply | Refused:
        """The redirect back to the client: with a code for `identity` (who signed in and, for a
        third-party client, allowed it), or ``access_denied`` when None."""
        refused = _unquotable(request)
        if refused:
            return refused
        oauth_request = self._authorization_request(request)
        oauth_request.identity = identity
        try:
            # Found, not validated: create_authorization_response validates it (once).
            grant = self._server.get_authorization_grant(oauth_request)
        except OAuth2Error as error:
            return self._error(oauth_request, error)
        reply = self._server.create_authorization_response(oauth_request, grant_user=identity, grant=grant)
        if isinstance(reply, Reply) and not reply.location:
            return Refused("the sign-in could not be completed")
        assert isinstance(reply, Reply)
        # After a posted form, 303 says to follow with a GET (302 leaves that to the browser).
        return Reply(303, reply.headers, reply.body, reply.content_type) if posted else reply

    def save_code(self, request: _Request) -> str:
        """A new code for the signed-in person of an approved `request`."""
        identity = request.identity
        assert identity is not None
        data = request.payload.data
        return self.codes.issue(
            Grant(
                client_id=data["client_id"],
                user_id=identity.id,
                # As given: when it was left out, the token request may leave it out too.
                redirect_uri=data.get("redirect_uri", ""),
                scope=request.scope or _DEFAULT_SCOPE,
                code_challenge=data["code_challenge"],
                nonce=data.get("nonce", ""),
                auth_time=self.clock(),
            )
        )

    def _authorization_request(self, request: AuthorizationRequest) -> _Request:
        return _Request("GET", self._endpoint("/oauth2/authorize"), query=request.parameters())

    # -- the token endpoint ------------------------------------------------------------------

    def token(self, form: bytes, content_type: str, authorization: str, address: str = "") -> Reply:
        """The token endpoint's answer to a posted token request from `address`."""
        given = _token_form(form, content_type)
        if isinstance(given, Reply):
            return given
        presented = _presented_secret(given, authorization)
        if isinstance(presented, Reply):
            return presented
        grant = given.get("grant_type", "")
        if grant == CLIENT_CREDENTIALS:
            return self._client_credentials(given, presented, address)
        oauth_request = _Request("POST", self._endpoint("/oauth2/token"), form=given)
        if presented is not None and grant in (AUTHORIZATION_CODE, REFRESH_TOKEN):
            # Checked here, under the client-token limits, rather than by authlib (which would
            # run argon2 for every guess, unthrottled).
            client_id, secret, method = presented
            try:
                client = self.clients.authenticate(client_id, secret, address, grant=grant)
            except ResourceExhausted as error:
                return _throttled(error)
            except DomainError:
                return _invalid_client()
            oauth_request.verified_client = (client.client_id, method)
        reply = self._server.create_token_response(oauth_request)
        assert isinstance(reply, Reply)
        return reply

    def _client_credentials(
        self, form: Mapping[str, str], presented: tuple[str, str, str] | None, address: str
    ) -> Reply:
        if presented is None:
            return _invalid_client()
        client_id, secret, _ = presented
        try:
            tokens = self.clients.client_token(client_id, secret, form.get("scope", ""), address)
        except InvalidArgument as error:
            return _error_reply(400, "invalid_scope", error.message)
        except ResourceExhausted as error:
            return _throttled(error)
        except DomainError:
            return _invalid_client()
        headers = (("cache-control", "no-store"), ("pragma", "no-cache"))
        return Reply(200, headers, json.dumps(_token_dict(tokens)).encode(), "application/json")

    def redeem(self, request: _Request, code: _Code) -> Identity | None:
        """Tokens for a claimed code (kept on `request` for `_token_dict`); its person."""
        client = request.client
        redeemed = self.codes.redeem(
            code.code,
            code.grant,
            refresh=client.check_grant_type(REFRESH_TOKEN),
            first_party=client.client.first_party,
        )
        if redeemed is None:
            return None
        request.identity, request.issued = redeemed
        return redeemed[0]

    def refresh(self, request: _Request, refresh_token: str) -> _Refreshed | None:
        try:
            tokens = self.sessions.refresh(
                refresh_token, client_id=request.client.get_client_id(), scope=request.payload.scope or ""
            )
        except InvalidArgument:
            raise InvalidScopeError("the session was not granted that scope") from None
        except DomainError:
            return None
        request.issued = tokens
        return _Refreshed(tokens)

    def id_token(self, request: _Request) -> str:
        identity, code = request.identity, request.authorization_code
        assert identity is not None and isinstance(code, _Code)
        return self.minter.id_token(
            subject=identity.name,
            audience=request.client.get_client_id(),
            now=self.clock(),
            auth_time=code.grant.auth_time,
            nonce=code.grant.nonce,
            email=identity.email if "email" in code.grant.scope.split() else "",
        )

    # -- answers ------------------------------------------------------------------------------

    def reply(self, status: int, body: Any, headers: Sequence[tuple[str, str]]) -> Reply:
        """authlib's answer as a `Reply`: JSON bodies encoded, and RFC 9207's ``iss`` added to
        every redirect back to a client."""
        named = [(name.lower(), value) for name, value in headers if name.lower() != "content-type"]
        if any(name == "location" for name, _ in named):
            named = [
                (name, add_params_to_uri(value, [("iss", self.issuer)]) if name == "location" else value)
                for name, value in named
            ]
            return Reply(status, (*named, ("cache-control", "no-store")))
        if isinstance(body, dict):
            encoded = json.dumps(body, separators=(",", ":")).encode()
            return Reply(status, tuple(named), encoded, "application/json")
        return Reply(status, tuple(named), str(body or "").encode(), "text/plain; charset=utf-8")

    def _error(self, request: _Request, error: OAuth2Error) -> Reply | Refused:
        error.state = request.payload.state
        if not error.redirect_uri:
            return Refused(error.description or error.error)
        reply = self._server.handle_error_response(request, error)
        assert isinstance(reply, Reply)
        return reply

    def _redirect(self, uri: str, params: list[tuple[str, str]]) -> Reply:
        return self.reply(302, "", [("Location", add_params_to_uri(uri, [(k, v) for k, v in params if v]))])

    def _endpoint(self, path: str) -> str:
        # authlib refuses http URIs (InsecureTransportError); the edge in front decides the
        # transport, and the issuer names this server, so its URI is only ever named https here.
        return "https://" + self.issuer.partition("://")[2] + path


def _unquotable(request: AuthorizationRequest) -> Refused | None:
    unquotable = [name for name in _QUOTED if not _DESCRIBABLE.fullmatch(getattr(request, name))]
    if unquotable:
        return Refused(f"{unquotable[0]} holds characters it may not (a quote, a backslash or non-ASCII)")
    return None


def _token_form(form: bytes, content_type: str) -> dict[str, str] | Reply:
    """A token request's parameters, or the refusal of a body that is not one form, each
    parameter once (RFC 6749 3.2)."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    try:
        fields = urllib.parse.parse_qs(
            form.decode("ascii"), keep_blank_values=True, strict_parsing=bool(form), max_num_fields=32
        )
    except (UnicodeDecodeError, ValueError):
        fields, media_type = {}, ""
    if media_type != "application/x-www-form-urlencoded":
        return _error_reply(400, "invalid_request", "send the request as application/x-www-form-urlencoded")
    repeated = sorted(name for name, values in fields.items() if len(values) > 1)
    if repeated:
        return _error_reply(400, "invalid_request", f"parameters given more than once: {' '.join(repeated)}")
    return {name: values[0] for name, values in fields.items()}


def _presented_secret(form: Mapping[str, str], authorization: str) -> tuple[str, str, str] | Reply | None:
    """The client id, secret and method (RFC 6749 2.3.1) of a token request that presents a
    secret, None when it presents none (a public client names itself), or the refusal of one
    that presents them wrongly (unreadable, or in two ways at once)."""
    if authorization:
        client_id, secret = _basic_credentials(authorization)
        named = form.get("client_id")
        if not client_id or "client_secret" in form or (named is not None and named != client_id):
            return _invalid_client()
        return client_id, secret, "client_secret_basic"
    if "client_secret" in form:
        return form.get("client_id", ""), form["client_secret"], "client_secret_post"
    return None


def _invalid_client() -> Reply:
    refused = _error_reply(401, "invalid_client", "client authentication failed")
    headers = (*refused.headers, ("www-authenticate", 'Basic realm="token"'))
    return Reply(401, headers, refused.body, refused.content_type)


def _throttled(error: ResourceExhausted) -> Reply:
    refused = _error_reply(429, "invalid_client", "too many failed attempts for this client; try again later")
    wait = str(int((error.retry_after_seconds or 1) + 0.999))
    return Reply(429, (*refused.headers, ("retry-after", wait)), refused.body, refused.content_type)


def _basic_credentials(authorization: str) -> tuple[str, str]:
    """The client id and secret of an HTTP Basic Authorization value (RFC 6749 2.3.1: each
    form-urlencoded), or empty ones."""
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return "", ""
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return "", ""
    client_id, colon, secret = decoded.partition(":")
    if not colon:
        return "", ""
    return urllib.parse.unquote_plus(client_id), urllib.parse.unquote_plus(secret)


def _error_reply(status: int, error: str, description: str) -> Reply:
    body = json.dumps({"error": error, "error_description": description}, separators=(",", ":")).encode()
    return Reply(status, (("cache-control", "no-store"), ("pragma", "no-cache")), body, "application/json")


def _verified_by(method: str) -> Any:
    """authlib's client authentication `method`, answered from what `OAuthServer.token` checked."""

    def authenticate(query_client: Any, request: _Request) -> Any:
        verified = request.verified_client
        return query_client(verified[0]) if verified is not None and verified[1] == method else None

    return authenticate


def _authorization_server(flow: OAuthServer) -> AuthorizationServer:
    class _Server(AuthorizationServer):
        def query_client(self, client_id: str) -> _AppClient | None:
            return flow.app_client(client_id)

        def save_token(self, token: dict[str, Any], request: _Request) -> None:
            pass  # `Codes.redeem` and `Sessions.refresh` stored the session

        def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
            pass

        def create_oauth2_request(self, request: _Request) -> _Request:
            return request

        def handle_response(self, status: int, body: Any, headers: Sequence[tuple[str, str]]) -> Reply:
            return flow.reply(status, body, headers)

    class _CodeGrant(AuthorizationCodeGrant):
        TOKEN_ENDPOINT_AUTH_METHODS = _ALL_METHODS

        def save_authorization_code(self, code: str, request: _Request) -> None:
            pass  # `generate_authorization_code` stored it

        def generate_authorization_code(self) -> str:
            return flow.save_code(self.request)

        def create_authorization_response(self, redirect_uri: str, grant_user: Any) -> Any:
            # `save_code` (through generate_authorization_code) needs the person before the code.
            if grant_user:
                self.request.identity = grant_user
            return super().create_authorization_response(redirect_uri, grant_user)

        def query_authorization_code(self, code: str, client: _AppClient) -> _Code | None:
            grant = flow.codes.claim(code, client.get_client_id())
            return None if grant is None else _Code(code, grant)

        def delete_authorization_code(self, authorization_code: _Code) -> None:
            pass  # claimed (used) when it was queried

        def authenticate_user(self, authorization_code: _Code) -> Identity | None:
            return flow.redeem(self.request, authorization_code)

        def generate_token(self, **ignored: Any) -> dict[str, Any]:
            assert self.request.issued is not None
            return _token_dict(self.request.issued)

    class _OpenId(OpenIDCode):
        def exists_nonce(self, nonce: str, request: _Request) -> bool:
            return False  # a nonce is the client's to check in the ID token; codes are one-time

        def generate_user_info(self, user: Identity, scope: str) -> dict[str, Any]:
            return {}

        def encode_id_token(self, token: dict[str, Any], request: _Request) -> str:
            return flow.id_token(request)

    class _RefreshGrant(RefreshTokenGrant):
        TOKEN_ENDPOINT_AUTH_METHODS = _ALL_METHODS
        INCLUDE_NEW_REFRESH_TOKEN = True

        def authenticate_refresh_token(self, refresh_token: str) -> _Refreshed | None:
            return flow.refresh(self.request, refresh_token)

        def authenticate_user(self, refreshed: _Refreshed) -> bool:
            return True

        def revoke_old_credential(self, refreshed: _Refreshed) -> None:
            pass  # rotated when it was claimed

        def generate_token(self, **ignored: Any) -> dict[str, Any]:
            assert self.request.issued is not None
            return _token_dict(self.request.issued)

    server = _Server(scopes_supported=list(USER_SCOPES))
    for method in _SECRET_METHODS:
        server.register_client_auth_method(method, _verified_by(method))
    challenge = _S256Challenge(required=True)

    def code_extensions(grant: Any) -> None:
        challenge(grant)
        grant.register_hook("after_validate_authorization_request_payload", _check_state_and_nonce)
        _OpenId(require_nonce=False)(grant)

    server.register_grant(_CodeGrant, [code_extensions])
    server.register_grant(_RefreshGrant)
    return server
