"""What a browser reads off the auth service's sign-in page: where its form posts, and the
CSRF token it carries."""

from __future__ import annotations

import html
import re

__all__ = ["form_of"]

_FORM = re.compile(
    r'<form method="post" action="([^"]*)">\s*<input type="hidden" name="csrf_token" value="([^"]*)"'
)


def form_of(page: str) -> tuple[str, str]:
    """The action and CSRF token of the page's first form."""
    found = _FORM.search(page)
    assert found, page
    return html.unescape(found[1]), html.unescape(found[2])
