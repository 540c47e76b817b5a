"""Resource names to ids."""

from __future__ import annotations

import pytest

from services.kit.domain_errors import InvalidArgument
from services.kit.names import resource_id


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
