"""Resource names to ids."""

from __future__ import annotations

import pytest

from services.kit.domain_errors import InvalidArgument
from services.kit.names import request_id_problems, resource_id


def test_the_id_of_a_well_formed_name() -> None:
    assert resource_id("orders/o-1_2.3", "orders") == "o-1_2.3"


@pytest.mark.parametrize(
    "name",
    ["", "orders", "orders/", "users/x", "orders/a/b", "orders/../x", "orders/" + "x" * 65, "orders/-x"],
    ids=["empty", "no-id", "empty-id", "other-collection", "nested", "traversal", "too-long", "leading-dash"],
)
def test_anything_else_is_invalid_on_the_named_field(name: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        resource_id(name, "orders", field="order.name")
    assert refused.value.violations[0].field == "order.name"


@pytest.mark.parametrize(
    ("request_id", "required", "versions", "fine"),
    [
        ("", False, (4,), True),
        ("", True, (4,), False),
        ("0b9b7c0e-3f1a-4c2e-8a5d-1e2f3a4b5c6d", False, (4,), True),
        ("0B9B7C0E-3F1A-4C2E-8A5D-1E2F3A4B5C6D", False, (4,), True),
        ("0b9b7c0e3f1a4c2e8a5d1e2f3a4b5c6d", False, (4,), False),
        ("{0b9b7c0e-3f1a-4c2e-8a5d-1e2f3a4b5c6d}", False, (4,), False),
        ("74738ff5-5367-5958-9aee-98fffdcd1876", False, (4,), False),
        ("74738ff5-5367-5958-9aee-98fffdcd1876", False, (4, 5), True),
        ("not-a-uuid", True, (4, 5), False),
    ],
    ids=["empty", "empty-required", "v4", "upper-case", "no-dashes", "braces", "v5", "v5-allowed", "garbage"],
)
def test_request_ids_are_canonical_uuids_of_the_given_versions(
    request_id: str, required: bool, versions: tuple[int, ...], fine: bool
) -> None:
    problems = request_id_problems(request_id, required=required, versions=versions)
    assert (problems == []) is fine
    assert all(p.field == "request_id" for p in problems)
