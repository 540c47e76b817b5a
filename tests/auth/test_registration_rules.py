"""What Register accepts as an email and a display name, before anything is stored or hashed.

Email addresses are ASCII only (an internationalised domain in its ``xn--`` form), so no
address can look like another through invisible, bidi, control or look-alike characters.
Display names refuse control, format, private-use, unassigned and line-break characters.
The rules are reached through `Accounts.register`, with storage and a hasher that stop
the test as soon as the registration gets past validation.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.auth.accounts import Accounts
from services.auth.settings import IdentitySettings
from services.auth.throttle import Throttle
from services.kit.domain_errors import InvalidArgument

PASSWORD = "violet-harbour-lantern-42"


class _Reached(Exception):
    """Validation let the registration through: it went on to storage or hashing."""


@contextmanager
def _storage() -> Iterator[Any]:
    raise _Reached
    yield  # pragma: no cover - never reached


class _Hasher:
    def hash(self, secret: str) -> str:
        raise _Reached

    def verify(self, hashed: str | None, secret: str) -> bool:
        raise _Reached

    def needs_rehash(self, hashed: str) -> bool:
        raise _Reached


_ACCOUNTS = Accounts(_storage, _Hasher(), Throttle(_storage, IdentitySettings()), lambda password: None)


def _refused_fields(email: str, display_name: str = "") -> list[str]:
    """The fields Register refuses; [] when it went on past validation."""
    try:
        _ACCOUNTS.register(email, PASSWORD, display_name, address="192.0.2.1")
    except InvalidArgument as refused:
        return [v.field for v in refused.violations]
    except _Reached:
        return []
    raise AssertionError("register neither refused nor reached storage")


EMAIL_ATTACKS = {
    "zero-width-space": "ad\u200ba@example.com",
    "rtl-override": "ada\u202e@example.com",
    "bom": "\ufeffada@example.com",
    "fullwidth-a": "\uff41da@example.com",
    "cyrillic-a": "\u0430da@example.com",
    "dotless-i-in-domain": "ada@\u0131nfo.example",
    "c1-csi": "ada\x9b@example.com",
    "nul": "ada\x00@example.com",
    "no-break-space": "ada\u00a0x@example.com",
    "cyrillic-domain": "ada@ex\u0430mple.com",
    "trailing-newline": "ada@example.com\nx",
    "ideographic-full-stop": "ada@example\u3002com",
    "two-ats": "a@da@example.com",
    "no-dot-in-domain": "ada@localhost",
    "empty-label": "ada@example..com",
    "leading-hyphen-label": "ada@-example.com",
    "leading-dot": ".ada@example.com",
    "double-dot": "a..da@example.com",
    "space": "a da@example.com",
    "local-part-over-64": "a" * 65 + "@example.com",
}
EMAILS = {
    "plain": "ada@example.com",
    "plus-tag": "ada.lovelace+poly@mail.example.co.uk",
    "idna-a-label": "ada@xn--bcher-kva.example",
    "digits-hyphens": "o'brien-smith_1@sub-1.example.org",
    "upper-case": "Ada@Example.COM",
}
DISPLAY_NAME_ATTACKS = {
    "review-string": "Admin\n[SYSTEM] x\x1b[31m\u202e\x00z",
    "rtl-override": "Ada\u202eecalevoL",
    "zero-width-space": "Ad\u200ba",
    "bom": "\ufeffAda",
    "c1-csi": "Ada\x9b31m",
    "line-separator": "Ada\u2028Lovelace",
    "private-use": "Ada\ue000",
}
DISPLAY_NAMES = {
    "latin": "Zoë Ångström",
    "han": "李小龙",
    "apostrophe-hyphen": "O'Brien-Smith",
    "arabic": "محمد",
    "empty": "",
}


@pytest.mark.parametrize("email", EMAIL_ATTACKS.values(), ids=EMAIL_ATTACKS.keys())
def test_emails_with_invisible_control_or_look_alike_characters_are_refused(email: str) -> None:
    assert _refused_fields(email) == ["email"]


@pytest.mark.parametrize("email", EMAILS.values(), ids=EMAILS.keys())
def test_ascii_email_addresses_pass(email: str) -> None:
    assert _refused_fields(email) == []


@pytest.mark.parametrize("name", DISPLAY_NAME_ATTACKS.values(), ids=DISPLAY_NAME_ATTACKS.keys())
def test_display_names_with_hidden_characters_are_refused_naming_the_field(name: str) -> None:
    assert _refused_fields("ada@example.com", name) == ["display_name"]


@pytest.mark.parametrize("name", DISPLAY_NAMES.values(), ids=DISPLAY_NAMES.keys())
def test_ordinary_display_names_pass(name: str) -> None:
    assert _refused_fields("ada@example.com", name) == []


_LOCAL = st.from_regex(r"[a-z0-9][a-z0-9._+-]{0,20}[a-z0-9]", fullmatch=True).filter(lambda s: ".." not in s)
_DOMAIN = st.from_regex(r"[a-z0-9]{1,10}(\.[a-z0-9]{1,10}){1,3}", fullmatch=True)
_NOT_ASCII = st.characters(min_codepoint=0x80).filter(
    # Not stripped (white space at either end) and not lower-cased to ASCII (KELVIN SIGN is
    # k): the rule is on the address that is stored, the normalised one.
    lambda c: not c.isspace() and not c.lower().isascii()
)


@given(local=_LOCAL, domain=_DOMAIN, strange=_NOT_ASCII, at=st.integers(min_value=0))
def test_any_non_ascii_character_anywhere_in_an_email_is_refused(
    local: str, domain: str, strange: str, at: int
) -> None:
    email = f"{local}@{domain}"
    assert _refused_fields(email) == []
    at %= len(email) + 1
    assert _refused_fields(email[:at] + strange + email[at:]) == ["email"]
