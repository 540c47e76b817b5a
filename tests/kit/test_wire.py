"""Datetimes and money to and from their wire messages."""

from __future__ import annotations

import datetime as dt

import pytest

from poly.type.v1 import money_pb2
from services.kit.money import Money
from services.kit.wire import money_message, money_value, timestamp


def test_a_timestamp_keeps_the_instant_whatever_the_zone() -> None:
    moment = dt.datetime(2026, 3, 1, 12, 30, 5, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    stamp = timestamp(moment)
    assert stamp.ToDatetime(dt.UTC) == moment
    assert stamp.seconds == int(moment.timestamp()) and stamp.nanos == 123456000


def test_no_datetime_is_no_timestamp() -> None:
    assert timestamp(None) is None


@pytest.mark.parametrize(
    "money",
    [Money("EUR", 1999), Money("JPY", 0), Money("KWD", -1234), Money("USD", 10**15)],
    ids=["cents", "zero", "negative", "largest"],
)
def test_money_survives_the_round_trip(money: Money) -> None:
    message = money_message(money)
    assert (message.currency_code, message.amount_minor) == (money.currency, money.amount)
    assert money_value(message) == money


def test_an_empty_message_is_read_as_it_stands() -> None:
    assert money_value(money_pb2.Money()) == Money("", 0)
