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
    "Compiled",
    "Plan",
    "Routing",
    "SuccessStatus",
    "backend_method",
    "compile_routing",
    "default_success_status",
]

_MultiCallable = TypeVar("_MultiCallable")

SuccessStatus = Callable[[Route], int]
"""The HTTP status of a successful call of a route."""


def default_success_status(route: Route) -> int:
    """200, as grpc-gateway answers every success."""
    return 200


@dataclass(frozen=True)
class Routing:
    """What the edge routes: the compiled routes, their OpenAPI document, the success statuses."""

    router: Router
    document: dict[str, Any]
    success_status: SuccessStatus = default_success_status


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


def _plan(route: Route, success_status: SuccessStatus) -> Plan:
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
        success_status(route),
        route.method.containing_service.full_name,
        route.full_method,
        route.server_streaming,
        patch_mask,
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
    plans = {id(route): _plan(route, routing.success_status) for route in routing.router.routes}
    services = sorted({route.method.containing_service.full_name for route in routing.router.routes})
    return Compiled(routing.router, plans, json.dumps(routing.document).encode(), tuple(services))
