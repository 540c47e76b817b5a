"""Free text that other people see (display names): what it may contain.

A display name is shown in listings, emails and logs, so it must not carry characters that
are invisible or change how the text around them looks: control characters (Cc: NUL, ESC
and the C1 controls such as CSI), format characters (Cf: bidi overrides such as U+202E,
zero-width spaces and joiners, U+FEFF), private-use (Co), lone surrogates (Cs), unassigned
code points (Cn) and line or paragraph separators (Zl, Zp). Letters of every script, marks,
digits, punctuation, symbols and spaces (Zs) are fine.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = [
    "HIDDEN_CATEGORIES",
    "VISIBLE_TEXT_RULE",
    "has_hidden",
    "is_e164",
    "visible_text",
    "visible_text_problem",
]

HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Co", "Cs", "Cn", "Zl", "Zp"})
"""Unicode general categories refused in displayed text."""
VISIBLE_TEXT_RULE = (
    "must not contain control, format (bidi, zero-width), private-use or line-break characters"
)
"""What a field checked by `visible_text_problem` must not contain, as its field violation says."""


_E164 = re.compile(r"\+[1-9][0-9]{7,14}", re.ASCII)


def is_e164(number: str) -> bool:
    """Whether `number` is a phone number in E.164 form: "+", then 8 to 15 ASCII digits with
    the country code, the first not 0 ("+4915123456789")."""
    return _E164.fullmatch(number) is not None


def has_hidden(text: str) -> bool:
    """Whether `text` holds a character of one of the `HIDDEN_CATEGORIES`."""
    return any(unicodedata.category(c) in HIDDEN_CATEGORIES for c in text)


def visible_text_problem(text: str, *, max_length: int) -> str | None:
    """Why `text` may not be displayed to others, or None when it may."""
    if len(text) > max_length:
        return f"must be at most {max_length} characters"
    if has_hidden(text):
        return VISIBLE_TEXT_RULE
    return None


def visible_text(text: str) -> str:
    """`text` without the characters `visible_text_problem` refuses (for text accepted before
    the rule, which must be cleaned rather than refused)."""
    return "".join(c for c in text if unicodedata.category(c) not in HIDDEN_CATEGORIES)
