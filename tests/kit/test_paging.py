"""Page sizes and opaque page tokens."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.kit.domain_errors import InvalidArgument
from services.kit.paging import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    decode_token,
    encode_token,
    page_size,
    split_page,
)


@pytest.mark.parametrize(
    ("requested", "expected"),
    [(0, DEFAULT_PAGE_SIZE), (1, 1), (MAX_PAGE_SIZE, MAX_PAGE_SIZE), (MAX_PAGE_SIZE + 1, MAX_PAGE_SIZE)],
    ids=["default", "one", "maximum", "clamped"],
)
def test_page_size(requested: int, expected: int) -> None:
    assert page_size(requested) == expected


def test_a_negative_page_size_is_invalid() -> None:
    with pytest.raises(InvalidArgument) as refused:
        page_size(-1)
    assert refused.value.violations[0].field == "page_size"


def test_a_token_round_trips_for_the_same_request() -> None:
    token = encode_token(["2026-01-01T00:00:00+00:00", "id-7"], ["state = ACTIVE", "email"])
    assert decode_token(token, ["state = ACTIVE", "email"]) == ["2026-01-01T00:00:00+00:00", "id-7"]
    assert decode_token("", ["anything"]) is None


def test_a_token_reused_with_other_filters_is_invalid() -> None:
    token = encode_token(["x"], ["state = ACTIVE"])
    with pytest.raises(InvalidArgument) as refused:
        decode_token(token, ["state = DISABLED"])
    assert refused.value.reason == "PAGE_TOKEN_INVALID"


@given(st.text(max_size=300))
def test_arbitrary_tokens_are_refused_cleanly_or_decoded(token: str) -> None:
    try:
        position = decode_token(token, [])
    except InvalidArgument as refused:
        assert refused.reason == "PAGE_TOKEN_INVALID"
    else:
        assert position is None or all(isinstance(p, str) for p in position)


def test_split_page_gives_a_token_only_when_more_rows_exist() -> None:
    request = ["filter"]
    assert split_page(["a", "b"], 2, lambda last: [last], request) == (["a", "b"], "")
    page, token = split_page(["a", "b", "c"], 2, lambda last: [last], request)
    assert page == ["a", "b"] and decode_token(token, request) == ["b"]
