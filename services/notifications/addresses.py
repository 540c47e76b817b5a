"""Which webhook URLs the service may call (SSRF defence).

A user-supplied URL must be https, and every address its host resolves to must be a public
unicast address: loopback, private, link-local (cloud metadata at 169.254.169.254),
shared, multicast, reserved and unspecified ranges are refused, IPv4-mapped IPv6 included.
`allow_private` (development only) lifts both rules. The check runs when a webhook is
created and again at every delivery, where `GuardedResolver` also vets the addresses the
HTTP client actually connects to, so a DNS answer that changes in between cannot slip past.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

__all__ = ["AddressRefused", "GuardedResolver", "address_allowed", "url_policy", "url_problem"]

_URL_CHARACTERS = re.compile(r"[!-~]+", re.ASCII)
"""Visible ASCII only: `urlsplit` silently drops tabs and newlines and strips leading
spaces and controls, so such a URL would be checked as one text and stored as another."""

Resolve = Callable[[str], list[str]]
"""A host name to the IP addresses it resolves to."""


class AddressRefused(OSError):
    """The host resolves to an address webhooks may not reach."""


def _resolve(host: str) -> list[str]:
    infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    return sorted({str(info[4][0]) for info in infos})


def address_allowed(address: str, *, allow_private: bool) -> bool:
    if allow_private:
        return True
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast and not ip.is_reserved


def _syntax_problem(url: str, *, allow_private: bool) -> str | None:
    if not _URL_CHARACTERS.fullmatch(url):
        return "must be visible ASCII without spaces (an international host name in punycode)"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "must be an absolute URL"
    problems = [
        (parts.scheme not in ("https", "http") or not parts.hostname, "must be an absolute https URL"),
        (parts.scheme == "http" and not allow_private, "must use https"),
        (bool(parts.username or parts.password), "must not carry credentials"),
        (port == 0, "must not use port 0"),
    ]
    return next((why for refused, why in problems if refused), None)


def url_problem(url: str, *, allow_private: bool, resolve: Resolve = _resolve) -> str | None:
    """Why `url` may not receive webhooks, or None."""
    problem = _syntax_problem(url, allow_private=allow_private)
    if problem:
        return problem
    host = urlsplit(url).hostname or ""
    try:
        addresses = [host] if _is_ip(host) else resolve(host)
    except (OSError, UnicodeError):
        return f"host {host!r} does not resolve"
    if not addresses or any(not address_allowed(a, allow_private=allow_private) for a in addresses):
        return f"host {host!r} is a loopback, private or reserved address"
    return None


def url_policy(*, allow_private: bool) -> Callable[[str], str | None]:
    """`url_problem` with the deployment's setting, for the domain."""
    return lambda url: url_problem(url, allow_private=allow_private)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, refusing (with `AddressRefused`) any answer `address_allowed` refuses."""

    def __init__(self, *, allow_private: bool) -> None:
        self._inner = ThreadedResolver()
        self._allow_private = allow_private

    async def resolve(self, host: str, port: int = 0, family: Any = socket.AF_INET) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        refused = [
            r["host"] for r in found if not address_allowed(r["host"], allow_private=self._allow_private)
        ]
        if refused:
            raise AddressRefused(f"{host} resolves to a refused address")
        return found

    async def close(self) -> None:
        await self._inner.close()
