"""gRPC servicer of poly.auth.v1.AuthService: parse, call the domain, map the result."""

from __future__ import annotations

import grpc
from google.api import httpbody_pb2
from google.protobuf import empty_pb2

from poly.auth.v1 import auth_service_pb2 as pb
from poly.auth.v1 import auth_service_pb2_grpc, resources_pb2
from services.auth.accounts import Accounts
from services.auth.authorize import Authorize, Browser, PostedForm, ProviderReturn
from services.auth.clients import SCOPES, Clients, Registration
from services.auth.domain import ACTIVE, CONFIDENTIAL, PUBLIC, Client, Identity, TokenSet
from services.auth.oauth import USER_SCOPES, AuthorizationRequest, OAuthServer, Reply
from services.auth.sessions import Sessions
from services.auth.signin import SignIn
from services.auth.tokens import KeyRing
from services.kit import authz, calls, tls
from services.kit.authn import ALGORITHMS, Principal, Verifier
from services.kit.config import Settings
from services.kit.domain_errors import Unauthenticated
from services.kit.names import resource_id
from services.kit.wire import timestamp

__all__ = ["AuthServicer", "client_address"]

_STATES = {ACTIVE: resources_pb2.Identity.STATE_ACTIVE}


def _identity(identity: Identity) -> resources_pb2.Identity:
    return resources_pb2.Identity(
        name=identity.name,
        email=identity.email,
        roles=identity.roles,
        state=_STATES.get(identity.state, resources_pb2.Identity.STATE_DISABLED),
        create_time=timestamp(identity.create_time),
        update_time=timestamp(identity.update_time),
    )


_CLIENT_TYPES = {
    CONFIDENTIAL: resources_pb2.Client.CLIENT_TYPE_CONFIDENTIAL,
    PUBLIC: resources_pb2.Client.CLIENT_TYPE_PUBLIC,
}


def _client(client: Client) -> resources_pb2.Client:
    return resources_pb2.Client(
        name=client.name,
        display_name=client.display_name,
        scopes=client.scopes,
        create_time=timestamp(client.create_time),
        client_type=_CLIENT_TYPES[client.client_type],
        redirect_uris=client.redirect_uris,
        grant_types=client.grant_types,
        first_party=client.first_party,
    )


def _registration(given: resources_pb2.Client) -> Registration:
    """How `given` asks to sign users in; an unspecified type is confidential."""
    kind = given.client_type
    named = {number: name for name, number in _CLIENT_TYPES.items()}
    return Registration(
        # An unknown number stays unknown, and is refused as such.
        client_type=CONFIDENTIAL
        if kind == resources_pb2.Client.CLIENT_TYPE_UNSPECIFIED
        else named.get(kind, str(kind)),
        redirect_uris=tuple(given.redirect_uris),
        grant_types=tuple(given.grant_types),
        first_party=given.first_party,
    )


def _tokens(tokens: TokenSet) -> pb.TokenSet:
    return pb.TokenSet(
        access_token=tokens.access_token,
        token_type="Bearer",  # noqa: S106 - the OAuth token type, not a secret
        expires_in=tokens.expires_in,
        refresh_token=tokens.refresh_token,
        scope=tokens.scope,
        refresh_expires_in=tokens.refresh_expires_in,
    )


def _openid_configuration(issuer: str) -> pb.OpenIdConfiguration:
    return pb.OpenIdConfiguration(
        issuer=issuer,
        jwks_uri=f"{issuer}/.well-known/jwks.json",
        authorization_endpoint=f"{issuer}/oauth2/authorize",
        token_endpoint=f"{issuer}/oauth2/token",
        userinfo_endpoint=f"{issuer}/oauth2/userinfo",
        response_types_supported=["code"],
        response_modes_supported=["query"],
        subject_types_supported=["public"],
        id_token_signing_alg_values_supported=list(ALGORITHMS[:1]),
        grant_types_supported=["authorization_code", "refresh_token", "client_credentials"],
        scopes_supported=[*USER_SCOPES, *SCOPES],
        token_endpoint_auth_methods_supported=["none", "client_secret_basic", "client_secret_post"],
        code_challenge_methods_supported=["S256"],
        authorization_response_iss_parameter_supported=True,
        claims_supported=[
            "iss",
            "sub",
            "aud",
            "azp",
            "exp",
            "nbf",
            "iat",
            "auth_time",
            "nonce",
            "jti",
            "email",
            "email_verified",
            "roles",
            "scope",
            "sid",
            "client_id",
        ],
    )


def _http_reply(reply: Reply, context: grpc.ServicerContext) -> httpbody_pb2.HttpBody:
    """`reply` as the edge answers it: its status and headers as declared response metadata."""
    context.set_trailing_metadata([("x-http-code", str(reply.status)), *reply.headers])
    return httpbody_pb2.HttpBody(content_type=reply.content_type, data=reply.body)


def _cookies(context: grpc.ServicerContext) -> str:
    """The request's cookies as one ``Cookie`` value: HTTP/2 browsers send them as several
    ``cookie`` fields (RFC 9113 8.2.3), each forwarded by the edge as an entry of its own."""
    return "; ".join(
        v for k, v in context.invocation_metadata() or () if k == "cookie" and isinstance(v, str)
    )


def _token_info(principal: Principal, audience: str) -> pb.TokenInfo:
    return pb.TokenInfo(
        active=True,
        subject=principal.subject,
        roles=sorted(principal.roles),
        scopes=sorted(principal.scopes),
        audience=[audience],
        expire_time=timestamp(principal.expires_at),
        issue_time=timestamp(principal.issued_at),
        token_id=principal.token_id,
        client_id=principal.client_id,
    )


def _authorization_request(request: pb.AuthorizeRequest) -> AuthorizationRequest:
    return AuthorizationRequest(
        response_type=request.response_type,
        client_id=request.client_id,
        redirect_uri=request.redirect_uri,
        scope=request.scope,
        state=request.state,
        nonce=request.nonce,
        code_challenge=request.code_challenge,
        code_challenge_method=request.code_challenge_method,
        prompt=request.prompt,
    )


def client_address(context: grpc.ServicerContext, *, edge: str) -> str:
    """The address a login or registration came from: the peer's IP, or, when the peer is the HTTP/JSON
    edge (SPIFFE ID `edge`), the last ``x-forwarded-for`` entry (the edge sends one: the client's
    address as it determined it). Any other caller's ``x-forwarded-for`` is ignored, so it cannot
    dodge throttling."""
    if tls.peer_identity(context) == edge:
        forwarded = [v for k, v in context.invocation_metadata() or () if k == "x-forwarded-for"]
        if forwarded and isinstance(forwarded[-1], str) and forwarded[-1].strip():
            return forwarded[-1].split(",")[-1].strip()
    peer: str = context.peer()  # "ipv4:127.0.0.1:5000", "ipv6:[::1]:5000", "unix:..."
    kind, _, rest = peer.partition(":")
    return rest.rsplit(":", 1)[0].strip("[]") if kind in ("ipv4", "ipv6") else peer


class AuthServicer(auth_service_pb2_grpc.AuthServiceServicer):
    """Identity provider: accounts and roles, sign-in, sessions, machine clients, signing keys.
    Each RPC calls the one domain part that does its job."""

    def __init__(
        self,
        *,
        accounts: Accounts,
        signin: SignIn,
        sessions: Sessions,
        clients: Clients,
        ring: KeyRing,
        verifier: Verifier,
        settings: Settings,
        oauth: OAuthServer,
        authorize: Authorize,
    ) -> None:
        self._accounts = accounts
        self._signin = signin
        self._sessions = sessions
        self._clients = clients
        self._ring = ring
        self._verifier = verifier
        self._oauth = oauth
        self._authorize = authorize
        self._issuer = settings.auth.issuer
        self._edge = tls.spiffe_id(
            "gateway", trust_domain=settings.tls.trust_domain, namespace=settings.tls.namespace
        )

    def Register(self, request: pb.RegisterRequest, context: grpc.ServicerContext) -> pb.RegisterResponse:
        address = client_address(context, edge=self._edge)
        identity = self._accounts.register(
            request.email, request.password, request.display_name, address=address
        )
        return pb.RegisterResponse(user=identity.name, identity=_identity(identity))

    def Login(self, request: pb.LoginRequest, context: grpc.ServicerContext) -> pb.TokenSet:
        address = client_address(context, edge=self._edge)
        return _tokens(self._signin.login(request.email, request.password, address))

    def RefreshToken(self, request: pb.RefreshTokenRequest, context: grpc.ServicerContext) -> pb.TokenSet:
        return _tokens(self._sessions.refresh(request.refresh_token))

    def Logout(self, request: pb.LogoutRequest, context: grpc.ServicerContext) -> empty_pb2.Empty:
        self._sessions.logout(request.refresh_token)
        return empty_pb2.Empty()

    def CreateClient(
        self, request: pb.CreateClientRequest, context: grpc.ServicerContext
    ) -> pb.CreateClientResponse:
        given = request.client
        client, secret = self._clients.create_client(
            request.client_id, given.display_name, list(given.scopes), given.secret, _registration(given)
        )
        return pb.CreateClientResponse(client=_client(client), client_secret=secret)

    def GetClient(self, request: pb.GetClientRequest, context: grpc.ServicerContext) -> resources_pb2.Client:
        return _client(self._clients.client(resource_id(request.name, "clients")))

    def ListClients(
        self, request: pb.ListClientsRequest, context: grpc.ServicerContext
    ) -> pb.ListClientsResponse:
        clients, token = self._clients.list_clients(request.page_size, request.page_token)
        return pb.ListClientsResponse(clients=[_client(c) for c in clients], next_page_token=token)

    def DeleteClient(self, request: pb.DeleteClientRequest, context: grpc.ServicerContext) -> empty_pb2.Empty:
        self._clients.delete_client(resource_id(request.name, "clients"))
        return empty_pb2.Empty()

    def IssueClientToken(
        self, request: pb.IssueClientTokenRequest, context: grpc.ServicerContext
    ) -> pb.TokenSet:
        address = client_address(context, edge=self._edge)
        return _tokens(
            self._clients.client_token(request.client_id, request.client_secret, request.scope, address)
        )

    def GetIdentity(
        self, request: pb.GetIdentityRequest, context: grpc.ServicerContext
    ) -> resources_pb2.Identity:
        user_id = resource_id(request.name, "users")
        authz.require_owner(f"users/{user_id}", f"users/{user_id}")
        return _identity(self._accounts.identity(user_id))

    def ListIdentities(
        self, request: pb.ListIdentitiesRequest, context: grpc.ServicerContext
    ) -> pb.ListIdentitiesResponse:
        page = self._accounts.list_identities(
            request.page_size, request.page_token, request.filter, request.order_by
        )
        return pb.ListIdentitiesResponse(
            identities=[_identity(i) for i in page.identities], next_page_token=page.next_page_token
        )

    def GrantRole(
        self, request: pb.GrantRoleRequest, context: grpc.ServicerContext
    ) -> resources_pb2.Identity:
        user_id = resource_id(request.name, "users")
        return _identity(self._accounts.change_role(user_id, request.role, grant=True))

    def RevokeRole(
        self, request: pb.RevokeRoleRequest, context: grpc.ServicerContext
    ) -> resources_pb2.Identity:
        user_id = resource_id(request.name, "users")
        return _identity(self._accounts.change_role(user_id, request.role, grant=False))

    def GetJwks(self, request: pb.GetJwksRequest, context: grpc.ServicerContext) -> pb.Jwks:
        return pb.Jwks(keys=[pb.Jwk(**key) for key in self._ring.jwks()["keys"]])

    def GetOpenIdConfiguration(
        self, request: pb.GetOpenIdConfigurationRequest, context: grpc.ServicerContext
    ) -> pb.OpenIdConfiguration:
        return _openid_configuration(self._issuer)

    def Authorize(self, request: pb.AuthorizeRequest, context: grpc.ServicerContext) -> httpbody_pb2.HttpBody:
        from_edge = tls.peer_identity(context) == self._edge
        browser = Browser(
            address=client_address(context, edge=self._edge),
            cookie=_cookies(context),
            origin=calls.metadata_value(context, "origin"),
            fetch_site=calls.metadata_value(context, "sec-fetch-site"),
            host=calls.metadata_value(context, "x-forwarded-host") if from_edge else "",
        )
        form = PostedForm(request.form.data, request.form.content_type) if request.HasField("form") else None
        return _http_reply(self._authorize(_authorization_request(request), browser, form), context)

    def CompleteFederatedSignIn(
        self, request: pb.CompleteFederatedSignInRequest, context: grpc.ServicerContext
    ) -> httpbody_pb2.HttpBody:
        answer = ProviderReturn(
            state=request.state, code=request.code, issuer=request.iss, error=request.error
        )
        browser = Browser(address=client_address(context, edge=self._edge), cookie=_cookies(context))
        return _http_reply(self._authorize.returned(answer, browser), context)

    def ExchangeToken(
        self, request: pb.ExchangeTokenRequest, context: grpc.ServicerContext
    ) -> httpbody_pb2.HttpBody:
        authorization = calls.metadata_value(context, "authorization")
        address = client_address(context, edge=self._edge)
        reply = self._oauth.token(request.form.data, request.form.content_type, authorization, address)
        return _http_reply(reply, context)

    def GetUserInfo(self, request: pb.GetUserInfoRequest, context: grpc.ServicerContext) -> pb.UserInfo:
        caller = authz.principal()
        if caller.session and not self._sessions.session_active(caller.session):
            raise Unauthenticated("TOKEN_REVOKED", "the access token's session has ended")
        identity = self._accounts.identity(resource_id(caller.subject, "users"))
        # A token issued to an app shows what the person allowed it; their own session, all.
        shows_email = not caller.client_id or "email" in caller.scopes
        if not shows_email:
            return pb.UserInfo(sub=identity.name)
        return pb.UserInfo(sub=identity.name, email=identity.email, email_verified=False)

    def IntrospectToken(
        self, request: pb.IntrospectTokenRequest, context: grpc.ServicerContext
    ) -> pb.TokenInfo:
        principal = self._sessions.introspect(request.token, self._verifier.verify)
        if principal is None:
            return pb.TokenInfo(active=False)
        return _token_info(principal, self._verifier.audience)
