"""gRPC servicer of poly.orders.v1.OrdersService: parse, call the domain, map the result.

Methods without domain logic yet are inherited from the generated base class, which
answers UNIMPLEMENTED: no placeholder data is ever served.
"""

from poly.orders.v1 import orders_service_pb2_grpc

__all__ = ["OrdersServicer"]


class OrdersServicer(orders_service_pb2_grpc.OrdersServiceServicer):
    """Orders and their lines; the order state machine and its side of the payment saga."""
