"""gRPC servicer of poly.notifications.v1.NotificationsService: parse, call the domain, map the result.

Methods without domain logic yet are inherited from the generated base class, which
answers UNIMPLEMENTED: no placeholder data is ever served.
"""

from poly.notifications.v1 import notifications_service_pb2_grpc

__all__ = ["NotificationsServicer"]


class NotificationsServicer(notifications_service_pb2_grpc.NotificationsServiceServicer):
    """Templates, webhooks and the delivery log of emails and webhooks."""
