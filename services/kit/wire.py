"""Plain values to and from the shared wire messages, for every service's `service.py`.

`timestamp` turns a timezone-aware datetime into a `google.protobuf.Timestamp` (None stays
None, so an optional field stays unset); `money_message` and `money_value` convert between
`kit.money.Money` and `poly.type.v1.Money`. Nothing here validates: `money_problems` does.
"""

from __future__ import annotations

import datetime as dt
from typing import overload

from google.protobuf.timestamp_pb2 import Timestamp

from poly.type.v1 import money_pb2
from services.kit.money import Money

__all__ = ["money_message", "money_value", "timestamp"]


@overload
def timestamp(value: dt.datetime) -> Timestamp: ...
@overload
def timestamp(value: None) -> None: ...
@overload
def timestamp(value: dt.datetime | None) -> Timestamp | None: ...
def timestamp(value: dt.datetime | None) -> Timestamp | None:
    """`value` as a `Timestamp`, or None for None (leaves an optional field unset)."""
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def money_message(money: Money) -> money_pb2.Money:
    """`money` as a `poly.type.v1.Money` message."""
    return money_pb2.Money(currency_code=money.currency, amount_minor=money.amount)


def money_value(message: money_pb2.Money) -> Money:
    """A `poly.type.v1.Money` message as `Money`, unchecked (see `kit.money.money_problems`)."""
    return Money(message.currency_code, message.amount_minor)
