"""Displayed text: no control, format (bidi, zero-width), private-use or line-break characters."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.kit.text import (
    HIDDEN_CATEGORIES,
    VISIBLE_TEXT_RULE,
    is_e164,
    visible_text,
    visible_text_problem,
)

ATTACKS = [
    "Admin\n[SYSTEM] x\x1b[31m\u202e\x00z",
    "Ada\u202eecalevoL",
    "Ad\u200ba",
    "\ufeffAda",
    "Ada\u200d",
    "Ada\u2066x\u2069",
    "Ada\x9b31m",
    "Ada\x00",
    "Ada\u2028Lovelace",
    "Ada\u2029Lovelace",
    "Ada\ue000",
    "Ada\ud800",
    "Ada\U000e0001",
    "Ada\u0378",
]
ATTACK_IDS = [
    "review-string",
    "rtl-override",
    "zero-width-space",
    "bom",
    "zero-width-joiner",
    "bidi-isolate",
    "c1-csi",
    "nul",
    "line-separator",
    "paragraph-separator",
    "private-use",
    "lone-surrogate",
    "tag-character",
    "unassigned",
]
NAMES = ["Zoë Ångström", "李小龙", "O'Brien-Smith", "José María", "Ada Lovelace", "Đặng Thị Ngọc", "محمد", ""]


@pytest.mark.parametrize("text", ATTACKS, ids=ATTACK_IDS)
def test_hidden_characters_are_refused(text: str) -> None:
    assert visible_text_problem(text, max_length=63) == VISIBLE_TEXT_RULE


@pytest.mark.parametrize(
    "text", NAMES, ids=["latin", "han", "apostrophe-hyphen", "spaces", "plain", "vi", "ar", "empty"]
)
def test_ordinary_names_pass(text: str) -> None:
    assert visible_text_problem(text, max_length=63) is None
    assert visible_text(text) == text


def test_the_length_is_checked_first() -> None:
    assert visible_text_problem("x" * 64, max_length=63) == "must be at most 63 characters"
    assert visible_text_problem("x" * 63, max_length=63) is None


_SHOWN = st.text(
    st.characters(exclude_categories=sorted(HIDDEN_CATEGORIES)),  # type: ignore[arg-type]
    max_size=30,
)
_HIDDEN = st.characters(categories=sorted(HIDDEN_CATEGORIES))  # type: ignore[arg-type]


@given(text=_SHOWN)
def test_text_of_letters_marks_numbers_punctuation_symbols_and_spaces_passes(text: str) -> None:
    assert visible_text_problem(text, max_length=1000) is None


@given(text=_SHOWN, hidden=_HIDDEN, at=st.integers(min_value=0))
def test_one_hidden_character_anywhere_is_refused_and_cleaned_away(text: str, hidden: str, at: int) -> None:
    at %= len(text) + 1
    corrupted = text[:at] + hidden + text[at:]
    assert unicodedata.category(hidden) in HIDDEN_CATEGORIES
    assert visible_text_problem(corrupted, max_length=1000) == VISIBLE_TEXT_RULE
    assert visible_text(corrupted) == text


@pytest.mark.parametrize(
    ("number", "fit"),
    [
        ("+4915123456789", True),
        ("+12025550123", True),
        ("+491512345", True),
        ("4915123456789", False),
        ("+0915123456789", False),
        ("+49 151 23456789", False),
        ("+4915123", False),
        ("+4915123456789012", False),
        ("+\uff14\uff191512345678", False),
        ("", False),
    ],
    ids=[
        "de",
        "us",
        "shortest",
        "no-plus",
        "country-zero",
        "spaces",
        "too-short",
        "too-long",
        "full-width",
        "empty",
    ],
)
def test_e164_numbers_only(number: str, fit: bool) -> None:
    assert is_e164(number) is fit
