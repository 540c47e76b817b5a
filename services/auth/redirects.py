"""Which redirect URIs an OAuth client may register (OAuth 2.1 section 2.3, RFC 8252 for native
apps). The authorization server later sends a user's browser, with an authorization code, only
to a URI registered here, compared exactly: so what may be registered is kept narrow.

- ``https://host[:port]/path[?query]`` for web apps;
- ``http://127.0.0.1/path`` or ``http://[::1]/path`` for native apps listening on loopback
  (RFC 8252 section 7.3: the app picks its port at run time, so a request may name any;
  ``localhost`` is refused, as it may resolve elsewhere);
- a private-use scheme in reverse-domain form, ``com.example.app:/callback`` (section 7.1).

Never a fragment (OAuth 2.1 forbids it), credentials, a wildcard, spaces or control characters,
and at most 2,048 characters.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

__all__ = ["MAX_REDIRECT_URIS", "redirect_uri_problem"]

MAX_REDIRECT_URIS = 10
_VISIBLE = re.compile(r"[!-~]+", re.ASCII)
_PRIVATE_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*\.[a-z0-9+.-]+", re.ASCII)
"""A reverse-domain scheme: at least one dot, as RFC 8252 section 7.1 asks."""
_WEB_SCHEMES = {"http", "https", "javascript", "data", "file", "ftp", "ws", "wss", "about", "blob"}


def redirect_uri_problem(uri: str) -> str | None:
    """Why `uri` may not be registered as a redirect URI, or None."""
    if not uri or len(uri) > 2048 or not _VISIBLE.fullmatch(uri):
        return "must be at most 2048 visible ASCII characters"
    try:
        parts = urlsplit(uri)
        _ = parts.port  # a port that is not a number is refused here
    except ValueError:
        return "must be an absolute URI"
    scheme = parts.scheme.lower()
    app = scheme not in ("http", "https")
    problems = [
        ("*" in uri, "must not hold a wildcard: each URI is compared exactly"),
        (bool(parts.fragment) or uri.endswith("#"), "must not have a fragment"),
        (parts.username is not None or parts.password is not None, "must not carry credentials"),
        (scheme == "https" and not parts.hostname, "must name a host"),
        (
            scheme == "http" and not _loopback_ip(parts.hostname),
            "http only to a loopback IP address (127.0.0.1 or [::1]); use https",
        ),
        (
            app and (scheme in _WEB_SCHEMES or not _PRIVATE_SCHEME.fullmatch(scheme)),
            "must be https, loopback http, or a reverse-domain app scheme (com.example.app:/callback)",
        ),
        (app and bool(parts.netloc), "an app scheme takes a path only (com.example.app:/callback)"),
        (app and not parts.path.startswith("/"), "an app scheme needs a path (com.example.app:/callback)"),
    ]
    return next((why for refused, why in problems if refused), None)


def _loopback_ip(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
