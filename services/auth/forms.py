"""What keeps another site from posting the sign-in form in a person's browser (login CSRF and
clickjacked consent), following OWASP's CSRF guidance, in three layers:

- a token in the form bound to a cookie: the page sets a random value in a cookie (``HttpOnly``,
  ``SameSite=Lax``, and ``__Host-`` with ``Secure`` when the issuer is https) and puts
  HMAC(key, value) in its form; a post must carry both, and only this server can make the
  one from the other. Lax, not Strict: a person arrives from the app by a cross-site link,
  and a Strict cookie would not come along, so each visit would replace it and break a
  sign-in open in another tab; no browser sends a Lax cookie with another site's post;
- the browser's word on where the post came from: an ``Origin`` other than this server's, or a
  ``Sec-Fetch-Site`` other than ``same-origin`` (or ``none``), is refused;
- the page may not be framed (``frame-ancestors 'none'`` in `pages`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import urllib.parse
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from services.kit import b64url

__all__ = ["FormGuard", "derive_key"]

_VALUE = re.compile(r"[A-Za-z0-9_-]{43}", re.ASCII)
_COOKIE_SECONDS = 3600


def derive_key(secret: bytes) -> bytes:
    """A key of its own for the form tokens, derived from the service's key-encryption key."""
    return HKDF(hashes.SHA256(), 32, salt=None, info=b"poly auth sign-in form").derive(secret)


@dataclass(frozen=True, slots=True)
class FormGuard:
    key: bytes
    issuer: str
    """The issuer URL: its scheme decides the cookie's name and flags, its host the origin
    a post must come from (besides the host the edge was asked for)."""

    @property
    def cookie_name(self) -> str:
        return "__Host-poly-signin" if self._secure else "poly-signin"

    @property
    def _secure(self) -> bool:
        return self.issuer.startswith("https://")

    def binding(self, cookie_header: str) -> str | None:
        """The value of this form's cookie in a ``Cookie`` header, if it holds a well-formed one."""
        for part in cookie_header.split(";"):
            name, _, value = part.strip().partition("=")
            if name == self.cookie_name and _VALUE.fullmatch(value):
                return value
        return None

    def new_binding(self) -> tuple[str, str]:
        """A fresh cookie value and the ``Set-Cookie`` header that sets it."""
        value = secrets.token_urlsafe(32)
        flags = "; Secure" if self._secure else ""
        return value, (
            f"{self.cookie_name}={value}; Path=/; Max-Age={_COOKIE_SECONDS}; HttpOnly; SameSite=Lax{flags}"
        )

    def token(self, binding: str) -> str:
        """The token the form carries for cookie value `binding`."""
        mac = hmac.new(self.key, b"sign-in form\0" + binding.encode(), hashlib.sha256).digest()
        return b64url.encode(mac)

    def problem(
        self, *, cookie_header: str, token: str, origin: str, fetch_site: str, host: str
    ) -> str | None:
        """Why a post of the form is refused, in words for the person; None when it is theirs.
        `host` is the host the edge was asked for (empty if unknown)."""
        if fetch_site and fetch_site not in ("same-origin", "none"):
            return "This form was sent from another site. Start the sign-in again from the app."
        if origin and urllib.parse.urlsplit(origin).netloc not in {
            urllib.parse.urlsplit(self.issuer).netloc,
            host,
        } - {""}:
            return "This form was sent from another site. Start the sign-in again from the app."
        binding = self.binding(cookie_header)
        if binding is None:
            return (
                "Your browser did not send back this page's cookie. Allow cookies for this site, "
                "then start the sign-in again from the app."
            )
        if not hmac.compare_digest(self.token(binding), token):
            return "This form has expired. Please sign in again."
        return None
