"""What each route needs per request, worked out once when the routes are compiled: its
message classes, what its body binds, its success status, its gRPC method; and the routing as
a whole (`compile_routing`), swapped in one step on a reload."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

from gateway import fieldmask
from gateway.routes import Route, Router

__all__ = [
    "HTTP_BODY",
    "Compiled",
    "HeaderNames",
    "Plan",
    "Routing",
    "SuccessStatus",
    "backend_method",
    "compile_routing",
    "default_success_status",
    "no_forwarded_headers",
    "raw_body_field",
    "raw_reply_field",
]

_MultiCallable = TypeVar("_MultiCallable")

SuccessStatus = Callable[[Route], int]
"""The HTTP status of a successful call of a route."""


def default_success_status(route: Route) -> int:
    """200, as grpc-gateway answers every success."""
    return 200


HeaderNames = Callable[[Route], frozenset[str]]
"""Header names (lower-case) a route declares: the request headers it forwards as metadata of
the same name, or the metadata it returns as response headers of the same name."""


def no_forwarded_headers(route: Route) -> frozenset[str]:
    """None beyond `headers.default_header_matcher`'s, as grpc-gateway's default."""
    return frozenset()


HTTP_BODY = "google.api.HttpBody"


def raw_body_field(route: Route) -> str | None:
    """Where a route's body goes as it came (grpc-gateway's rule for `google.api.HttpBody`):
    the name of the HttpBody field its body binds, "" when the request message is itself an
    HttpBody (``body: "*"``), None when the body is JSON."""
    request = route.method.input_type
    if route.body == "*":
        return "" if request.full_name == HTTP_BODY else None
    if route.body:
        target = request.fields_by_name[route.body].message_type
        return route.body if target is not None and target.full_name == HTTP_BODY else None
    return None


def raw_reply_field(route: Route) -> str | None:
    """Where a unary route's answer is sent as it is (grpc-gateway's rule for
    `google.api.HttpBody`: its ``data`` as the body, its ``content_type`` as the type): the
    HttpBody field its ``response_body`` names, "" when the reply is itself an HttpBody, None
    when the answer is JSON (streams are always NDJSON or SSE)."""
    if route.server_streaming:
        return None
    reply = route.method.output_type
    if route.response_body:
        target = reply.fields_by_name[route.response_body].message_type
        return route.response_body if target is not None and target.full_name == HTTP_BODY else None
    return "" if reply.full_name == HTTP_BODY else None


@dataclass(frozen=True)
class Routing:
    """What the edge routes: the compiled routes, their OpenAPI document, the success statuses."""

    router: Router
    document: dict[str, Any]
    success_status: SuccessStatus = default_success_status
    forwarded_headers: HeaderNames = no_forwarded_headers
    response_headers: HeaderNames = no_forwarded_headers
    lenient_query: Callable[[Route], bool] = lambda route: False
    """Whether a route ignores query parameters that name no field."""


@dataclass(frozen=True)
class Plan:
    """What a route needs per request, worked out once."""

    request_class: type[Message]
    response_class: type[Message]
    body_field: str
    """The JSON name of the field the body fills, "" for the whole request or no body."""
    body_fields: tuple[str, ...]
    """Request fields the body binds (and the query may not set)."""
    success: int
    """The HTTP status of a success."""
    service: str
    """The full name of the route's gRPC service."""
    full_method: str
    """The gRPC method path, ``/pkg.Service/Method``."""
    streaming: bool
    """Whether the method streams its answers."""
    patch_mask: fieldmask.PatchMask | None = None
    """How a PATCH without a field mask gets one from its body's keys."""
    raw_body: str | None = None
    """`raw_body_field`: the HttpBody field the body fills as it came; None for JSON."""
    forwarded_headers: frozenset[str] = frozenset()
    """Request headers (lower-case) forwarded as metadata of the same name."""
    raw_reply: str | None = None
    """`raw_reply_field`: the HttpBody the answer is sent as; None for JSON."""
    response_headers: frozenset[str] = frozenset()
    """Metadata (lower-case) returned as response headers of the same name; ``x-http-code``
    in it lets the method pick the success status."""
    lenient_query: bool = False
    """Query parameters that name no field are ignored, not refused."""


def _message_class(descriptor: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)


def backend_method(make: Callable[..., _MultiCallable], route: Route, plan: Plan) -> _MultiCallable:
    """`route`'s gRPC method from `make` (a channel's ``unary_unary`` or ``unary_stream``),
    its messages encoded with the plan's classes."""
    return make(
        plan.full_method,
        request_serializer=plan.request_class.SerializeToString,
        response_deserializer=plan.response_class.FromString,
    )


def _plan(route: Route, routing: Routing) -> Plan:
    request = route.method.input_type
    body_field: str = ""
    bound: tuple[str, ...] = ()
    if route.body == "*":
        bound = tuple(f.name for f in request.fields)
    elif route.body:
        body_field = request.fields_by_name[route.body].json_name
        bound = (route.body,)
    response = _message_class(route.method.output_type)
    patch_mask = fieldmask.patch_mask_field(route.http_method, route.body, request)
    return Plan(
        _message_class(request),
        response,
        body_field,
        bound,
        routing.success_status(route),
        route.method.containing_service.full_name,
        route.full_method,
        route.server_streaming,
        patch_mask,
        raw_body_field(route),
        routing.forwarded_headers(route),
        raw_reply_field(route),
        routing.response_headers(route),
        routing.lenient_query(route),
    )


@dataclass(frozen=True)
class Compiled:
    """A routing as the edge serves it: each route's `Plan`, the document as bytes."""

    router: Router
    plans: dict[int, Plan]
    """By the route's identity (hashing a route hashes its whole template): the router
    holds the routes, so their ids stay theirs while this routing is in use."""
    document: bytes
    services: tuple[str, ...]
    """The services with routes: whose health ``/readyz`` reports."""


def compile_routing(routing: Routing) -> Compiled:
    """`routing` as the edge serves it: each route's `Plan`, the document serialized once."""
    # Worked out once per route: nothing about a route is looked up again per request.
    plans = {id(route): _plan(route, routing) for route in routing.router.routes}
    services = sorted({route.method.containing_service.full_name for route in routing.router.routes})
    return Compiled(routing.router, plans, json.dumps(routing.document).encode(), tuple(services))
