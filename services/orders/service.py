"""gRPC servicer of poly.orders.v1.OrdersService: parse, call the domain, map the result."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from poly.orders.v1 import orders_service_pb2 as pb
from poly.orders.v1 import orders_service_pb2_grpc, resources_pb2
from services.kit import authz
from services.kit.names import resource_id
from services.kit.wire import money_message, money_value, timestamp
from services.orders import watch
from services.orders.domain import (
    AWAITING_PAYMENT,
    CANCELLED,
    FULFILLED,
    PAID,
    PAYMENT_FAILED,
    PENDING,
    NewLine,
    Order,
    Orders,
    not_found,
    watch_until,
)

__all__ = ["OrdersServicer"]

_STATES = {
    PENDING: resources_pb2.Order.STATE_PENDING,
    AWAITING_PAYMENT: resources_pb2.Order.STATE_AWAITING_PAYMENT,
    PAID: resources_pb2.Order.STATE_PAID,
    FULFILLED: resources_pb2.Order.STATE_FULFILLED,
    CANCELLED: resources_pb2.Order.STATE_CANCELLED,
    PAYMENT_FAILED: resources_pb2.Order.STATE_PAYMENT_FAILED,
}
_DOMAIN_STATES = {number: state for state, number in _STATES.items()}
"""Wire state to domain state; STATE_UNSPECIFIED and unknown numbers are absent."""


def _order(order: Order) -> resources_pb2.Order:
    return resources_pb2.Order(
        name=order.name,
        owner=order.owner,
        lines=[
            resources_pb2.OrderLine(
                sku=line.sku,
                quantity=line.quantity,
                unit_price=money_message(line.unit_price),
                total=money_message(line.total),
            )
            for line in order.lines
        ],
        total=money_message(order.total),
        state=_STATES[order.state],
        payment=order.payment,
        failure_reason=order.failure_reason,
        cancel_reason=order.cancel_reason,
        etag=order.etag,
        create_time=timestamp(order.create_time),
        update_time=timestamp(order.update_time),
    )


def _new_line(line: resources_pb2.OrderLine) -> NewLine:
    return NewLine(line.sku, line.quantity, money_value(line.unit_price))


class OrdersServicer(orders_service_pb2_grpc.OrdersServiceServicer):
    """Orders and their lines; the order state machine and its side of the payment saga."""

    def __init__(self, orders: Orders, hub: watch.ChangeHub) -> None:
        self._orders = orders
        self._hub = hub

    def CreateOrder(
        self, request: pb.CreateOrderRequest, context: grpc.ServicerContext
    ) -> resources_pb2.Order:
        owner = authz.principal().subject
        lines = [_new_line(line) for line in request.order.lines]
        return _order(
            self._orders.create(owner, lines, request.order_id, request.request_id, authz.require_owner)
        )

    def _owned(self, order_id: str) -> Order:
        """The order, if the caller may see it. Permission comes before existence (AIP-211):
        a missing order is checked as one nobody owns, so another's and a missing one answer
        the same PERMISSION_DENIED; only its owner or an admin learns it does not exist."""
        order = self._orders.find(order_id)
        authz.require_owner(order.owner if order else "", f"orders/{order_id}")
        if order is None:
            raise not_found(order_id)
        return order

    def GetOrder(self, request: pb.GetOrderRequest, context: grpc.ServicerContext) -> resources_pb2.Order:
        return _order(self._owned(resource_id(request.name, "orders")))

    def ListOrders(
        self, request: pb.ListOrdersRequest, context: grpc.ServicerContext
    ) -> pb.ListOrdersResponse:
        caller = authz.principal()
        page = self._orders.list_orders(
            caller.subject,
            sees_all=caller.is_admin or caller.is_client,
            size=request.page_size,
            token=request.page_token,
            filter_text=request.filter,
            order_by=request.order_by,
        )
        return pb.ListOrdersResponse(
            orders=[_order(o) for o in page.orders], next_page_token=page.next_page_token
        )

    def CancelOrder(
        self, request: pb.CancelOrderRequest, context: grpc.ServicerContext
    ) -> resources_pb2.Order:
        order_id = resource_id(request.name, "orders")
        self._owned(order_id)
        return _order(self._orders.cancel(order_id, request.etag, request.reason))

    def FulfillOrder(
        self, request: pb.FulfillOrderRequest, context: grpc.ServicerContext
    ) -> resources_pb2.Order:
        return _order(self._orders.fulfill(resource_id(request.name, "orders"), request.etag))

    def WatchOrder(
        self, request: pb.WatchOrderRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.WatchOrderResponse]:
        first = self._owned(resource_id(request.name, "orders"))
        until = watch_until([_DOMAIN_STATES.get(state, "") for state in request.until_states])
        changes = watch.snapshots(
            self._hub,
            first,
            active=context.is_active,
            on_leave=context.add_callback,
            until=until,
        )
        for order in changes:
            yield pb.WatchOrderResponse(order=_order(order), change_time=timestamp(order.update_time))
