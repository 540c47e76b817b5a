"""Unpadded base64url (`services.kit.b64url`)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.kit import b64url


@given(st.binary(max_size=100))
def test_what_is_encoded_decodes_to_itself_without_padding_or_unsafe_characters(data: bytes) -> None:
    text = b64url.encode(data)
    assert "=" not in text and "+" not in text and "/" not in text
    assert b64url.decode(text) == data
    assert b64url.decode(text + "=" * (-len(text) % 4)) == data  # padded too


@pytest.mark.parametrize(("data", "text"), [(b"", ""), (b"\xfb\xff", "-_8"), (b"poly", "cG9seQ")])
def test_known_encodings(data: bytes, text: str) -> None:
    assert b64url.encode(data) == text and b64url.decode(text) == data


def test_what_is_not_base64_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        b64url.decode("a")
