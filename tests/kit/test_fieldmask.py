"""Update masks: which fields an Update writes, and every bad path refused at once."""

from __future__ import annotations

import pytest

from poly.users.v1 import resources_pb2
from services.kit.domain_errors import InvalidArgument
from services.kit.fieldmask import read_only_fields, update_paths, writable_fields


def test_output_only_and_identifier_fields_are_read_only() -> None:
    descriptor = resources_pb2.User.DESCRIPTOR
    assert set(read_only_fields(descriptor)) == {
        "name",
        "email",
        "state",
        "create_time",
        "update_time",
        "delete_time",
    }
    assert writable_fields(descriptor) == ["display_name", "etag", "phone_number"]


@pytest.mark.parametrize(
    ("paths", "user", "expected"),
    [
        ([], resources_pb2.User(name="users/a", display_name="Ada"), ["display_name"]),
        ([], resources_pb2.User(name="users/a"), []),
        (["*"], resources_pb2.User(), ["display_name", "etag", "phone_number"]),
        (["display_name", "display_name"], resources_pb2.User(), ["display_name"]),
    ],
    ids=["no-mask-means-set-fields", "nothing-set", "star-means-all-writable", "repeats-collapse"],
)
def test_the_fields_to_write(paths: list[str], user: resources_pb2.User, expected: list[str]) -> None:
    assert update_paths(paths, user) == expected


def test_every_bad_path_gets_its_own_violation() -> None:
    with pytest.raises(InvalidArgument) as refused:
        update_paths(["display_name", "email", "nickname", "display_name.first", "*"], resources_pb2.User())
    assert refused.value.reason == "UPDATE_MASK_INVALID"
    assert [v.field for v in refused.value.violations] == [
        "update_mask.paths[2]",
        "update_mask.paths[3]",
        "update_mask.paths[4]",
    ], "email is output only: ignored, not refused"
    assert "not a field" in refused.value.violations[0].description


def test_output_only_and_identifier_paths_are_ignored() -> None:
    """AIP-203: a resource read and sent back whole, with a mask naming every field it
    holds (as the edge derives one from a PATCH body), updates the writable ones."""
    paths = ["name", "email", "display_name", "state", "create_time", "etag"]
    assert update_paths(paths, resources_pb2.User()) == ["display_name", "etag"]
    assert update_paths(["email", "state"], resources_pb2.User()) == []
