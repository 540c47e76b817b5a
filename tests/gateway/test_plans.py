"""gateway.plans: what each route needs per request, worked out once per routing."""

from __future__ import annotations

import pytest

from gateway.plans import Compiled, Routing, SuccessStatus, compile_routing, default_success_status
from gateway.routes import Route, compile_routes
from poly.orders.v1 import orders_service_pb2


def _compiled(success_status: SuccessStatus = default_success_status) -> tuple[dict[str, Route], Compiled]:
    router = compile_routes(orders_service_pb2.DESCRIPTOR.services_by_name.values())
    compiled = compile_routing(Routing(router, {"openapi": "3.1.0"}, success_status))
    return {route.method.name: route for route in router.routes}, compiled


@pytest.mark.parametrize(
    ("method", "body_field", "streaming", "patch_mask"),
    [
        ("GetOrder", "", False, False),
        ("CreateOrder", "order", False, False),
        ("WatchOrder", "", True, False),
        ("CancelOrder", "", False, False),
    ],
    ids=["get", "create-binds-order", "watch-streams", "custom-method-body-star"],
)
def test_each_route_gets_its_plan(method: str, body_field: str, streaming: bool, patch_mask: bool) -> None:
    routes, compiled = _compiled()
    plan = compiled.plans[id(routes[method])]
    assert plan.full_method == f"/poly.orders.v1.OrdersService/{method}"
    assert plan.service == "poly.orders.v1.OrdersService"
    assert plan.body_field == body_field and plan.streaming is streaming
    assert (plan.patch_mask is not None) is patch_mask
    assert plan.request_class.DESCRIPTOR.full_name == routes[method].method.input_type.full_name
    assert plan.success == 200


def test_a_body_of_star_binds_every_request_field() -> None:
    routes, compiled = _compiled()
    cancel = routes["CancelOrder"]
    plan = compiled.plans[id(cancel)]
    assert set(plan.body_fields) == {f.name for f in cancel.method.input_type.fields}


def test_the_success_status_comes_from_the_routing() -> None:
    routes, compiled = _compiled(success_status=lambda route: 201 if route.http_method == "POST" else 200)
    plans = compiled.plans
    assert plans[id(routes["CreateOrder"])].success == 201
    assert plans[id(routes["GetOrder"])].success == 200
    assert default_success_status(routes["CreateOrder"]) == 200, "grpc-gateway answers 200"


def test_the_document_is_serialized_once_and_the_routed_services_listed() -> None:
    _, compiled = _compiled()
    assert compiled.document == b'{"openapi": "3.1.0"}'
    assert compiled.services == ("poly.orders.v1.OrdersService",)
