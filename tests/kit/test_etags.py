"""One etag format for every resource (services/kit/etags.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.kit import etags


@given(st.integers(min_value=0, max_value=10**18 - 1))
def test_an_etag_names_the_version_it_was_made_from(version: int) -> None:
    assert etags.version_of(etags.etag(version)) == version
    assert etags.matches(etags.etag(version), version)
    assert not etags.matches(etags.etag(version), version + 1)


def test_no_etag_asks_for_no_check() -> None:
    assert etags.version_of("") is None
    assert etags.matches("", 7)


@pytest.mark.parametrize(
    "foreign",
    [
        "v3",
        "3",
        'W/"3',
        '"3"',
        'W/"-3"',
        'W/"3" ',
        'W/"99999999999999999999"',
        'W/"\uff13"',  # a full-width digit
    ],
)
def test_an_etag_in_another_form_matches_no_version(foreign: str) -> None:
    assert etags.version_of(foreign) == -1
    assert not any(etags.matches(foreign, version) for version in (0, 3, 99))
