"""The recipient's contact details, from the users service's ``LookupContact`` over mTLS.

Every failure to read them is `ContactUnavailable`: NOT_FOUND (the profile is created from
the same UserRegistered event and may arrive after it), UNAVAILABLE or a deadline are worth
retrying later, and so is anything else, bounded by the dispatcher's attempts.
"""

from __future__ import annotations

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from poly.users.v1 import resources_pb2, users_service_pb2, users_service_pb2_grpc
from services.kit.clients import Channels
from services.kit.errors import call_code
from services.notifications.domain import Contact

__all__ = ["USERS_SERVICE", "ContactUnavailable", "UsersDirectory"]

USERS_SERVICE: ServiceDescriptor = users_service_pb2.DESCRIPTOR.services_by_name["UsersService"]


class ContactUnavailable(Exception):
    """The contact could not be read now; the message says why (e.g. ``users NOT_FOUND``)."""


class UsersDirectory:
    """`lookup(user)`: a blocking call; `channels` must know the ``users`` peer."""

    def __init__(self, channels: Channels) -> None:
        self._channels = channels

    def lookup(self, user: str) -> Contact:
        stub = users_service_pb2_grpc.UsersServiceStub(self._channels.get("users"))
        try:
            found: users_service_pb2.Contact = stub.LookupContact(
                users_service_pb2.LookupContactRequest(name=user)
            )
        except grpc.RpcError as error:
            raise ContactUnavailable(f"users {call_code(error).name}") from None
        preferences = found.preferences
        return Contact(
            user=found.user or user,
            email=found.email,
            display_name=found.display_name,
            deleted=found.state == resources_pb2.User.STATE_DELETED,
            email_enabled=preferences.email_enabled if preferences.HasField("email_enabled") else True,
            webhook_enabled=preferences.webhook_enabled if preferences.HasField("webhook_enabled") else True,
            muted=tuple(preferences.muted_event_types),
            phone_number=found.phone_number,
            sms_enabled=preferences.sms_enabled if preferences.HasField("sms_enabled") else False,
            push_enabled=preferences.push_enabled if preferences.HasField("push_enabled") else True,
        )
