"""gateway.catalog: descriptors to routes, success statuses and the OpenAPI document, with
Polyservice's method options where declared and grpc-gateway's defaults where not."""

from __future__ import annotations

import asyncio
import re
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection

from gateway.backends import Backends
from gateway.catalog import Catalog, build, load
from gateway.config import API_SERVICES, EdgeConfig, Target, Transport, default_descriptor_set
from gateway.descriptors import DescriptorSetError, load_descriptor_set
from gateway.plans import Routing, compile_routing
from tests.support.protos import compile_proto

FOREIGN = """
syntax = "proto3";
package acme.shop.v1;
import "google/api/annotations.proto";
import "google/protobuf/empty.proto";
import "google/longrunning/operations_proto.proto";
service Shop {
  rpc CreateItem(Item) returns (Item) { option (google.api.http) = { post: "/v1/items" body: "*" }; }
  rpc DeleteItem(Item) returns (google.protobuf.Empty) {
    option (google.api.http) = { delete: "/v1/items/{name}" };
  }
  rpc Ping(google.protobuf.Empty) returns (google.protobuf.Empty);
}
service Back { rpc GetItem(Item) returns (Item) { option (google.api.http) = { get: "/v1/back/{name}" }; } }
message Item { string name = 1; }
"""


def _statuses(routing: Routing) -> dict[str, int]:
    return {r.full_method.rsplit("/", 1)[-1]: routing.success_status(r) for r in routing.router.routes}


def _security(document: dict[str, Any]) -> dict[str, Any]:
    return {
        op["operationId"]: op.get("security") for item in document["paths"].values() for op in item.values()
    }


@pytest.fixture(scope="module")
def polyservice() -> Routing:
    descriptors = load_descriptor_set(default_descriptor_set())
    return build(Catalog(descriptors, tuple(API_SERVICES.values())), title="Polyservice")


def test_internal_methods_get_no_route(polyservice: Routing) -> None:
    methods = {r.full_method for r in polyservice.router.routes}
    assert "/poly.users.v1.UsersService/GetUser" in methods
    assert "/poly.users.v1.UsersService/LookupContact" not in methods


def test_declared_success_statuses(polyservice: Routing) -> None:
    found = _statuses(polyservice)
    assert (found["CreateOrder"], found["DeleteWebhook"], found["GetOrder"]) == (201, 204, 200)
    assert polyservice.document["paths"]["/v1/orders"]["post"]["responses"].keys() >= {"201"}


def test_public_methods_declare_no_token(polyservice: Routing) -> None:
    security = _security(polyservice.document)
    assert security["AuthService_Login"] == [], "public: said so, for linters and generated clients"
    assert security["OrdersService_GetOrder"] == [{"bearerAuth": []}]
    assert polyservice.document["info"]["title"] == "Polyservice"


def test_a_webhook_takes_its_body_as_sent_and_its_signature_header(polyservice: Routing) -> None:
    compiled = compile_routing(polyservice)
    (route,) = [r for r in polyservice.router.routes if r.full_method.endswith("/ReceiveProviderEvent")]
    plan = compiled.plans[id(route)]
    paypal = {f"paypal-{name}" for name in ("auth-algo", "cert-url", "transmission-id", "transmission-sig")}
    expected = {"stripe-signature", "paypal-transmission-time", *paypal}
    assert (plan.raw_body, plan.forwarded_headers) == ("body", frozenset(expected))
    operation = polyservice.document["paths"]["/v1/providers/{provider}/events"]["post"]
    assert operation["requestBody"]["content"] == {"*/*": {"schema": {}}}
    assert {"name": "stripe-signature", "in": "header", "required": False, "schema": {"type": "string"}} in (
        operation["parameters"]
    )
    assert operation["security"] == [], "public: the signature is the credential"


def test_a_foreign_service_gets_grpc_gateway_defaults(tmp_path: Path) -> None:
    descriptors = load_descriptor_set(compile_proto(tmp_path, "acme/shop/v1/shop.proto", FOREIGN))
    routing = build(Catalog(descriptors, ("acme.shop.v1.Shop",)), title="Shop")
    assert _statuses(routing) == {"CreateItem": 200, "DeleteItem": 200}  # Ping has no rule
    assert set(_security(routing.document).values()) == {None}
    assert routing.document["info"]["title"] == "Shop"


def test_a_default_backend_routes_every_service_of_the_set(tmp_path: Path) -> None:
    descriptor_set = compile_proto(tmp_path, "acme/shop/v1/shop.proto", FOREIGN)
    plain = Transport("plaintext")

    async def services(**targets: Any) -> tuple[str, ...]:
        config = EdgeConfig(descriptor_set=descriptor_set, **targets)
        backends = Backends(config.backends, config.default_backend)
        try:
            return (await load(config, backends)).services
        finally:
            await backends.close()

    named = {"acme.shop.v1.Shop": Target("a:1", plain)}
    assert asyncio.run(services(backends=named)) == ("acme.shop.v1.Shop",)
    # Operations comes with the imports (and has rules of its own): routed only when named.
    assert asyncio.run(services(backends={}, default_backend=Target("b:2", plain))) == (
        "acme.shop.v1.Back",
        "acme.shop.v1.Shop",
    )
    operations = {"google.longrunning.Operations": Target("c:3", plain)}
    assert "google.longrunning.Operations" in asyncio.run(
        services(backends=operations, default_backend=Target("b:2", plain))
    )
    with pytest.raises(DescriptorSetError, match=re.escape("not in the descriptor set: acme.shop.v1.Nope")):
        asyncio.run(services(backends={"acme.shop.v1.Nope": Target("a:1", plain)}))


def test_reflection_asks_each_target_even_when_targets_share_an_address(tmp_path: Path) -> None:
    """Three targets on one address (transports differing only in the name to verify, which
    plaintext ignores) are three reflection sessions; their services are routed together."""
    descriptor_set = compile_proto(tmp_path, "acme/shop/v1/shop.proto", FOREIGN)
    pool = descriptor_pool.DescriptorPool()
    for file in descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes()).file:
        pool.Add(file)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    names = ("acme.shop.v1.Shop", "acme.shop.v1.Back", reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server, pool=pool)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    address = f"127.0.0.1:{port}"
    config = EdgeConfig(
        backends={
            "acme.shop.v1.Shop": Target(address, Transport("plaintext")),
            "acme.shop.v1.Back": Target(address, Transport("plaintext", server_name="back")),
        },
        default_backend=Target(address, Transport("plaintext", server_name="default")),
    )

    async def services() -> tuple[str, ...]:
        backends = Backends(config.backends, config.default_backend)
        try:
            return (await load(config, backends)).services
        finally:
            await backends.close()

    try:
        assert asyncio.run(services()) == ("acme.shop.v1.Back", "acme.shop.v1.Shop")
    finally:
        server.stop(None)


DECLARING = """
syntax = "proto3";
package acme.door.v1;
import "google/api/annotations.proto";
import "google/api/httpbody.proto";
import "poly/options/v1/options.proto";
service Door {
  rpc Open(Knock) returns (google.api.HttpBody) {
    option (google.api.http) = { post: "/v1/door:open" body: "*" };
    option (poly.options.v1.response_headers) = "Location";
    option (poly.options.v1.response_headers) = "%s";
  }
}
message Knock { string who = 1; }
"""


@pytest.mark.parametrize(
    "name",
    [
        "access-control-allow-origin",
        "access-control-allow-credentials",
        "content-length",
        "x-request-id",
        "date",
    ],
)
def test_a_method_may_not_declare_a_header_the_edge_answers_for(tmp_path: Path, name: str) -> None:
    descriptors = load_descriptor_set(compile_proto(tmp_path, "acme/door/v1/door.proto", DECLARING % name))
    with pytest.raises(
        ValueError, match=f"acme.door.v1.Door.Open: response_headers may name only .*not {name}"
    ):
        build(Catalog(descriptors, ("acme.door.v1.Door",)), title="Door")


def test_declared_response_headers_are_lower_cased_and_documented(tmp_path: Path) -> None:
    descriptors = load_descriptor_set(
        compile_proto(tmp_path, "acme/door/v1/door.proto", DECLARING % "x-http-code")
    )
    routing = build(Catalog(descriptors, ("acme.door.v1.Door",)), title="Door")
    (route,) = routing.router.routes
    assert compile_routing(routing).plans[id(route)].response_headers == {"location", "x-http-code"}
    success = routing.document["paths"]["/v1/door:open"]["post"]["responses"]["200"]
    assert set(success["headers"]) == {"location"}, "x-http-code is the status, not a header"
