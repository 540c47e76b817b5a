"""gateway.openapi: the OpenAPI 3.1 document, generated from Polyservice's real descriptors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import ServiceDescriptor
from openapi_spec_validator import validate

from gateway.openapi import openapi_document
from gateway.routes import Route, Router, compile_routes
from poly.auth.v1 import auth_service_pb2
from poly.notifications.v1 import notifications_service_pb2
from poly.orders.v1 import orders_service_pb2
from poly.payments.v1 import payments_service_pb2
from poly.users.v1 import users_service_pb2
from services.cli import openapi as openapi_cli
from tests.gateway.conftest import STANDALONE
from tests.support.env import free_port
from tests.support.http import http_call
from tests.support.processes import Process
from tests.support.protos import compile_proto

_MODULES = (
    auth_service_pb2,
    users_service_pb2,
    orders_service_pb2,
    payments_service_pb2,
    notifications_service_pb2,
)


def _services() -> list[ServiceDescriptor]:
    return [service for module in _MODULES for service in module.DESCRIPTOR.services_by_name.values()]


def _success(route: Route) -> int:
    if route.method.output_type.full_name == "google.protobuf.Empty":
        return 204
    return 201 if route.method.name.startswith("Create") else 200


@pytest.fixture(scope="module")
def router() -> Router:
    return compile_routes(_services())


@pytest.fixture(scope="module")
def document(router: Router) -> dict[str, Any]:
    return openapi_document(router, title="Polyservice", version="1.0.0", success_status=_success)


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, item in document["paths"].items() for method, op in item.items()]


def _operation(document: dict[str, Any], operation_id: str) -> dict[str, Any]:
    return next(op for _, _, op in _operations(document) if op["operationId"] == operation_id)


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if "$ref" in node else []
        return own + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def test_top_level(document: dict[str, Any]) -> None:
    assert document["openapi"] == "3.1.0"
    assert document["info"] == {"title": "Polyservice", "version": "1.0.0"}
    assert document["servers"] == [{"url": "/"}]
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
    }
    status = document["components"]["schemas"]["google.rpc.Status"]
    assert status["properties"]["code"] == {"type": "integer", "format": "int32"}
    assert status["properties"]["details"]["items"]["properties"]["@type"] == {"type": "string"}


def test_every_route_is_an_operation(document: dict[str, Any], router: Router) -> None:
    operations = _operations(document)
    assert len(operations) == len(router.routes)
    ids = [op["operationId"] for _, _, op in operations]
    assert len(ids) == len(set(ids))
    answers = document["components"]["responses"]
    for _, _, op in operations:
        errors = {status: ref for status, ref in op["responses"].items() if not status.startswith("2")}
        assert {"400", "404", "429", "503", "default"} <= set(errors), op["operationId"]
        for ref in errors.values():
            shared = answers[ref["$ref"].removeprefix("#/components/responses/")]
            assert shared["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/google.rpc.Status"
            }


def test_structure_is_valid(document: dict[str, Any]) -> None:
    """What matters here beyond the OpenAPI schema (`test_the_document_is_valid_openapi`)."""
    schemas = document["components"]["schemas"]
    for ref in _refs(document):
        kind, _, name = ref.removeprefix("#/components/").partition("/")
        assert kind in {"schemas", "responses"} and name in document["components"][kind], ref
    for path, _, op in _operations(document):
        in_path = set(re.findall(r"\{([^{}]+)\}", path))
        declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
        assert in_path == declared, path
        for parameter in op.get("parameters", []):
            if parameter["in"] == "path":
                assert parameter["required"] is True and parameter["schema"] == {"type": "string"}
        names = [(p["name"], p["in"]) for p in op.get("parameters", [])]
        assert len(names) == len(set(names)), path
    for name, schema in schemas.items():
        assert set(schema.get("required", [])) <= set(schema.get("properties", {})), name
    methods = [(re.sub(r"\{[^{}]+\}", "{}", path), method) for path, method, _ in _operations(document)]
    assert len(methods) == len(set(methods)), "two operations on equivalent templated paths"


CASES = [
    ("OrdersService_GetOrder", "get", "/v1/orders/{order}"),
    ("OrdersService_CancelOrder", "post", "/v1/orders/{order}:cancel"),
    ("OrdersService_ListOrders", "get", "/v1/orders"),
    ("OrdersService_WatchOrder", "get", "/v1/orders/{order}:watch"),
]


@pytest.mark.parametrize(("operation_id", "method", "path"), CASES, ids=[c[0] for c in CASES])
def test_paths(document: dict[str, Any], operation_id: str, method: str, path: str) -> None:
    assert document["paths"][path][method]["operationId"] == operation_id
    assert document["paths"][path][method]["tags"] == ["OrdersService"]


def test_query_parameters_for_list(document: dict[str, Any]) -> None:
    op = _operation(document, "OrdersService_ListOrders")
    assert {p["name"]: p["schema"] for p in op["parameters"]} == {
        "pageSize": {"type": "integer", "format": "int32"},
        "pageToken": {"type": "string"},
        "filter": {"type": "string"},
        "orderBy": {"type": "string"},
    }
    assert all(p["in"] == "query" for p in op["parameters"])
    assert "requestBody" not in op


def test_body_field_and_remaining_query(document: dict[str, Any]) -> None:
    op = _operation(document, "OrdersService_CreateOrder")
    assert op["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/poly.orders.v1.Order"
    }
    assert {p["name"] for p in op["parameters"]} == {"orderId", "requestId"}
    assert "201" in op["responses"]


def test_body_star_leaves_out_path_fields(document: dict[str, Any]) -> None:
    op = _operation(document, "OrdersService_CancelOrder")
    body = op["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]) == {"etag", "reason"}
    assert "required" not in body
    assert [p["name"] for p in op["parameters"]] == ["order"]


def test_message_schema(document: dict[str, Any]) -> None:
    order = document["components"]["schemas"]["poly.orders.v1.Order"]
    props = order["properties"]
    assert order["required"] == ["lines"]
    # An unset message field is written as null (grpc-gateway's EmitUnpopulated).
    assert props["createTime"] == {"type": ["string", "null"], "format": "date-time", "readOnly": True}
    assert props["total"]["anyOf"] == [{"$ref": "#/components/schemas/poly.type.v1.Money"}, {"type": "null"}]
    assert props["state"] == {"$ref": "#/components/schemas/poly.orders.v1.Order.State", "readOnly": True}
    assert props["lines"] == {
        "type": "array",
        "items": {"$ref": "#/components/schemas/poly.orders.v1.OrderLine"},
    }
    state = document["components"]["schemas"]["poly.orders.v1.Order.State"]
    assert state["type"] == "string" and "STATE_PAID" in state["enum"]


def test_streaming_response(document: dict[str, Any]) -> None:
    content = _operation(document, "OrdersService_WatchOrder")["responses"]["200"]["content"]
    assert set(content) == {"application/x-ndjson", "text/event-stream"}
    line = content["application/x-ndjson"]["schema"]["properties"]
    assert line["result"] == {"$ref": "#/components/schemas/poly.orders.v1.WatchOrderResponse"}
    assert line["error"] == {"$ref": "#/components/schemas/google.rpc.Status"}


def test_security_comes_from_the_public_predicate(router: Router) -> None:
    document = openapi_document(
        router, title="t", version="1", success_status=_success, is_public=lambda m: m.name == "Login"
    )
    for _, _, op in _operations(document):
        expected = [] if op["operationId"] == "AuthService_Login" else [{"bearerAuth": []}]
        assert op.get("security") == expected, op["operationId"]


def test_without_a_predicate_no_operation_declares_a_token(document: dict[str, Any]) -> None:
    assert all("security" not in op for _, _, op in _operations(document))


def test_no_comments_without_source_info(document: dict[str, Any]) -> None:
    assert all("summary" not in op for _, _, op in _operations(document))


def test_comments_from_a_comment_source(router: Router) -> None:
    notes = {
        "poly.orders.v1.OrdersService.GetOrder": "Gets an order.\nOwners only.",
        "poly.orders.v1.Order": "An order.",
    }
    document = openapi_document(
        router, title="t", version="1", success_status=_success, comments=lambda n: notes.get(n, "")
    )
    op = _operation(document, "OrdersService_GetOrder")
    assert op["summary"] == "Gets an order." and op["description"] == "Gets an order.\nOwners only."
    assert document["components"]["schemas"]["poly.orders.v1.Order"]["description"] == "An order."


def _stand_in_pool() -> descriptor_pool.DescriptorPool:
    """A self-referencing message, a map and 64-bit fields, with source comments given."""
    file = descriptor_pb2.FileDescriptorProto(name="acme/tree.proto", package="acme", syntax="proto3")
    node = file.message_type.add(name="Node")
    node.field.add(name="id", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_INT64, label=1)
    node.field.add(name="children", number=2, type=11, type_name=".acme.Node", label=3)
    node.field.add(name="labels", number=3, type=11, type_name=".acme.Node.LabelsEntry", label=3)
    entry = node.nested_type.add(name="LabelsEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=9, label=1)
    entry.field.add(name="value", number=2, type=9, label=1)
    service = file.service.add(name="Trees")
    service.method.add(name="GetNode", input_type=".acme.Node", output_type=".acme.Node")
    for path, text in (((4, 0), " A node of a tree.\n"), ((6, 0, 2, 0), " Gets a node.\n")):
        file.source_code_info.location.add(path=path, leading_comments=text)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return pool


def test_recursive_message_map_and_int64() -> None:
    method = _stand_in_pool().FindServiceByName("acme.Trees").methods_by_name["GetNode"]
    template = type(
        "T",
        (),
        {"text": "/v1/{id}", "verb": "", "variables": ("id",), "openapi_path": lambda self: "/v1/{id}"},
    )()
    route = type(
        "R",
        (),
        {
            "http_method": "GET",
            "template": template,
            "method": method,
            "body": "",
            "response_body": "",
            "server_streaming": False,
        },
    )()
    stand_in = type("S", (), {"routes": (route,)})()
    document = openapi_document(stand_in, title="t", version="1", success_status=lambda _: 200)  # type: ignore[arg-type]
    node = document["components"]["schemas"]["acme.Node"]
    assert node["properties"]["children"]["items"] == {"$ref": "#/components/schemas/acme.Node"}
    assert node["properties"]["labels"] == {"type": "object", "additionalProperties": {"type": "string"}}
    assert node["properties"]["id"]["type"] == "string"
    op = document["paths"]["/v1/{id}"]["get"]
    assert [p["name"] for p in op["parameters"]] == ["id"]  # children and labels are no query parameters
    # A pool built from a FileDescriptorProto does not keep its source info: no comments, no crash.
    assert "summary" not in op
    assert "acme.Node.LabelsEntry" not in document["components"]["schemas"]


_FRESH_DOCUMENT = """
import json, sys
from gateway.config import default_descriptor_set
from gateway.descriptors import load_descriptor_set
from gateway.openapi import openapi_document
from gateway.routes import compile_routes

loaded = load_descriptor_set(default_descriptor_set())
router = compile_routes(loaded.services(["poly.orders.v1.OrdersService"]))
document = openapi_document(router, title="t", version="v1", success_status=lambda route: 200)
print(json.dumps({"imported": "google.api.field_behavior_pb2" in sys.modules, "document": document}))
"""


def test_field_behaviors_come_from_the_loaded_descriptors_not_generated_code() -> None:
    # A process that never imported the generated field_behavior module (as a standalone
    # edge serving a descriptor set need not) still reads the option from the set's own pool.
    run = subprocess.run([sys.executable, "-c", _FRESH_DOCUMENT], capture_output=True, text=True, check=True)
    found = json.loads(run.stdout)
    assert found["imported"] is False, "the check needs a process without the generated module"
    schemas = found["document"]["components"]["schemas"]
    order = next(schema for name, schema in schemas.items() if name.endswith("orders.v1.Order"))
    assert order["properties"]["state"].get("readOnly") is True
    assert order["properties"]["createTime"].get("readOnly") is True
    assert "lines" in order.get("required", [])


def test_errors_follow_what_an_operation_takes(router: Router) -> None:
    document = openapi_document(
        router, title="t", version="1", success_status=_success, is_public=lambda m: m.name == "Login"
    )
    login = _operation(document, "AuthService_Login")["responses"]
    assert {"413", "415"} <= set(login) and not {"401", "403"} & set(login), "public, with a body"
    reads = [op["responses"] for _, method, op in _operations(document) if method == "get"]
    assert reads and all(not {"413", "415"} & set(read) for read in reads), "no body, no body errors"
    assert all({"401", "403"} <= set(read) for read in reads), "token-bearing reads can be refused"


def test_the_document_is_valid_openapi(document: dict[str, Any]) -> None:
    validate(document)  # openapi-spec-validator: raises on the first violation


def test_a_license_is_stated_only_when_given(router: Router, document: dict[str, Any]) -> None:
    given = {"name": "MIT", "identifier": "MIT"}
    licensed = openapi_document(router, title="t", version="1", success_status=_success, license=given)
    assert licensed["info"] == {"title": "t", "version": "1", "license": given}
    assert "license" not in document["info"]


def test_polyservice_own_edge_states_its_license(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What `make lint` writes and lints: the edge's own routes and document from POLY_* settings.
    monkeypatch.setenv("POLY_HOME", str(tmp_path))
    out = tmp_path / "build" / "openapi.json"
    assert openapi_cli.main([str(out)]) == 0
    document = json.loads(out.read_text())
    assert document["info"]["title"] == "Polyservice"
    assert document["info"]["license"] == {"name": "Apache-2.0", "identifier": "Apache-2.0"}
    assert "/v1/orders" in document["paths"]
    validate(document)
    assert openapi_cli.main([]) == 2, "OUT is required"


_FOREIGN_PROTO = """
syntax = "proto3";
package acme.greeter.v1;
import "google/api/annotations.proto";
// Greets people.
service Greeter {
  // Greets one person.
  rpc Greet(GreetRequest) returns (Greeting) {
    option (google.api.http) = { get: "/v1/{name=friends/*}/greeting" };
  }
  // Says farewell.
  rpc Farewell(GreetRequest) returns (Greeting) {
    option (google.api.http) = { post: "/v1/farewells" body: "*" };
  }
}
message GreetRequest { string name = 1; }
message Greeting { string text = 1; }
"""


@pytest.mark.slow
def test_a_standalone_edge_serves_a_valid_document_claiming_no_license(tmp_path: Path) -> None:
    # Someone else's API behind `poly gateway --descriptor-set`: its licence is not the edge's to state.
    descriptor_set = compile_proto(tmp_path, "acme/greeter/v1/greeter.proto", _FOREIGN_PROTO)
    port = free_port()
    gateway = Process.module(
        "services.cli",
        STANDALONE,
        "gateway",
        f"--descriptor-set={descriptor_set}",
        f"--backend=acme.greeter.v1.Greeter=127.0.0.1:{free_port()},plaintext",
        f"--listen=127.0.0.1:{port}",
        "--title=Greeter API",
    )
    try:
        gateway.wait_for_line(lambda line: '"serving"' in line, timeout=30)
        document = http_call(port, "GET", "/openapi.json").json()
    finally:
        gateway.stop()
    assert document["info"] == {"title": "Greeter API", "version": "v1"}
    assert {"/v1/friends/{friend}/greeting", "/v1/farewells"} <= set(document["paths"])
    validate(document)


def test_a_method_picking_its_status_documents_its_own_body_at_any_status(router: Router) -> None:
    declared = frozenset({"x-http-code", "location", "set-cookie"})
    document = openapi_document(
        router,
        title="t",
        version="1",
        success_status=_success,
        response_headers=lambda route: declared if route.method.name == "Authorize" else frozenset(),
    )
    page = _operation(document, "AuthService_Authorize")["responses"]
    assert set(page) == {"200", "4XX", "default"}
    assert page["default"]["content"] == {"*/*": {"schema": {}}}
    assert set(page["default"]["headers"]) == {"location", "set-cookie"}
    validate(document)
