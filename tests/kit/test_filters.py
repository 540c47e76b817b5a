"""AIP-160 filters and AIP-132 orderings: typed terms out, every malformed input refused."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.kit.domain_errors import InvalidArgument
from services.kit.filters import (
    ORDERED,
    FieldSpec,
    Ordering,
    Term,
    enum_value,
    parse_filter,
    parse_order_by,
    text_value,
    timestamp_value,
)

FIELDS = {
    "state": FieldSpec(enum_value("PAID", "CANCELLED")),
    "owner": FieldSpec(text_value),
    "create_time": FieldSpec(timestamp_value, ORDERED),
}


def test_terms_joined_by_and() -> None:
    terms = parse_filter(
        'state = STATE_PAID AND create_time >= "2025-01-01T00:00:00Z" AND owner = "users/a b"', FIELDS
    )
    assert terms == [
        Term("state", "=", "PAID"),
        Term("create_time", ">=", dt.datetime(2025, 1, 1, tzinfo=dt.UTC)),
        Term("owner", "=", "users/a b"),
    ]
    assert parse_filter("", FIELDS) == []
    assert parse_filter("state != cancelled", FIELDS) == [Term("state", "!=", "CANCELLED")]


@pytest.mark.parametrize(
    "text",
    [
        "colour = red",
        "state > PAID",
        "state = SHIPPED",
        'create_time > "yesterday"',
        'create_time > "2025-01-01T00:00:00"',
        "state = PAID OR state = CANCELLED",
        "state PAID",
        "x" * 1001,
    ],
    ids=[
        "unknown-field",
        "operator-not-allowed",
        "unknown-enum",
        "bad-time",
        "no-offset",
        "or",
        "no-op",
        "long",
    ],
)
def test_malformed_filters_are_invalid_on_the_filter_field(text: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        parse_filter(text, FIELDS)
    assert refused.value.reason == "FILTER_INVALID"
    assert refused.value.violations[0].field == "filter"


@given(st.text(max_size=200))
def test_any_text_parses_or_is_refused_cleanly(text: str) -> None:
    try:
        terms = parse_filter(text, FIELDS)
    except InvalidArgument as refused:
        assert refused.violations[0].field == "filter"
    else:
        assert all(term.field in FIELDS for term in terms)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", Ordering("create_time", True)),
        ("create_time", Ordering("create_time", False)),
        ("update_time desc", Ordering("update_time", True)),
        ("  update_time   ASC ", Ordering("update_time", False)),
    ],
    ids=["default", "field", "desc", "spaces-and-case"],
)
def test_orderings(text: str, expected: Ordering) -> None:
    assert (
        parse_order_by(text, ["create_time", "update_time"], default=Ordering("create_time", True))
        == expected
    )


@pytest.mark.parametrize("text", ["email", "create_time sideways", "create_time desc extra"])
def test_bad_orderings(text: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        parse_order_by(text, ["create_time"], default=Ordering("create_time", True))
    assert refused.value.reason == "ORDER_BY_INVALID"
