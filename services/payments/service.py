"""gRPC servicer of poly.payments.v1.PaymentsService: parse, call the domain, map the result.

Methods without domain logic yet are inherited from the generated base class, which
answers UNIMPLEMENTED: no placeholder data is ever served.
"""

from poly.payments.v1 import payments_service_pb2_grpc

__all__ = ["PaymentsServicer"]


class PaymentsServicer(payments_service_pb2_grpc.PaymentsServiceServicer):
    """Accounts, a double-entry ledger and payments (authorize, capture, void, refund)."""
