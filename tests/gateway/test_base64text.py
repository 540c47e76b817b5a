"""Tests of gateway.base64text: bytes fields' base64, validated as protojson validates it."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import base64text


def test_exports() -> None:
    assert base64text.__all__ == ["decode"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", b""),
        ("aGk/Pz4+", b"hi??>>"),
        ("aGk_Pz4-", b"hi??>>"),
        ("aGk=", b"hi"),
        ("aGk", b"hi"),
        ("YQ==", b"a"),
        ("YQ", b"a"),
        ("_w", b"\xff"),
    ],
    ids=[
        "empty",
        "standard",
        "url-safe",
        "padded",
        "unpadded",
        "two-pads",
        "two-pads-dropped",
        "url-unpadded",
    ],
)
def test_valid(text: str, expected: bytes) -> None:
    assert base64text.decode(text) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("a", "length"),
        ("abcde", "length"),
        ("aGk==", "padding"),
        ("YQ===", "padding"),
        ("YQ=a", "not valid"),
        ("=YQ=", "not valid"),
        ("aG k", "not valid"),
        ("aGk\n", "not valid"),
        (" aGk", "not valid"),
        ("a$b=", "not valid"),
        ("a+b_", "mixes"),
        ("-/==", "mixes"),
        ("aGé=", "not valid"),
        ("====", "not valid"),
    ],
    ids=[
        "one-char",
        "five-chars",
        "padding-on-a-wrong-length",
        "too-much-padding",
        "padding-then-data",
        "leading-padding",
        "space",
        "newline",
        "leading-space",
        "stray-character",
        "mixed-alphabets",
        "mixed-alphabets-padded",
        "non-ascii",
        "only-padding",
    ],
)
def test_invalid(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        base64text.decode(text)


@given(data=st.binary(max_size=40))
def test_every_encoding_of_any_bytes_decodes_back(data: bytes) -> None:
    standard, url_safe = base64.b64encode(data).decode(), base64.urlsafe_b64encode(data).decode()
    for text in (standard, standard.rstrip("="), url_safe, url_safe.rstrip("=")):
        assert base64text.decode(text) == data


@given(text=st.text(max_size=24))
def test_any_text_decodes_or_raises_value_error(text: str) -> None:
    try:
        decoded = base64text.decode(text)
    except ValueError:
        return
    # What decodes is made of the alphabet, at most two pads, and says as much as it holds.
    assert set(text.rstrip("=")) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_")
    assert len(decoded) == len(text.rstrip("=")) * 3 // 4
