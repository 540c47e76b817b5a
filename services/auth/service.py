"""gRPC servicer of poly.auth.v1.AuthService: parse, call the domain, map the result.

Methods without domain logic yet are inherited from the generated base class, which
answers UNIMPLEMENTED: no placeholder data is ever served.
"""

from poly.auth.v1 import auth_service_pb2_grpc

__all__ = ["AuthServicer"]


class AuthServicer(auth_service_pb2_grpc.AuthServiceServicer):
    """Identity provider: credentials, roles, refresh tokens, signing keys, machine clients."""
