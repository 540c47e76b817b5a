"""Field behaviour (AIP-203) from the descriptors: REQUIRED refused with every full path,
OUTPUT_ONLY cleared, REQUIRED inside an Update's resource only for masked paths, IMMUTABLE
refused in a mask."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from google.protobuf.message import Message

from poly.auth.v1 import auth_service_pb2 as auth_pb
from poly.auth.v1 import resources_pb2 as auth_resources
from poly.orders.v1 import orders_service_pb2 as orders_pb
from poly.orders.v1 import resources_pb2 as orders_resources
from poly.type.v1.money_pb2 import Money
from poly.users.v1 import resources_pb2 as users_resources
from poly.users.v1 import users_service_pb2 as users_pb
from services.kit.domain_errors import InvalidArgument
from services.kit.fieldbehavior import Rules
from tests.support.protos import compile_proto

PROTO = """
syntax = "proto3";
package acme.shelf.v1;
import "google/api/field_behavior.proto";
import "google/protobuf/field_mask.proto";

message Book {
  string name = 1 [(google.api.field_behavior) = IDENTIFIER];
  string title = 2 [(google.api.field_behavior) = REQUIRED];
  string isbn = 3 [(google.api.field_behavior) = IMMUTABLE];
  Author author = 4 [(google.api.field_behavior) = OPTIONAL];
  string state = 5 [(google.api.field_behavior) = OUTPUT_ONLY];
}

message Author {
  string display_name = 1 [(google.api.field_behavior) = REQUIRED];
  optional int32 born = 2 [(google.api.field_behavior) = REQUIRED];
}

message UpdateBookRequest {
  Book book = 1 [(google.api.field_behavior) = REQUIRED];
  google.protobuf.FieldMask update_mask = 2 [(google.api.field_behavior) = OPTIONAL];
}
"""


@pytest.fixture(scope="module")
def shelf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    root = tmp_path_factory.mktemp("shelf")
    compile_proto(root, "acme/shelf/v1/shelf.proto", PROTO, python=True)
    sys.path.insert(0, str(root))
    try:
        yield importlib.import_module("acme.shelf.v1.shelf_pb2")
    finally:
        sys.path.remove(str(Path(root)))


def _refused(request: Message) -> tuple[str, list[str]]:
    with pytest.raises(InvalidArgument) as refused:
        Rules(request.DESCRIPTOR).apply(request)
    return refused.value.reason, [v.field for v in refused.value.violations]


LINE = orders_resources.OrderLine


@pytest.mark.parametrize(
    ("request_", "fields"),
    [
        (auth_pb.LogoutRequest(), ["refresh_token"]),
        (auth_pb.CreateClientRequest(), ["client"]),
        (auth_pb.RegisterRequest(email="a@example.com"), ["password"]),
        (orders_pb.CreateOrderRequest(order=orders_resources.Order()), ["order.lines"]),
        (
            orders_pb.CreateOrderRequest(
                order=orders_resources.Order(lines=[LINE(sku="a", unit_price=Money())])
            ),
            ["order.lines[0].quantity", "order.lines[0].unit_price.currency_code"],
        ),
        (users_pb.UpdateUserRequest(), ["user"]),
    ],
    ids=["logout", "create-client-no-body", "register", "empty-order", "nested-line", "update-no-resource"],
)
def test_missing_required_fields_are_named_by_full_path(request_: Message, fields: list[str]) -> None:
    assert _refused(request_) == ("REQUIRED_FIELD_MISSING", fields)


def test_a_complete_request_passes_and_output_only_fields_are_cleared() -> None:
    line = LINE(sku="a", quantity=1, unit_price=Money(currency_code="EUR"), total=Money(currency_code="USD"))
    request = orders_pb.CreateOrderRequest(
        order=orders_resources.Order(
            name="orders/x", lines=[line], state=orders_resources.Order.STATE_PAID, etag="v9"
        )
    )
    Rules(request.DESCRIPTOR).apply(request)
    # Ignored, never refused (AIP-203); IDENTIFIER stays for the handler to judge.
    assert (
        request.order.state == 0 and not request.order.etag and not request.order.lines[0].HasField("total")
    )
    assert request.order.name == "orders/x"
    client = auth_pb.CreateClientRequest(client=auth_resources.Client(create_time={"seconds": 5}))
    Rules(client.DESCRIPTOR).apply(client)
    assert not client.client.HasField("create_time")


def test_an_update_checks_required_resource_fields_only_for_masked_paths(shelf: Any) -> None:
    rules = Rules(shelf.UpdateBookRequest.DESCRIPTOR)
    untitled = shelf.Book(name="books/1", isbn="")
    rules.apply(shelf.UpdateBookRequest(book=untitled))  # no mask: only the fields set
    rules.apply(shelf.UpdateBookRequest(book=untitled, update_mask={"paths": ["author"]}))
    assert _refused(shelf.UpdateBookRequest(book=untitled, update_mask={"paths": ["title"]})) == (
        "REQUIRED_FIELD_MISSING",
        ["book.title"],
    )
    assert _refused(shelf.UpdateBookRequest(book=untitled, update_mask={"paths": ["*"]}))[1] == ["book.title"]
    author = shelf.Book(author=shelf.Author(display_name="Ann"))
    assert _refused(shelf.UpdateBookRequest(book=author, update_mask={"paths": ["author.born"]}))[1] == [
        "book.author.born"
    ]
    rules.apply(shelf.UpdateBookRequest(book=author, update_mask={"paths": ["author.display_name"]}))


def test_an_update_mask_naming_an_immutable_field_is_refused(shelf: Any) -> None:
    request = shelf.UpdateBookRequest(
        book=shelf.Book(title="T", isbn="1"), update_mask={"paths": ["title", "isbn"]}
    )
    assert _refused(request) == ("UPDATE_MASK_INVALID", ["update_mask.paths[1]"])
    # Sent back whole (no mask), an immutable field is not an attempt to change it.
    Rules(request.DESCRIPTOR).apply(shelf.UpdateBookRequest(book=shelf.Book(title="T", isbn="1")))


def test_required_fields_are_listed_per_request_type() -> None:
    assert Rules(auth_pb.RegisterRequest.DESCRIPTOR).required == ("email", "password")
    assert Rules(users_pb.ListUsersRequest.DESCRIPTOR).required == ()
    assert Rules(users_resources.Preferences.DESCRIPTOR).required == ()
