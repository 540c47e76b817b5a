"""Which redirect URIs an OAuth client may register (OAuth 2.1 section 2.3, RFC 8252 for native
apps). The authorization server later sends a user's browser, with an authorization code, only
to a URI registered here, compared exactly: so what may be registered is kept narrow, and
written so that every URL parser (Python's, a browser's) reads the same host from it.

- ``https://host[:port]/path[?query]`` for web apps: a host of lower-case letters, digits,
  dots and hyphens (an international name in punycode), never ``localhost``;
- ``http://127.0.0.1[:port]/path`` or ``http://[::1][:port]/path`` for native apps listening on
  loopback (RFC 8252 section 7.3: the app picks its port at run time, so a request may name
  any; ``localhost`` is refused, as it may resolve elsewhere);
- a private-use scheme in reverse-domain form, ``com.example.app:/callback`` (section 7.1).

Only URI characters (RFC 3986): no space, backslash, quote or angle bracket, ``%`` only before
two hex digits and never in the host; no fragment (OAuth 2.1 forbids it), credentials or
wildcard; the scheme and host in lower case, as they are compared; at most 2,048 characters.
"""

from __future__ import annotations

import re

__all__ = ["MAX_REDIRECT_URIS", "redirect_uri_matches", "redirect_uri_problem"]

MAX_REDIRECT_URIS = 10
_URI = re.compile(r"(?:[A-Za-z0-9\-._~:/?\[\]@!$&'()+,;=]|%[0-9A-Fa-f]{2})+", re.ASCII)
"""RFC 3986's characters, less ``#`` (no fragment) and ``*`` (no wildcard)."""
_PATH_CHARS = r"(?:[A-Za-z0-9\-._~:/?@!$&'()+,;=]|%[0-9A-Fa-f]{2})*"
"""A path and query's characters: no brackets (only an IPv6 host has them)."""
_REST = rf"(?P<rest>[/?]{_PATH_CHARS})?"
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_WEB = re.compile(rf"https://(?P<host>{_LABEL}(?:\.{_LABEL})*)(?::(?P<port>[0-9]{{1,5}}))?{_REST}", re.ASCII)
_LOOPBACK = re.compile(rf"http://(?:127\.0\.0\.1|\[::1\])(?::(?P<port>[0-9]{{1,5}}))?{_REST}", re.ASCII)
_APP = re.compile(rf"[a-z][a-z0-9+-]*(?:\.[a-z0-9+-]+)+:/(?!/){_PATH_CHARS}", re.ASCII)
"""A reverse-domain scheme (a dot, as RFC 8252 section 7.1 asks), then a path, no authority."""
_LOOPBACK_PORT = re.compile(r"(http://(?:127\.0\.0\.1|\[::1\]))(?::[0-9]{1,5})?", re.ASCII)


def redirect_uri_matches(registered: tuple[str, ...], given: str) -> bool:
    """Whether an authorization request may send its user to `given`: one of the `registered`
    URIs exactly, or a loopback one on another port (RFC 8252 section 7.3)."""
    if given in registered:
        return True
    matched = _LOOPBACK.fullmatch(given)
    if matched is None or _port_problem(matched["port"]):
        return False
    unported = _LOOPBACK_PORT.sub(r"\1", given, count=1)
    return any(
        _LOOPBACK.fullmatch(uri) and _LOOPBACK_PORT.sub(r"\1", uri, count=1) == unported for uri in registered
    )


def redirect_uri_problem(uri: str) -> str | None:
    """Why `uri` may not be registered as a redirect URI, or None."""
    scheme = uri.partition(":")[0]
    problems = [
        (not uri or len(uri) > 2048, "must be 1 to 2048 characters"),
        ("#" in uri, "must not have a fragment"),
        ("*" in uri, "must not hold a wildcard: each URI is compared exactly"),
        (
            not _URI.fullmatch(uri),
            "must hold only URI characters (RFC 3986): no space, backslash, quote or angle bracket, "
            "and % only before two hex digits",
        ),
        (scheme != scheme.lower() or not scheme, "must start with a lower-case scheme"),
    ]
    found = next((why for refused, why in problems if refused), None)
    if found:
        return found
    if scheme == "https":
        return _web_problem(uri)
    if scheme == "http":
        matched = _LOOPBACK.fullmatch(uri)
        if matched is None:
            return "http only to 127.0.0.1 or [::1] (a native app's loopback listener); use https"
        return _port_problem(matched["port"])
    if _APP.fullmatch(uri) is None:
        return (
            "must be https, loopback http, or a reverse-domain app scheme with a path "
            "(com.example.app:/callback)"
        )
    return None


def _web_problem(uri: str) -> str | None:
    matched = _WEB.fullmatch(uri)
    if matched is None:
        return (
            "must be https://host[:port]/path, the host in lower-case letters, digits, dots and "
            "hyphens, with no credentials"
        )
    host = matched["host"]
    if host == "localhost" or host.endswith(".localhost"):
        return "must not be localhost: a native app listens on http://127.0.0.1 or http://[::1]"
    return _port_problem(matched["port"])


def _port_problem(port: str | None) -> str | None:
    return None if port is None or 0 < int(port) < 65536 else "must have a port from 1 to 65535"
