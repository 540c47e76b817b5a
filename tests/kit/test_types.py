from __future__ import annotations

import dataclasses

import pytest

from services.kit.types import CallInfo


def test_call_info_is_immutable() -> None:
    call = CallInfo(
        "/poly.orders.v1.OrdersService/GetOrder",
        "poly.orders.v1.OrdersService",
        "GetOrder",
        request_streaming=False,
        response_streaming=False,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        call.name = "ListOrders"  # type: ignore[misc]
