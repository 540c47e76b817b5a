"""From descriptors to what the edge serves: the routed services, their routes, each route's
success status, and the OpenAPI document.

Method options refine the defaults when a service declares them (Polyservice's own do;
a foreign service simply does not, and gets grpc-gateway's behaviour):

* ``poly.options.v1.http_status`` - the success status (201 for creates, 204 for Empty);
  without it, 200.
* ``poly.options.v1.policy`` - methods whose access is INTERNAL (service-to-service only) get
  no route; PUBLIC ones need no bearer token in the OpenAPI document. Without it, every
  method is routed and none declares a token.
* ``poly.options.v1.forwarded_headers`` - request headers forwarded to the method as
  metadata of the same name (a webhook's signature header); without it, only
  ``Grpc-Metadata-*`` and the edge's own.
* ``poly.options.v1.response_headers`` - the method's metadata returned as response headers
  of the same name (a redirect's ``location``, a ``set-cookie``), and ``x-http-code`` as the
  status; without it, metadata comes back as ``Grpc-Metadata-*``.
* ``poly.options.v1.ignore_unknown_query`` - query parameters that name no field are ignored
  (OAuth's authorization endpoint must); without it, they are 400.

All are read through the descriptor set's own pool (`DescriptorSet.method_option`), so
the edge needs no generated code for them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from google.protobuf.descriptor import MethodDescriptor

from gateway import openapi
from gateway.backends import Backends
from gateway.config import EdgeConfig, Target
from gateway.descriptors import DescriptorSet, load_descriptor_set
from gateway.headers import DECLARABLE_HEADERS
from gateway.plans import HeaderNames, Routing
from gateway.reflection import reflect
from gateway.routes import Route, compile_routes

__all__ = [
    "Catalog",
    "FORWARDED_HEADERS_OPTION",
    "IGNORE_UNKNOWN_QUERY_OPTION",
    "POLICY_OPTION",
    "RESPONSE_HEADERS_OPTION",
    "SUCCESS_STATUS_OPTION",
    "build",
    "load",
    "load_routing",
]

POLICY_OPTION = "poly.options.v1.policy"
FORWARDED_HEADERS_OPTION = "poly.options.v1.forwarded_headers"
RESPONSE_HEADERS_OPTION = "poly.options.v1.response_headers"
IGNORE_UNKNOWN_QUERY_OPTION = "poly.options.v1.ignore_unknown_query"
SUCCESS_STATUS_OPTION = "poly.options.v1.http_status"
_PUBLIC, _INTERNAL = "ACCESS_PUBLIC", "ACCESS_INTERNAL"
_NOT_THE_API = ("grpc.", "google.")
"""Services a descriptor set carries for its imports (reflection, health, long-running
operations...): with a default backend they are routed only when named."""


@dataclass(frozen=True)
class Catalog:
    """Descriptors plus the services to route from them."""

    descriptors: DescriptorSet
    services: tuple[str, ...]


async def load(config: EdgeConfig, backends: Backends) -> Catalog:
    """Read the descriptors (the file, or each backend's reflection) and pick the services.

    Raises `DescriptorSetError` naming every service asked for that is not there.
    """
    named = sorted(config.backends)
    if config.descriptor_set is not None:
        descriptors = load_descriptor_set(config.descriptor_set)
        descriptors.services(named)  # every named one must be in the set
        if config.default_backend is None:
            return Catalog(descriptors, tuple(named))
        everything = [s for s in descriptors.service_names() if not s.startswith(_NOT_THE_API)]
        return Catalog(descriptors, tuple(sorted(set(everything) | set(named))))
    # One reflection session per target (a named backend and the default one may share an
    # address with different transports), labelled by address for the messages.
    targets = [config.backends[service] for service in named]
    if config.default_backend is not None:
        targets.append(config.default_backend)
    labels: dict[Target, str] = {}
    for target in dict.fromkeys(targets):
        same_address = sum(1 for seen in labels if seen.address == target.address)
        labels[target] = f"{target.address} (#{same_address + 1})" if same_address else target.address
    channels = {labels[t]: backends.channel_to(t) for t in labels}
    wanted: dict[str, list[str] | None] = {label: [] for label in channels}
    for service in named:
        asked = wanted[labels[config.backends[service]]]
        if asked is not None:
            asked.append(service)
    if config.default_backend is not None:
        wanted[labels[config.default_backend]] = None  # everything it serves
    descriptors, served = await reflect(channels, wanted)
    return Catalog(descriptors, tuple(sorted({s for found in served.values() for s in found})))


def _access(descriptors: DescriptorSet, method: MethodDescriptor) -> str | None:
    policy = descriptors.method_option(method, POLICY_OPTION)
    if policy is None:
        return None
    message = getattr(policy, "DESCRIPTOR", None)
    field = message.fields_by_name.get("access") if message is not None else None
    if field is None or field.enum_type is None:
        return None
    value = field.enum_type.values_by_number.get(getattr(policy, "access", 0))
    return value.name if value is not None else None


def build(
    catalog: Catalog, *, title: str, version: str = "v1", license: Mapping[str, str] | None = None
) -> Routing:
    """Compile the routes and the OpenAPI document (whose ``info.license`` is `license`) of
    `catalog`'s services."""
    descriptors = catalog.descriptors

    def success_status(route: Route) -> int:
        declared = descriptors.method_option(route.method, SUCCESS_STATUS_OPTION)
        return declared if isinstance(declared, int) and 200 <= declared < 300 else 200

    def declared_names(option: str) -> HeaderNames:
        def names(route: Route) -> frozenset[str]:
            declared = descriptors.method_option(route.method, option)
            if not isinstance(declared, list):
                return frozenset()
            return frozenset(str(name).lower() for name in declared)

        return names

    forwarded_headers = declared_names(FORWARDED_HEADERS_OPTION)
    declared_responses = declared_names(RESPONSE_HEADERS_OPTION)

    def response_headers(route: Route) -> frozenset[str]:
        names = declared_responses(route)
        if refused := sorted(names - DECLARABLE_HEADERS):
            raise ValueError(
                f"{route.method.full_name}: response_headers may name only "
                f"{', '.join(sorted(DECLARABLE_HEADERS))}; not {', '.join(refused)}"
            )
        return names

    def lenient_query(route: Route) -> bool:
        return descriptors.method_option(route.method, IGNORE_UNKNOWN_QUERY_OPTION) is True

    def is_public(method: MethodDescriptor) -> bool | None:
        access = _access(descriptors, method)
        return None if access is None else access == _PUBLIC

    router = compile_routes(
        descriptors.services(catalog.services),
        include=lambda method: _access(descriptors, method) != _INTERNAL,
    )
    document = openapi.openapi_document(
        router,
        title=title,
        version=version,
        success_status=success_status,
        forwarded_headers=forwarded_headers,
        response_headers=response_headers,
        comments=descriptors.comment,
        is_public=is_public,
        license=license,
    )
    return Routing(router, document, success_status, forwarded_headers, response_headers, lenient_query)


async def load_routing(config: EdgeConfig, backends: Backends) -> Routing:
    """`load` then `build`; raises `DescriptorSetError` or ValueError (a rule that cannot work)."""
    return build(await load(config, backends), title=config.title, license=config.openapi_license)
