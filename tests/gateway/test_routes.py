"""Tests of gateway.routes: rules from descriptors, routing, specificity and start-up errors."""

from __future__ import annotations

import itertools

import pytest
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import ServiceDescriptor

from gateway import routes
from gateway.routes import (
    MethodNotAllowed,
    Route,
    RouteMatch,
    RouteNotFound,
    Router,
    compile_routes,
    rules_of,
)
from gateway.templates import PathTemplate, TemplateError
from poly.auth.v1 import auth_service_pb2
from poly.events.v1 import event_sink_pb2
from poly.notifications.v1 import notifications_service_pb2
from poly.orders.v1 import orders_service_pb2
from poly.payments.v1 import payments_service_pb2
from poly.users.v1 import users_service_pb2

_POLY_SERVICES = [
    service
    for module in (
        auth_service_pb2,
        users_service_pb2,
        orders_service_pb2,
        payments_service_pb2,
        notifications_service_pb2,
        event_sink_pb2,
    )
    for service in module.DESCRIPTOR.services_by_name.values()
]


@pytest.fixture(scope="module")
def router() -> Router:
    return compile_routes(_POLY_SERVICES)


def test_all_lists_the_public_names() -> None:
    imported = {
        "annotations",
        "annotations_pb2",
        "http_pb2",
        "Callable",
        "Iterable",
        "dataclass",
        "Descriptor",
        "FieldDescriptor",
        "MethodDescriptor",
        "ServiceDescriptor",
        "PathTemplate",
        "TemplateError",
    }
    public = {name for name in vars(routes) if not name.startswith("_")} - imported
    assert set(routes.__all__) == public


@pytest.mark.parametrize(
    ("http_method", "path", "full_method", "variables", "body"),
    [
        ("GET", "/v1/orders/abc", "/poly.orders.v1.OrdersService/GetOrder", {"name": "orders/abc"}, ""),
        ("GET", "/v1/orders", "/poly.orders.v1.OrdersService/ListOrders", {}, ""),
        ("POST", "/v1/orders", "/poly.orders.v1.OrdersService/CreateOrder", {}, "order"),
        (
            "POST",
            "/v1/orders/abc:cancel",
            "/poly.orders.v1.OrdersService/CancelOrder",
            {"name": "orders/abc"},
            "*",
        ),
        (
            "GET",
            "/v1/orders/abc:watch",
            "/poly.orders.v1.OrdersService/WatchOrder",
            {"name": "orders/abc"},
            "",
        ),
        ("POST", "/v1/auth:login", "/poly.auth.v1.AuthService/Login", {}, "*"),
        ("GET", "/v1/users/u1", "/poly.users.v1.UsersService/GetUser", {"name": "users/u1"}, ""),
        ("DELETE", "/v1/users/u1", "/poly.users.v1.UsersService/DeleteUser", {"name": "users/u1"}, ""),
        (
            "PATCH",
            "/v1/users/u1",
            "/poly.users.v1.UsersService/UpdateUser",
            {"user.name": "users/u1"},
            "user",
        ),
        ("GET", "/v1/users", "/poly.users.v1.UsersService/ListUsers", {}, ""),
        ("GET", "/v1/users:listIdentities", "/poly.auth.v1.AuthService/ListIdentities", {}, ""),
        (
            "GET",
            "/v1/users/u1:getIdentity",
            "/poly.auth.v1.AuthService/GetIdentity",
            {"name": "users/u1"},
            "",
        ),
        (
            "GET",
            "/v1/users/u1/preferences",
            "/poly.users.v1.UsersService/GetPreferences",
            {"name": "users/u1/preferences"},
            "",
        ),
        (
            "GET",
            "/v1/accounts/a1/ledgerEntries",
            "/poly.payments.v1.PaymentsService/ListLedgerEntries",
            {"parent": "accounts/a1"},
            "",
        ),
        (
            "GET",
            "/v1/accounts/a1/ledgerEntries/e1",
            "/poly.payments.v1.PaymentsService/GetLedgerEntry",
            {"name": "accounts/a1/ledgerEntries/e1"},
            "",
        ),
        ("GET", "/.well-known/jwks.json", "/poly.auth.v1.AuthService/GetJwks", {}, ""),
        ("GET", "/v1/orders/a%20b", "/poly.orders.v1.OrdersService/GetOrder", {"name": "orders/a b"}, ""),
        (
            "GET",
            "/v1/orders/abc:explode",
            "/poly.orders.v1.OrdersService/GetOrder",
            {"name": "orders/abc:explode"},
            "",
        ),
    ],
    ids=[
        "get-resource",
        "list",
        "create-with-body-field",
        "custom-verb",
        "streaming-verb",
        "literal-verb",
        "get-user",
        "delete-user",
        "patch-nested-field",
        "list-users",
        "literal-verb-beats-list",
        "verb-beats-plain-variable",
        "longer-variable",
        "variable-then-literal",
        "nested-collection",
        "well-known",
        "percent-decoded",
        "unknown-verb-is-part-of-the-name",
    ],
)
def test_find_polyservice_routes(
    router: Router, http_method: str, path: str, full_method: str, variables: dict[str, str], body: str
) -> None:
    match = router.find(http_method, path)
    assert isinstance(match, RouteMatch)
    assert match.route.full_method == full_method
    assert match.route.http_method == http_method
    assert match.variables == variables
    assert match.route.body == body


def test_server_streaming(router: Router) -> None:
    assert router.find("GET", "/v1/orders/abc:watch").route.server_streaming
    assert not router.find("GET", "/v1/orders/abc").route.server_streaming


@pytest.mark.parametrize(
    ("http_method", "path", "allowed"),
    [
        ("DELETE", "/v1/orders/abc", ("GET",)),
        ("PUT", "/v1/orders", ("GET", "POST")),
        ("DELETE", "/v1/orders/abc:cancel", ("GET", "POST")),
        ("POST", "/v1/users/u1", ("DELETE", "GET", "PATCH")),
        ("get", "/v1/orders", ("GET", "POST")),
    ],
    ids=[
        "delete-on-get",
        "put-on-collection",
        "custom-verb-or-colon-in-name",
        "several-allowed",
        "method-is-exact",
    ],
)
def test_method_not_allowed(router: Router, http_method: str, path: str, allowed: tuple[str, ...]) -> None:
    with pytest.raises(MethodNotAllowed) as raised:
        router.find(http_method, path)
    assert raised.value.allowed == allowed


@pytest.mark.parametrize(
    "path",
    [
        "/v1/nowhere",
        "/v1/orders/",
        "/v1/orders/a/b",
        "/v1/nowhere:explode",
        "",
        "v1/orders",
        "/",
        "/v1/orders/%zz",
    ],
    ids=[
        "unknown",
        "trailing-slash",
        "too-deep",
        "unknown-verb",
        "empty",
        "relative",
        "root",
        "malformed-escape",
    ],
)
def test_route_not_found(router: Router, path: str) -> None:
    with pytest.raises(RouteNotFound):
        router.find("GET", path)


def test_include_drops_methods() -> None:
    router = compile_routes(_POLY_SERVICES, include=lambda m: m.name != "CancelOrder")
    assert all(route.method.name != "CancelOrder" for route in router.routes)
    with pytest.raises(MethodNotAllowed) as raised:
        router.find("POST", "/v1/orders/abc:cancel")
    assert raised.value.allowed == ("GET",)  # GetOrder still matches name="orders/abc:cancel"


def test_every_polyservice_rule_becomes_a_route(router: Router) -> None:
    expected = sum(len(rules_of(m)) for service in _POLY_SERVICES for m in service.methods)
    assert len(router.routes) == expected > 50
    assert all(isinstance(route, Route) for route in router.routes)


# -- a tiny descriptor written here, for rule forms Polyservice does not use ----------------------

_counter = itertools.count()


def _rule(**fields: object) -> http_pb2.HttpRule:
    rule = http_pb2.HttpRule()
    for name, value in fields.items():
        if name == "custom":
            kind, path = value  # type: ignore[misc]
            rule.custom.kind, rule.custom.path = kind, path
        elif name == "additional_bindings":
            rule.additional_bindings.extend(value)  # type: ignore[arg-type]
        else:
            setattr(rule, name, value)
    return rule


def _service(*methods: tuple[str, http_pb2.HttpRule | None]) -> ServiceDescriptor:
    pool = descriptor_pool.DescriptorPool()
    for module in (descriptor_pb2, http_pb2, annotations_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        pool.Add(proto)
    number = next(_counter)
    file = descriptor_pb2.FileDescriptorProto(
        name=f"test/fixture{number}.proto",
        package=f"test.fixture{number}",
        syntax="proto3",
        dependency=["google/api/annotations.proto"],
    )
    string = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
    optional = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    repeated = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
    inner = file.message_type.add(name="Inner")
    inner.field.add(name="id", number=1, type=string, label=optional)
    request = file.message_type.add(name="Request")
    request.field.add(name="name", number=1, type=string, label=optional)
    request.field.add(
        name="inner",
        number=2,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
        type_name=f".test.fixture{number}.Inner",
        label=optional,
    )
    request.field.add(name="tags", number=3, type=string, label=repeated)
    response = file.message_type.add(name="Response")
    response.field.add(name="data", number=1, type=string, label=optional)
    service = file.service.add(name="Things")
    for name, rule in methods:
        method = service.method.add(
            name=name,
            input_type=f".test.fixture{number}.Request",
            output_type=f".test.fixture{number}.Response",
        )
        if rule is not None:
            method.options.Extensions[annotations_pb2.http].CopyFrom(rule)
    pool.Add(file)
    return pool.FindServiceByName(f"test.fixture{number}.Things")


def test_additional_bindings_custom_kind_and_response_body() -> None:
    service = _service(
        (
            "Get",
            _rule(
                get="/v1/{name=things/*}",
                response_body="data",
                additional_bindings=[
                    _rule(get="/v1/{name=shelves/*/things/*}"),
                    _rule(custom=("search", "/v1/{name=things/*}"), body="*"),
                ],
            ),
        ),
        ("Unbound", None),
    )
    assert rules_of(service.methods_by_name["Unbound"]) == []
    assert rules_of(service.methods_by_name["Get"]) == [
        ("GET", "/v1/{name=things/*}", "", "data"),
        ("GET", "/v1/{name=shelves/*/things/*}", "", ""),
        ("SEARCH", "/v1/{name=things/*}", "*", ""),
    ]
    router = compile_routes([service])
    assert len(router.routes) == 3
    assert router.find("GET", "/v1/things/t1").route.response_body == "data"
    assert router.find("GET", "/v1/shelves/s/things/t").variables == {"name": "shelves/s/things/t"}
    searched = router.find("SEARCH", "/v1/things/t1")
    assert (searched.route.http_method, searched.route.body) == ("SEARCH", "*")
    with pytest.raises(MethodNotAllowed) as raised:
        router.find("POST", "/v1/things/t1")
    assert raised.value.allowed == ("GET", "SEARCH")


def test_most_specific_template_wins() -> None:
    service = _service(
        ("Everything", _rule(get="/v1/**")),
        ("AnyThing", _rule(get="/v1/{name=things/**}")),
        ("OneThing", _rule(get="/v1/{name=things/*}")),
        ("Special", _rule(get="/v1/things/special")),
        ("Tagged", _rule(get="/v1/{name=things/*}:tag")),
        ("Wild", _rule(get="/v1/*/{inner.id}")),
    )
    router = compile_routes([service])
    assert router.find("GET", "/v1/things/special").route.method.name == "Special"
    assert router.find("GET", "/v1/things/t1").route.method.name == "OneThing"
    assert router.find("GET", "/v1/things/t1:tag").route.method.name == "Tagged"
    assert router.find("GET", "/v1/things/a/b").route.method.name == "AnyThing"
    assert router.find("GET", "/v1/other/x").route.method.name == "Wild"
    assert router.find("GET", "/v1/other/x").variables == {"inner.id": "x"}
    assert router.find("GET", "/v1/other/x/y").route.method.name == "Everything"
    assert router.find("GET", "/v1").route.method.name == "Everything"


def test_duplicate_route_names_both_methods() -> None:
    service = _service(
        ("First", _rule(get="/v1/{name=things/*}")),
        ("Second", _rule(get="/v1/{inner.id=things/*}")),
    )
    with pytest.raises(ValueError, match=r"First.*Second"):
        compile_routes([service])


def test_same_template_with_other_methods_is_fine() -> None:
    service = _service(
        ("Read", _rule(get="/v1/{name=things/*}")),
        ("Remove", _rule(delete="/v1/{name=things/*}")),
    )
    router = compile_routes([service])
    assert router.find("DELETE", "/v1/things/t").route.method.name == "Remove"


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        (_rule(get="/v1/{name=things/*"), r"Broken: template .*unbalanced"),
        (_rule(get="/v1/{missing}"), "path variable 'missing'"),
        (_rule(get="/v1/{tags}"), "path variable 'tags'"),
        (_rule(get="/v1/{name.id}"), "goes through a scalar"),
        (_rule(post="/v1/things", body="nothing"), "body 'nothing'"),
        (_rule(get="/v1/things", response_body="nothing"), "response_body 'nothing'"),
        (_rule(body="*"), "without a pattern"),
        (_rule(custom=("", "/v1/things")), "custom http pattern without a kind"),
        (
            _rule(
                get="/v1/a",
                additional_bindings=[_rule(get="/v1/b", additional_bindings=[_rule(get="/v1/c")])],
            ),
            "must not be nested",
        ),
    ],
    ids=[
        "bad-template",
        "unknown-variable",
        "repeated-variable",
        "variable-through-scalar",
        "unknown-body",
        "unknown-response-body",
        "no-pattern",
        "custom-without-kind",
        "nested-additional-bindings",
    ],
)
def test_bad_rules_fail_at_start_up(rule: http_pb2.HttpRule, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        compile_routes([_service(("Broken", rule))])


def test_bad_template_raises_template_error() -> None:
    with pytest.raises(TemplateError):
        compile_routes([_service(("Broken", _rule(get="/v1/**/x")))])


def test_route_is_built_from_a_template() -> None:
    service = _service(("Get", _rule(get="/v1/{name=things/*}")))
    route = Route("GET", PathTemplate.parse("/v1/{name=things/*}"), service.methods_by_name["Get"], "", "")
    router = Router([route])
    assert router.routes == (route,)
    assert route.full_method == f"/{service.full_name}/Get"
