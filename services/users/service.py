"""gRPC servicer of poly.users.v1.UsersService: parse, call the domain, map the result.

Methods without domain logic yet are inherited from the generated base class, which
answers UNIMPLEMENTED: no placeholder data is ever served.
"""

from poly.users.v1 import users_service_pb2_grpc

__all__ = ["UsersServicer"]


class UsersServicer(users_service_pb2_grpc.UsersServiceServicer):
    """User profiles and preferences, created from UserRegistered."""
