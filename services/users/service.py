"""gRPC servicer of poly.users.v1.UsersService: parse, call the domain, map the result."""

from __future__ import annotations

import grpc
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message

from poly.users.v1 import resources_pb2, users_service_pb2_grpc
from poly.users.v1 import users_service_pb2 as pb
from services.kit import authz
from services.kit.domain_errors import FieldViolation, InvalidArgument
from services.kit.fieldmask import update_paths
from services.kit.names import resource_id
from services.kit.wire import timestamp
from services.users.domain import ACTIVE, Contact, Preferences, PreferencesChange, ProfileChange, User, Users

__all__ = ["UsersServicer"]

_STATES = {ACTIVE: resources_pb2.User.STATE_ACTIVE}
_CHECKED_FIELDS = ("etag",)
"""Fields of a resource an Update reads as a check and never writes (AIP-154)."""


def _user(user: User) -> resources_pb2.User:
    return resources_pb2.User(
        name=user.name,
        email=user.email,
        display_name=user.display_name,
        state=_STATES.get(user.state, resources_pb2.User.STATE_DELETED),
        create_time=timestamp(user.create_time),
        update_time=timestamp(user.update_time),
        delete_time=timestamp(user.delete_time),
        etag=user.etag,
        phone_number=user.phone_number,
    )


def _preferences(preferences: Preferences) -> resources_pb2.Preferences:
    return resources_pb2.Preferences(
        name=preferences.name,
        email_enabled=preferences.email_enabled,
        webhook_enabled=preferences.webhook_enabled,
        muted_event_types=preferences.muted_event_types,
        locale=preferences.locale,
        update_time=timestamp(preferences.update_time),
        sms_enabled=preferences.sms_enabled,
        push_enabled=preferences.push_enabled,
    )


def _contact(contact: Contact) -> pb.Contact:
    return pb.Contact(
        user=contact.user.name,
        email=contact.user.email,
        display_name=contact.user.display_name,
        locale=contact.locale,
        preferences=_preferences(contact.preferences),
        state=_STATES.get(contact.user.state, resources_pb2.User.STATE_DELETED),
        phone_number=contact.user.phone_number,
    )


def _preferences_owner(name: str, *, field: str) -> str:
    """The user id of ``users/{user}/preferences``; anything else is INVALID_ARGUMENT."""
    user, slash, rest = name.rpartition("/")
    if slash and rest == "preferences":
        return resource_id(user, "users", field=field)
    raise InvalidArgument(
        "NAME_INVALID",
        "{field} must be users/{{user}}/preferences, got {name!r}",
        violations=[FieldViolation(field, "must be users/{user}/preferences")],
        field=field,
        name=name[:100],
    )


def _paths(mask: FieldMask, resource: Message) -> list[str]:
    """`update_paths`, less the checked fields (the etag): one in the mask is ignored as an
    output-only one is, since it is read as the check and never written."""
    return [path for path in update_paths(mask.paths, resource) if path not in _CHECKED_FIELDS]


class UsersServicer(users_service_pb2_grpc.UsersServiceServicer):
    """User profiles and preferences, created from UserRegistered."""

    def __init__(self, users: Users) -> None:
        self._users = users

    def GetUser(self, request: pb.GetUserRequest, context: grpc.ServicerContext) -> resources_pb2.User:
        user_id = resource_id(request.name, "users")
        authz.require_owner(f"users/{user_id}", f"users/{user_id}")
        return _user(self._users.get(user_id))

    def ListUsers(self, request: pb.ListUsersRequest, context: grpc.ServicerContext) -> pb.ListUsersResponse:
        page = self._users.list(
            request.page_size, request.page_token, request.filter, request.order_by, request.show_deleted
        )
        return pb.ListUsersResponse(
            users=[_user(u) for u in page.users], next_page_token=page.next_page_token
        )

    def UpdateUser(self, request: pb.UpdateUserRequest, context: grpc.ServicerContext) -> resources_pb2.User:
        given = request.user
        user_id = resource_id(given.name, "users", field="user.name")
        authz.require_owner(f"users/{user_id}", f"users/{user_id}")
        paths = _paths(request.update_mask, given)
        change = ProfileChange(display_name=given.display_name, phone_number=given.phone_number)
        return _user(self._users.update(user_id, paths, change, given.etag))

    def DeleteUser(self, request: pb.DeleteUserRequest, context: grpc.ServicerContext) -> resources_pb2.User:
        user_id = resource_id(request.name, "users")
        authz.require_owner(f"users/{user_id}", f"users/{user_id}")
        return _user(self._users.delete(user_id, request.etag))

    def GetPreferences(
        self, request: pb.GetPreferencesRequest, context: grpc.ServicerContext
    ) -> resources_pb2.Preferences:
        user_id = _preferences_owner(request.name, field="name")
        authz.require_owner(f"users/{user_id}", f"users/{user_id}/preferences")
        return _preferences(self._users.preferences(user_id))

    def UpdatePreferences(
        self, request: pb.UpdatePreferencesRequest, context: grpc.ServicerContext
    ) -> resources_pb2.Preferences:
        given = request.preferences
        user_id = _preferences_owner(given.name, field="preferences.name")
        authz.require_owner(f"users/{user_id}", f"users/{user_id}/preferences")
        change = PreferencesChange(
            email_enabled=given.email_enabled if given.HasField("email_enabled") else None,
            webhook_enabled=given.webhook_enabled if given.HasField("webhook_enabled") else None,
            muted_event_types=tuple(given.muted_event_types),
            locale=given.locale,
            sms_enabled=given.sms_enabled if given.HasField("sms_enabled") else None,
            push_enabled=given.push_enabled if given.HasField("push_enabled") else None,
        )
        paths = _paths(request.update_mask, given)
        return _preferences(self._users.update_preferences(user_id, paths, change))

    def LookupContact(self, request: pb.LookupContactRequest, context: grpc.ServicerContext) -> pb.Contact:
        return _contact(self._users.contact(resource_id(request.name, "users")))
