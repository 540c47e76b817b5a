"""Reading a FileDescriptorSet: services, custom options without generated code, comments."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import default_descriptor_set
from gateway.descriptors import DescriptorSetError, load_descriptor_set

SET = default_descriptor_set()


def test_the_services_and_their_options_come_from_the_set() -> None:
    found = load_descriptor_set(SET)
    [orders] = found.services(["poly.orders.v1.OrdersService"])
    create = orders.methods_by_name["CreateOrder"]
    assert found.method_option(create, "poly.options.v1.http_status") == 201
    policy = found.method_option(create, "poly.options.v1.policy")
    assert getattr(policy, "access", None) == 2  # ACCESS_USER
    assert found.method_option(create, "acme.v1.nothing") is None
    assert found.method_option(orders.methods_by_name["GetOrder"], "poly.options.v1.http_status") is None


def test_comments_are_kept_by_full_name() -> None:
    found = load_descriptor_set(SET)
    assert found.comment("poly.orders.v1.OrdersService.CreateOrder").startswith("Places an order")
    paid = found.comment("poly.orders.v1.Order.State.STATE_PAID")  # two lines in the proto
    assert paid.startswith("Payment captured; ready to fulfil.") and paid.endswith("moves it on."), paid
    assert found.comment("poly.orders.v1.OrderLine.sku").startswith("Required.")
    assert found.comment("no.such.Thing") == ""


def test_unknown_services_are_all_named() -> None:
    with pytest.raises(DescriptorSetError, match=r"acme\.A, acme\.B"):
        load_descriptor_set(SET).services(["acme.B", "poly.orders.v1.OrdersService", "acme.A"])


@pytest.mark.parametrize("content", [None, b"\xff\xff not a descriptor set"], ids=["missing", "garbage"])
def test_an_unreadable_set_is_one_clear_error(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "set.binpb"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DescriptorSetError, match=str(path)):
        load_descriptor_set(path)
