"""Who may call what: each method's ``(poly.options.v1.policy)``, enforced before its handler.

`guard(settings, verifier, descriptors)` is the middleware every service runs. It reads the
policy of each method it serves from the service descriptors and denies by default: a
method without a policy (or with ACCESS_UNSPECIFIED) is refused before its handler runs.

- PUBLIC: anyone; the method checks the credential in its own request.
- USER: a valid access token (`kit.authn`). A user token must hold every role in the
  policy; a machine-client token must hold every scope instead, and is refused when the
  policy names none.
- OWNER: as USER, and the caller must own the resource. Only the handler knows the owner,
  so it calls `require_owner(owner, resource)` before it acts or answers anything else;
  admins (and machine clients holding the policy's scopes) pass. Permission is checked
  before existence (AIP-211): a resource that does not exist is checked as one nobody
  owns, so anyone else gets the same PERMISSION_DENIED NOT_OWNER for another's resource
  and for a missing one, naming only the `resource` they asked for, never its owner, and
  ids cannot be enumerated. Only the owner and those who bypass ownership go on to learn
  NOT_FOUND for a missing one. A handler that never calls it fails closed: its result is
  dropped and the caller gets INTERNAL.
- USER methods that meet someone's existing resource (a create whose client-chosen id is
  taken, AIP-133) call `require_owner` too, with the same test and the same answer: only
  the owner or a caller who bypasses ownership may learn ALREADY_EXISTS.
- INTERNAL: no token; the caller's SPIFFE ID from its verified mTLS certificate
  (``context.auth_context()``) must be one of the policy's `callers`.

Handlers read the caller with `principal()`. Errors are `kit.errors` exceptions:
UNAUTHENTICATED for a missing or bad token, PERMISSION_DENIED for the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from poly.options.v1 import options_pb2
from services.kit import fieldbehavior, server, tls
from services.kit.authn import Principal, Verifier, bearer_token
from services.kit.config import Settings
from services.kit.domain_errors import PermissionDenied, Unauthenticated
from services.kit.types import CallInfo, Handler, Middleware

__all__ = ["OwnerNotChecked", "guard", "policies", "principal", "require_owner", "service_middlewares"]

_log = logging.getLogger("poly.authz")

_Policy = options_pb2.Policy
_Access = options_pb2.Access


class OwnerNotChecked(RuntimeError):
    """An ACCESS_OWNER handler finished without calling `require_owner`: a bug, failed closed."""


@dataclass(slots=True)
class _Call:
    principal: Principal | None
    owner_pending: bool
    """An ACCESS_OWNER call whose handler has not called `require_owner` yet."""
    bypass: bool = False
    """The caller may see every owner's resources: an admin, or a machine client holding
    the method's scopes."""


_CURRENT: ContextVar[_Call | None] = ContextVar("poly_authz_call", default=None)


def principal() -> Principal:
    """The authenticated caller of the current call (USER and OWNER methods)."""
    call = _CURRENT.get()
    if call is None or call.principal is None:
        raise Unauthenticated("TOKEN_MISSING", "this call carries no access token")
    return call.principal


def require_owner(owner: str, resource: str) -> None:
    """Allow the current call only if its caller is `owner`, the owner (``users/{user}``) of
    `resource`, or may bypass ownership (an admin, or a machine client holding the method's
    scopes). `owner` is empty when the resource does not exist, so only the latter pass.

    Anyone else gets PERMISSION_DENIED NOT_OWNER naming only `resource`, the name the caller
    asked for: the same answer for another's resource and a missing one (AIP-211). The test
    is the same on an ACCESS_USER method (a create meeting a taken id), so such a method
    answers another's resource exactly as the owner-checked Get of that name does."""
    call = _CURRENT.get()
    if call is None or call.principal is None:
        raise Unauthenticated("TOKEN_MISSING", "this call carries no access token")
    if not call.bypass and (not owner or call.principal.subject != owner):
        raise PermissionDenied("NOT_OWNER", "the caller may not access {resource}", resource=resource)
    call.owner_pending = False


def policies(descriptors: Iterable[ServiceDescriptor]) -> dict[str, _Policy]:
    """``{"/pkg.Service/Method": Policy}`` for every method that declares one."""
    table: dict[str, _Policy] = {}
    for service in descriptors:
        for method in service.methods:
            options = method.GetOptions()
            if options.HasExtension(options_pb2.policy):
                table[f"/{service.full_name}/{method.name}"] = options.Extensions[options_pb2.policy]
    return table


def guard(
    settings: Settings,
    verifier: Verifier,
    descriptors: Sequence[ServiceDescriptor],
) -> Middleware:
    """The authorization middleware for the services in `descriptors` (what the server
    registers): every other method, and every method without a policy, is refused."""
    table = policies(descriptors)
    # The SPIFFE IDs each INTERNAL method admits, computed once rather than per call.
    callers = {
        method: frozenset(
            tls.spiffe_id(name, trust_domain=settings.tls.trust_domain, namespace=settings.tls.namespace)
            for name in policy.callers
        )
        for method, policy in table.items()
    }

    def admit(policy: _Policy, context: grpc.ServicerContext, call: CallInfo) -> _Call:
        if policy.access == _Access.ACCESS_PUBLIC:
            return _Call(None, owner_pending=False)
        if policy.access == _Access.ACCESS_INTERNAL:
            peer = tls.peer_identity(context)
            if peer is None or peer not in callers[call.method]:
                raise PermissionDenied(
                    "CALLER_NOT_ALLOWED",
                    "{caller} may not call {method}",
                    caller=peer or "unknown",
                    method=call.name,
                )
            return _Call(None, owner_pending=False)
        if policy.access not in (_Access.ACCESS_USER, _Access.ACCESS_OWNER):
            raise PermissionDenied("METHOD_HAS_NO_POLICY", "{method} admits no caller", method=call.name)
        token = bearer_token(context.invocation_metadata())
        if token is None:
            raise Unauthenticated("TOKEN_MISSING", "this method requires an access token")
        caller = verifier.verify(token)
        if caller.is_client:
            if not policy.scopes or not set(policy.scopes) <= caller.scopes:
                raise PermissionDenied(
                    "SCOPE_MISSING",
                    "{method} requires scopes {scopes}",
                    method=call.name,
                    scopes=" ".join(policy.scopes) or "(none: users only)",
                )
            return _Call(caller, owner_pending=False, bypass=True)
        if not set(policy.roles) <= caller.roles:
            raise PermissionDenied(
                "ROLE_MISSING",
                "{method} requires roles {roles}",
                method=call.name,
                roles=" ".join(policy.roles),
            )
        owner_pending = policy.access == _Access.ACCESS_OWNER and not caller.is_admin
        return _Call(caller, owner_pending=owner_pending, bypass=caller.is_admin)

    def middleware(request: Any, context: grpc.ServicerContext, call: CallInfo, proceed: Handler) -> Any:
        policy = table.get(call.method)
        if policy is None:
            raise PermissionDenied("METHOD_HAS_NO_POLICY", "{method} admits no caller", method=call.name)
        state = admit(policy, context, call)
        if call.response_streaming:
            return _guarded_stream(state, proceed, request, context, call)
        entered = _CURRENT.set(state)
        try:
            result = proceed(request, context)
        finally:
            _CURRENT.reset(entered)
        _ensure_owner_checked(state, call)
        return result

    return middleware


def _ensure_owner_checked(state: _Call, call: CallInfo) -> None:
    if state.owner_pending:
        raise OwnerNotChecked(f"{call.method} is ACCESS_OWNER but its handler never called require_owner")


def _guarded_stream(
    state: _Call, proceed: Handler, request: Any, context: grpc.ServicerContext, call: CallInfo
) -> Iterator[Any]:
    # The handler's generator runs only when gRPC pulls from it, after this middleware has
    # returned: the call state is set around every step, and nothing is sent before the
    # owner check.
    entered = _CURRENT.set(state)
    try:
        stream = iter(proceed(request, context))
    finally:
        _CURRENT.reset(entered)
    checked = False
    while True:
        entered = _CURRENT.set(state)
        try:
            item = next(stream)
        except StopIteration:
            break
        finally:
            _CURRENT.reset(entered)
        if not checked:
            _ensure_owner_checked(state, call)
            checked = True
        yield item
    _ensure_owner_checked(state, call)


def service_middlewares(
    settings: Settings, verifier: Verifier, registrations: Sequence[server.Registration]
) -> list[Middleware]:
    """What every service runs: the kit's defaults (access log, errors), then `guard` over
    the registered services' descriptors, then their field behaviour (`kit.fieldbehavior`:
    after authorization, so a caller who may not call a method learns nothing of its fields)."""
    descriptors = [r.descriptor for r in registrations if r.descriptor is not None]
    return [
        *server.default_middlewares(settings),
        guard(settings, verifier, descriptors),
        fieldbehavior.middleware(descriptors),
    ]
